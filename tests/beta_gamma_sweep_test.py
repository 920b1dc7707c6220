"""benchmarks/beta_gamma_sweep.py on a tiny local MNIST: every part, records, resumption, the
tables, the comparison of the β-conditioned curve with the sweep, and the plot."""

import json
import math
import os
import sys

import pytest

from testdata import write_mnist_dir

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import beta_gamma_sweep  # pylint: disable=g-import-not-at-top,wrong-import-position

TINY = ['batch_size=8', 'stage2.depth=1', 'stage2.width=32', 'sampling.num_grid_images=16',
        'log_every_steps=2', 'checkpoint_every_steps=3', 'eval.batch_size=64',
        'eval.classifier_epochs=1', 'eval.allow_download=false']


def _argv(tmp_path, *extra):
  return ([f'--manual_dir={tmp_path / "mnist"}', f'--root={tmp_path / "root"}',
           f'--cache_dir={tmp_path / "cache"}', '--steps=4', '--latent_dim=4',
           '--num_samples=12', f'--out={tmp_path / "out"}', '--claim2_stage2_epochs=1'] +
          [f'--override={o}' for o in TINY] + list(extra))


def test_sweep_and_beta_conditioned_run_then_a_rerun_skips_them(tmp_path, capsys):
  write_mnist_dir(str(tmp_path / 'mnist'))  # 40 train, 12 test images.
  argv = _argv(tmp_path, '--parts=sweep,cond', '--betas=0.5,2', '--gamma_modes=optimal',
               '--cond_modes=optimal')
  beta_gamma_sweep.main(argv)
  points = beta_gamma_sweep.load_points(str(tmp_path / 'out'))
  assert set(points) == {'sweep_optimal_b0.5', 'sweep_optimal_b2', 'cond_optimal'}
  p = points['sweep_optimal_b0.5']
  assert p['beta'] == 0.5 and p['stage1_step'] == 4 and p['run_wall_s'] > 0
  assert p['rate_kl'] >= 0 and 0 < p['distortion_mse'] < 1 and p['proxy_fd_prior'] > 0
  assert 'commit' in p and 'machine' in p and p['overrides']['stage1.beta'] == 0.5
  assert p['loggamma_x_at_test'] == pytest.approx(0.5 * math.log(p['distortion_mse']))
  cond = points['cond_optimal']
  assert cond['overrides']['stage1.model'] == 'vae_beta'
  assert [c['beta'] for c in cond['curve']] == [0.5, 2.0]
  assert all(c['rate_kl'] >= 0 and c['proxy_fd_prior'] > 0 for c in cond['curve'])
  summary = beta_gamma_sweep.compare(points)['optimal']
  assert summary['sweep_runs'] == 2 and len(summary['per_beta']) == 2
  assert summary['sweep_wall_s'] > 0 and summary['cond_wall_s'] > 0
  assert os.path.exists(tmp_path / 'out' / 'beta_gamma_sweep.png')
  assert os.path.exists(tmp_path / 'out' / 'grids' / 'cond_optimal_b2_prior.png')
  table = beta_gamma_sweep.table(str(tmp_path / 'out')).splitlines()
  assert sum(row.startswith('| β-sweep | optimal') for row in table) == 2
  assert sum(row.startswith('| β-conditioned | optimal') for row in table) == 2
  assert any(row.startswith('| optimal |') for row in table)  # The comparison row.
  assert json.load(open(tmp_path / 'out' / 'summary.json'))['optimal']['sweep_runs'] == 2
  # A rerun trains and scores nothing again.
  before = (tmp_path / 'out' / 'cond_optimal.json').read_text()
  capsys.readouterr()
  beta_gamma_sweep.main(argv)
  assert '+ -m tsvae.main' not in capsys.readouterr().out
  assert (tmp_path / 'out' / 'cond_optimal.json').read_text() == before


def test_latent_map_and_learned_vs_fixed_gamma(tmp_path):
  write_mnist_dir(str(tmp_path / 'mnist'))
  beta_gamma_sweep.main(_argv(tmp_path, '--parts=maps,claim2', '--gamma_modes=learned'))
  points = beta_gamma_sweep.load_points(str(tmp_path / 'out'))
  assert set(points) == {'map_learned', 'claim2_learned', 'claim2_fixed'}
  assert points['map_learned']['overrides']['latent_dim'] == 2
  with open(tmp_path / 'out' / points['map_learned']['latent_map'], 'rb') as f:
    assert f.read(4) == b'\x89PNG'
  learned, fixed = points['claim2_learned'], points['claim2_fixed']
  # γ fixed from the start at the learned run's final γ; same seed and steps; both two-stage.
  assert fixed['gamma_value'] == pytest.approx(math.exp(learned['loggamma_x']), rel=1e-6)
  assert fixed['loggamma_x'] == pytest.approx(learned['loggamma_x'], abs=1e-6)
  assert fixed['stage1_step'] == learned['stage1_step'] == 4
  for p in (learned, fixed):
    assert p['stage2_step'] > 0 and p['proxy_fd_stage2'] > 0 and p['mmd_z'] is not None
  rows = beta_gamma_sweep.table(str(tmp_path / 'out'))
  assert '| learned γ |' in rows and 'γ fixed at the learned final γ' in rows
