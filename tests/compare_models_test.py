"""benchmarks/compare_models.py: which run and metric each row reads, aggregation, README table.

The runs themselves are ordinary `tsvae.main` runs (tested elsewhere); here the per-run results
are metrics.json files written into the run folders, so the driver reuses them as it does
after an interruption and only the bookkeeping is exercised.
"""

import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import compare_models  # pylint: disable=g-import-not-at-top,wrong-import-position


def _fake_finished_run(runs_dir, dataset, run, seed, metrics, wall):
  workdir = os.path.join(runs_dir, dataset, f'{run}_seed{seed}')
  os.makedirs(os.path.join(workdir, 'eval'))
  with open(os.path.join(workdir, 'eval', 'metrics.json'), 'w') as f:
    json.dump(metrics, f)
  with open(os.path.join(workdir, 'compare_wall_time.json'), 'w') as f:
    json.dump({'wall_time_s': wall, 'commit': 'abc', 'loadavg_at_end': [1, 1, 1]}, f)


def test_rows_read_their_runs_metric_and_aggregate_over_seeds(tmp_path):
  shared = tmp_path / 'shared'
  (shared / 'mnist').mkdir(parents=True)
  runs_dir = str(tmp_path / 'runs')
  for seed, offset in ((0, 0.0), (1, 2.0)):
    _fake_finished_run(runs_dir, 'mnist', 'two_stage', seed,
                       {'proxy_fd_stage2': 10.0 + offset, 'proxy_fd_stage1': 30.0 + offset,
                        'proxy_fd_gmm': 20.0 + offset, 'proxy_fd_recon': 5.0,
                        'active_dims': 12 + seed, 'classifier_test_accuracy': 0.99}, 100.0)
    _fake_finished_run(runs_dir, 'mnist', 'rae', seed,
                       {'proxy_fd_stage1': 50.0, 'proxy_fd_gmm': 25.0 + offset,
                        'proxy_fd_recon': 4.0, 'active_dims': None}, 60.0 + seed)
  readme = tmp_path / 'README.md'
  readme.write_text(f'intro\n{compare_models.TABLE_START}\nold\n{compare_models.TABLE_END}\nend\n')
  out_dir = tmp_path / 'out'
  records = compare_models.main([
      '--datasets=mnist', '--models=two_stage_vae,vae_learned_gamma,vae_learned_gamma_gmm,rae_gmm',
      '--seeds=0,1', '--epochs=3', '--stage2_epochs=5', f'--shared_data={shared}',
      f'--runs_dir={runs_dir}', f'--out_dir={out_dir}', f'--readme={readme}'])
  by_model = {r['model']: r for r in records}
  two = by_model['two_stage_vae']['summary']
  assert two['proxy_fd_samples']['mean'] == pytest.approx(11.0)
  assert two['proxy_fd_samples']['std'] == pytest.approx(2 ** 0.5)  # sample std of (10, 12)
  assert by_model['vae_learned_gamma']['summary']['proxy_fd_samples']['mean'] == 31.0
  assert by_model['vae_learned_gamma_gmm']['summary']['proxy_fd_samples']['mean'] == 21.0
  rae = by_model['rae_gmm']
  assert rae['summary']['proxy_fd_samples']['mean'] == 26.0
  assert rae['summary']['active_dims']['mean'] is None  # deterministic encoder: no σ.
  assert rae['epochs_stage2'] == 0 and by_model['two_stage_vae']['epochs_stage2'] == 5
  assert by_model['vae_learned_gamma']['epochs_stage2'] == 0
  saved = json.loads((out_dir / 'mnist_rae_gmm.json').read_text())
  assert saved['per_seed'][1]['wall_time_s'] == 61.0
  text = readme.read_text()
  assert text.startswith('intro\n') and text.endswith('end\n') and 'old' not in text
  assert '| Two-stage VAE (learned γ) | mnist | 3 + 5 | 11.0 ± 1.4 | 5.0 ± 0.0 | 12 ± 1 |' in text
  assert '| RAE-L2 + ex-post GMM | mnist | 3 + 0 | 26.0 ± 1.4 | 4.0 ± 0.0 | n/a |' in text


def test_overrides_of_each_run(tmp_path):
  args = compare_models.parse_args(['--epochs=2', f'--shared_data={tmp_path}', '--max_steps=7',
                                    '--extra=latent_dim=8'])
  o = compare_models.run_overrides(args, 'fashion_mnist', 'wae_mmd', 3)
  assert o['stage1.model'] == 'wae_mmd' and o['stage2.enabled'] is False
  assert o['seed'] == 3 and o['stage1.num_epochs'] == 2 and o['stage2.num_epochs'] == 2
  assert o['stage1.max_steps'] == 7 and o['latent_dim'] == '8'
  assert o['data.manual_dir'] == os.path.join(str(tmp_path), 'fashion_mnist')
  assert 'stage2.enabled' not in compare_models.run_overrides(args, 'mnist', 'two_stage', 0)


def test_bad_arguments_fail_before_any_run(tmp_path):
  with pytest.raises(SystemExit):
    compare_models.parse_args(['--models=two_stage_vae,nope'])
  with pytest.raises(SystemExit, match='no local data'):
    compare_models.main(['--datasets=mnist', f'--shared_data={tmp_path}',
                         f'--runs_dir={tmp_path}/runs', f'--out_dir={tmp_path}/out'])
