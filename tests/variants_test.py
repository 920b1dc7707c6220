"""Decoder-variance modes (learned / fixed / σ-VAE optimal / running MSE) and β."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import losses
from tsvae import models
from tsvae import train


def _stage2(mode, **fields):
  return models.make_stage2_model(3, depth=1, width=8, gamma=dict(gamma_mode=mode, **fields))


def _apply(model, z, train_mode=True, variables=None):
  if variables is None:
    variables = model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, z,
                           train=False)
  out, updates = model.apply(variables, z, train=train_mode, rngs={'noise': jax.random.PRNGKey(2)},
                             mutable=['batch_stats'])
  return variables, out, updates


Z = jnp.asarray(np.random.default_rng(0).normal(size=(6, 3)), jnp.float32)


def test_learned_uses_the_parameter():
  variables, out, _ = _apply(_stage2('learned'), Z)
  assert float(out['loggamma']) == 0.0
  variables['params']['loggamma_z'] = jnp.asarray(-1.5)
  _, out, _ = _apply(_stage2('learned'), Z, variables=variables)
  assert float(out['loggamma']) == -1.5


def test_fixed_gamma_value_and_its_objective():
  _, out, _ = _apply(_stage2('fixed', gamma_value=0.1), Z)
  np.testing.assert_allclose(out['loggamma'], math.log(0.1), rtol=1e-6)
  # Gen = Σ[(r/0.1)²/2 + log 0.1 + ½ log 2π] / B for the residuals r of this forward pass.
  r2 = np.square(np.asarray(Z - out['x_hat']))
  expected = (r2 / 0.01 / 2 + math.log(0.1) + 0.5 * math.log(2 * math.pi)).sum() / 6
  _, metrics = losses.negative_elbo(Z, out)
  np.testing.assert_allclose(metrics['gen'], expected, rtol=1e-5)


def test_optimal_gamma_is_the_batch_mse_and_minimises_gen():
  _, out, updates = _apply(_stage2('optimal'), Z)
  mse = float(jnp.mean(jnp.square(Z - out['x_hat'])))
  np.testing.assert_allclose(out['loggamma'], 0.5 * math.log(mse), rtol=1e-5)
  # At γ² = MSE the Gaussian NLL is D/2 + D·(½ log MSE + ½ log 2π) per example.
  d = Z.shape[1]
  _, metrics = losses.negative_elbo(Z, out)
  np.testing.assert_allclose(metrics['gen'],
                             d / 2 + d * (0.5 * math.log(mse) + 0.5 * math.log(2 * math.pi)),
                             rtol=1e-5)
  # And it tracks a running MSE for sampling: 0.99 · 1 + 0.01 · mse.
  np.testing.assert_allclose(updates['batch_stats']['running_mse'], 0.99 + 0.01 * mse,
                             rtol=1e-6)


def test_optimal_gamma_soft_floor():
  # A perfect fit (x̂ = x) would give log γ = −∞; the σ-VAE soft floor keeps it above −2.
  model = _stage2('optimal', optimal_gamma_floor=-2.0)
  f = -2.0
  _, out, _ = _apply(model, Z)
  mse = float(jnp.mean(jnp.square(Z - out['x_hat'])))
  np.testing.assert_allclose(out['loggamma'], f + math.log1p(math.exp(0.5 * math.log(mse) - f)),
                             rtol=1e-5)


def test_running_mse_is_not_differentiated_and_updates():
  model = _stage2('running_mse', running_mse_momentum=0.5)
  variables, out, updates = _apply(model, Z)
  mse = float(jnp.mean(jnp.square(Z - out['x_hat'])))
  new = 0.5 * 1.0 + 0.5 * mse
  np.testing.assert_allclose(updates['batch_stats']['running_mse'], new, rtol=1e-6)
  np.testing.assert_allclose(out['loggamma'], 0.5 * math.log(new), rtol=1e-5)
  # In inference mode the running MSE is read, not updated.
  _, out_eval, updates_eval = _apply(model, Z, train_mode=False, variables=variables)
  assert float(updates_eval['batch_stats']['running_mse']) == 1.0
  np.testing.assert_allclose(out_eval['loggamma'], 0.0, atol=1e-7)


@pytest.mark.parametrize('mode', ['learned', 'fixed', 'optimal', 'running_mse'])
def test_each_mode_trains(mode):
  model = _stage2(mode)
  batch = {'mu': np.asarray(Z), 'sigma': np.full((6, 3), 0.05, np.float32)}
  mesh = train.make_mesh(jax.devices()[:1])
  tx = train.make_optimizer(lambda s: 3e-3)
  state = train.create_train_state(model, batch['mu'], base_rng=jax.random.PRNGKey(0), tx=tx)
  step = train.jit_train_step(train.make_train_step(
      model, prepare_input=train.latent_input, objective=losses.make_objective('vae')), mesh)
  losses_seen = []
  for _ in range(30):
    state, metrics = step(state, train.shard_batch(batch, mesh))
    losses_seen.append(float(metrics['loss']))
  assert np.all(np.isfinite(losses_seen))
  assert losses_seen[-1] < losses_seen[0]
  if mode != 'learned':  # The parameter gets no gradient in the other modes.
    assert float(state.params['loggamma_z']) == 0.0


def test_beta_weights_the_kl():
  _, out, _ = _apply(_stage2('learned'), Z)
  loss1, m1 = losses.negative_elbo(Z, out, beta=1.0)
  loss4, _ = losses.negative_elbo(Z, out, beta=4.0)
  np.testing.assert_allclose(loss4 - loss1, 3.0 * m1['kl'], rtol=1e-5)


def test_unknown_gamma_mode():
  with pytest.raises(ValueError, match='gamma_mode'):
    _apply(_stage2('adaptive'), Z)
