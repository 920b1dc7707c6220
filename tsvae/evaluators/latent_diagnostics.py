"""The paper's diagnostics as numbers and figures: active dims, the codes' match to N(0, I)
(MMD², singular values) at both stages, the decoder's latent sweep, the final γ's, and for a
two-dimensional latent space the latent map."""

from typing import Any, Iterator, Tuple

import jax
import numpy as np

from tsvae import generation
from tsvae import images as images_lib
from tsvae import latents
from tsvae.evaluators import common
from tsvae.metrics import classifier as classifier_lib
from tsvae.metrics import diagnostics


def _deterministic(inputs: common.EvalInputs) -> bool:
  """WAE-MMD and RAE encoders report σ_z = 0: no posterior variance to call a dim active by."""
  return bool(np.all(inputs.sigma == 0))


def _active(inputs: common.EvalInputs):
  return diagnostics.active_dims(inputs.sigma, float(inputs.config.eval.active_dim_threshold))


def active_dims(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """Dims whose mean σ_z² over the training set is below eval.active_dim_threshold."""
  deterministic = _deterministic(inputs)
  act = _active(inputs)
  yield 'stage1_encoder', ('deterministic (sigma_z = 0)' if deterministic else
                           'stochastic (sigma_z > 0)')
  reason = None
  if deterministic:
    reason = ('the stage-1 encoder is deterministic (sigma_z = 0 for every code): active dims '
              'are defined by the posterior variance, which it does not have')
    yield 'active_dims', common.Unavailable(reason)
    yield 'active_dim_indices', common.Unavailable(reason)
  else:
    yield 'active_dims', act['count']
    yield 'active_dim_indices', [int(i) for i in act['active']]
    yield 'sigma2_hist', common.Plot('sigma2_hist.png', lambda path: diagnostics.plot_sigma2(
        path, inputs.sigma, act['threshold']))
  yield 'active_dims_unavailable_reason', reason
  yield 'active_dim_threshold', act['threshold']
  yield 'mean_sigma2_per_dim', [float(v) for v in act['mean_sigma2']]


def _codes(inputs: common.EvalInputs) -> np.ndarray:
  """z = μ_z + σ_z·ε of a seeded subset of the training codes (μ_z itself when σ_z = 0)."""
  mu, sigma, seed = inputs.mu, inputs.sigma, inputs.seed
  num = min(inputs.num_samples, len(mu))
  pick = np.sort(np.random.default_rng(seed).choice(len(mu), num, replace=False))
  eps = np.asarray(jax.random.normal(inputs.rng_codes, (num, mu.shape[1])))
  return (mu[pick] + sigma[pick] * eps).astype(np.float32)


def latent_match(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """MMD² to N(0, I) and singular values of z, and of u ~ q(u|z) through stage 2."""
  z, seed = _codes(inputs), inputs.seed
  bandwidth = float(inputs.config.eval.get('mmd_bandwidth', 0.0))
  mmd_z = diagnostics.mmd_to_standard_normal(z, seed=seed, bandwidth=bandwidth)
  sv_z, sv_u, mmd_u = diagnostics.singular_values(z), None, None
  yield 'mmd_z', mmd_z
  if inputs.variables2 is not None:
    mu_u, sigma_u = latents.encode(inputs.model2, inputs.variables2, z, inputs.batch_size)
    u = (mu_u + sigma_u * np.asarray(jax.random.normal(inputs.rng_u, mu_u.shape))).astype(
        np.float32)
    mmd_u = diagnostics.mmd_to_standard_normal(u, seed=seed + 1, bandwidth=bandwidth)
    sv_u = diagnostics.singular_values(u)
    yield 'mmd_u', mmd_u
    yield 'singular_values_u', [float(v) for v in sv_u]
    yield 'loggamma_z', generation.loggamma(inputs.model2, inputs.variables2)
  else:
    for key in ('mmd_u', 'singular_values_u', 'loggamma_z'):
      yield key, common.Unavailable(inputs.stage2_reason)
  yield 'mmd_num_codes', len(z)
  yield 'mmd_bandwidth_rule', (diagnostics.BANDWIDTH_RULE if bandwidth <= 0 else
                               f'Gaussian kernel with fixed h = {bandwidth:g}; unbiased '
                               'MMD^2 estimate vs N(0, I) draws')
  yield 'singular_values_z', [float(v) for v in sv_z]
  sv_ref = diagnostics.singular_values(np.random.default_rng(seed + 2).standard_normal(z.shape))
  yield 'singular_values', common.Plot('singular_values.png', lambda path: (
      diagnostics.plot_singular_values(path, sv_z, sv_u, sv_ref, mmd_z, mmd_u)))


def latent_sweep(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """Decoded variance along each latent dim from 16 training codes; the final log γ_x."""
  mu = inputs.mu
  num_bases = min(16, len(mu))
  bases = mu[np.random.default_rng(inputs.seed + 3).choice(len(mu), num_bases, replace=False)]
  values = np.linspace(-3.0, 3.0, 9)
  # One compiled decoder shape: B·V codes per call.
  sweep, sweep_images = diagnostics.latent_sweep(
      lambda z: np.asarray(generation.decode(inputs.model1, inputs.variables1, z)), bases,
      values, return_images=True)
  yield 'latent_sweep_variance', [float(v) for v in sweep]
  yield 'latent_sweep_values', [float(v) for v in values]
  yield 'latent_sweep_num_bases', num_bases
  yield 'loggamma_x', generation.loggamma(inputs.model1, inputs.variables1)
  active = (np.zeros((0,), np.int64) if _deterministic(inputs) else _active(inputs)['active'])
  yield 'latent_sweep', common.Plot('latent_sweep.png', lambda path: (
      diagnostics.plot_latent_sweep(path, sweep, active)))
  rows = sweep_images[np.argsort(-sweep)[:16]]  # Rows: dims by decreasing decoded variance.
  yield 'latent_sweep_images', common.Plot('latent_sweep_images.png', lambda path: (
      images_lib.save_grid(path, rows.reshape((-1,) + rows.shape[2:]), len(values))))


def gmm_samples(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """samples_gmm.png: ex-post GMM samples as decoder means (not stretched), like samples/."""
  grid = inputs.gmm_grid
  if grid is not None:
    yield 'samples_gmm', common.Plot('samples_gmm.png', lambda path: images_lib.save_grid(
        path, grid, int(np.ceil(np.sqrt(len(grid))))))


LATENT_MAP_EXTENT = 3.0
LATENT_MAP_SIDE = 15


def latent_map(inputs: common.EvalInputs) -> Iterator[Tuple[str, Any]]:
  """κ = 2 only: latent_map.png, μ_z of the test images coloured by label beside the decoder's
  images over a grid of z (`diagnostics.plot_latent_map`)."""
  if inputs.mu.shape[1] != 2:
    return
  try:
    images, labels = classifier_lib.load_labeled(inputs.builder, 'test', inputs.config.dataset)
  except classifier_lib.ClassifierUnavailable:  # No labels (CelebA): one colour.
    images, labels = inputs.test_uint8, None
  mu, _ = latents.encode(inputs.model1, inputs.variables1, images.astype(np.float32) / 255.0,
                         inputs.batch_size)
  grid = np.asarray(generation.decode(
      inputs.model1, inputs.variables1,
      diagnostics.latent_grid_codes(LATENT_MAP_SIDE, LATENT_MAP_EXTENT)))
  yield 'latent_map', common.Plot('latent_map.png', lambda path: diagnostics.plot_latent_map(
      path, mu, labels, grid, LATENT_MAP_EXTENT))
