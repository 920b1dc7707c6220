"""Stage-1 model families of issue #4: VAE + IAF, WAE-MMD, RAE; stage2.enabled=False runs."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

import testdata
from testdata import tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import losses
from tsvae import models
from tsvae import sampling
from tsvae import train
from tsvae import two_stage
from tsvae.models import baselines
from tsvae.models.stage2 import Stage2Decoder, Stage2Encoder

DIM = 4  # Data and code dimension of the dense test models.
X = np.random.default_rng(0).normal(size=(8, DIM)).astype(np.float32)


def _flow_vae(steps=2, hidden=8):
  return baselines.FlowVAE(encoder=Stage2Encoder(DIM, 1, 8), decoder=Stage2Decoder(DIM, 1, 8),
                           gamma_name='loggamma_x', flow_steps=steps, flow_hidden=hidden)


def _deterministic():
  return baselines.DeterministicAE(
      encoder=baselines.DeterministicEncoder(Stage2Encoder(DIM, 1, 8)),
      decoder=Stage2Decoder(DIM, 1, 8), gamma_name='loggamma_x', gamma_mode='running_mse')


def _init(model, x=X):
  return model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x,
                    train=False)


# ------------------------------------------------------------------ objectives by hand


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


def test_vae_objective_is_the_reference_elbo():
  model = models.make_stage2_model(DIM, depth=1, width=8)
  variables = _init(model)
  out = model.apply(variables, X, train=True, rngs={'noise': jax.random.PRNGKey(3)})
  a = losses.make_objective('vae', beta=2.0)(X, out, variables['params'])
  b = losses.negative_elbo(X, out, beta=2.0)
  np.testing.assert_array_equal(a[0], b[0])
  with pytest.raises(ValueError, match='stage-1 model'):
    losses.make_objective('gan')


# ------------------------------------------------------------------ IAF


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
  variables = _init(model)
  rng = jax.random.PRNGKey(7)
  recon = sampling.reconstruct(model, variables, X, rng)
  eps = jax.random.normal(jax.random.fold_in(rng, 0), (len(X), DIM))
  mu, sigma, log_sigma = model.apply(variables, X, train=False, method='encode')
  z_k, _ = model.apply(variables, mu + sigma * eps, jnp.concatenate([mu, log_sigma], -1),
                       method=lambda m, z, c: m.flow(z, c))
  expected = model.apply(variables, z_k, train=False, method=models.VAE.decode)
  np.testing.assert_allclose(recon, expected, rtol=1e-5, atol=1e-6)
  assert not np.allclose(z_k, mu + sigma * eps)  # The flow is not the identity.


# ------------------------------------------------------------------ deterministic models


def test_deterministic_encoder_and_sampling_paths():
  model = _deterministic()
  variables = _init(model)
  mu, sigma = sampling.encode_batch(model, variables, X)
  assert np.all(np.asarray(sigma) == 0.0)
  _, _, log_sigma = model.apply(variables, X, train=False, method='encode')
  assert np.all(np.asarray(log_sigma) == baselines.DETERMINISTIC_LOG_SIGMA)
  assert np.all(np.isfinite(log_sigma)) and float(jnp.exp(log_sigma).max()) == 0.0
  # Reconstruction decodes z = μ whatever the noise.
  r1 = sampling.reconstruct(model, variables, X, jax.random.PRNGKey(0))
  r2 = sampling.reconstruct(model, variables, X, jax.random.PRNGKey(1))
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


# ------------------------------------------------------------------ train steps


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
        model.apply(sampling.variables_of(state), method=models.VAE.loggamma),
        0.5 * math.log(mse), rtol=1e-5)


# ------------------------------------------------------------------ config and the run


@pytest.mark.parametrize('overrides, match', [
    (dict(stage1__model='vea'), "Did you mean 'vae'"),
    (dict(stage1__model='vae_flow'), 'stage2.enabled=False'),
    (dict(stage1__model='vae_flow', stage2__enabled=False, stage1__flow__num_steps=0),
     'flow.num_steps must be a positive integer'),
    (dict(stage1__flow__hidden=-3), 'flow.hidden must be a positive integer'),
    (dict(stage1__model='wae_mmd', stage1__wae__lambda_mmd=-1.0), 'lambda_mmd must be'),
    (dict(stage1__wae__recon_scale=0.0), 'recon_scale must be a positive'),
    (dict(stage1__model='rae', stage1__rae__z_weight=float('nan')), 'z_weight must be'),
    (dict(stage1__rae__decoder_l2=-1e-3), 'decoder_l2 must be'),
    (dict(stage1__model='rae', stage1__beta=2.0), 'stage1.beta=2.0 has no effect'),
    (dict(stage1__model='wae_mmd', stage1__gamma_mode='optimal'), 'gamma_mode'),
    (dict(stage1__model='wae_mmd', stage1__reconstruction_loss='cross_entropy'),
     'reconstruction_loss'),
])
def test_bad_baseline_configs_fail_before_anything_is_written(tmp_path, overrides, match):
  workdir = tmp_path / 'workdir'
  with pytest.raises(config_lib.ConfigError, match=match):
    two_stage.run(tiny_config(**overrides), str(workdir))
  assert not workdir.exists()


def test_new_keys_at_their_defaults_keep_old_workdirs(tmp_path):
  config = tiny_config()
  keys = config_lib.experiment_keys(config)
  assert not any(k.startswith(('stage1.model', 'stage1.flow', 'stage1.wae', 'stage1.rae'))
                 or k == 'stage2.enabled' for k in keys)
  old = {k: v for k, v in config_lib.flatten(config).items()
         if not k.startswith(('stage1.model', 'stage1.flow.', 'stage1.wae.', 'stage1.rae.'))
         and k != 'stage2.enabled'}
  (tmp_path / 'config.json').write_text(json.dumps(old))
  config_lib.check_workdir(config, str(tmp_path))  # An old workdir resumes.
  with pytest.raises(config_lib.ConfigError, match='stage1.model'):
    config_lib.check_workdir(tiny_config(stage1__model='rae'), str(tmp_path))
  assert 'stage1.rae.z_weight' in config_lib.experiment_keys(
      tiny_config(stage1__rae__z_weight=1e-3))


def test_single_stage_run_writes_stage1_grids_only(tmp_path, monkeypatch):
  monkeypatch.setattr(models, 'make_stage1_model', testdata.tiny_stage1_model)
  workdir = str(tmp_path / 'run')
  config = tiny_config(stage1__model='rae', stage2__enabled=False, batch_size=4,
                       stage1__max_steps=2, sampling__num_grid_images=4, log_every_steps=1)
  with tfds.testing.mock_data(num_examples=8):
    result = two_stage.run(config, workdir)
  assert isinstance(two_stage.Experiment(config, workdir).model1, models.DeterministicAE)
  assert result['state2'] is None
  assert set(result['samples']) == {'stage1_samples', 'reconstructions'}
  for name in ('stage1_samples.png', 'reconstructions.png'):
    grid = np.asarray(Image.open(os.path.join(workdir, 'samples', name)))
    assert grid.shape[0] >= 2 * 28 and grid.std() > 0
  assert not os.path.exists(os.path.join(workdir, 'samples', 'stage2_samples.png'))
  assert not os.path.exists(os.path.join(workdir, two_stage.LATENTS_DIR))
  assert not os.path.exists(os.path.join(workdir, 'stage2'))
  assert checkpointing.is_complete(workdir, 'stage1')
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert {r['stage'] for r in records} == {'stage1'}
  assert [r['step'] for r in records] == [1, 2]
  for key in ('loss', 'kl', 'gen', 'z_penalty', 'decoder_l2', 'loggamma', 'mse'):
    assert np.isfinite(records[-1][key]), key
  # stage2.enabled is run-control: the same workdir may go on to train stage 2.
  two_stage.Experiment(tiny_config(stage1__model='rae', batch_size=4, stage1__max_steps=2,
                                   sampling__num_grid_images=4), workdir)
