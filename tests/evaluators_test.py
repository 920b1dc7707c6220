"""Evaluation end to end on mock data (tsvae.evaluators, and the tsvae.evaluate CLI), and
the evaluation inputs (tsvae.evaluators.inputs)."""

import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from testdata import tiny_config
from tsvae import checkpointing
from tsvae import cli
from tsvae import config_lib
from tsvae import evaluate
from tsvae.evaluators import inputs as eval_inputs
from tsvae.evaluators import record
from tsvae.metrics import inception_weights


def test_min_max_stretch_per_image():
  x = np.stack([np.linspace(0.2, 0.6, 12).reshape(2, 2, 3), np.full((2, 2, 3), 0.5)])
  out = eval_inputs.min_max_stretch(x)
  assert out[0].min() == 0.0 and out[0].max() == pytest.approx(1.0)
  np.testing.assert_allclose(out[0], (x[0] - 0.2) / 0.4, atol=1e-6)
  np.testing.assert_array_equal(out[1], 0.0)  # Constant image.


EXPECTED_KEYS = ('proxy_fd_stage2', 'proxy_fd_stage1', 'proxy_fd_recon', 'proxy_fd_train',
                 'proxy_fd_gmm', 'fid_gmm', 'expost_gmm', 'null_reasons',
                 'classifier_test_accuracy', 'fid_stage2', 'fid_stage1', 'fid_recon',
                 'fid_unavailable_reason', 'active_dims', 'mmd_z', 'mmd_u', 'loggamma_x',
                 'loggamma_z', 'num_samples', 'metric_labels', 'mmd_bandwidth_rule',
                 'classifier_cache_key', 'singular_values_z', 'singular_values_u',
                 'latent_sweep_variance', 'mean_sigma2_per_dim')


def check_null_reasons(metrics):
  """Every null metric (of those labelled, and the stage-2 / GMM ones) has a reason."""
  keys = set(record.METRIC_LABELS) | {'singular_values_u', 'active_dim_indices', 'stage2_step'}
  for key in keys:
    assert key in metrics, key
    if metrics[key] is None:
      assert isinstance(metrics['null_reasons'].get(key), str), key
  assert set(metrics['null_reasons']) <= {k for k in keys if metrics[k] is None}


def _check_metrics(metrics, workdir, config, num_samples):
  for key in EXPECTED_KEYS:
    assert key in metrics, key
  assert metrics['num_samples'] == num_samples
  for name in ('stage2', 'stage1', 'recon', 'gmm', 'train'):
    assert metrics[f'fid_{name}'] is None  # No weights offline: never a number...
    assert 'downloading is disabled' in metrics['null_reasons'][f'fid_{name}']
  for name in ('stage2', 'stage1', 'recon', 'train', 'gmm'):
    assert np.isfinite(metrics[f'proxy_fd_{name}']) and metrics[f'proxy_fd_{name}'] >= 0
  assert 'downloading is disabled' in metrics['fid_unavailable_reason']  # ...but a reason.
  check_null_reasons(metrics)
  assert metrics['stage2_unavailable_reason'] is None and metrics['stage2_step'] > 0
  assert metrics['expost_gmm']['components'] == 10 and metrics['gmm_unavailable_reason'] is None
  assert 0 <= metrics['active_dims'] <= config.latent_dim
  assert len(metrics['mean_sigma2_per_dim']) == config.latent_dim
  assert len(metrics['singular_values_u']) == config.latent_dim
  assert np.isfinite(metrics['mmd_z']) and np.isfinite(metrics['mmd_u'])
  on_disk = json.loads(open(os.path.join(workdir, 'eval', 'metrics.json')).read())
  assert on_disk['num_samples'] == num_samples
  assert on_disk['fid_stage2'] is None
  for name in ('sigma2_hist.png', 'singular_values.png', 'latent_sweep.png',
               'latent_sweep_images.png', 'samples_gmm.png'):
    with open(os.path.join(workdir, 'eval', name), 'rb') as f:
      assert f.read(4) == b'\x89PNG', name


# `evaluated_run` (conftest.py): a tiny two-stage run with the evaluation at its end.


def test_run_with_evaluation_writes_metrics_and_plots(evaluated_run):
  config, workdir, _, result = evaluated_run
  _check_metrics(result['eval'], workdir, config, 32)


def test_cli_evaluates_a_finished_workdir_with_fewer_samples(evaluated_run):
  config, workdir, cache_dir, _ = evaluated_run
  argv = ['evaluate', f'--workdir={workdir}', '--config.eval.num_samples=16',
          f'--config.eval.cache_dir={cache_dir}', '--config.eval.allow_download=False',
          '--config.eval.classifier_epochs=1', '--config.eval.batch_size=64']
  with tfds.testing.mock_data(num_examples=40):
    metrics = evaluate.cli_main(argv)
  _check_metrics(metrics, workdir, config, 16)
  # The experiment keys came from the workdir (latent_dim 8), not from configs/default.py (64).
  assert len(metrics['mean_sigma2_per_dim']) == 8


def test_cli_refuses_an_unfinished_or_foreign_workdir(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='not a tsvae workdir'):
    cli.config_from_workdir(str(tmp_path), tiny_config())
  config_lib.record_config(tiny_config(), str(tmp_path))
  with pytest.raises(checkpointing.CheckpointError, match='not complete'):
    evaluate.run(cli.config_from_workdir(str(tmp_path), tiny_config()), str(tmp_path))


def test_fid_path_with_weights_available(evaluated_run, random_inception, monkeypatch):
  """With (stand-in random) weights available, FID is a number and its reference is cached."""
  _, workdir, cache_dir, _ = evaluated_run
  _, weights_path = random_inception
  weights = inception_weights.Weights(weights_path, 'f' * 64)
  monkeypatch.setattr(inception_weights, 'find', lambda *a, **k: (weights, None))
  argv = ['evaluate', f'--workdir={workdir}', '--config.eval.num_samples=8',
          f'--config.eval.cache_dir={cache_dir}', '--config.eval.classifier_epochs=1',
          '--config.eval.batch_size=64', '--config.eval.inception_batch_size=4']
  with tfds.testing.mock_data(num_examples=40):
    metrics = evaluate.cli_main(argv)
  assert metrics['fid_unavailable_reason'] is None
  assert metrics['inception_weights'] == weights_path
  assert metrics['inception_weights_sha256'] == 'f' * 64
  assert metrics['fid_preprocess'] == 'tf_graph'
  assert metrics['inception_compute_dtype'] == 'float32'
  for name in ('stage2', 'stage1', 'recon', 'gmm', 'train'):
    assert np.isfinite(metrics[f'fid_{name}']) and metrics[f'fid_{name}'] >= 0
  # The test and the training (floor) statistics are cached, named by what they are.
  cached = sorted(os.listdir(os.path.join(cache_dir, 'fid_stats')))
  assert len(cached) == 2
  assert cached[0].startswith('mnist_test_n8_seed0_tf_graph_float32_wffff')
  assert cached[1].startswith('mnist_train_n8_seed0_tf_graph_float32_wffff')


def _latent_map_inputs(tmp_path, latent_dim):
  """EvalInputs of an untrained κ-d stage 1 on mock MNIST: what `latent_map` reads."""
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  from tsvae import generation  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  from tsvae.evaluators import common  # pylint: disable=g-import-not-at-top
  setup = experiment_lib.setup(tiny_config(latent_dim=latent_dim), str(tmp_path))
  state = train.create_train_state(setup.model1, np.zeros((1, 28, 28, 1), np.float32),
                                   base_rng=jax.random.PRNGKey(0), tx=optax.sgd(0.0))
  blank = np.zeros((0,))
  return common.EvalInputs(
      config=setup.config, model1=setup.model1, variables1=generation.variables_of(state),
      model2=None, variables2=None, stage2_reason='none', mu=np.zeros((4, latent_dim)),
      sigma=np.ones((4, latent_dim)), test_uint8=np.zeros((4, 28, 28, 1), np.uint8),
      train_uint8=blank, generated={}, missing={}, gmm=None, gmm_grid=None, num_requested=4,
      stage1_step=0, stage2_step=None, builder=setup.builder, rng_codes=None, rng_u=None,
      cache_dir=str(tmp_path), write=True)


def test_latent_map_of_a_two_dimensional_latent_space(tmp_path):
  """κ = 2: one plot, μ_z of every labelled test image beside decoded grid images; else none."""
  from tsvae.evaluators import common  # pylint: disable=g-import-not-at-top
  from tsvae.evaluators import latent_diagnostics  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=12):
    items = list(latent_diagnostics.latent_map(_latent_map_inputs(tmp_path / 'k2', 2)))
    assert not list(latent_diagnostics.latent_map(_latent_map_inputs(tmp_path / 'k8', 8)))
  assert [key for key, _ in items] == ['latent_map']
  plot = items[0][1]
  assert isinstance(plot, common.Plot) and plot.filename == 'latent_map.png'
  path = str(tmp_path / 'latent_map.png')
  plot.draw(path)
  picture = np.asarray(Image.open(path))
  assert picture.shape[1] > picture.shape[0] > 300 and picture.std() > 0
