"""The train step: it learns, it is device-count invariant, it handles NaNs; its fast paths
compute the plain formulation's function; the stage-1 baselines' objectives train."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from testdata import BASELINE_X as X
from testdata import tiny_deterministic_ae as _deterministic, tiny_flow_vae as _flow_vae
from tsvae import losses
from tsvae import models
from tsvae import generation
from tsvae import train
from tsvae.models.vae import VAE

# The reference ELBO (gaussian reconstruction, β = 1): train_stage's objective for a
# stage config at its defaults.
ELBO = losses.make_objective('vae')


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
  step = train.jit_train_step(
      train.make_train_step(model, prepare_input=train.image_input, objective=ELBO), mesh)
  seen_losses = []
  for _ in range(20):
    state, metrics = step(state, train.shard_batch(batch, mesh))
    seen_losses.append(float(metrics['loss']))
  assert int(state.step) == 20
  # Per image the loss is 784·(½ log 2π + log γ) + Σ(x − x̂)²/2γ² + KL ≈ 850 at the start.
  assert seen_losses[-1] < seen_losses[0] - 100, seen_losses
  # Training moved log γ_x and the spectral-norm / BN statistics.
  assert float(state.params['loggamma_x']) != 0.0
  assert np.all(np.isfinite(seen_losses))


def _one_step_on(devices, model, state, batch, prepare_input):
  mesh = train.make_mesh(devices)
  step = train.jit_train_step(
      train.make_train_step(model, prepare_input=prepare_input, objective=ELBO), mesh)
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
      train.make_train_step(model, prepare_input=train.latent_input, objective=ELBO,
                            nan_policy=nan_policy), mesh)
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
    train.make_train_step(None, prepare_input=train.image_input, objective=ELBO,
                          nan_policy='ignore')


def test_loggamma_floor_is_off_by_default_and_clamps_when_set():
  batch = {'mu': np.zeros((8, 4), np.float32), 'sigma': np.full((8, 4), 1e-3, np.float32)}
  mesh = train.make_mesh(jax.devices()[:1])
  final = {}
  for floor in (float('-inf'), -0.05):
    model = models.make_stage2_model(4, depth=1, width=8, gamma={'loggamma_floor': floor})
    state = _state(model, batch['mu'], lr=1e-2)
    step = train.jit_train_step(
        train.make_train_step(model, prepare_input=train.latent_input, objective=ELBO), mesh)
    for _ in range(20):
      state, metrics = step(state, train.shard_batch(batch, mesh))
    final[floor] = float(metrics['loggamma'])
  # Near-noiseless data drives log γ down at ~lr per step; the floor stops it at -0.05.
  assert final[float('-inf')] < -0.1
  np.testing.assert_allclose(final[-0.05], -0.05, atol=1e-6)


# ----------------------------------------------------------------------- fast paths


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _image_state(model, batch):
  """The state for image batches like `batch` (Adam at lr 1e-3, seed 0)."""
  return _state(model, np.zeros_like(batch['image'], np.float32))


def _leaves(tree):
  return dict(jax.tree_util.tree_leaves_with_path(tree))


def test_fast_train_step_matches_plain_formulation():
  """Real train steps: the trainer's jitted fast step vs plain formulation + plain jax.jit."""
  shape, latent = (28, 28, 1), 16
  fast = models.make_stage1_model('infogan', shape, latent)
  plain = VAE(encoder=models.InfoGANEncoder(latent, fast_sn=False),
              decoder=models.InfoGANDecoder(shape, fast_vjp=False), gamma_name='loggamma_x')
  batch = {'image': np.random.default_rng(0).integers(0, 256, (16,) + shape, np.uint8)}
  mesh = train.make_mesh(jax.devices()[:1])
  fast_step = train.jit_train_step(
      train.make_train_step(fast, prepare_input=train.image_input, objective=ELBO), mesh)
  plain_step = jax.jit(train.make_train_step(plain, prepare_input=train.image_input,
                                             objective=ELBO))
  init = jax.device_get(_image_state(fast, batch))
  s_fast = jax.device_put(_image_state(fast, batch), train.replicated(mesh))
  s_plain = _image_state(plain, batch)
  for i in range(3):
    s_fast, m_fast = fast_step(s_fast, train.shard_batch(batch, mesh))
    s_plain, m_plain = plain_step(s_plain, batch)
    m_fast, m_plain = jax.device_get((m_fast, m_plain))
    assert bool(m_fast['finite']) and bool(m_plain['finite'])
    for k in ('loss', 'kl', 'gen', 'mse', 'grad_norm'):
      np.testing.assert_allclose(m_fast[k], m_plain[k], rtol=2e-5, err_msg=k)
    if i == 0:
      # After one step Adam's first moment is 0.1 * gradient: the gradients, leaf by leaf.
      # Biases followed by BatchNorm have a gradient that is exactly 0 in exact arithmetic
      # (rounding noise of ~1e-9 here, in both forms): measure errors against the whole
      # gradient for those.
      mu_f = _leaves(jax.device_get(s_fast.opt_state[0].mu))
      mu_p = _leaves(jax.device_get(s_plain.opt_state[0].mu))
      assert mu_f.keys() == mu_p.keys()
      total = np.sqrt(sum(np.sum(np.square(g, dtype=np.float64)) for g in mu_p.values()))
      significant = set()
      for path, g in mu_f.items():
        scale = np.linalg.norm(np.asarray(mu_p[path], np.float64))
        if scale > 1e-4 * total:
          significant.add(path)
        err = np.linalg.norm(np.asarray(g, np.float64) - mu_p[path])
        assert err < 2e-5 * max(scale, 1e-2 * total), jax.tree_util.keystr(path)
      # The BN moving statistics and the spectral-norm vectors u of the first forward pass.
      stats_f, stats_p = _leaves(jax.device_get(s_fast.batch_stats)), _leaves(
          jax.device_get(s_plain.batch_stats))
      assert stats_f.keys() == stats_p.keys()
      for path, a in stats_f.items():
        assert _rel(a, stats_p[path]) < 1e-5, jax.tree_util.keystr(path)
  # After three steps. Adam divides by sqrt(v): an element whose gradient is tiny still moves
  # by ~lr, in a direction set by its rounding noise, so single elements may differ by ~lr
  # (they do by the same amount between two BLAS libraries); the losses above agree to 2e-5
  # at every step. Here: the parameter updates as a whole.
  s_fast, s_plain = jax.device_get((s_fast, s_plain))
  p_fast, p_plain, p_init = _leaves(s_fast.params), _leaves(s_plain.params), _leaves(init.params)
  flat = lambda leaves: np.concatenate([np.ravel(leaves[p] - p_init[p]) for p in significant])
  assert _rel(flat(p_fast), flat(p_plain)) < 2e-2
  assert len(significant) >= len(p_init) - 6  # conv2, fc3 (enc), fc1, fc2, conv3 (dec) biases


def test_non_finite_gradient_is_flagged():
  model = models.make_stage1_model('infogan', (28, 28, 1), 8)
  batch = {'image': np.zeros((4, 28, 28, 1), np.float32)}
  state = _image_state(model, batch)
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(train.make_train_step(model, prepare_input=train.image_input,
                                                    objective=ELBO), mesh)
  # An Inf in one kernel: the loss and gradients go non-finite, the flag must say so.
  params = jax.tree_util.tree_map(lambda x: x, state.params)
  params['decoder']['fc1']['kernel'] = params['decoder']['fc1']['kernel'].at[0, 0].set(jnp.inf)
  _, metrics = step(state.replace(params=params), train.shard_batch(batch, mesh))
  assert not bool(metrics['finite'])
  _, metrics = step(_image_state(model, batch), train.shard_batch(batch, mesh))
  assert bool(metrics['finite'])


# ---------------------------------------------------------------- stage-1 baselines




@pytest.mark.parametrize('name', ['vae_flow', 'wae_mmd', 'rae'])
def test_train_steps(name):
  model = _flow_vae() if name == 'vae_flow' else _deterministic()
  objective = losses.make_objective(name, z_weight=0.1, decoder_l2=1e-3)
  mesh = train.make_mesh(jax.devices()[:1])
  state = train.create_train_state(model, X, base_rng=jax.random.PRNGKey(0),
                                   tx=train.make_optimizer(lambda s: 1e-2))
  # Placed as train_stage places it, so that the step compiles once.
  state = jax.device_put(state, train.replicated(mesh))
  before = jax.device_get(state.params)
  step = train.jit_train_step(
      train.make_train_step(model, prepare_input=train.image_input, objective=objective), mesh)
  seen = []
  for _ in range(3):
    state, metrics = step(state, train.shard_batch({'image': X}, mesh))
    seen.append(jax.device_get(metrics))
  for m in seen:
    assert bool(m['finite'])
    for key in ('loss', 'kl', 'gen', 'loggamma', 'mse', 'grad_norm'):
      assert np.isfinite(m[key]), (key, m)
  after = jax.device_get(state.params)
  for part in ('encoder', 'decoder'):
    changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before[part],
                                     after[part])
    assert any(jax.tree_util.tree_leaves(changed)), part
  if name == 'vae_flow':
    assert any(jax.tree_util.tree_leaves(jax.tree_util.tree_map(
        lambda a, b: bool(np.any(a != b)), before['flow'], after['flow'])))
    assert float(after['loggamma_x']) != 0.0  # Learned γ, as the reference.
    assert np.isfinite(seen[-1]['log_det'])
  else:
    # γ is reported (½ log of the running MSE), never trained.
    assert float(after['loggamma_x']) == 0.0
    mse = float(state.batch_stats['running_mse'])
    np.testing.assert_allclose(
        model.apply(generation.variables_of(state), method=models.VAE.loggamma),
        0.5 * math.log(mse), rtol=1e-5)
