"""The objectives against values computed by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import losses


def test_kl_by_hand():
  # Example 1: μ=(1, 0), σ=(1, 1): terms (1+1-0-1) + (0+1-0-1) = 1. Example 2: μ=(0, 0),
  # σ=(e, 1), log σ=(1, 0): (0 + e² - 2 - 1) + 0 = e² - 3. Sum / 2 / B(=2).
  mu = jnp.array([[1.0, 0.0], [0.0, 0.0]])
  log_sigma = jnp.array([[0.0, 0.0], [1.0, 0.0]])
  sigma = jnp.exp(log_sigma)
  expected = (1.0 + (math.e**2 - 3.0)) / 2.0 / 2.0
  np.testing.assert_allclose(losses.gaussian_kl(mu, sigma, log_sigma), expected, rtol=1e-6)


def test_kl_is_zero_at_the_prior():
  mu = jnp.zeros((3, 5))
  np.testing.assert_allclose(losses.gaussian_kl(mu, jnp.ones_like(mu), mu), 0.0, atol=1e-7)


def test_gaussian_nll_by_hand_gamma_is_a_std():
  # One example, two pixels, γ = 0.5 (log γ = log 0.5).
  x = jnp.array([[0.5, 1.0]])
  x_hat = jnp.array([[0.25, 1.0]])
  loggamma = jnp.log(0.5)
  # ((0.25 / 0.5)² / 2 + log 0.5 + ½ log 2π) + (0 + log 0.5 + ½ log 2π)
  expected = 0.125 + 2 * math.log(0.5) + 2 * 0.5 * math.log(2 * math.pi)
  np.testing.assert_allclose(losses.gaussian_nll(x, x_hat, loggamma), expected, rtol=1e-6)


def test_gaussian_nll_averages_over_batch_sums_over_pixels():
  x = jnp.zeros((4, 3, 3, 1))
  x_hat = jnp.full((4, 3, 3, 1), 0.1)
  per_pixel = 0.1**2 / 2 + 0.5 * math.log(2 * math.pi)  # γ = 1
  np.testing.assert_allclose(losses.gaussian_nll(x, x_hat, jnp.array(0.0)), 9 * per_pixel,
                             rtol=1e-6)


def test_cross_entropy_by_hand_and_clip():
  x = jnp.array([[1.0, 0.0, 0.5]])
  x_hat = jnp.array([[0.8, 0.0, 0.5]])  # x = 0 at x̂ = 0 costs log(1 - 0) = 0.
  expected = -(math.log(0.8) + math.log(1.0) + 0.5 * math.log(0.5) + 0.5 * math.log(0.5))
  np.testing.assert_allclose(losses.cross_entropy_nll(x, x_hat), expected, rtol=1e-6)
  # x̂ = 0 where x = 1 would be log 0: the reference clips at 1e-8.
  clipped = losses.cross_entropy_nll(jnp.array([[1.0]]), jnp.array([[0.0]]))
  np.testing.assert_allclose(clipped, -math.log(1e-8), rtol=1e-6)


def test_optimal_gamma_minimises_gaussian_nll():
  # d/dlogγ of the Gaussian NLL is zero at γ² = MSE per pixel: a property of γ being a std.
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.uniform(size=(8, 10)))
  x_hat = jnp.asarray(rng.uniform(size=(8, 10)))
  mse = float(jnp.mean((x - x_hat)**2))
  grad = jax.grad(lambda lg: losses.gaussian_nll(x, x_hat, lg))(jnp.asarray(0.5 * math.log(mse)))
  assert abs(float(grad)) < 1e-4


def test_negative_elbo_combines_terms_and_beta():
  out = dict(mu=jnp.ones((2, 3)), sigma=jnp.ones((2, 3)), log_sigma=jnp.zeros((2, 3)),
             x_hat=jnp.full((2, 4), 0.5), loggamma=jnp.array(0.0))
  x = jnp.zeros((2, 4))
  loss, metrics = losses.negative_elbo(x, out, beta=2.0)
  np.testing.assert_allclose(metrics['kl'], 1.5, rtol=1e-6)  # 3 dims · 1 / 2 per example
  np.testing.assert_allclose(loss, 2.0 * metrics['kl'] + metrics['gen'], rtol=1e-6)
  np.testing.assert_allclose(metrics['mse'], 0.25, rtol=1e-6)
  loss_ce, _ = losses.negative_elbo(x, out, reconstruction_loss='cross_entropy')
  np.testing.assert_allclose(loss_ce, 1.5 + 2 * 4 * math.log(2.0) / 2, rtol=1e-6)
  with pytest.raises(ValueError, match='reconstruction_loss'):
    losses.negative_elbo(x, out, reconstruction_loss='l1')
