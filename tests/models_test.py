"""Tests for tsvae.models: stage-1/stage-2 networks, their spectral-norm and BatchNorm state, the
VAE wrapper, the stage-1 baselines of issue #4 (IAF posterior, deterministic encoders), registry.

The layers themselves (tsvae.models.layers) are tested in layers_test.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from testdata import BASELINE_DIM as DIM, BASELINE_X as X  # pylint: disable=g-multiple-import
from testdata import tiny_deterministic_ae as _deterministic, tiny_flow_vae as _flow_vae
from tsvae import models
from tsvae import generation
from tsvae import latents
from tsvae import train
from tsvae.models import baselines
from tsvae.models import layers
from tsvae.models import resnet
from tsvae.models.vae import VAE


LATENT = 8
BATCH = 4


def _init(model, x, train=False):
  """Jitted init with 'rbg' keys: XLA:CPU compiles a jitted init with threefry keys
  very slowly for models with many parameters (~10-18 s for the ResNet)."""
  rngs = {'params': jax.random.key(0, impl='rbg'), 'noise': jax.random.key(1, impl='rbg')}
  return jax.jit(functools.partial(model.init, train=train))(rngs, x)


def _images(shape, batch=BATCH, seed=0):
  return jax.random.uniform(jax.random.key(seed), (batch, *shape))


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
# Spectral norm and BatchNorm in the networks
# ----------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------
# Stage-1 baselines (issue #4): VAE + IAF, deterministic encoders (WAE-MMD, RAE)
# ----------------------------------------------------------------------------------



def _init_dense(model, x=X):
  """Init with threefry keys (params 0, noise 1) on the baseline tests' data X."""
  return model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x,
                    train=False)


def test_made_masks_are_autoregressive():
  for dim in (1, 2, 5):
    to_hidden, hidden, to_out = baselines.made_masks(dim, 7)
    reach = (to_hidden @ hidden @ to_out) > 0  # reach[j, i]: input j can affect output i.
    for i in range(dim):
      for j in range(dim):
        if j >= i:
          assert not reach[j, i], (dim, j, i)
    if dim > 1:
      assert reach[0, dim - 1]  # ...and the allowed connections exist.


def _perturbed(params, rng, scale=0.3):
  """Parameters plus noise (biases too), so that no output is trivially constant."""
  return jax.tree_util.tree_map(
      lambda p: np.asarray(p) + scale * rng.normal(size=p.shape).astype(np.float32), params)


def test_iaf_log_det_matches_numerical_jacobian_and_steps_are_triangular():
  dim = 5
  flow = baselines.IAFFlow(num_steps=3, hidden=16)
  rng = np.random.default_rng(6)
  z0 = jnp.asarray(rng.normal(size=(1, dim)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(1, 2 * dim)), jnp.float32)
  params = _perturbed(flow.init(jax.random.PRNGKey(0), z0, ctx), rng)
  z_k, log_det, jac = jax.jit(lambda z: (*flow.apply(params, z[None], ctx),
                                         jax.jacfwd(lambda y: flow.apply(params, y[None],
                                                                         ctx)[0][0])(z)))(z0[0])
  sign, logabsdet = np.linalg.slogdet(np.asarray(jac, np.float64))
  assert sign > 0
  np.testing.assert_allclose(log_det[0], logabsdet, rtol=1e-4, atol=1e-4)
  assert z_k.shape == z0.shape

  step = baselines.IAFStep(hidden=16)
  h = jnp.asarray(rng.normal(size=(1, 16)), jnp.float32)
  sparams = _perturbed(step.init(jax.random.PRNGKey(1), z0, h), rng)
  step_log_det, sjac = jax.jit(lambda z: (
      step.apply(sparams, z[None], h)[1],
      jax.jacfwd(lambda y: step.apply(sparams, y[None], h)[0][0])(z)))(z0[0])
  sjac = np.asarray(sjac)
  assert np.all(np.triu(sjac, 1) == 0.0)  # Autoregressive: output i sees inputs ≤ i only.
  assert np.count_nonzero(np.tril(sjac, -1)) > 0
  np.testing.assert_allclose(step_log_det[0], np.sum(np.log(np.diag(sjac))), rtol=1e-5)
  assert np.all((np.diag(sjac) > 0) & (np.diag(sjac) < 1))  # The gates σ_k ∈ (0, 1).


def test_flow_vae_reconstruction_goes_through_the_flow():
  model = _flow_vae()
  variables = _init_dense(model)
  rng = jax.random.PRNGKey(7)
  recon = generation.reconstruct(model, variables, X, rng)
  eps = jax.random.normal(jax.random.fold_in(rng, 0), (len(X), DIM))
  mu, sigma, log_sigma = model.apply(variables, X, train=False, method='encode')
  z_k, _ = model.apply(variables, mu + sigma * eps, jnp.concatenate([mu, log_sigma], -1),
                       method=lambda m, z, c: m.flow(z, c))
  expected = model.apply(variables, z_k, train=False, method=models.VAE.decode)
  np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(z_k, mu + sigma * eps)  # The flow is not the identity.


def test_deterministic_encoder_and_sampling_paths():
  model = _deterministic()
  variables = _init_dense(model)
  mu, sigma = latents.encode_batch(model, variables, X)
  assert np.all(np.asarray(sigma) == 0.0)
  _, _, log_sigma = model.apply(variables, X, train=False, method='encode')
  assert np.all(np.asarray(log_sigma) == baselines.DETERMINISTIC_LOG_SIGMA)
  assert np.all(np.isfinite(log_sigma)) and float(jnp.exp(log_sigma).max()) == 0.0
  # Reconstruction decodes z = μ whatever the noise.
  r1 = generation.reconstruct(model, variables, X, jax.random.PRNGKey(0))
  r2 = generation.reconstruct(model, variables, X, jax.random.PRNGKey(1))
  np.testing.assert_array_equal(r1, r2)
  np.testing.assert_allclose(
      r1, model.apply(variables, mu, train=False, method=models.VAE.decode), rtol=1e-6)
  # Stage-2 input from these latents is the codes themselves.
  z = train.latent_input({'mu': mu, 'sigma': sigma}, jax.random.PRNGKey(2))
  np.testing.assert_array_equal(z, mu)
  out = model.apply(variables, X, train=True, rngs={'noise': jax.random.PRNGKey(3)},
                    mutable=['batch_stats'])[0]
  np.testing.assert_array_equal(out['z'], mu)
  assert out['z_prior'].shape == mu.shape


def test_make_stage1_model_families():
  for name, cls in (('vae', models.VAE), ('vae_flow', models.FlowVAE),
                    ('wae_mmd', models.DeterministicAE), ('rae', models.DeterministicAE)):
    model = models.make_stage1_model('infogan', (28, 28, 1), 8, model=name)
    assert type(model) is cls  # pylint: disable=unidiomatic-typecheck
  rae = models.make_stage1_model('infogan', (28, 28, 1), 8, model='rae',
                                 gamma={'running_mse_momentum': 0.5})
  assert rae.gamma_mode == 'running_mse' and rae.running_mse_momentum == 0.5
  flow = models.make_stage1_model('infogan', (28, 28, 1), 8, model='vae_flow',
                                  model_kwargs={'flow_steps': 3, 'flow_hidden': 32})
  assert (flow.flow_steps, flow.flow_hidden) == (3, 32)
  # Traced (not compiled) in train mode on InfoGAN: the wrapped encoder keeps its spectral-norm
  # and BatchNorm state, next to the running MSE of γ.
  x = jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)
  rngs = {'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}
  for model in (rae, flow):
    variables = jax.eval_shape(lambda x, m=model: m.init(rngs, x, train=False), x)
    out, updates = jax.eval_shape(
        lambda v, x, m=model: m.apply(v, x, train=True, rngs={'noise': rngs['noise']},
                                      mutable=['batch_stats']), variables, x)
    assert out['x_hat'].shape == (4, 28, 28, 1) and out['z'].shape == (4, 8)
    assert jax.tree_util.tree_structure(updates['batch_stats']) == (
        jax.tree_util.tree_structure(variables['batch_stats']))
  rae_vars = jax.eval_shape(lambda x: rae.init(rngs, x, train=False), x)
  assert set(rae_vars['batch_stats']) == {'encoder', 'decoder', 'running_mse'}
  assert 'conv1' in rae_vars['batch_stats']['encoder']['inner']
  with pytest.raises(ValueError, match='unknown stage-1 model'):
    models.make_stage1_model('infogan', (28, 28, 1), 8, model='gan')
  with pytest.raises(TypeError, match='model_kwargs'):
    models.make_stage1_model('infogan', (28, 28, 1), 8, model='rae',
                             model_kwargs={'flow_steps': 2})
