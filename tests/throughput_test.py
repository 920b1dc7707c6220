"""The fast paths behind the train-step throughput compute the plain formulation's function.

* `layers.Dense` (kernel gradient formed as [in, out]) against `flax.linen.Dense`.
* Spectral norm: `SNConv` / `SNDense` (fast=True: sigma without forming W^T, output or kernel
  divided by sigma) against the reference form (`spectral_normalize`, fast=False): outputs,
  new u, and gradients w.r.t. input and kernel, to float tolerance.
* The whole InfoGAN-SN stage-1 train step as the trainer jits it (fast spectral norm,
  custom-VJP transposed convs, XLA:CPU options) against the same step built from the plain
  formulations with a plain `jax.jit`: loss, gradient norm, new parameters, Adam moments,
  BN/SN statistics.
* Smoke tests of `benchmarks/step_throughput.py` (tiny settings; no timing assertions).
"""

import json
import os
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tsvae import hostmem
from tsvae import models
from tsvae import train
from tsvae.models import layers
from tsvae.models.vae import VAE

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def _rel(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30)


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


def _state(model, batch, seed=0):
  tx = train.make_optimizer(lambda step: 1e-3)
  return train.create_train_state(model, np.zeros_like(batch['image'], np.float32),
                                  base_rng=jax.random.PRNGKey(seed), tx=tx)


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
      train.make_train_step(fast, prepare_input=train.image_input), mesh)
  plain_step = jax.jit(train.make_train_step(plain, prepare_input=train.image_input))
  init = jax.device_get(_state(fast, batch))
  s_fast = jax.device_put(_state(fast, batch), train.replicated(mesh))
  s_plain = _state(plain, batch)
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
  state = _state(model, batch)
  mesh = train.make_mesh(jax.devices()[:1])
  step = train.jit_train_step(train.make_train_step(model, prepare_input=train.image_input),
                              mesh)
  # An Inf in one kernel: the loss and gradients go non-finite, the flag must say so.
  params = jax.tree_util.tree_map(lambda x: x, state.params)
  params['decoder']['fc1']['kernel'] = params['decoder']['fc1']['kernel'].at[0, 0].set(jnp.inf)
  _, metrics = step(state.replace(params=params), train.shard_batch(batch, mesh))
  assert not bool(metrics['finite'])
  _, metrics = step(_state(model, batch), train.shard_batch(batch, mesh))
  assert bool(metrics['finite'])


# ----------------------------------------------------------------------------- benchmark


def test_benchmark_stage1_smoke(tmp_path):
  out = tmp_path / 'stage1.json'
  record = step_throughput.main(
      ['stage1', '--batch_size', '4', '--latent_dim', '8', '--steps', '1', '--reps', '2',
       '--warmup', '0', '--out', str(out)])
  saved = json.loads(out.read_text())
  assert saved['config']['batch_size'] == 4 and saved['config']['arch'] == 'infogan'
  assert saved['config']['bn_zero_debias'] is True  # The training default.
  assert saved['result']['images_per_sec'] > 0 and len(saved['result']['rates']) == 2
  assert saved['result']['finite']
  for key in ('machine', 'versions', 'git', 'peak_rss_mib', 'loadavg_before'):
    assert key in saved
  assert record['result'] == saved['result']


def test_benchmark_stage2_smoke():
  record = step_throughput.main(
      ['stage2', '--batch_size', '8', '--latent_dim', '4', '--width', '16', '--steps', '1',
       '--reps', '1', '--warmup', '0'])
  assert record['result']['images_per_sec'] > 0


def test_benchmark_input_smoke(tmp_path):
  from testdata import write_mnist_dir  # pylint: disable=g-import-not-at-top
  write_mnist_dir(str(tmp_path / 'manual'))
  record = step_throughput.main(
      ['input', '--dataset', 'mnist', '--manual_dir', str(tmp_path / 'manual'), '--data_dir',
       str(tmp_path / 'tfds'), '--batch_size', '8', '--epochs', '1', '--to_device'])
  assert record['result']['images_per_sec'] > 0
  assert record['result']['train_examples'] == 40


def test_hostmem_switch_and_glibc_effect():
  """tsvae.main's allocator setting: off with TSVAE_TUNE_MALLOC=0, applied on glibc otherwise.

  Run in a fresh interpreter (the setting is process-wide) that then allocates and frees a
  64 MB block twice: with the setting, the second allocation reuses the mapped heap (its pages
  are already resident, so it causes almost no new minor page faults).
  """
  import subprocess  # pylint: disable=g-import-not-at-top
  code = r'''
import ctypes, json, resource, sys
from tsvae import hostmem
status = hostmem.tune_malloc_for_training()
libc = ctypes.CDLL('libc.so.6')
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
def touch_and_free(n=64 << 20):
  p = libc.malloc(n)
  ctypes.memset(p, 1, n)
  libc.free(p)
touch_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
touch_and_free()
status['faults_second'] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps(status))
'''
  def run(env_value):
    env = dict(os.environ, TSVAE_TUNE_MALLOC=env_value)
    out = subprocess.run([sys.executable, '-c', code], cwd=REPO_ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

  on, off = run('1'), run('0')
  assert off == {'applied': False, 'late': False, 'faults_second': off['faults_second']}
  assert hostmem.describe(off).startswith('Host malloc tuned for XLA:CPU temp buffers: False ')
  assert hostmem.describe({'applied': True, 'late': True}) == (
      'Host malloc tuned for XLA:CPU temp buffers: True (after JAX import) '
      '(TSVAE_TUNE_MALLOC=0 turns it off).')
  if not on['applied']:
    pytest.skip('not glibc: the allocator setting does not apply')
  assert not on['late']
  pages = (64 << 20) // 4096
  assert off['faults_second'] > pages // 2  # glibc mmaps the block afresh: every page faults.
  assert on['faults_second'] < pages // 10  # The heap keeps it mapped.
