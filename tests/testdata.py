"""Synthetic data sets and tiny configs shared by the tests."""

import gzip
import os

import numpy as np

from configs import default
from tsvae import config_lib
from tsvae.datasets.local_builders import IDX_FILES

N_TRAIN, N_TEST = 40, 12


def write_idx(path, array, magic):
  """Writes `array` as a gzipped IDX file with the given magic number."""
  header = magic.to_bytes(4, 'big') + b''.join(d.to_bytes(4, 'big') for d in array.shape)
  with gzip.open(path, 'wb') as f:
    f.write(header + array.astype(np.uint8).tobytes())


def idx_images(n, offset):
  """Random images whose pixel (0, 0) is a unique id (offset + index)."""
  images = np.random.default_rng(offset).integers(0, 256, (n, 28, 28), dtype=np.uint8)
  images[:, 0, 0] = offset + np.arange(n)
  return images


def write_mnist_dir(directory, n_train=N_TRAIN, n_test=N_TEST):
  """An MNIST-layout manual dir (the four IDX .gz files) of random images."""
  os.makedirs(directory, exist_ok=True)
  data = {}
  for split, n, offset in (('train', n_train, 0), ('test', n_test, 100)):
    images_name, labels_name = IDX_FILES[split]
    images, labels = idx_images(n, offset), (np.arange(n) * 7 + offset) % 10
    write_idx(os.path.join(directory, images_name), images, 2051)
    write_idx(os.path.join(directory, labels_name), labels, 2049)
    data[split] = (images, labels)
  return data


TINY_OVERRIDES = {
    'latent_dim': 8,
    'batch_size': 8,
    'stage1.num_epochs': 1,
    'stage1.max_steps': 6,
    'stage2.num_epochs': 2,
    'stage2.depth': 1,
    'stage2.width': 32,
    'sampling.num_grid_images': 16,
    'log_every_steps': 2,
    'checkpoint_every_steps': 3,
    'eval.enabled': False,  # tests/evaluators_test.py runs the evaluation.
}


def tiny_config(**overrides):
  """configs/default.py shrunk to seconds; `overrides` use '__' for '.' (stage1__max_steps)."""
  config = default.get_config()
  items = dict(TINY_OVERRIDES)
  items.update({k.replace('__', '.'): v for k, v in overrides.items()})
  for key, value in items.items():
    config_lib.set_dotted(config, key, value)
  return config


def tiny_flags(**overrides):
  """The same tiny config as --config.* command-line overrides."""
  items = dict(TINY_OVERRIDES)
  items.update({k.replace('__', '.'): v for k, v in overrides.items()})
  return [f'--config.{k}={v}' for k, v in items.items()]


def eval_overrides(cache_dir, num_samples=32):
  """tiny_config overrides for a quick offline evaluation (no Inception download)."""
  return dict(eval__enabled=True, eval__num_samples=num_samples, eval__cache_dir=cache_dir,
              eval__allow_download=False, eval__classifier_epochs=1, eval__batch_size=64)


# ------------------------------------------------------------- a stand-in stage-1 network
# Compiling the real InfoGAN train step takes most of a minute on a loaded 2-core machine; tests
# whose subject is a whole run's bookkeeping (I/O, single-stage runs) patch
# `models.make_stage1_model` with `tiny_stage1_model`. The model family around the nets is still
# built by the real code; tests/main_test.py runs the real nets end to end.

import flax.linen as nn  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top,wrong-import-position


class TinyEncoder(nn.Module):
  """Images → (μ, σ, log σ), one dense layer each."""
  latent_dim: int

  @nn.compact
  def __call__(self, x, train=False):
    del train
    h = x.reshape((x.shape[0], -1))
    log_sigma = nn.Dense(self.latent_dim)(h)
    return nn.Dense(self.latent_dim)(h), jnp.exp(log_sigma), log_sigma


class TinyDecoder(nn.Module):
  """z → sigmoid(one dense layer), reshaped to the image shape."""
  shape: tuple

  @nn.compact
  def __call__(self, z, train=False):
    del train
    return nn.sigmoid(nn.Dense(int(np.prod(self.shape)))(z)).reshape((-1,) + tuple(self.shape))


def tiny_stage1_model(arch, image_shape, latent_dim, gamma=None, model='vae', model_kwargs=None,
                      **arch_kwargs):
  """`models.make_stage1_model` with the tiny nets (same signature)."""
  from tsvae import models  # pylint: disable=g-import-not-at-top
  del arch, arch_kwargs
  return models.build_stage1_model(model, TinyEncoder(latent_dim),
                                   TinyDecoder(tuple(image_shape)), gamma, model_kwargs)


# ------------------------------------------------------------ dense stage-1 baseline models

from tsvae.models import baselines  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae.models.stage2 import Stage2Decoder, Stage2Encoder  # pylint: disable=g-import-not-at-top,wrong-import-position

BASELINE_DIM = 4  # Data and code dimension of the dense baseline test models.
BASELINE_X = np.random.default_rng(0).normal(size=(8, BASELINE_DIM)).astype(np.float32)


def tiny_flow_vae(steps=2, hidden=8):
  """A dense VAE + IAF on BASELINE_DIM-d data."""
  return baselines.FlowVAE(
      encoder=Stage2Encoder(BASELINE_DIM, 1, 8), decoder=Stage2Decoder(BASELINE_DIM, 1, 8),
      gamma_name='loggamma_x', flow_steps=steps, flow_hidden=hidden)


def tiny_deterministic_ae():
  """A dense deterministic autoencoder (the WAE-MMD / RAE family) on BASELINE_DIM-d data."""
  return baselines.DeterministicAE(
      encoder=baselines.DeterministicEncoder(Stage2Encoder(BASELINE_DIM, 1, 8)),
      decoder=Stage2Decoder(BASELINE_DIM, 1, 8), gamma_name='loggamma_x',
      gamma_mode='running_mse')
