"""The issue-#17 benchmark scripts: benchmarks/precision_quality.py reads two runs' workdirs
into one comparison and a plot; benchmarks/step_profile.py times every product of the InfoGAN
step with XLA's flop counts. (Their measurements live in benchmarks/results, never here.)"""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import precision_quality  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position


def _fake_workdir(root, loss_offset, fid_stage2):
  os.makedirs(os.path.join(root, 'eval'))
  rows = [
      {'stage': 'stage1', 'step': 2, 'loss': 10.0 + loss_offset, 'loggamma': -0.1, 'attempt': 'a'},
      {'stage': 'stage1', 'step': 4, 'loss': 99.0, 'loggamma': 0.0, 'attempt': 'a'},
      # A resumed attempt logs step 4 again: the later row wins.
      {'stage': 'stage1', 'step': 4, 'loss': 8.0 + loss_offset, 'loggamma': -0.2, 'attempt': 'b'},
      {'stage': 'stage2', 'step': 2, 'loss': 5.0 + loss_offset, 'loggamma': -0.05, 'attempt': 'b'},
      {'event': 'not a metrics row'},
  ]
  with open(os.path.join(root, 'metrics.jsonl'), 'w') as f:
    f.writelines(json.dumps(r) + '\n' for r in rows)
  metrics = {'loggamma_x': -0.2, 'loggamma_z': -0.05, 'active_dims': 12, 'mmd_z': 0.1,
             'mmd_u': 0.01, 'fid_stage2': fid_stage2, 'fid_stage1': None,
             'fid_unavailable_reason': None, 'proxy_fd_stage2': 50.0, 'num_samples': 32}
  with open(os.path.join(root, 'eval', 'metrics.json'), 'w') as f:
    json.dump(metrics, f)


def test_curves_keep_the_last_row_of_each_step(tmp_path):
  _fake_workdir(str(tmp_path), 0.0, 20.0)
  curves = precision_quality.read_curves(str(tmp_path))
  assert curves['stage1'] == {'step': [2, 4], 'loss': [10.0, 8.0], 'loggamma': [-0.1, -0.2]}
  assert curves['stage2']['loss'] == [5.0]


def test_comparison_and_plot(tmp_path):
  records = {}
  for dtype, offset, fid in (('float32', 0.0, 20.0), ('bfloat16', 0.5, 21.5)):
    workdir = str(tmp_path / dtype)
    _fake_workdir(workdir, offset, fid)
    curves = precision_quality.read_curves(workdir)
    records[dtype] = {'final': precision_quality.summarize(workdir), 'curves': curves,
                      'final_loss': {s: c['loss'][-1] for s, c in curves.items()}}
  rows = precision_quality.compare(records)
  assert rows['fid_stage2']['bfloat16_minus_float32'] == pytest.approx(1.5)
  assert rows['final_loss_stage1'] == {'float32': 8.0, 'bfloat16': 8.5,
                                       'bfloat16_minus_float32': 0.5}
  assert 'fid_stage1' not in rows  # null on both sides: nothing to compare
  path = str(tmp_path / 'curves.png')
  precision_quality.plot(records, path)
  assert os.path.getsize(path) > 1000


def test_run_command_sets_both_stages_dtype():
  args = precision_quality.parse_args(['--manual_dir=m', '--root=r', '--out=o',
                                       '--extra=--config.batch_size=8'])
  cmd = precision_quality.run_command(args, 'bfloat16')
  assert '--config.stage1.compute_dtype=bfloat16' in cmd
  assert '--config.stage2.compute_dtype=bfloat16' in cmd
  assert cmd[-1] == '--config.batch_size=8' and '--workdir=r/bfloat16' in cmd


def test_step_profile_times_every_product():
  args = step_profile.parse_args(['--batch_size=2', '--calls=1', '--reps=1',
                                  '--compute_dtype=bfloat16'])
  rows = step_profile.profile(args)
  assert [r['layer'] for r in rows] == [layer[0] for layer in step_profile.LAYERS]
  for r in rows:
    assert 0 < r['forward_ms'] and r['forward_gflops_per_s'] > 0


def test_step_profile_flops_are_xla_counts():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  dense = jax.jit(step_profile._product('dense', jnp.float32))  # pylint: disable=protected-access
  assert step_profile.forward_flops(dense, jnp.zeros((2, 6272)),
                                    jnp.zeros((6272, 1024))) == 2 * 2 * 6272 * 1024


def test_fid_speed_times_the_chosen_torch_modes_and_refuses_unknown_ones(capsys):
  import fid_speed  # pylint: disable=g-import-not-at-top
  assert fid_speed.parse_args([]).torch_modes == list(fid_speed.TORCH_MODES)
  assert fid_speed.parse_args(['--torch_modes=float32']).torch_modes == ['float32']
  with pytest.raises(SystemExit):
    fid_speed.parse_args(['--torch_modes=float32,float16'])
  assert "unknown --torch_modes ['float16']" in capsys.readouterr().err
