"""The stage-1 model families of issue #4 (VAE + IAF, WAE-MMD, RAE) end to end: a
stage2.enabled=False run.

Their objectives are tested in losses_test.py, their models in models_test.py, their train steps
in train_test.py, their config checks in validation_test.py.
"""

import json
import os

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

import testdata
from testdata import tiny_config
from tsvae import checkpointing
from tsvae import models
from tsvae import experiment as experiment_lib
from tsvae import pipeline
from tsvae import latents


# ------------------------------------------------------------------------- the run


def test_single_stage_run_writes_stage1_grids_only(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'make_stage1_model', testdata.tiny_stage1_model)
  workdir = str(tmp_path / 'run')
  config = tiny_config(stage1__model='rae', stage2__enabled=False, batch_size=4,
                       stage1__max_steps=2, sampling__num_grid_images=4, log_every_steps=1)
  with tfds.testing.mock_data(num_examples=8):
    result = pipeline.run(config, workdir)
  assert isinstance(experiment_lib.setup(config, workdir).model1, models.DeterministicAE)
  assert result['state2'] is None
  assert set(result['samples']) == {'stage1_samples', 'reconstructions'}
  for name in ('stage1_samples.png', 'reconstructions.png'):
    grid = np.asarray(Image.open(os.path.join(workdir, 'samples', name)))
    assert grid.shape[0] >= 2 * 28 and grid.std() > 0
  assert not os.path.exists(os.path.join(workdir, 'samples', 'stage2_samples.png'))
  assert not os.path.exists(os.path.join(workdir, latents.LATENTS_DIR))
  assert not os.path.exists(os.path.join(workdir, 'stage2'))
  assert checkpointing.is_complete(workdir, 'stage1')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert {r['stage'] for r in records} == {'stage1'}
  assert [r['step'] for r in records] == [1, 2]
  for key in ('loss', 'kl', 'gen', 'z_penalty', 'decoder_l2', 'loggamma', 'mse'):
    assert np.isfinite(records[-1][key]), key
  # stage2.enabled is run-control: the same workdir may go on to train stage 2.
  experiment_lib.setup(tiny_config(stage1__model='rae', batch_size=4, stage1__max_steps=2,
                                   sampling__num_grid_images=4), workdir)
