"""Every check of a config that can be made before compute: the generic ones (`config_lib`) and
those of the parts that own the keys (the data, the models, the metrics).

`validate_config` is what an experiment runs first. It interleaves the parts' checks in one fixed
order, so a config with several problems always reports the same first one (that of the single
`config_lib.validate` the checks were split out of). Each part's own `validate_config` runs the
same checks for that part alone.
"""

from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import models
from tsvae.metrics import fid


def validate_config(config, *, num_devices: int, num_processes: int = 1):
  """Raises config_lib.ConfigError for the first problem of `config`, whose batches are split
  over `num_devices` devices in all and `num_processes` processes."""
  input_pipeline.validate_dataset_config(config)
  models.validate_arch_config(config)
  config_lib.check_sizes(config)
  for stage in config_lib.STAGES:
    config_lib.check_schedule(config, stage)
    models.validate_stage_config(config, stage)
  config_lib.check_nan_policy(config)
  models.validate_batch_norm_config(config)
  config_lib.check_sampling(config)
  input_pipeline.validate_outlier_config(config)
  fid.validate_expost_gmm_config(config)
  config_lib.check_steps_per_call(config)
  fid.validate_fid_config(config)
  models.validate_stage1_model_config(config)
  models.validate_image_shape_config(config, input_pipeline.image_shape(config.dataset))
  config_lib.check_batch_sizes(config, num_devices=num_devices, num_processes=num_processes)
