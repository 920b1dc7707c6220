"""The ELBO train step: it learns, it is device-count invariant, it handles NaNs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from tsvae import models
from tsvae import train


def _stage_config(**overrides):
  c = ml_collections.ConfigDict(dict(learning_rate=1e-3, lr_decay_epochs=1, lr_decay_factor=0.5,
                                     num_epochs=1, max_steps=-1, reconstruction_loss='gaussian',
                                     beta=1.0))
  c.update(overrides)
  return c


def _images(n=8, size=28, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _state(model, example, lr=1e-3, seed=0, tx=None):
  tx = tx or train.make_optimizer(lambda step: lr)
  return train.create_train_state(model, example, base_rng=jax.random.PRNGKey(seed), tx=tx)


def test_lr_schedule_halves_per_decay_epochs():
  schedule = train.lr_schedule(_stage_config(learning_rate=1e-4, lr_decay_epochs=150), 10)
  np.testing.assert_allclose(
      [schedule(0), schedule(1499), schedule(1500), schedule(3000)],
      [1e-4, 1e-4, 5e-5, 2.5e-5], rtol=1e-6)


def test_total_steps_caps():
  assert train.total_steps(_stage_config(num_epochs=3), 10) == 30
  assert train.total_steps(_stage_config(num_epochs=3, max_steps=7), 10) == 7


def _blobs(n=16, size=28):
  """Images of one bright disc each, at a few positions: easy structure to learn."""
  yy, xx = np.mgrid[:size, :size]
  centres = np.linspace(8, size - 8, 4)
  images = [np.where((yy - centres[i % 4])**2 + (xx - centres[i // 4 % 4])**2 < 25, 255, 0)
            for i in range(n)]
  return np.stack(images)[..., None].astype(np.uint8)


def test_steps_reduce_the_loss_on_a_fixed_batch():
  model = models.make_stage1_model('infogan', (28, 28, 1), latent_dim=8)
  batch = {'image': _blobs(16)}
  state = _state(model, np.zeros((16, 28, 28, 1), np.float32), lr=3e-3)
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(train.make_train_step(model, prepare_input=train.image_input), mesh)
  losses = []
  for _ in range(20):
    state, metrics = step(state, train.shard_batch(batch, mesh))
    losses.append(float(metrics['loss']))
  assert int(state.step) == 20
  # Per image the loss is 784·(½ log 2π + log γ) + Σ(x − x̂)²/2γ² + KL ≈ 850 at the start.
  assert losses[-1] < losses[0] - 100, losses
  # Training moved log γ_x and the spectral-norm / BN statistics.
  assert float(state.params['loggamma_x']) != 0.0
  assert np.all(np.isfinite(losses))


def _one_step_on(devices, model, state, batch, prepare_input):
  mesh = train.make_mesh(devices)
  step = train.jit_train_step(train.make_train_step(model, prepare_input=prepare_input), mesh)
  state = jax.device_put(jax.device_get(state), train.replicated(mesh))
  for _ in range(2):
    state, metrics = step(state, train.shard_batch(batch, mesh))
  return jax.device_get(state), jax.device_get(metrics)


@pytest.mark.parametrize('stage', ['stage1', 'stage2'])
def test_one_device_equals_two_devices(stage):
  assert jax.device_count() >= 2, 'conftest sets --xla_force_host_platform_device_count=2'
  if stage == 'stage1':
    model = models.make_stage1_model('infogan', (28, 28, 1), latent_dim=8)
    batch = {'image': _images(8)}
    example = np.zeros((8, 28, 28, 1), np.float32)
    prepare = train.image_input
  else:
    model = models.make_stage2_model(8, depth=2, width=32)
    rng = np.random.default_rng(1)
    batch = {'mu': rng.normal(size=(8, 8)).astype(np.float32),
             'sigma': rng.uniform(0.1, 1.0, size=(8, 8)).astype(np.float32)}
    example = np.zeros((8, 8), np.float32)
    prepare = train.latent_input
  # Plain SGD: Adam rescales every update to ~lr, which turns the pure round-off gradient of
  # biases feeding a BatchNorm (mathematically zero) into ±lr moves; SGD shows the step itself.
  state = _state(model, example, tx=optax.sgd(0.1))
  s1, m1 = _one_step_on(jax.devices()[:1], model, state, batch, prepare)
  s2, m2 = _one_step_on(jax.devices()[:2], model, state, batch, prepare)
  np.testing.assert_allclose(m1['loss'], m2['loss'], rtol=1e-5)
  np.testing.assert_allclose(m1['grad_norm'], m2['grad_norm'], rtol=1e-4)
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(s1.batch_stats),
                  jax.tree_util.tree_leaves(s2.batch_stats)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_stage2_input_draws_fresh_z_each_step():
  mu = jnp.zeros((4, 3))
  sigma = jnp.ones((4, 3))
  base = jax.random.PRNGKey(0)
  z0 = train.latent_input({'mu': mu, 'sigma': sigma}, jax.random.fold_in(base, 0))
  z1 = train.latent_input({'mu': mu, 'sigma': sigma}, jax.random.fold_in(base, 1))
  assert not np.allclose(z0, z1)
  zero = train.latent_input({'mu': mu + 2.0, 'sigma': 0.0 * sigma}, base)
  np.testing.assert_allclose(zero, 2.0)


def _nan_setup(nan_policy):
  model = models.make_stage2_model(4, depth=1, width=8)
  state = _state(model, np.zeros((4, 4), np.float32))
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(
      train.make_train_step(model, prepare_input=train.latent_input, nan_policy=nan_policy), mesh)
  good = {'mu': np.zeros((4, 4), np.float32), 'sigma': np.ones((4, 4), np.float32)}
  bad = {'mu': np.full((4, 4), np.nan, np.float32), 'sigma': np.ones((4, 4), np.float32)}
  return state, step, mesh, good, bad


def test_nan_batch_is_flagged():
  state, step, mesh, good, bad = _nan_setup('error')
  state, metrics = step(state, train.shard_batch(good, mesh))
  assert bool(metrics['finite'])
  _, metrics = step(state, train.shard_batch(bad, mesh))
  assert not bool(metrics['finite'])


def test_nan_policy_skip_keeps_params_and_counts():
  state, step, mesh, good, bad = _nan_setup('skip')
  state, _ = step(state, train.shard_batch(good, mesh))
  before = jax.device_get(state.params)
  state, metrics = step(state, train.shard_batch(bad, mesh))
  assert not bool(metrics['finite'])
  assert int(state.num_skipped) == 1
  assert int(state.step) == 2
  for a, b in zip(jax.tree_util.tree_leaves(before), jax.tree_util.tree_leaves(state.params)):
    np.testing.assert_array_equal(a, b)


def test_unknown_nan_policy():
  with pytest.raises(ValueError, match='nan_policy'):
    train.make_train_step(None, prepare_input=train.image_input, nan_policy='ignore')


def test_loggamma_floor_is_off_by_default_and_clamps_when_set():
  batch = {'mu': np.zeros((8, 4), np.float32), 'sigma': np.full((8, 4), 1e-3, np.float32)}
  mesh = train.make_mesh(jax.devices()[:1])
  final = {}
  for floor in (float('-inf'), -0.05):
    model = models.make_stage2_model(4, depth=1, width=8, gamma={'loggamma_floor': floor})
    state = _state(model, batch['mu'], lr=1e-2)
    step = train.jit_train_step(train.make_train_step(model, prepare_input=train.latent_input),
                                mesh)
    for _ in range(20):
      state, metrics = step(state, train.shard_batch(batch, mesh))
    final[floor] = float(metrics['loggamma'])
  # Near-noiseless data drives log γ down at ~lr per step; the floor stops it at -0.05.
  assert final[float('-inf')] < -0.1
  np.testing.assert_allclose(final[-0.05], -0.05, atol=1e-6)
