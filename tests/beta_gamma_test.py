"""Issue #18, claim 1: with a fixed decoder variance, β and γ are one knob.

For the Gaussian decoder with fixed std γ over d data dims, per example

  L(β, γ) = ‖x − x̂‖²/(2γ²) + d log γ + (d/2) log 2π + β KL,

so L(β, γ) − β·L(1, γ√β) = (1 − β)(d log γ + (d/2) log 2π) − β (d/2) log β: a constant in the
parameters. The losses of tsvae's VAEs (stage-1 InfoGAN and the stage-2 MLP, through the
training step's own objective) must differ by exactly that, and their gradients must be equal.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import losses
from tsvae import models


def _model(kind, gamma):
  fields = {'gamma_mode': 'fixed', 'gamma_value': gamma}
  if kind == 'stage2':
    return models.make_stage2_model(6, depth=2, width=16, gamma=fields), np.float32(
        np.random.default_rng(0).standard_normal((5, 6)))
  model = models.make_stage1_model('infogan', (28, 28, 1), 8, gamma=fields)
  x = np.random.default_rng(0).uniform(size=(5, 28, 28, 1)).astype(np.float32)
  return model, x


def _loss_and_grads(model, variables, x, beta):
  objective = losses.make_objective('vae', reconstruction_loss='gaussian', beta=beta)

  def loss_fn(params):
    outputs, _ = model.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                             train=True, rngs={'noise': jax.random.PRNGKey(7)},
                             mutable=['batch_stats'])
    return objective(x, outputs, params)[0]

  return jax.value_and_grad(loss_fn)(variables['params'])


@pytest.mark.parametrize('kind, beta, gamma', [
    ('stage2', 0.1, 1.0), ('stage2', 3.0, 0.2), ('stage1', 3.0, 0.2)])
def test_beta_at_gamma_is_beta_times_unit_beta_at_gamma_sqrt_beta(kind, beta, gamma):
  model_a, x = _model(kind, gamma)
  model_b, _ = _model(kind, gamma * math.sqrt(beta))
  d = int(np.prod(x.shape[1:]))
  constant = ((1 - beta) * (d * math.log(gamma) + d * losses.HALF_LOG_TWO_PI)
              - beta * d / 2 * math.log(beta))
  for seed in (0, 1):  # Two parameter points: the difference is the same constant at both.
    variables = model_a.init({'params': jax.random.PRNGKey(seed),
                              'noise': jax.random.PRNGKey(9)}, x, train=True)
    variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
    loss_a, grads_a = _loss_and_grads(model_a, variables, x, beta)
    loss_b, grads_b = _loss_and_grads(model_b, variables, x, 1.0)
    np.testing.assert_allclose(float(loss_a) - beta * float(loss_b), constant,
                               rtol=1e-4, atol=1e-3 * max(1.0, abs(float(loss_a))) * 1e-2)
    # Float32 rounding, relative to the largest gradient anywhere (leaves whose gradient is
    # ~0, like the bias before a BatchNorm, hold only rounding noise).
    scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree_util.tree_leaves(grads_a))
    for ga, gb in zip(jax.tree_util.tree_leaves(grads_a), jax.tree_util.tree_leaves(grads_b)):
      np.testing.assert_allclose(ga, beta * np.asarray(gb), rtol=2e-4, atol=1e-5 * scale)


def test_learned_gamma_breaks_the_equivalence():
  """With γ learned the two objectives differ in their γ gradient: claim 1 is about fixed γ."""
  x = np.float32(np.random.default_rng(0).standard_normal((5, 6)))
  model = models.make_stage2_model(6, depth=2, width=16)
  variables = model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(9)}, x,
                         train=True)
  variables = {'params': variables['params'], 'batch_stats': variables.get('batch_stats', {})}
  _, grads_a = _loss_and_grads(model, variables, x, 3.0)
  _, grads_b = _loss_and_grads(model, variables, x, 1.0)
  name = [k for k in grads_a if 'gamma' in k]
  assert name, list(grads_a)
  assert not np.allclose(grads_a[name[0]], 3.0 * np.asarray(grads_b[name[0]]), rtol=1e-3)
