"""Tests for tsvae.models.layers: transposed convolutions, Dense, spectral norm, BatchNorm.

* `conv_transpose` / `ConvTranspose` (custom VJP) against the reference formulation, the
  adjoint identity and TensorFlow's conv2d_transpose.
* `Dense` / `matmul` (kernel gradient formed as [in, out]) against `flax.linen.Dense`.
* Spectral norm: `spectral_normalize` against the reference algorithm, `spectral_sigma` against
  `spectral_normalize`, and `SNConv` / `SNDense` (fast=True: sigma without forming W^T, output or
  kernel divided by sigma) against the reference form (fast=False): outputs, new u, and
  gradients w.r.t. input and kernel, to float tolerance.
* `batch_norm`: momentum and eval mode; TF1's zero-debiased moving averages.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae.models import layers


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


# ----------------------------------------------------------------------------------
# conv_transpose
# ----------------------------------------------------------------------------------

# (kernel, stride): InfoGAN 4/2, WAE 5/2 and 5/1, ResNet 3/2; odd and even input sizes.
CONV_T_CASES = [(k, s, size) for k, s in ((4, 2), (5, 2), (5, 1), (3, 2)) for size in (7, 8)]


def _conv_t_inputs(k, size, cin=3, cout=5, batch=2):
  kx, kw = jax.random.split(jax.random.key(k * 100 + size))
  x = jax.random.normal(kx, (batch, size, size + 1, cin))  # non-square on purpose
  w = jax.random.normal(kw, (k, k, cout, cin))
  return x, w


@pytest.mark.parametrize('k,s,size', CONV_T_CASES)
def test_conv_transpose_fast_matches_reference(k, s, size):
  x, w = _conv_t_inputs(k, size)
  fast = functools.partial(layers.conv_transpose, strides=s)
  ref = functools.partial(layers.conv_transpose_reference, strides=s)
  y_fast, vjp_fast = jax.vjp(fast, x, w)
  y_ref, vjp_ref = jax.vjp(ref, x, w)
  assert y_fast.shape == (x.shape[0], size * s, (size + 1) * s, w.shape[2])
  np.testing.assert_allclose(y_fast, y_ref, atol=1e-6, rtol=0)
  g = jax.random.normal(jax.random.key(7), y_fast.shape)
  dx_fast, dw_fast = vjp_fast(g)
  dx_ref, dw_ref = vjp_ref(g)
  assert _rel(dx_fast, dx_ref) <= 1e-5
  assert _rel(dw_fast, dw_ref) <= 1e-5
  # Under jit too, and via jax.grad of a scalar.
  loss = lambda f: lambda x, w: jnp.sum(jnp.sin(f(x, w)))
  gf = jax.jit(jax.grad(loss(fast), argnums=(0, 1)))(x, w)
  gr = jax.grad(loss(ref), argnums=(0, 1))(x, w)
  for a, b in zip(gf, gr):
    assert _rel(a, b) <= 1e-5


@pytest.mark.parametrize('k,s,size', CONV_T_CASES)
def test_conv_transpose_is_adjoint_of_same_conv(k, s, size):
  """<conv_transpose(x, W), y> == <x, conv2d_SAME(y, W)> for all x, y."""
  x, w = _conv_t_inputs(k, size)
  y_t = layers.conv_transpose(x, w, s)
  y = jax.random.normal(jax.random.key(3), y_t.shape)
  conv_y = jax.lax.conv_general_dilated(y, w, (s, s), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  lhs = float(jnp.vdot(y_t, y))
  rhs = float(jnp.vdot(x, conv_y))
  assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(rhs))


@pytest.mark.parametrize('k,s,size', CONV_T_CASES)
def test_conv_transpose_matches_tensorflow(k, s, size):
  tf = pytest.importorskip('tensorflow')
  x, w = _conv_t_inputs(k, size)
  out_shape = (x.shape[0], size * s, (size + 1) * s, w.shape[2])
  expected = tf.nn.conv2d_transpose(np.asarray(x), np.asarray(w), out_shape,
                                    strides=[1, s, s, 1], padding='SAME').numpy()
  np.testing.assert_allclose(layers.conv_transpose(x, w, s), expected, atol=1e-4,
                             rtol=1e-5)


def test_conv_transpose_module_fast_and_reference_agree():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
  fast = layers.ConvTranspose(6, 4, 2)
  ref = layers.ConvTranspose(6, 4, 2, fast_vjp=False)
  params = fast.init(jax.random.key(1), x)
  assert params['params']['kernel'].shape == (4, 4, 6, 4)  # TF layout (kh, kw, out, in)
  assert params['params']['bias'].shape == (6,)
  loss = lambda m: lambda p: jnp.sum(m.apply(p, x) ** 2)
  np.testing.assert_allclose(fast.apply(params, x), ref.apply(params, x), atol=1e-6)
  g_fast = jax.grad(loss(fast))(params)
  g_ref = jax.grad(loss(ref))(params)
  for a, b in zip(jax.tree_util.tree_leaves(g_fast), jax.tree_util.tree_leaves(g_ref)):
    assert _rel(a, b) <= 1e-5


# ----------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------


def test_dense_matches_flax_dense():
  """layers.Dense / matmul: nn.Dense's function and gradients, kernel gradient laid out [in, out]."""
  x = jax.random.normal(jax.random.key(7), (3, 5, 40))
  ours, ref = layers.Dense(24), nn.Dense(24)
  variables = ref.init(jax.random.key(8), x)
  assert jax.tree_util.tree_structure(ours.init(jax.random.key(8), x)) == (
      jax.tree_util.tree_structure(variables))
  cot = jax.random.normal(jax.random.key(9), (3, 5, 24))
  loss = lambda m: jax.jit(jax.value_and_grad(
      lambda v, x: jnp.sum(m.apply(v, x) * cot), argnums=(0, 1)))(variables, x)
  (l_ours, g_ours), (l_ref, g_ref) = loss(ours), loss(ref)
  np.testing.assert_allclose(l_ours, l_ref, rtol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    assert a.shape == b.shape and _rel(a, b) < 1e-6


# ----------------------------------------------------------------------------------
# Spectral norm
# ----------------------------------------------------------------------------------


def test_spectral_normalize_matches_reference_algorithm():
  rng = np.random.default_rng(0)
  kernel = rng.normal(size=(3, 3, 4, 6)).astype(np.float32)
  u = rng.normal(size=(36, 1)).astype(np.float32)
  w = kernel.reshape(-1, 6)
  v = w.T @ u
  v /= np.linalg.norm(v)
  u_new = w @ v
  u_new /= np.linalg.norm(u_new)
  sigma = (u_new.T @ w @ v)[0, 0]
  w_bar, u_out, sigma_out = layers.spectral_normalize(jnp.asarray(kernel), jnp.asarray(u))
  np.testing.assert_allclose(u_out, u_new, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sigma_out, sigma, rtol=1e-5)
  np.testing.assert_allclose(w_bar, kernel / sigma, rtol=1e-5, atol=1e-6)
  # u and v are constants for differentiation: d/dW sum(W/sigma) includes -W d sigma.
  g = jax.grad(lambda k: jnp.sum(layers.spectral_normalize(k, jnp.asarray(u))[0]))(
      jnp.asarray(kernel))
  expected = (np.ones_like(w) / sigma
              - w.sum() / sigma**2 * (u_new @ v.T)).reshape(kernel.shape)
  np.testing.assert_allclose(g, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize('iterations', [1, 3])
def test_spectral_sigma_matches_spectral_normalize(iterations):
  kernel = jax.random.normal(jax.random.key(5), (4, 4, 8, 12))
  u = jax.random.normal(jax.random.key(6), (128, 1))
  sigma, u_new = layers.spectral_sigma(kernel, u, iterations)
  w_bar, u_ref, sigma_ref = layers.spectral_normalize(kernel, u, iterations)
  np.testing.assert_allclose(sigma, sigma_ref, rtol=1e-6)
  np.testing.assert_allclose(u_new, u_ref, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(kernel / sigma, w_bar, rtol=1e-5, atol=1e-7)
  g = jax.grad(lambda k: layers.spectral_sigma(k, u, iterations)[0])(kernel)
  g_ref = jax.grad(lambda k: layers.spectral_normalize(k, u, iterations)[2])(kernel)
  assert _rel(g, g_ref) < 1e-5


def _apply_both(module_cls, kwargs, x):
  """(outputs, new u, grads wrt (params, x)) of the fast and the plain module."""
  fast, plain = module_cls(fast=True, **kwargs), module_cls(fast=False, **kwargs)
  variables = fast.init(jax.random.key(0), x, update_stats=False)
  # A u that is far from converged, so that sigma's gradient term matters.
  u = jax.random.normal(jax.random.key(1), variables['batch_stats']['u'].shape)
  variables = {'params': variables['params'], 'batch_stats': {'u': u}}
  cot = jax.random.normal(jax.random.key(2), fast.apply(variables, x, update_stats=False).shape)

  def run(module):
    def f(params, x):
      y, upd = module.apply({'params': params, 'batch_stats': variables['batch_stats']}, x,
                            update_stats=True, mutable=['batch_stats'])
      return jnp.sum(y * cot), (y, upd['batch_stats']['u'])
    (_, (y, u_new)), grads = jax.jit(jax.value_and_grad(f, argnums=(0, 1), has_aux=True))(
        variables['params'], x)
    return y, u_new, grads

  return run(fast), run(plain)


@pytest.mark.parametrize('batch,features_in', [(4, 300), (64, 40)])
def test_sn_dense_fast_matches_reference(batch, features_in):
  # (4, 300): output divided by sigma; (64, 40): kernel divided by sigma.
  x = jax.random.normal(jax.random.key(3), (batch, features_in))
  (y_f, u_f, g_f), (y_p, u_p, g_p) = _apply_both(layers.SNDense, dict(features=24), x)
  assert _rel(y_f, y_p) < 1e-6
  assert _rel(u_f, u_p) < 1e-6
  for a, b in zip(jax.tree_util.tree_leaves(g_f), jax.tree_util.tree_leaves(g_p)):
    assert _rel(a, b) < 1e-5


@pytest.mark.parametrize('batch,size', [(4, 14), (1, 4)])
def test_sn_conv_fast_matches_reference(batch, size):
  # (4, 14): kernel divided by sigma; (1, 4): output (1x2x2x32) smaller than the kernel.
  x = jax.random.normal(jax.random.key(4), (batch, size, size, 16))
  (y_f, u_f, g_f), (y_p, u_p, g_p) = _apply_both(
      layers.SNConv, dict(features=32, kernel_size=4, strides=2), x)
  assert _rel(y_f, y_p) < 1e-6
  assert _rel(u_f, u_p) < 1e-6
  for a, b in zip(jax.tree_util.tree_leaves(g_f), jax.tree_util.tree_leaves(g_p)):
    assert _rel(a, b) < 1e-5


# ----------------------------------------------------------------------------------
# BatchNorm
# ----------------------------------------------------------------------------------


def test_batch_norm_momentum_and_eval():
  x = jax.random.normal(jax.random.key(0), (16, 5)) * 3.0 + 2.0

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      return layers.batch_norm(train)(x)

  net = Net()
  variables = net.init(jax.random.key(1), x, train=False)
  y, upd = net.apply(variables, x, train=True, mutable=['batch_stats'])
  stats = upd['batch_stats']['BatchNorm_0']
  np.testing.assert_allclose(stats['mean'], 0.001 * x.mean(0), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(stats['var'], 0.999 + 0.001 * x.var(0), rtol=1e-5)
  np.testing.assert_allclose(y, (x - x.mean(0)) / jnp.sqrt(x.var(0) + 1e-5), atol=1e-5)
  # Eval: uses the running averages and does not change them.
  y_eval, upd = net.apply(variables, x, train=False, mutable=['batch_stats'])
  np.testing.assert_allclose(y_eval, x / np.sqrt(1 + 1e-5), rtol=1e-6)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd['batch_stats'],
                         variables['batch_stats'])


def test_zero_debias_batch_norm_matches_tf1_assign_moving_average_by_hand():
  """TF1 zero_debias, computed by hand in float64: biased EMA b_t = d·b_{t-1} + (1 − d)·x_t
  from b_0 = 0, moving value b_t / (1 − d^t). Inference normalises with that value."""
  batches = [np.asarray(jax.random.normal(jax.random.key(i), (16, 5))) * (1.0 + i) + 2.0 - i
             for i in range(4)]

  class Net(nn.Module):

    @nn.compact
    def __call__(self, x, train):
      return layers.batch_norm(train, name='bn', zero_debias=True)(x)

  net = Net()
  variables = net.init(jax.random.key(1), batches[0], train=False)
  assert float(variables['batch_stats']['bn']['local_step']) == 0.0
  step = jax.jit(lambda v, x: net.apply(v, x, train=True, mutable=['batch_stats']))
  decay, biased_mean, biased_var = 0.999, np.zeros(5), np.zeros(5)
  for t, x in enumerate(batches, start=1):
    y, upd = step(variables, x)
    variables = {**variables, **upd}
    x64 = x.astype(np.float64)
    biased_mean = decay * biased_mean + (1 - decay) * x64.mean(0)
    biased_var = decay * biased_var + (1 - decay) * x64.var(0)
    stats = variables['batch_stats']['bn']
    np.testing.assert_allclose(stats['mean'], biased_mean / (1 - decay**t), rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(stats['var'], biased_var / (1 - decay**t), rtol=1e-5)
    assert float(stats['local_step']) == t
    # Train mode normalises with the batch's own statistics, as without debiasing.
    np.testing.assert_allclose(y, (x - x.mean(0)) / np.sqrt(x.var(0) + 1e-5), atol=1e-5)
  # After one step the average is that batch's statistics (the initial 0 / 1 carry no weight);
  # after 4 it is close to the mean of the 4 batches' statistics, far from Flax's 0.4%-weighted
  # plain EMA.
  mean = biased_mean / (1 - decay**4)
  np.testing.assert_allclose(mean, np.mean([b.mean(0) for b in batches], 0), atol=1e-2)
  x = batches[-1]
  y_eval, upd = net.apply(variables, x, train=False, mutable=['batch_stats'])
  np.testing.assert_allclose(y_eval, (x - mean) / np.sqrt(biased_var / (1 - decay**4) + 1e-5),
                             rtol=1e-5, atol=1e-5)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd['batch_stats'],
                         variables['batch_stats'])  # Eval changes nothing.


@pytest.mark.parametrize('shape, k, s, padding', [
    ((3, 28, 28, 1, 64), 4, 2, 'SAME'), ((2, 14, 14, 64, 8), 4, 2, 'SAME'),
    ((2, 7, 9, 5, 3), 3, 1, 'SAME'), ((2, 9, 9, 3, 4), 3, 2, 'VALID'),
    ((2, 8, 8, 2, 3), 5, 3, 'SAME')])
def test_conv2d_gradients_are_autodiffs(shape, k, s, padding):
  """conv2d's hand-written canonical gradients equal autodiff of the plain convolution."""
  b, h, w, c, o = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(b, h, w, c)), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, o)), jnp.float32)
  loss = lambda conv: (lambda x, kern: jnp.sum(jnp.sin(conv(x, kern, (s, s), padding))))
  want = jax.grad(loss(layers._conv), (0, 1))(x, kernel)  # pylint: disable=protected-access
  got = jax.grad(loss(layers.conv2d), (0, 1))(x, kernel)
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(r))))


def test_scanned_infogan_step_compiles_only_canonical_convolutions():
  """Inside lax.scan every convolution of the InfoGAN step (forward, input and kernel
  gradients, transposed convolutions) is NHWC/HWIO → NHWC, the form XLA:CPU runs with its
  Eigen kernels; before, the scan body kept autodiff's other dimension orders and ran ~4x
  slower (docs/design.md, Scanned steps)."""
  import re  # pylint: disable=g-import-not-at-top
  from tsvae import losses, models, train  # pylint: disable=g-import-not-at-top
  model = models.make_stage1_model('infogan', (28, 28, 1), 4)
  x = np.zeros((2, 4, 28, 28, 1), np.float32)
  state = train.create_train_state(model, x[0], base_rng=jax.random.PRNGKey(0),
                                   tx=train.make_optimizer(lambda step: 1e-4))
  step = train.make_train_step(model, prepare_input=train.image_input,
                               objective=losses.make_objective('vae'))
  text = jax.jit(lambda s, b: jax.lax.scan(step, s, b)).lower(state, {'image': x}).compile(
      ).as_text()
  labels = re.findall(r' convolution\(.*?dim_labels=([^,\s]+)', text)
  assert len(labels) >= 10  # 2 convs + 2 transposed, each with its gradients.
  assert set(labels) == {'b01f_01io->b01f'}, labels
