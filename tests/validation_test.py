"""Config validation (issue #14): config_lib is the bottom layer and each part checks its keys."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys

import pytest

from testdata import tiny_config
from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import models
from tsvae import pipeline
from tsvae import train
from tsvae import validation
from tsvae.metrics import fid

_UPPER_LAYERS = ('tsvae.train', 'tsvae.input_pipeline', 'tsvae.models', 'tsvae.losses',
                 'tsvae.metrics')


def _imported_modules(path):
  """Every module a file imports ('from a import b' gives 'a.b' as well as 'a')."""
  names = set()
  for node in ast.walk(ast.parse(open(path, encoding='utf-8').read())):
    if isinstance(node, ast.Import):
      names.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      names.add(node.module)
      names.update(f'{node.module}.{alias.name}' for alias in node.names)
  return names


def _is_upper(name):
  return any(name == m or name.startswith(m + '.') for m in _UPPER_LAYERS)


def test_config_lib_imports_no_model_data_train_or_metric_code():
  imported = _imported_modules(config_lib.__file__)
  assert not sorted(filter(_is_upper, imported)), imported
  assert {m for m in imported if m.startswith('tsvae')} <= {'tsvae', 'tsvae.fileio'}
  # Nor does anything it imports, in a fresh interpreter.
  loaded = subprocess.run(
      [sys.executable, '-c', 'import sys, tsvae.config_lib; print(*sys.modules)'],
      check=True, capture_output=True, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__)))).stdout.split()
  assert not sorted(filter(_is_upper, loaded))


def test_nan_policies_live_in_config_lib_and_train_reexports_them():
  assert train.NAN_POLICIES is config_lib.NAN_POLICIES == ('error', 'skip')


@pytest.mark.parametrize('overrides, message', [
    (dict(dataset='mnsit'),
     "config.dataset='mnsit' is not one of ['mnist', 'fashion_mnist', 'cifar10', 'celeba', "
     "'celeba140']. Did you mean 'mnist'?"),
    (dict(arch='resnt'),
     "config.arch='resnt' is not one of ['infogan', 'wae', 'resnet']. Did you mean 'resnet'?"),
    (dict(nan_policy='skp'),
     "config.nan_policy='skp' is not one of ['error', 'skip']. Did you mean 'skip'?"),
    (dict(stage1__model='vea'),
     "config.stage1.model='vea' is not one of ['vae', 'vae_flow', 'wae_mmd', 'rae', 'vae_beta']. "
     "Did you mean 'vae'?"),
    (dict(arch='wae'),
     "config.dataset='mnist' gives 28x28x1 images: arch 'wae' supports square 64x64 images "
     "only, got 28x28x1; use arch='infogan' for 28x28 images"),
    (dict(stage1__model='rae', stage1__beta=2.0),
     "config.stage1.beta=2.0 has no effect with config.stage1.model='rae': a deterministic "
     'autoencoder has no KL and no decoder variance in its loss (γ is only reported, as ½ log '
     'of a running MSE). Leave these keys at their defaults.'),
    (dict(batch_size=6),
     'config.batch_size=6 is not divisible by the 4 devices the batch is split over; use a '
     'multiple of 4.'),
    # Several problems: the first in the order of the checks before they were split up.
    (dict(nan_policy='skp', stage1__model='vea', data__outlier_fraction=2.0),
     "config.nan_policy='skp' is not one of ['error', 'skip']. Did you mean 'skip'?"),
    (dict(arch='resnt', data__outlier_fraction=2.0),
     "config.arch='resnt' is not one of ['infogan', 'wae', 'resnet']. Did you mean 'resnet'?"),
])
def test_bad_config_gives_the_same_first_error(overrides, message):
  with pytest.raises(config_lib.ConfigError, match=f'^{re.escape(message)}$'):
    validation.validate_config(tiny_config(**overrides), num_devices=4)


def test_each_part_checks_its_own_keys():
  config = tiny_config()
  config_lib.validate(config, num_devices=1)
  input_pipeline.validate_config(config)
  models.validate_config(config, input_pipeline.image_shape(config.dataset))
  fid.validate_config(config)
  with pytest.raises(config_lib.ConfigError, match="config.dataset='mnsit'"):
    input_pipeline.validate_config(tiny_config(dataset='mnsit'))
  with pytest.raises(config_lib.ConfigError, match='outlier_seed'):
    input_pipeline.validate_config(tiny_config(data__outlier_seed=-1))
  with pytest.raises(config_lib.ConfigError, match="config.stage2.gamma_mode='lerned'"):
    models.validate_config(tiny_config(stage2__gamma_mode='lerned'), (28, 28, 1))
  with pytest.raises(config_lib.ConfigError, match="config.stage1.reconstruction_loss='l2'"):
    models.validate_config(tiny_config(stage1__reconstruction_loss='l2'), (28, 28, 1))
  with pytest.raises(config_lib.ConfigError, match='gives 28x28x1 images'):
    models.validate_config(tiny_config(arch='wae'), (28, 28, 1))
  with pytest.raises(config_lib.ConfigError, match="config.eval.fid_preprocess='pytorch'"):
    fid.validate_config(tiny_config(eval__fid_preprocess='pytorch'))
  with pytest.raises(config_lib.ConfigError, match='expost_gmm_components'):
    fid.validate_config(tiny_config(eval__expost_gmm_components=-1))
  # The generic part leaves the parts' keys alone and checks its own.
  config_lib.validate(tiny_config(dataset='mnsit', arch='resnt'), num_devices=1)
  with pytest.raises(config_lib.ConfigError, match='nan_policy'):
    config_lib.validate(tiny_config(nan_policy='skp'), num_devices=1)


@pytest.mark.parametrize('name', ['default', 'mnist', 'fashion_mnist', 'cifar10', 'celeba',
                                  'celeba_resnet', 'celeba_wae'])
def test_the_configs_validate(name):
  config = importlib.import_module(f'configs.{name}').get_config()
  validation.validate_config(config, num_devices=1)


# ------------------------------------------------------ the stage-1 baselines (issue #4)


@pytest.mark.parametrize('overrides, match', [
    (dict(stage1__model='vea'), "Did you mean 'vae'"),
    (dict(stage1__model='vae_flow'), 'stage2.enabled=False'),
    (dict(stage1__model='vae_flow', stage2__enabled=False, stage1__flow__num_steps=0),
     'flow.num_steps must be a positive integer'),
    (dict(stage1__flow__hidden=-3), 'flow.hidden must be a positive integer'),
    (dict(stage1__model='wae_mmd', stage1__wae__lambda_mmd=-1.0), 'lambda_mmd must be'),
    (dict(stage1__wae__recon_scale=0.0), 'recon_scale must be a positive'),
    (dict(stage1__model='rae', stage1__rae__z_weight=float('nan')), 'z_weight must be'),
    (dict(stage1__rae__decoder_l2=-1e-3), 'decoder_l2 must be'),
    (dict(stage1__model='rae', stage1__beta=2.0), 'stage1.beta=2.0 has no effect'),
    (dict(stage1__model='wae_mmd', stage1__gamma_mode='optimal'), 'gamma_mode'),
    (dict(stage1__model='wae_mmd', stage1__reconstruction_loss='cross_entropy'),
     'reconstruction_loss'),
])
def test_bad_baseline_configs_fail_before_anything_is_written(tmp_path, overrides, match):
  workdir = tmp_path / 'workdir'
  with pytest.raises(config_lib.ConfigError, match=match):
    pipeline.run(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_new_keys_at_their_defaults_keep_old_workdirs(tmp_path):
  config = tiny_config()
  keys = config_lib.experiment_keys(config)
  assert not any(k.startswith(('stage1.model', 'stage1.flow', 'stage1.wae', 'stage1.rae'))
                 or k == 'stage2.enabled' for k in keys)
  old = {k: v for k, v in config_lib.flatten(config).items()
         if not k.startswith(('stage1.model', 'stage1.flow.', 'stage1.wae.', 'stage1.rae.'))
         and k != 'stage2.enabled'}
  (tmp_path / 'config.json').write_text(json.dumps(old))
  config_lib.check_workdir(config, str(tmp_path))  # An old workdir resumes.
  with pytest.raises(config_lib.ConfigError, match='stage1.model'):
    config_lib.check_workdir(tiny_config(stage1__model='rae'), str(tmp_path))
  assert 'stage1.rae.z_weight' in config_lib.experiment_keys(
      tiny_config(stage1__rae__z_weight=1e-3))
