"""The ex-post GMM (tsvae.metrics.expost_gmm) and the evaluation of single-stage runs and of
deterministic encoders (σ_z = 0)."""

import dataclasses
import json
import os
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds

from evaluators_test import check_null_reasons
from testdata import tiny_config
from tsvae import evaluate
from tsvae import evaluators
from tsvae import experiment as experiment_lib
from tsvae import latents
from tsvae import stages
from tsvae.metrics import expost_gmm

# --------------------------------------------------------------------------------- the GMM


def _two_clusters(n=3000, seed=0):
  rng = np.random.default_rng(seed)
  means = np.array([[-4.0, 0.0, 1.0], [3.0, 2.0, -1.0]])
  covs = np.array([np.diag([1.0, 0.5, 0.2]), [[1.0, 0.6, 0.0], [0.6, 1.0, 0.0], [0.0, 0.0, 0.3]]])
  labels = rng.random(n) < 0.3  # 30 % from cluster 1.
  x = np.where(labels[:, None],
               rng.multivariate_normal(means[1], covs[1], n),
               rng.multivariate_normal(means[0], covs[0], n))
  return x.astype(np.float32), means, covs


def test_fit_recovers_a_two_cluster_mixture():
  x, means, covs = _two_clusters()
  gmm = expost_gmm.fit(x, 2, seed=0)
  order = np.argsort(gmm.means[:, 0])  # Cluster 0 has the smaller first coordinate.
  np.testing.assert_allclose(gmm.means[order], means, atol=0.1)
  np.testing.assert_allclose(gmm.weights[order], [0.7, 0.3], atol=0.03)
  np.testing.assert_allclose(gmm.covariances[order], covs, atol=0.1)
  assert gmm.converged and gmm.num_codes == len(x) and np.isfinite(gmm.mean_log_likelihood)
  summary = gmm.summary()
  assert summary['components'] == 2 and summary['covariance_type'] == 'full'
  json.dumps(summary)  # metrics.json-ready.
  again = expost_gmm.fit(x, 2, seed=0)
  np.testing.assert_array_equal(again.means, gmm.means)  # Deterministic for a seed.


def test_fit_refuses_what_it_cannot_fit():
  with pytest.raises(ValueError, match='cannot fit'):
    expost_gmm.fit(np.zeros((5, 2)), 10)
  with pytest.raises(ValueError, match='finite'):
    expost_gmm.fit(np.full((50, 2), np.nan), 2)
  with pytest.raises(ValueError, match='>= 1'):
    expost_gmm.fit(np.zeros((50, 2)), 0)


def test_sampling_shape_determinism_and_distribution():
  x, means, covs = _two_clusters()
  gmm = expost_gmm.fit(x, 2, seed=0)
  z, comps = expost_gmm.sample(gmm, 20_000, seed=3, return_components=True)
  assert z.shape == (20_000, 3) and z.dtype == np.float32
  np.testing.assert_array_equal(expost_gmm.sample(gmm, 20_000, seed=3), z)
  assert not np.array_equal(expost_gmm.sample(gmm, 20_000, seed=4), z)
  for k in range(2):  # Each component's draws have its mean and covariance.
    assert np.mean(comps == k) == pytest.approx(gmm.weights[k], abs=0.02)
    np.testing.assert_allclose(z[comps == k].mean(0), gmm.means[k], atol=0.05)
    np.testing.assert_allclose(np.cov(z[comps == k], rowvar=False), gmm.covariances[k],
                               atol=0.06)
  # Draws are in random component order (a grid of the first ones shows every cluster).
  assert 0 < comps[:100].mean() < 1
  decoded = expost_gmm.generate(lambda c: np.tanh(c[:, :2]), gmm, 7, seed=3, batch_size=4)
  np.testing.assert_allclose(decoded, np.tanh(expost_gmm.sample(gmm, 7, seed=3)[:, :2]),
                             rtol=1e-6)


# ------------------------------------------------------------------------ in the evaluation

STAGE2_KEYS = ('proxy_fd_stage2', 'fid_stage2', 'mmd_u', 'loggamma_z', 'singular_values_u',
               'stage2_step')


def test_evaluation_scores_gmm_samples(evaluated_run):
  config, workdir, _, result = evaluated_run
  metrics = result['eval']
  assert np.isfinite(metrics['proxy_fd_gmm']) and metrics['proxy_fd_gmm'] >= 0
  assert metrics['fid_gmm'] is None and metrics['null_reasons']['fid_gmm'] == (
      metrics['fid_unavailable_reason'])
  fit = metrics['expost_gmm']
  assert fit['components'] == config.eval.expost_gmm_components == 10
  assert fit['num_codes'] == 40 and np.isfinite(fit['mean_log_likelihood'])
  assert sum(fit['weights']) == pytest.approx(1.0)
  assert metrics['plots']['samples_gmm'] == 'samples_gmm.png'
  with open(os.path.join(workdir, 'eval', 'samples_gmm.png'), 'rb') as f:
    assert f.read(4) == b'\x89PNG'


def _copy_and_restore(evaluated_run, tmp_path):
  """A Setup on a copy of the evaluated run's workdir, and its two restored stages."""
  config, workdir, _, _ = evaluated_run
  copy = str(tmp_path / 'workdir')
  shutil.copytree(workdir, copy, ignore=shutil.ignore_patterns('eval'))
  with tfds.testing.mock_data(num_examples=40):
    setup = experiment_lib.setup(config, copy)
    return setup, stages.restore_final(setup, 'stage1'), stages.restore_final(setup, 'stage2')


def test_stage2_disabled_gives_nulls_with_reasons(evaluated_run, tmp_path):
  setup, state1, state2 = _copy_and_restore(evaluated_run, tmp_path)
  config = setup.config.copy_and_resolve_references()
  config.stage2.enabled = False  # Wins over a stage-2 state.
  with tfds.testing.mock_data(num_examples=40):
    metrics = evaluators.evaluate(dataclasses.replace(setup, config=config), state1, state2)
  for key in STAGE2_KEYS:
    assert metrics[key] is None, key
    assert 'stage2.enabled=False' in metrics['null_reasons'][key], key
  assert 'stage2.enabled=False' in metrics['stage2_unavailable_reason']
  check_null_reasons(metrics)
  for name in ('stage1', 'recon', 'gmm', 'train'):  # Stage-1 and GMM metrics are still there.
    assert np.isfinite(metrics[f'proxy_fd_{name}']), name
  assert np.isfinite(metrics['mmd_z']) and np.isfinite(metrics['loggamma_x'])
  assert metrics['active_dims'] is not None and metrics['stage1_encoder'].startswith('stoch')
  on_disk = json.loads((tmp_path / 'workdir' / 'eval' / 'metrics.json').read_text())
  assert on_disk['null_reasons'] == metrics['null_reasons'] and on_disk['mmd_u'] is None
  for name in metrics['plots'].values():
    assert (tmp_path / 'workdir' / 'eval' / name).read_bytes()[:4] == b'\x89PNG', name


def test_deterministic_encoder_absent_stage2_and_gmm_off(evaluated_run, tmp_path, monkeypatch):
  """σ_z = 0 (the WAE-MMD / RAE encoders): active dims null with a reason, nothing NaN."""
  setup, state1, _ = _copy_and_restore(evaluated_run, tmp_path)
  encode = latents.encode_split

  def deterministic(setup, variables1, split='train'):
    mu, sigma = encode(setup, variables1, split)
    return mu, np.zeros_like(sigma)

  monkeypatch.setattr(latents, 'encode_split', deterministic)
  config = setup.config.copy_and_resolve_references()
  config.eval.expost_gmm_components = 0
  with tfds.testing.mock_data(num_examples=40):  # No stage 2 at all:
    metrics = evaluators.evaluate(dataclasses.replace(setup, config=config), state1, None)
  assert metrics['active_dims'] is None
  assert 'deterministic' in metrics['null_reasons']['active_dims']
  assert metrics['active_dims_unavailable_reason'] == metrics['null_reasons']['active_dims']
  assert metrics['stage1_encoder'].startswith('deterministic')
  for key in ('mmd_z', 'loggamma_x', 'proxy_fd_stage1'):
    assert np.isfinite(metrics[key]), key
  for key in ('singular_values_z', 'latent_sweep_variance', 'mean_sigma2_per_dim'):
    assert np.all(np.isfinite(metrics[key])), key
  assert 'absent' in metrics['null_reasons']['mmd_u']
  assert metrics['proxy_fd_gmm'] is None and metrics['expost_gmm'] is None
  assert 'expost_gmm_components=0' in metrics['null_reasons']['proxy_fd_gmm']
  check_null_reasons(metrics)
  assert 'sigma2_hist' not in metrics['plots'] and 'samples_gmm' not in metrics['plots']


def test_run_restores_stage2_only_when_enabled(tmp_path, monkeypatch):
  restored = []
  monkeypatch.setattr(stages, 'restore_final',
                      lambda setup, name: restored.append(name) or f'{name} state')
  monkeypatch.setattr(evaluators, 'evaluate', lambda setup, s1, s2: (s1, s2))
  assert evaluate.run(tiny_config(), str(tmp_path)) == ('stage1 state', 'stage2 state')
  restored.clear()
  single = tiny_config(stage2__enabled=False)
  assert evaluate.run(single, str(tmp_path / 'single')) == ('stage1 state', None)
  assert restored == ['stage1']
