"""The setup of a run: one immutable record of what every later phase reads.

`setup(config, workdir)` validates the config, the data location and the workdir (each failing
with one clear error before any compute or write), then records the mesh, the two models, the
experiment fingerprint and the root PRNG key. The data set builder is made on first use only, so
that a phase that needs no data (restoring a finished stage to sample from it) never prepares it.

Every PRNG stream of a run is named in `Stream`, here and nowhere else.
"""

import dataclasses
import enum
import functools
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

import jax
from jax.experimental import multihost_utils

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import models
from tsvae import train
from tsvae import validation


class Stream(enum.IntEnum):
  """The independent PRNG streams of a run, each folded into PRNGKey(config.seed)."""
  STAGE1 = 1  # Stage-1 init, and the noise of stage-1 step t (fold_in(·, t)).
  STAGE2 = 2  # Stage-2 init and steps.
  SAMPLE_GRIDS = 3  # samples/*.png written at the end of a run.
  EVALUATION = 4  # The evaluation's sample sets and codes (then folded with eval.seed).
  NOISE_SCALES = 5  # tsvae.sample --stage2_noise_scales.
  MEAN_VS_ANCESTRAL = 6  # tsvae.sample's mean-vs-ancestral grid (was 4: the evaluation's).
  STUDY_REFERENCES = 19  # benchmarks/stage2_study.py: stage-1, GMM and reconstruction sets.
  STUDY_STAGE2 = 20  # benchmarks/stage2_study.py: stage-2 sets and codes at each milestone.
  BETA_GAMMA_SWEEP = 21  # benchmarks/beta_gamma_sweep.py: prior and two-stage samples.


def barrier(name: str):
  """Waits for every process (no-op in a single-process run)."""
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)


def gamma_fields(stage_config) -> Dict[str, Any]:
  """The VAE's decoder-variance fields from a stage config."""
  return {k: stage_config[k] for k in ('gamma_mode', 'gamma_value', 'loggamma_floor',
                                       'running_mse_momentum', 'optimal_gamma_floor')}


def stage1_model_kwargs(config) -> Dict[str, Any]:
  """``make_stage1_model``'s model and model_kwargs for ``config.stage1.model``."""
  s1 = config.stage1
  kwargs = {'flow_steps': s1.flow.num_steps, 'flow_hidden': s1.flow.hidden} if (
      s1.model == 'vae_flow') else {}
  if s1.model == 'vae_beta':
    kwargs = {'beta_range': tuple(s1.beta_cond.beta_range), 'beta': s1.beta_cond.beta}
  return {'model': s1.model, 'model_kwargs': kwargs}


def make_models(config, image_shape: Tuple[int, ...]):
  """(stage-1 model, stage-2 model) of a validated config."""
  arch_kwargs = dict(config.resnet) if config.arch == 'resnet' else {}
  model1 = models.make_stage1_model(
      config.arch, image_shape, config.latent_dim, gamma=gamma_fields(config.stage1),
      bn_zero_debias=config.stage1.bn_zero_debias,
      compute_dtype=config.stage1.get('compute_dtype', 'float32'),
      **stage1_model_kwargs(config), **arch_kwargs)
  model2 = models.make_stage2_model(
      config.latent_dim, config.stage2.depth, config.stage2.width,
      gamma=gamma_fields(config.stage2),
      compute_dtype=config.stage2.get('compute_dtype', 'float32'))
  return model1, model2


def _prepared_builder(config) -> Callable[[], Any]:
  """() → the image dataset builder, prepared once (by process 0 first) on the first call."""
  @functools.cache
  def load():
    def prepare():
      return input_pipeline.get_builder(
          config.dataset, data_dir=config.data.data_dir or None,
          manual_dir=config.data.manual_dir or None)
    builder = prepare() if jax.process_index() == 0 else None
    barrier('data prepared')  # The other processes then find it prepared.
    return builder if builder is not None else prepare()
  return load


@dataclasses.dataclass(frozen=True)
class Setup:
  """A validated run: config, workdir, mesh, models, fingerprint and PRNG streams.

  `builder` prepares the data set on first use (see `_prepared_builder`).
  """
  config: Any
  workdir: str
  mesh: jax.sharding.Mesh
  model1: Any
  model2: Any
  image_shape: Tuple[int, ...]
  fingerprint: str
  root_rng: jax.Array
  load_builder: Callable[[], Any] = dataclasses.field(repr=False, compare=False)

  @property
  def builder(self):
    return self.load_builder()

  def rng(self, stream: Stream) -> jax.Array:
    return jax.random.fold_in(self.root_rng, int(stream))

  def steps_per_epoch(self, num_examples: int, batch_size: Optional[int] = None) -> int:
    """Full global batches per epoch (DataError when there is none)."""
    batch_size = batch_size or self.config.batch_size
    per_process = num_examples // jax.process_count()
    steps = per_process // (batch_size // jax.process_count())
    if steps == 0:
      raise input_pipeline.DataError(
          f'{num_examples} training examples give no full batch of {batch_size}.')
    return steps


def setup(config, workdir: str, devices: Optional[Sequence[jax.Device]] = None) -> Setup:
  """Validates everything that can fail on bad input (before any compute or write); the Setup."""
  mesh = train.make_mesh(devices)
  validation.validate_config(config, num_devices=mesh.size, num_processes=jax.process_count())
  if config.data.manual_dir:
    input_pipeline.validate_manual_dir(config.dataset, config.data.manual_dir)
  config_lib.check_workdir(config, workdir)
  image_shape = tuple(input_pipeline.image_shape(config.dataset))
  model1, model2 = make_models(config, image_shape)
  return Setup(config=config, workdir=workdir, mesh=mesh, model1=model1, model2=model2,
               image_shape=image_shape,
               fingerprint=checkpointing.fingerprint(config_lib.experiment_keys(config)),
               root_rng=jax.random.PRNGKey(config.seed), load_builder=_prepared_builder(config))
