"""Issue #18, claim 4: the β-conditioned stage-1 VAE (stage1.model='vae_beta').

FiLM(log β) in the InfoGAN encoder and decoder (tsvae/models/beta_conditioned.py), log β drawn
per batch in training, the rate-distortion evaluation at several β from one run, latent
extraction and stage 2 at the chosen β, and the config checks.
"""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from configs import default
from testdata import eval_overrides, tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import experiment
from tsvae import generation
from tsvae import input_pipeline
from tsvae import latents
from tsvae import losses
from tsvae import models
from tsvae import pipeline
from tsvae import train
from tsvae import validation
from tsvae.evaluators import rate_distortion

SHAPE = (28, 28, 1)


def _model(beta=1.0, beta_range=(0.1, 3.0), latent_dim=4):
  return models.make_stage1_model('infogan', SHAPE, latent_dim, model='vae_beta',
                                  model_kwargs={'beta_range': beta_range, 'beta': beta})


def _init(model, batch=4):
  x = np.random.default_rng(0).uniform(size=(batch,) + SHAPE).astype(np.float32)
  variables = model.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x,
                         train=False)
  return variables, x


def _encode(model, variables, x, log_beta=None):
  kwargs = {} if log_beta is None else {'log_beta': jnp.float32(log_beta)}
  return model.apply(variables, x, train=False, method='encode', **kwargs)


def test_film_starts_at_the_unconditioned_net_and_beta_then_changes_outputs():
  model = _model(beta=0.5)
  variables, x = _init(model)
  z = np.ones((4, 4), np.float32)
  # Zero-initialised FiLM outputs: every β computes the same function at first.
  for a, b in zip(_encode(model, variables, x, math.log(0.1)),
                  _encode(model, variables, x, math.log(3.0))):
    np.testing.assert_array_equal(a, b)
  params = jax.tree_util.tree_map(lambda p: p, variables['params'])
  rng = np.random.default_rng(1)
  for net in ('encoder', 'decoder'):
    film = params[net]['film3']['film']
    film['kernel'] = jnp.asarray(rng.normal(0, 0.5, film['kernel'].shape), jnp.float32)
  variables = dict(variables, params=params)
  mu_lo, _, _ = _encode(model, variables, x, math.log(0.1))
  mu_hi, _, _ = _encode(model, variables, x, math.log(3.0))
  assert float(jnp.max(jnp.abs(mu_lo - mu_hi))) > 1e-3
  decode = lambda lb: model.apply(variables, z, train=False, method='decode',
                                  log_beta=jnp.float32(lb))
  assert float(jnp.max(jnp.abs(decode(math.log(0.1)) - decode(math.log(3.0))))) > 1e-3
  # No log β: the chosen β (0.5), through every entry point the pipeline uses.
  mu_default, _, _ = _encode(model, variables, x)
  np.testing.assert_allclose(mu_default, _encode(model, variables, x, math.log(0.5))[0],
                             rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(generation.decode(model, variables, z), decode(math.log(0.5)),
                             rtol=1e-6, atol=1e-6)
  mu_lat, _ = latents.encode(model, variables, x, batch_size=4)
  np.testing.assert_allclose(mu_lat, mu_default, rtol=1e-6, atol=1e-6)


def test_training_draws_one_beta_per_batch_in_range_and_weights_the_kl():
  model = _model()
  variables, x = _init(model)
  objective = losses.make_objective('vae_beta')
  drawn = []
  for seed in range(6):
    outputs, _ = model.apply(variables, x, train=True, rngs={'noise': jax.random.PRNGKey(seed)},
                             mutable=['batch_stats'])
    assert outputs['log_beta'].shape == ()
    beta = float(jnp.exp(outputs['log_beta']))
    assert 0.1 - 1e-6 <= beta <= 3.0 + 1e-6
    drawn.append(beta)
    loss, metrics = objective(x, outputs, variables['params'])
    ref, _ = losses.negative_elbo(x, outputs, beta=beta)
    np.testing.assert_allclose(loss, ref, rtol=1e-5)
    assert float(metrics['beta']) == pytest.approx(beta, rel=1e-6)
  assert len(set(drawn)) == len(drawn)  # A fresh β every batch.
  # One β per example: each KL weighted by its own.
  outputs, _ = model.apply(variables, x, train=True, rngs={'noise': jax.random.PRNGKey(0)},
                           mutable=['batch_stats'], log_beta=jnp.log(jnp.array([.1, .3, 1, 3.])))
  kl_each = 0.5 * jnp.sum(outputs['mu']**2 + outputs['sigma']**2 - 2 * outputs['log_sigma'] - 1,
                          axis=-1)
  gen = losses.gaussian_nll(x, outputs['x_hat'], outputs['loggamma'])
  expected = jnp.mean(jnp.array([.1, .3, 1, 3.]) * kl_each) + gen
  np.testing.assert_allclose(objective(x, outputs, None)[0], expected, rtol=1e-5)


def test_a_run_trains_evaluates_at_several_betas_and_extracts_at_the_chosen_one(tmp_path):
  workdir = str(tmp_path / 'run')
  config = tiny_config(**eval_overrides(str(tmp_path / 'cache'), num_samples=12), **{
      'stage1__model': 'vae_beta', 'stage1__learning_rate': 3e-3, 'stage1__num_epochs': 2,
      'stage1__max_steps': 8,
      'stage1__beta_cond__beta': 0.3, 'eval__beta_values': (0.1, 1.0, 3.0),
      'eval__expost_gmm_components': 0})
  with tfds.testing.mock_data(num_examples=40):
    result = pipeline.run(config, workdir)
    setup_model, _ = experiment.make_models(config, SHAPE)  # The run's own stage-1 model.
    v1 = generation.variables_of(result['state1'])
    builder = input_pipeline.get_builder('mnist')
    ds = input_pipeline.make_eval_dataset(builder, 'train', 'mnist', 64)
    train_x = np.concatenate([np.asarray(train.image_input(b, None))
                              for b in input_pipeline.as_numpy(ds)])
  # Training drew a β per batch from the range: the logged window means differ.
  rows = [json.loads(line) for line in open(os.path.join(workdir, 'metrics.jsonl'))]
  betas = [r['beta'] for r in rows if r.get('stage') == 'stage1']
  assert betas and all(0.1 <= b <= 3.0 for b in betas) and len(set(betas)) > 1
  # The evaluation: one network, one rate-distortion point per β of eval.beta_values.
  metrics = result['eval']
  assert metrics['rd_betas'] == [0.1, 1.0, 3.0]
  rates, distortions = metrics['rd_rate_kl'], metrics['rd_distortion_mse']
  assert len(rates) == 3 and all(np.isfinite(rates)) and all(np.isfinite(distortions))
  assert len(set(rates)) == 3  # The trained conditioning changes the encoder's outputs.
  on_disk = json.load(open(os.path.join(workdir, 'eval', 'metrics.json')))
  assert on_disk['rd_rate_kl'] == rates
  # Latent extraction and stage 2 at the chosen β (0.3, not one of eval.beta_values).
  stored = input_pipeline.read_latent_dataset_builder(latents.latents_dir(workdir)).load()
  at_chosen = np.asarray(_encode(setup_model, v1, train_x, math.log(0.3))[0])
  np.testing.assert_allclose(stored['mu'], at_chosen, rtol=1e-4, atol=1e-5)
  at_other = _encode(setup_model, v1, train_x, math.log(3.0))[0]
  assert float(np.max(np.abs(stored['mu'] - np.asarray(at_other)))) > 1e-4
  assert checkpointing.is_complete(workdir, 'stage2') and result['state2'] is not None
  assert metrics['proxy_fd_stage2'] is not None
  # rate_kl / distortion_mse are the chosen β's.
  rate, distortion = rate_distortion.rate_distortion(
      setup_model, v1, np.zeros((3,) + SHAPE, np.float32), batch_size=4, seed=0, beta=0.3)
  rate_default, distortion_default = rate_distortion.rate_distortion(
      setup_model, v1, np.zeros((3,) + SHAPE, np.float32), batch_size=4, seed=0)
  assert rate == pytest.approx(rate_default, rel=1e-5)
  assert distortion == pytest.approx(distortion_default, rel=1e-5)


def _config(**overrides):
  config = default.get_config()
  for key, value in overrides.items():
    config_lib.set_dotted(config, key.replace('__', '.'), value)
  return config


@pytest.mark.parametrize('overrides, match', [
    ({'stage1.model': 'vae_beta', 'stage1.beta_cond.beta_range': (3.0, 0.1)}, 'beta_range'),
    ({'stage1.model': 'vae_beta', 'stage1.beta_cond.beta_range': (0.0, 3.0)}, 'beta_range'),
    ({'stage1.model': 'vae_beta', 'stage1.beta_cond.beta_range': (0.1, 1.0, 3.0)}, 'beta_range'),
    ({'stage1.model': 'vae_beta', 'stage1.beta_cond.beta': 5.0}, 'trained range'),
    ({'stage1.model': 'vae_beta', 'stage1.beta_cond.beta': -1.0}, 'beta_cond.beta'),
    ({'stage1.model': 'vae_beta', 'eval.beta_values': (0.1, 10.0)}, 'trained range'),
    ({'stage1.model': 'vae_beta', 'eval.beta_values': ()}, 'beta_values'),
    ({'eval.beta_values': (0.1, -1.0)}, 'beta_values'),
    ({'stage1.model': 'vae_beta', 'stage1.beta': 2.0}, 'no effect'),
    ({'stage1.model': 'vae_beta', 'arch': 'resnet', 'dataset': 'cifar10'}, "arch='infogan'"),
    ({'stage1.beta_cond.beta': 0.5}, 'no effect'),
])
def test_bad_beta_conditioned_configs_fail_with_one_clear_error(overrides, match):
  with pytest.raises(config_lib.ConfigError, match=match):
    validation.validate_config(_config(**overrides), num_devices=1)


def test_defaults_and_fingerprints_are_unchanged():
  validation.validate_config(_config(**{'stage1.model': 'vae_beta'}), num_devices=1)
  config = default.get_config()
  keys = config_lib.experiment_keys(config)
  assert not any(k.startswith('stage1.beta_cond') or k == 'eval.beta_values' for k in keys)
  before = default.get_config()  # The config as it was before the β-conditioned keys.
  del before.stage1.beta_cond
  del before.eval.beta_values
  assert config_lib.experiment_keys(before) == keys
  assert checkpointing.fingerprint(config_lib.experiment_keys(before)) == (
      checkpointing.fingerprint(keys))
  changed = _config(**{'stage1.model': 'vae_beta', 'stage1.beta_cond.beta': 0.3})
  assert config_lib.experiment_keys(changed)['stage1.beta_cond.beta'] == 0.3


def test_a_workdir_from_before_the_keys_resumes_and_refuses_a_conditioned_run(tmp_path):
  config = tiny_config()
  old = {k: v for k, v in config_lib.flatten(config).items()
         if not k.startswith('stage1.beta_cond.') and k != 'eval.beta_values'}
  (tmp_path / 'config.json').write_text(json.dumps(old))
  config_lib.check_workdir(config, str(tmp_path))
  with pytest.raises(config_lib.ConfigError, match='stage1.model'):
    config_lib.check_workdir(tiny_config(stage1__model='vae_beta'), str(tmp_path))
