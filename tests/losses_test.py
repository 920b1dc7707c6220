"""The objectives against values computed by hand: the ELBO's terms (tsvae.losses) and the
stage-1 baselines' (IAF KL, WAE-MMD, RAE), and make_objective."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import losses
from tsvae import models


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


# ------------------------------------- objectives of the stage-1 baselines, by hand


def _imq_mmd_by_hand(q, p, prior_var=1.0):
  n, d = q.shape
  stat = 0.0
  for s in (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0):
    c = 2.0 * d * prior_var * s
    k = lambda a, b: c / (c + float(np.sum((a - b) ** 2)))
    qq = sum(k(q[i], q[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    pp = sum(k(p[i], p[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    qp = sum(k(q[i], p[j]) for i in range(n) for j in range(n)) / (n * n)
    stat += qq + pp - 2.0 * qp
  return stat


def test_imq_mmd_by_hand():
  # Two points each in 2-D: every term can be followed on paper.
  q = np.array([[0.0, 0.0], [1.0, 0.0]], np.float32)
  p = np.array([[0.0, 1.0], [2.0, 2.0]], np.float32)
  # Scale 1 alone: C = 4; k(q0,q1) = 4/5, k(p0,p1) = 4/9, cross distances 1, 8, 2, 5.
  c1 = (4 / 5 + 4 / 9) - 2 * (4 / 5 + 4 / 12 + 4 / 6 + 4 / 9) / 4
  np.testing.assert_allclose(losses.imq_mmd(q, p, scales=(1.0,)), c1, rtol=1e-6)
  np.testing.assert_allclose(losses.imq_mmd(q, p), _imq_mmd_by_hand(q, p), rtol=1e-5)
  rng = np.random.default_rng(1)
  q, p = rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(5, 3)).astype(np.float32)
  np.testing.assert_allclose(losses.imq_mmd(q, p), _imq_mmd_by_hand(q, p), rtol=1e-5)
  np.testing.assert_allclose(losses.imq_mmd(q, p, prior_var=2.0),
                             _imq_mmd_by_hand(q, p, prior_var=2.0), rtol=1e-5)
  # Codes far from the prior give a larger MMD than prior-like codes.
  assert float(losses.imq_mmd(q + 5.0, p)) > float(losses.imq_mmd(q, p))


def test_wae_loss_terms():
  rng = np.random.default_rng(2)
  x, x_hat = rng.random((3, 5)), rng.random((3, 5))
  z, z_prior = rng.normal(size=(3, 2)), rng.normal(size=(3, 2))
  outputs = dict(x_hat=x_hat, z=z, z_prior=z_prior, loggamma=jnp.asarray(-0.5))
  loss, m = losses.wae_mmd_loss(x, outputs, lambda_mmd=10.0, recon_scale=0.05)
  gen = 0.05 * np.sum((x - x_hat) ** 2) / 3
  mmd = _imq_mmd_by_hand(z, z_prior)
  np.testing.assert_allclose(m['gen'], gen, rtol=1e-5)
  np.testing.assert_allclose(m['mmd'], mmd, rtol=1e-5)
  np.testing.assert_allclose(loss, gen + 10.0 * mmd, rtol=1e-5)
  np.testing.assert_allclose(m['kl'], 10.0 * mmd, rtol=1e-5)  # The regulariser.
  assert {'loss', 'kl', 'gen', 'loggamma', 'mse'} <= set(m)


def test_rae_loss_terms():
  rng = np.random.default_rng(3)
  x, x_hat, z = rng.random((2, 6)), rng.random((2, 6)), rng.normal(size=(2, 3))
  decoder = {'fc': {'kernel': np.full((3, 2), 2.0), 'bias': np.ones(2)},
             'bn': {'scale': np.ones(4), 'bias': np.ones(4)},
             'deconv': {'kernel': np.full((1, 1, 2, 1), -1.0)}}
  outputs = dict(x_hat=x_hat, z=z, loggamma=jnp.asarray(0.0))
  loss, m = losses.rae_loss(x, outputs, decoder, z_weight=0.1, decoder_l2=0.01)
  gen = np.sum((x - x_hat) ** 2) / 2
  z_pen = np.sum(z ** 2) / 2 / 2
  l2 = 6 * 4.0 + 2 * 1.0  # Kernels only: 6 entries of 2, 2 entries of -1.
  np.testing.assert_allclose(m['gen'], gen, rtol=1e-5)
  np.testing.assert_allclose(m['z_penalty'], z_pen, rtol=1e-5)
  np.testing.assert_allclose(m['decoder_l2'], l2, rtol=1e-6)
  np.testing.assert_allclose(loss, gen + 0.1 * z_pen + 0.01 * l2, rtol=1e-5)


def test_flow_kl_by_hand():
  rng = np.random.default_rng(4)
  eps, log_sigma, z = (rng.normal(size=(3, 2)) for _ in range(3))
  log_det = rng.normal(size=3)
  mu = rng.normal(size=(3, 2))
  z0 = mu + np.exp(log_sigma) * eps
  log_q0 = np.sum(-0.5 * ((z0 - mu) / np.exp(log_sigma)) ** 2 - log_sigma
                  - 0.5 * np.log(2 * np.pi), axis=1)
  log_p = np.sum(-0.5 * z ** 2 - 0.5 * np.log(2 * np.pi), axis=1)
  expected = np.mean(log_q0 - log_det - log_p)
  np.testing.assert_allclose(losses.flow_kl(eps, log_sigma, log_det, z), expected, rtol=1e-5)
  # Without a flow (z_K = z_0, log_det = 0) its mean over ε is the Gaussian KL.
  eps = np.random.default_rng(5).normal(size=(200_000, 2))
  mu1, ls1 = np.array([0.5, -1.0]), np.array([-0.3, 0.2])
  mc = losses.flow_kl(eps, np.broadcast_to(ls1, eps.shape), np.zeros(len(eps)),
                      mu1 + np.exp(ls1) * eps)
  exact = losses.gaussian_kl(mu1[None], np.exp(ls1)[None], ls1[None])
  np.testing.assert_allclose(mc, exact, rtol=2e-2)


# ------------------------------------------------------------------- make_objective


DIM = 4  # Data and code dimension of the dense test models.
X = np.random.default_rng(0).normal(size=(8, DIM)).astype(np.float32)


def test_vae_objective_is_the_reference_elbo():
  model = models.make_stage2_model(DIM, depth=1, width=8)
  variables = model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)},
                         X, train=False)
  out = model.apply(variables, X, train=True, rngs={'noise': jax.random.PRNGKey(3)})
  a = losses.make_objective('vae', beta=2.0)(X, out, variables['params'])
  b = losses.negative_elbo(X, out, beta=2.0)
  np.testing.assert_array_equal(a[0], b[0])
  with pytest.raises(ValueError, match='stage-1 model'):
    losses.make_objective('gan')
