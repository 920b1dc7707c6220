"""Tests for tsvae.models: layers, stage-1/stage-2 networks, the VAE wrapper, registry."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import models
from tsvae.models import layers
from tsvae.models import resnet
from tsvae.models.vae import VAE

LATENT = 8
BATCH = 4


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


def _init(model, x, train=False):
  """Jitted init with 'rbg' keys: XLA:CPU compiles a jitted init with threefry keys
  very slowly for models with many parameters (~10-18 s for the ResNet)."""
  rngs = {'params': jax.random.key(0, impl='rbg'), 'noise': jax.random.key(1, impl='rbg')}
  return jax.jit(functools.partial(model.init, train=train))(rngs, x)


def _images(shape, batch=BATCH, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, *shape))


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
# Stage-1 networks
# ----------------------------------------------------------------------------------

SMALL_RESNET = dict(base_dim=4, fc_dim=16)
STAGE1_CASES = [
    ('infogan', (28, 28, 1), {}),
    ('infogan', (32, 32, 3), {}),
    ('infogan', (64, 64, 3), {}),
    ('wae', (64, 64, 3), {}),
    ('resnet', (16, 16, 1), SMALL_RESNET),
    ('resnet', (32, 32, 3), SMALL_RESNET),
    ('resnet', (64, 64, 3), SMALL_RESNET),
]


@pytest.mark.parametrize('arch,shape,kw', STAGE1_CASES)
def test_stage1_shapes_and_ranges(arch, shape, kw):
  batch = 2
  model = models.make_stage1_model(arch, shape, LATENT, **kw)
  x = _images(shape, batch)
  variables = _init(model, x)
  assert set(variables) == {'params', 'batch_stats'}
  assert float(variables['params']['loggamma_x']) == 0.0
  train_apply = jax.jit(lambda v, x: model.apply(
      v, x, train=True, mutable=['batch_stats'], rngs={'noise': jax.random.key(2)}))
  out, updates = train_apply(variables, x)
  assert set(out) == {'mu', 'sigma', 'log_sigma', 'z', 'x_hat', 'loggamma'}
  for key in ('mu', 'sigma', 'log_sigma', 'z'):
    assert out[key].shape == (batch, LATENT), key
  assert out['x_hat'].shape == (batch, *shape)
  assert out['loggamma'].shape == ()
  assert bool(jnp.all(out['sigma'] > 0))
  np.testing.assert_allclose(jnp.log(out['sigma']), out['log_sigma'], rtol=1e-5, atol=1e-5)
  assert bool(jnp.all((out['x_hat'] >= 0) & (out['x_hat'] <= 1)))
  assert jax.tree_util.tree_structure(updates['batch_stats']) == \
      jax.tree_util.tree_structure(variables['batch_stats'])
  # Decoder alone, inference mode.
  x_hat = jax.eval_shape(functools.partial(model.apply, train=False, method=VAE.decode),
                         variables, jnp.zeros((3, LATENT)))
  assert x_hat.shape == (3, *shape)
  mu, sigma, log_sigma = jax.eval_shape(
      functools.partial(model.apply, train=False, method=VAE.encode), variables, x)
  assert mu.shape == sigma.shape == log_sigma.shape == (batch, LATENT)


@pytest.mark.parametrize('arch,shape', [
    ('wae', (28, 28, 1)),
    ('wae', (32, 32, 3)),
    ('resnet', (28, 28, 1)),
    ('resnet', (48, 48, 3)),
    ('resnet', (2, 2, 1)),
    ('infogan', (30, 30, 1)),
    ('infogan', (16, 16, 1)),
    ('infogan', (28, 32, 1)),
    ('resnet', (32, 64, 3)),
    ('infogan', (28, 28, 2)),
    ('infogan', (28, 28)),
])
def test_unsupported_shapes_rejected(arch, shape):
  with pytest.raises(ValueError, match=repr(arch)):
    models.check_image_shape(arch, shape)
  with pytest.raises(ValueError):
    models.make_stage1_model(arch, shape, LATENT)


def test_rejection_messages_are_helpful():
  with pytest.raises(ValueError, match=r"arch 'wae' supports square 64x64 images only, "
                     r"got 28x28x1; use arch='infogan' for 28x28 images"):
    models.check_image_shape('wae', (28, 28, 1))
  with pytest.raises(ValueError, match=r"got 32x32x3; use arch='infogan' or 'resnet'"):
    models.check_image_shape('wae', (32, 32, 3))
  with pytest.raises(ValueError, match='known archs: infogan, wae, resnet'):
    models.check_image_shape('dcgan', (28, 28, 1))
  with pytest.raises(ValueError, match='square'):
    models.check_image_shape('resnet', (32, 64, 3))
  assert models.check_image_shape('infogan', [28, 28, 1]) == (28, 28, 1)
  assert models.STAGE1_ARCHS == ('infogan', 'wae', 'resnet')


def test_arch_kwargs_validation():
  with pytest.raises(TypeError):
    models.make_stage1_model('infogan', (28, 28, 1), LATENT, base_dim=4)
  with pytest.raises(TypeError):
    models.make_stage1_model('resnet', (32, 32, 3), LATENT, bogus=1)
  m = models.make_stage1_model('resnet', (32, 32, 3), LATENT, num_scale=3, base_dim=8,
                               block_per_scale=2, depth_per_block=1, kernel_size=3,
                               fc_dim=32)
  assert m.encoder.num_scale == 3 and m.decoder.base_dim == 8
  assert m.decoder.block_per_scale == 2 and m.encoder.fc_dim == 32


def _param_shapes(model, x):
  shapes = jax.eval_shape(lambda: _init(model, x))
  return jax.tree_util.tree_map(lambda a: a.shape, shapes)


def test_infogan_mnist_param_count():
  model = models.make_stage1_model('infogan', (28, 28, 1), 64)
  shapes = _param_shapes(model, jnp.zeros((1, 28, 28, 1)))
  n = sum(int(np.prod(s)) for s in jax.tree_util.tree_leaves(
      shapes['params'], is_leaf=lambda s: isinstance(s, tuple)))
  enc = (16 * 64 + 64) + (16 * 64 * 128 + 128) + 2 * 128 + (6272 * 1024 + 1024) + 2 * 1024 \
      + (1024 * 128 + 128)
  dec = (64 * 1024 + 1024) + 2 * 1024 + (1024 * 6272 + 6272) + 2 * 6272 \
      + (16 * 128 * 64 + 64) + 2 * 64 + (16 * 64 + 1)
  assert n == enc + dec + 1 == 13_331_586  # ~13.3 M as in environment-notes
  assert shapes['params']['decoder']['conv3']['kernel'] == (4, 4, 64, 128)
  assert shapes['batch_stats']['encoder']['fc3']['u'] == (6272, 1)


def test_wae_and_resnet_layer_shapes():
  wae = models.make_stage1_model('wae', (64, 64, 3), 64)
  p = _param_shapes(wae, jnp.zeros((1, 64, 64, 3)))['params']
  assert p['encoder']['conv4']['kernel'] == (5, 5, 512, 1024)
  assert p['encoder']['mu']['kernel'] == (8 * 8 * 1024, 64)
  assert p['decoder']['fc']['kernel'] == (64, 8 * 8 * 1024)
  assert p['decoder']['deconv1']['kernel'] == (5, 5, 512, 1024)
  assert p['decoder']['deconv4']['kernel'] == (5, 5, 3, 128)

  res = models.make_stage1_model('resnet', (64, 64, 3), 64)  # reference defaults
  p = _param_shapes(res, jnp.zeros((1, 64, 64, 3)))['params']
  enc, dec = p['encoder'], p['decoder']
  assert enc['conv0']['kernel'] == (3, 3, 3, 16)
  assert enc['scale3']['block0']['layer1']['kernel'] == (3, 3, 128, 128)
  assert enc['downsample2']['kernel'] == (3, 3, 64, 128)
  assert 'downsample3' not in enc
  assert enc['fc_block0']['shortcut']['kernel'] == (128, 512)
  assert enc['log_sigma']['kernel'] == (512, 64)
  assert dec['fc0']['kernel'] == (64, 2 * 2 * 512)
  assert dec['up0']['kernel'] == (3, 3, 256, 512)
  assert dec['up4']['kernel'] == (3, 3, 16, 32)
  assert 'up5' not in dec
  assert dec['scale4']['block0']['shortcut']['kernel'] == (3, 3, 16, 16)
  assert dec['out']['kernel'] == (3, 3, 16, 3)


def test_resnet_decoder_scales():
  assert resnet.decoder_scales(64, 16) == ([2, 4, 8, 16, 32, 64],
                                           [512, 256, 128, 64, 32, 16])
  scales, dims = resnet.decoder_scales(256, 32)
  assert scales[-1] == 256 and dims[:3] == [1024, 1024, 1024] and dims[-1] == 32
  with pytest.raises(ValueError):
    resnet.decoder_scales(48, 16)


def test_infogan_inits():
  model = models.make_stage1_model('infogan', (32, 32, 3), 64)
  p = _init(model, jnp.zeros((1, 32, 32, 3)))['params']
  conv = np.asarray(p['encoder']['conv2']['kernel'])
  assert np.abs(conv).max() <= 0.04 + 1e-7  # truncated at 2 std
  assert 0.014 < conv.std() < 0.02  # truncated normal(0.02) has std ~0.0176
  for w in (p['encoder']['fc3']['kernel'], p['decoder']['conv3']['kernel']):
    assert 0.019 < float(jnp.std(w)) < 0.021
    assert float(jnp.abs(w).max()) > 0.06  # untruncated normal
  for layer in ('conv1', 'conv2', 'fc3', 'en4'):
    assert not np.any(p['encoder'][layer]['bias'])


# ----------------------------------------------------------------------------------
# Spectral norm and BatchNorm
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


def test_spectral_norm_converges_and_lives_in_batch_stats():
  enc = models.InfoGANEncoder(LATENT)
  x = _images((28, 28, 1))
  variables = jax.jit(functools.partial(enc.init, train=False))(
      jax.random.key(0, impl='rbg'), x)
  sn_layers = ('conv1', 'conv2', 'fc3', 'en4')
  for name in sn_layers:
    assert set(variables['batch_stats'][name]) == {'u'}
    assert 'u' not in variables['params'][name]

  step = jax.jit(lambda v: enc.apply(v, x, train=True, mutable=['batch_stats'])[1])
  for _ in range(20):
    variables = {'params': variables['params'], **step(variables)}
  for name in ('conv1', 'conv2', 'en4'):
    kernel = variables['params'][name]['kernel']
    w_bar, _, _ = layers.spectral_normalize(kernel, variables['batch_stats'][name]['u'])
    top = np.linalg.svd(np.asarray(w_bar).reshape(-1, kernel.shape[-1]),
                        compute_uv=False)[0]
    assert abs(top - 1.0) < 0.05, (name, top)


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


def test_bn_zero_debias_reaches_every_batch_norm_of_every_arch():
  """The option adds one step counter per BN layer and nothing else; off, the variables are
  exactly those of the workdirs written before it (no counter)."""
  for arch, shape, kw in (('infogan', (28, 28, 1), {}), ('wae', (64, 64, 3), {}),
                          ('resnet', (16, 16, 3), dict(num_scale=2, base_dim=4, fc_dim=8))):
    x = _images(shape, batch=2)
    shapes = {}
    for debias in (False, True):
      model = models.make_stage1_model(arch, shape, LATENT, bn_zero_debias=debias, **kw)
      shapes[debias] = jax.eval_shape(
          lambda m=model: m.init({'params': jax.random.key(0), 'noise': jax.random.key(1)},
                                 x, train=False))
    off = jax.tree_util.tree_flatten_with_path(shapes[False])[0]
    on = jax.tree_util.tree_flatten_with_path(shapes[True])[0]
    off_paths = {jax.tree_util.keystr(p) for p, _ in off}
    added = {jax.tree_util.keystr(p) for p, _ in on} - off_paths
    num_bn = sum(1 for p in off_paths if p.endswith("['mean']"))
    assert num_bn > 0 and len(added) == num_bn, (arch, added)
    assert all(p.endswith("['local_step']") for p in added), (arch, added)
    assert shapes[False]['params'] == shapes[True]['params']
    assert not any('local_step' in p for p in off_paths)


def test_model_eval_mode_keeps_batch_stats():
  model = models.make_stage1_model('infogan', (28, 28, 1), LATENT)
  x = _images((28, 28, 1))
  variables = _init(model, x)
  apply = jax.jit(lambda v, train: model.apply(
      v, x, train=train, mutable=['batch_stats'], rngs={'noise': jax.random.key(5)})[1],
                  static_argnums=1)
  # Eval mode changes neither the BN averages nor the spectral-norm u vectors.
  upd = apply(variables, False)
  jax.tree_util.tree_map(np.testing.assert_array_equal, upd['batch_stats'],
                         variables['batch_stats'])
  # Train mode changes all of them.
  upd = apply(variables, True)
  changed = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)),
                                   upd['batch_stats'], variables['batch_stats'])
  assert all(jax.tree_util.tree_leaves(changed))


# ----------------------------------------------------------------------------------
# VAE wrapper and stage 2
# ----------------------------------------------------------------------------------


def test_vae_sampling_uses_noise_rng():
  model = models.make_stage2_model(LATENT, width=32)
  z = jax.random.normal(jax.random.key(0), (BATCH, LATENT))
  variables = _init(model, z)
  assert set(variables) == {'params'}
  run = lambda seed: model.apply(variables, z, train=True, rngs={'noise': jax.random.key(seed)})
  a, b, c = run(1), run(1), run(2)
  np.testing.assert_array_equal(a['z'], b['z'])
  assert not np.allclose(a['z'], c['z'])
  np.testing.assert_array_equal(a['mu'], c['mu'])
  eps = (a['z'] - a['mu']) / a['sigma']
  assert np.isfinite(np.asarray(eps)).all()
  np.testing.assert_allclose(a['sigma'], jnp.exp(a['log_sigma']), rtol=1e-6)
  with pytest.raises(Exception):  # no 'noise' rng
    model.apply(variables, z, train=False)


def test_stage2_shapes_and_concat_heads():
  width, depth = 32, 3
  model = models.make_stage2_model(LATENT, depth=depth, width=width)
  z = jax.random.normal(jax.random.key(0), (BATCH, LATENT))
  variables = _init(model, z)
  p = variables['params']
  assert float(p['loggamma_z']) == 0.0 and p['loggamma_z'].shape == ()
  for i in range(depth):
    assert f'fc{i}' in p['encoder'] and f'fc{i}' in p['decoder']
  assert 'fc3' not in p['encoder']
  assert p['encoder']['mu_u']['kernel'].shape == (width + LATENT, LATENT)
  assert p['encoder']['logsd_u']['kernel'].shape == (width + LATENT, LATENT)
  assert p['decoder']['z_hat']['kernel'].shape == (width + LATENT, LATENT)
  out = model.apply(variables, z, train=True, rngs={'noise': jax.random.key(1)})
  for key in ('mu', 'sigma', 'log_sigma', 'z', 'x_hat'):
    assert out[key].shape == (BATCH, LATENT)
  z_hat = model.apply(variables, out['z'], train=False, method=VAE.decode)
  np.testing.assert_allclose(z_hat, out['x_hat'], atol=1e-6)
  np.testing.assert_array_equal(model.apply(variables, method=VAE.loggamma), 0.0)

  # Heads really read [input, h3]: changing the input-part rows of the head kernel
  # changes the output even if the body is switched off (zero body output).
  zero_body = jax.tree_util.tree_map(jnp.zeros_like, p['encoder']['fc2'])
  p2 = {**p, 'encoder': {**p['encoder'], 'fc2': zero_body}}
  mu, _, _ = model.apply({'params': p2}, z, train=False, method=VAE.encode)
  head = p['encoder']['mu_u']
  np.testing.assert_allclose(mu, z @ head['kernel'][:LATENT] + head['bias'], atol=1e-5)

  # Default (reference) sizes: width 1024.
  shapes = _param_shapes(models.make_stage2_model(64), jnp.zeros((1, 64)))['params']
  assert shapes['encoder']['mu_u']['kernel'] == (1024 + 64, 64)
  assert shapes['decoder']['fc0']['kernel'] == (64, 1024)
