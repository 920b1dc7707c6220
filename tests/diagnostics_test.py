"""The paper's latent diagnostics (tsvae.metrics.diagnostics): active dimensions, MMD,
singular values, the latent sweep and their plots."""

import numpy as np
import pytest

from tsvae.metrics import diagnostics


def test_active_dims_and_singular_values():
  rng = np.random.default_rng(0)
  sigma = np.concatenate([np.full((500, 3), 0.01), np.full((500, 5), 1.0)], axis=1)
  sigma *= rng.uniform(0.9, 1.1, sigma.shape)
  act = diagnostics.active_dims(sigma, 0.05)
  assert act['count'] == 3 and list(act['active']) == [0, 1, 2]
  sv = diagnostics.singular_values(rng.standard_normal((20_000, 8)))
  np.testing.assert_allclose(sv, 1.0, atol=0.05)
  assert np.all(np.diff(sv) <= 0)


def test_mmd_matches_brute_force_and_separates_distributions():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(60, 4)), rng.normal(size=(50, 4)) + 0.3

  def k(a, b, h2):
    return np.exp(-((a[:, None] - b[None]) ** 2).sum(-1) / (2 * h2))

  h2 = 4.0  # The rule: h² = d.
  kxx, kyy, kxy = k(x, x, h2), k(y, y, h2), k(x, y, h2)
  brute = ((kxx.sum() - 60) / (60 * 59) + (kyy.sum() - 50) / (50 * 49) - 2 * kxy.mean())
  assert diagnostics.mmd2(x, y) == pytest.approx(brute, rel=1e-10)
  assert diagnostics.mmd2(x, y, bandwidth=2.0) == pytest.approx(brute, rel=1e-10)
  same = diagnostics.mmd_to_standard_normal(rng.standard_normal((2000, 8)), seed=3)
  far = diagnostics.mmd_to_standard_normal(rng.standard_normal((2000, 8)) * 0.1, seed=3)
  assert abs(same) < 0.005 and far > 0.1


def test_latent_sweep_finds_the_used_dims(tmp_path):
  weights = np.zeros((6, 10))
  weights[0, :5] = 1.0
  weights[2, 5:] = 2.0

  def decode(z):
    return np.tanh(z @ weights)

  bases = np.random.default_rng(0).normal(size=(4, 6))
  var, images = diagnostics.latent_sweep(decode, bases, return_images=True)
  assert images.shape == (6, 9, 10)
  assert var[0] > 0 and var[2] > var[0]
  np.testing.assert_allclose(var[[1, 3, 4, 5]], 0.0, atol=1e-12)
  diagnostics.plot_latent_sweep(str(tmp_path / 'sweep.png'), var, [0, 2])
  diagnostics.plot_sigma2(str(tmp_path / 'sigma.png'), np.random.rand(50, 6), 0.05)
  diagnostics.plot_singular_values(str(tmp_path / 'sv.png'), np.ones(6), np.ones(6), np.ones(6),
                                   0.1, 0.01)
  for name in ('sweep.png', 'sigma.png', 'sv.png'):
    assert (tmp_path / name).read_bytes()[:4] == b'\x89PNG'
