"""Issue #13: the options that bring tsvae to the authors' code, and the stage-2 noise scale.

- stage1.bn_zero_debias: default on (the reference); a workdir that predates it stays off.
- sampling.stage2_noise_scale: multiplies γ_z·ε in stage-2 samples; recorded in metrics.json;
  `tsvae.sample --stage2_noise_scales` writes one grid per scale side by side.

- CIFAR-10: the download route gives the same bytes as the offline JPEG q75 zip.
- configs/celeba_wae.py: the authors' crop.

The BatchNorm arithmetic itself is tested in layers_test.py. Runs here use a tiny stage-1 net
with one BatchNorm layer (seconds).
"""

import io
import json
import os
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from configs import default
from testdata import eval_overrides, tiny_config, TinyDecoder
from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import models
from tsvae import generation
from tsvae import experiment as experiment_lib
from tsvae import pipeline
from tsvae import stages
from tsvae import validation
from tsvae.datasets import local_builders
from tsvae.datasets import online_builders
from tsvae.metrics import classifier
from tsvae.models import layers
from tsvae import cli


class TinyBNEncoder(nn.Module):
  """Images → dense → the project's BatchNorm → (μ, σ, log σ)."""
  latent_dim: int
  bn_zero_debias: bool = False

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Dense(16)(x.reshape((x.shape[0], -1)))
    h = layers.batch_norm(train, name='bn', zero_debias=self.bn_zero_debias)(h)
    log_sigma = nn.Dense(self.latent_dim)(h)
    return nn.Dense(self.latent_dim)(h), jnp.exp(log_sigma), log_sigma


def tiny_bn_stage1_model(arch, image_shape, latent_dim, gamma=None, model='vae',
                         model_kwargs=None, bn_zero_debias=False, **arch_kwargs):
  """`models.make_stage1_model` with a tiny net that has one BatchNorm layer."""
  del arch, arch_kwargs
  return models.build_stage1_model(model, TinyBNEncoder(latent_dim, bn_zero_debias),
                                   TinyDecoder(tuple(image_shape)), gamma, model_kwargs)


def _run(workdir, **overrides):
  config = tiny_config(batch_size=4, stage1__max_steps=3, stage2__max_steps=3,
                       sampling__num_grid_images=4, **overrides)
  with tfds.testing.mock_data(num_examples=8):
    return config, pipeline.run(config, workdir)


def _strip_key(workdir, key):
  """Makes `workdir` look like one written before `key` existed."""
  path = os.path.join(workdir, config_lib.CONFIG_FILENAME)
  recorded = json.load(open(path))
  del recorded[key]
  with open(path, 'w') as f:
    json.dump(recorded, f)


# ------------------------------------------------------------------------- bn_zero_debias


def test_bn_zero_debias_is_the_default_and_an_experiment_key():
  config = default.get_config()
  assert config.stage1.bn_zero_debias is True
  assert config_lib.experiment_keys(config)['stage1.bn_zero_debias'] is True
  assert config_lib.IMPLICIT_DEFAULTS['stage1.bn_zero_debias'] is False
  # Off is the implicit value: left out, as in a workdir that predates the key.
  assert 'stage1.bn_zero_debias' not in config_lib.experiment_keys(
      tiny_config(stage1__bn_zero_debias=False))


def test_old_workdir_restores_and_evaluates_with_plain_batch_norm_averages(tmp_path,
                                                                           monkeypatch):
  monkeypatch.setattr(models, 'make_stage1_model', tiny_bn_stage1_model)
  workdir = str(tmp_path / 'old')
  _, result = _run(workdir, stage1__bn_zero_debias=False, stage2__enabled=False)
  assert 'local_step' not in result['state1'].batch_stats['encoder']['bn']
  _strip_key(workdir, 'stage1.bn_zero_debias')

  # The current defaults (True) do not replace what the workdir ran with.
  current = tiny_config(batch_size=4, stage1__max_steps=3, sampling__num_grid_images=4,
                        stage2__enabled=False)
  assert current.stage1.bn_zero_debias is True
  resolved = cli.config_from_workdir(workdir, current)
  assert resolved.stage1.bn_zero_debias is False
  with tfds.testing.mock_data(num_examples=8):
    state1 = stages.restore_final(experiment_lib.setup(resolved, workdir), 'stage1')
  np.testing.assert_array_equal(state1.batch_stats['encoder']['bn']['mean'],
                                result['state1'].batch_stats['encoder']['bn']['mean'])
  # Resuming it with debiasing on would mix two experiments: refused, saying why.
  with pytest.raises(config_lib.ConfigError,
                     match=r'bn_zero_debias: workdir has False \(not recorded'):
    config_lib.check_workdir(current, workdir)


def test_debiased_run_keeps_a_step_counter_per_batch_norm(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'make_stage1_model', tiny_bn_stage1_model)
  _, result = _run(str(tmp_path / 'new'), stage2__enabled=False)
  stats = result['state1'].batch_stats['encoder']['bn']
  steps = int(result['state1'].step)
  assert steps >= 2 and float(stats['local_step']) == steps  # One update per training step.
  # A few batches with debiased weights ~1/steps each: the average is not pulled to 0 / 1.
  assert float(jnp.min(stats['var'])) > 0 and float(jnp.max(jnp.abs(stats['mean']))) > 0.01


# ------------------------------------------------------------------- stage2_noise_scale


def test_noise_scale_validation():
  assert default.get_config().sampling.stage2_noise_scale == 1.0
  for bad in (-0.5, float('nan'), float('inf')):
    with pytest.raises(config_lib.ConfigError, match='stage2_noise_scale'):
      config_lib.validate(tiny_config(sampling__stage2_noise_scale=bad), num_devices=1)
  assert config_lib._is_run_control('sampling.stage2_noise_scale')  # pylint: disable=protected-access
  for bad in (['-1'], ['x'], ['nan']):
    with pytest.raises(config_lib.ConfigError, match='--stage2_noise_scales'):
      generation.parse_noise_scales(bad)
  assert generation.parse_noise_scales(['1', '0.5', '0']) == [1.0, 0.5, 0.0]


class _Identity(nn.Module):
  latent_dim: int

  @nn.compact
  def __call__(self, z, train=False):
    return z


def test_noise_scale_multiplies_gamma_z_noise():
  """With an identity stage-1 decoder the sample is z = ẑ(u) + s·γ_z·ε itself."""
  latent = 6
  model2 = models.make_stage2_model(latent, depth=1, width=8)
  v2 = model2.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                   jnp.zeros((2, latent)), train=False)
  v2 = {**v2, 'params': {**v2['params'], 'loggamma_z': jnp.log(jnp.float32(0.5))}}
  model1 = models.VAE(encoder=TinyBNEncoder(latent), decoder=_Identity(latent),
                      gamma_name='loggamma_x')
  v1 = {'params': {'loggamma_x': jnp.zeros(())}}
  rng = jax.random.key(3)
  z = {s: generation.generate_stage2(model1, v1, model2, v2, rng, 2000, batch_size=1000,
                                   noise_scale=s) for s in (0.0, 1.0, 2.0)}
  noise = z[1.0] - z[0.0]  # Same u and ε at every scale.
  np.testing.assert_allclose(z[2.0] - z[0.0], 2 * noise, rtol=1e-4, atol=1e-5)
  assert noise.std() == pytest.approx(0.5, rel=0.05)  # γ_z = 0.5.
  np.testing.assert_allclose(noise.mean(0), 0.0, atol=0.1)


def test_noise_scale_in_metrics_and_side_by_side_grid(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'make_stage1_model', tiny_bn_stage1_model)
  workdir = str(tmp_path / 'run')
  config, result = _run(workdir, sampling__stage2_noise_scale=0.0,
                        **eval_overrides(str(tmp_path / 'cache'), num_samples=8))
  metrics = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert metrics['stage2_noise_scale'] == 0.0 and metrics['bn_zero_debias'] is True
  assert 'stage2_noise_scale' in metrics['metric_labels']
  setup = experiment_lib.setup(config, workdir)
  path = generation.write_noise_scales(setup, result['state1'], result['state2'],
                                   [1.0, 0.0, 0.0])
  grid = np.asarray(Image.open(path))
  single = np.asarray(Image.open(result['samples']['stage2_samples']))
  width = single.shape[1]
  assert grid.shape[0] == single.shape[0] and grid.shape[1] == 3 * width + 2 * 8
  panels = [grid[:, i * (width + 8):i * (width + 8) + width] for i in range(3)]
  np.testing.assert_array_equal(panels[1], panels[2])  # Same u at the same scale.
  assert not np.array_equal(panels[0], panels[1])  # γ_z·ε shows at scale 1.


# ------------------------------------------------------------------ CIFAR-10, both routes

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data', 'cifar10_raw_tiny.png')
FIXTURE_LABELS = {'train': (0, 3, 6, 9), 'test': (1, 8)}  # One image each, in fixture order.


def _fixture_images():
  """{split: [(label, raw uint8 32x32x3)]} from tests/data/cifar10_raw_tiny.png (synthetic)."""
  strip = np.asarray(Image.open(FIXTURE).convert('RGB'))
  raw = [strip[:, 32 * i:32 * (i + 1)] for i in range(strip.shape[1] // 32)]
  train, test = raw[:4], raw[4:]
  return {'train': list(zip(FIXTURE_LABELS['train'], train)),
          'test': list(zip(FIXTURE_LABELS['test'], test))}


def _write_stock_download(directory, images):
  """What tfds' `cifar10` download extracts to: cifar-10-batches-bin/ with label byte + CHW
  planes per record (all train images in data_batch_1.bin; the other four batches empty)."""
  root = os.path.join(directory, 'cifar-10-batches-bin')
  os.makedirs(root)
  record = lambda label, img: bytes([label]) + np.transpose(img, (2, 0, 1)).tobytes()
  files = {'data_batch_1.bin': images['train'], 'test_batch.bin': images['test'],
           **{f'data_batch_{i}.bin': [] for i in range(2, 6)}}
  for name, items in files.items():
    with open(os.path.join(root, name), 'wb') as f:
      f.write(b''.join(record(label, img) for label, img in items))
  with open(os.path.join(root, 'batches.meta.txt'), 'w') as f:
    f.write('\n'.join(local_builders.CIFAR10_CLASSES) + '\n')


def _write_offline_zip(directory, images):
  """The offline zip's layout: each raw image saved by PIL as JPEG at its default quality."""
  os.makedirs(directory)
  with zipfile.ZipFile(os.path.join(directory, local_builders.CIFAR10_ZIP), 'w') as z:
    for split, items in images.items():
      for i, (label, img) in enumerate(items):
        buf = io.BytesIO()
        Image.fromarray(img).save(buf, format='JPEG')  # PIL's default quality, 75.
        z.writestr(f'{split}/{local_builders.CIFAR10_CLASSES[label]}/{i:04d}.jpg',
                   buf.getvalue())


def _by_label(builder, split):
  """{label: uint8 image} as the model and the proxy classifier read the split."""
  images, labels = classifier.load_labeled(builder, split, 'cifar10')
  batches = input_pipeline.make_eval_dataset(builder, split, 'cifar10', batch_size=16,
                                             as_uint8=True)
  stream = np.concatenate([b['image'] for b in input_pipeline.as_numpy(batches)])
  np.testing.assert_array_equal(stream, images)  # Both readers, same bytes.
  return dict(zip(labels.tolist(), images))


def test_cifar10_download_route_is_byte_identical_to_offline_jpeg_zip(tmp_path, monkeypatch):
  images = _fixture_images()
  download = str(tmp_path / 'download')
  _write_stock_download(download, images)
  # The stock builder "downloads" the fixture; everything after that is tfds' own code.
  monkeypatch.setattr(tfds.download.DownloadManager, 'download_and_extract',
                      lambda self, url: download)
  online = input_pipeline.get_builder('cifar10', data_dir=str(tmp_path / 'online'))
  assert online.name == online_builders.TsvaeCifar10JpegQ75.name
  _write_offline_zip(str(tmp_path / 'manual'), images)
  offline = input_pipeline.get_builder('cifar10', data_dir=str(tmp_path / 'offline'),
                                       manual_dir=str(tmp_path / 'manual'))
  for split, items in images.items():
    online_images, offline_images = _by_label(online, split), _by_label(offline, split)
    assert sorted(online_images) == sorted(offline_images) == sorted(FIXTURE_LABELS[split])
    for label, raw in items:
      assert online_images[label].tobytes() == offline_images[label].tobytes(), (split, label)
      np.testing.assert_array_equal(online_images[label], online_builders.jpeg_round_trip(raw))
      assert np.abs(online_images[label].astype(int) - raw).max() > 10  # JPEG did change it.


# ------------------------------------------------------------------ CelebA with the WAE net


def test_celeba_wae_config_uses_the_authors_crop_and_keeps_the_wae_crop_as_an_option():
  from configs import celeba_wae  # pylint: disable=g-import-not-at-top
  config = celeba_wae.get_config()
  assert (config.dataset, config.arch) == ('celeba', 'wae')
  assert input_pipeline.CELEBA_CROPS[config.dataset] == (45, 173, 25, 153)  # 128 px.
  assert (config.stage1.num_epochs, config.stage1.lr_decay_epochs) == (70, 30)
  validation.validate_config(config, num_devices=1)
  config.dataset = 'celeba140'  # The documented alternative: the WAE paper's 140-px crop.
  validation.validate_config(config, num_devices=1)
  assert input_pipeline.CELEBA_CROPS['celeba140'] == (39, 179, 19, 159)
