"""The benchmark drivers that wrap other commands or steps: side_by_side.py (rounds of paired
runs), step_ab.py (step variants alternating in one process) and timed_run.py (one whole
tsvae.main run). No timing assertions: fake commands with known rates, structure only."""

import json
import os
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO_ROOT, 'benchmarks'))
import side_by_side  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_ab  # pylint: disable=g-import-not-at-top,wrong-import-position
import timed_run  # pylint: disable=g-import-not-at-top,wrong-import-position

FAKE_BENCH = '''
import json, sys
rate, out = float(sys.argv[1]), sys.argv[sys.argv.index('--out') + 1]
json.dump({'result': {'images_per_sec': rate}}, open(out, 'w'))
'''


def test_side_by_side_rounds_and_ratios(tmp_path):
  script = tmp_path / 'fake_bench.py'
  script.write_text(FAKE_BENCH)
  out = tmp_path / 'out'
  record = side_by_side.main([
      '--run', f'fast={sys.executable} {script} 300', '--run', f'slow={sys.executable} {script} 200',
      '--ratio', 'fast/slow', '--rounds', '3', '--out', str(out)])
  assert record['rates'] == {'fast': [300.0] * 3, 'slow': [200.0] * 3}
  assert record['ratios']['fast/slow'] == {'per_round': [1.5] * 3, 'median': 1.5, 'min': 1.5,
                                           'max': 1.5, 'of_medians': 1.5}
  saved = json.loads((out / 'summary.json').read_text())
  assert saved['median_images_per_sec'] == {'fast': 300.0, 'slow': 200.0}
  assert 'machine' in saved and 'git' in saved
  for name in ('fast', 'slow'):
    for r in range(3):
      assert (out / f'{name}_r{r}.json').exists()


def test_side_by_side_summary_uses_per_round_ratios():
  s = side_by_side.summarize({'a': [100.0, 150.0, 120.0], 'b': [100.0, 100.0, 60.0]}, [('a', 'b')])
  assert s['ratios']['a/b']['per_round'] == [1.0, 1.5, 2.0]
  assert s['ratios']['a/b']['median'] == 1.5 and s['ratios']['a/b']['of_medians'] == 1.2


def test_side_by_side_order_rotates():
  names = ['a', 'b', 'c']
  orders = [side_by_side.round_order(names, r) for r in range(3)]
  assert orders == [['a', 'b', 'c'], ['b', 'c', 'a'], ['c', 'a', 'b']]
  assert side_by_side.round_order(['x', 'y'], 1) == ['y', 'x']


@pytest.mark.parametrize('argv,message', [
    (['--run', 'a b=cmd', '--out', 'x'], 'plain identifier'),
    (['--run', 'a=', '--out', 'x'], 'NAME=COMMAND'),
    (['--run', 'a=cmd', '--ratio', 'a/zz', '--out', 'x'], 'two --run names'),
    (['--run', 'a=cmd', '--run', 'a=other', '--out', 'x'], 'distinct'),
    (['--run', 'a=cmd', '--rounds', '0', '--out', 'x'], '--rounds'),
])
def test_side_by_side_rejects_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit):
    side_by_side.parse_args(argv)
  assert message in capsys.readouterr().err


@pytest.mark.parametrize('argv, message', [
    (['stage1', '--variants', 'current'], 'two or more'),
    (['stage1', '--variants', 'current,current'], 'distinct'),
    (['stage1', '--variants', 'current,nosuch'], 'nosuch'),
    (['stage2', '--variants', 'current,finite_gate', '--steps_per_call', '3', '--steps', '10'],
     'multiple of --steps_per_call'),
    (['stage2', '--blocks', '1'], '--blocks'),
])
def test_step_ab_rejects_bad_arguments(argv, message, capsys):
  with pytest.raises(SystemExit):
    step_ab.parse_args(argv)
  assert message in capsys.readouterr().err


def test_step_ab_blocks_alternate_and_ratios_are_per_block():
  assert [step_ab.block_order(['a', 'b'], i) for i in range(3)] == [
      ['a', 'b'], ['b', 'a'], ['a', 'b']]
  out = step_ab.summarize({'a': [100.0, 200.0, 100.0], 'b': [110.0, 180.0, 130.0]}, ['a', 'b'])
  assert out['ratios']['b/a'] == {'per_block': [1.1, 0.9, 1.3], 'median': 1.1, 'min': 0.9,
                                  'max': 1.3}
  assert out['median_images_per_sec'] == {'a': 100.0, 'b': 130.0}


def test_step_ab_variants_patch_only_while_compiling():
  import optax  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  norm, apply = optax.global_norm, train.TrainState.apply_gradients
  with step_ab.VARIANTS['norm_barrier'](), step_ab.VARIANTS['finite_gate']():
    assert optax.global_norm is not norm
    assert train.TrainState.apply_gradients is not apply
  assert optax.global_norm is norm and train.TrainState.apply_gradients is apply


def test_step_ab_runs_two_stage2_variants(tmp_path):
  out = tmp_path / 'ab.json'
  record = step_ab.main(['stage2', '--batch_size', '4', '--variants', 'current,norm_barrier',
                         '--steps', '2', '--blocks', '2', '--out', str(out)])
  assert json.loads(out.read_text())['config']['variants'] == ['current', 'norm_barrier']
  assert len(record['rates']['norm_barrier']) == 2
  assert record['ratios']['norm_barrier/current']['min'] > 0


def test_timed_run_refuses_an_existing_workdir(tmp_path, capsys):
  with pytest.raises(SystemExit):
    timed_run.parse_args(['--workdir', str(tmp_path), '--out', str(tmp_path / 'o'), '--', '-x'])
  assert 'exists' in capsys.readouterr().err


def test_timed_run_phases_and_final_values():
  rows = [{'stage': 'stage1', 'time': 110.0, 'loggamma': -0.1},
          {'stage': 'stage1', 'time': 160.0, 'loggamma': -0.4},
          {'stage': 'stage2', 'time': 200.0, 'loggamma': -0.05},
          {'stage': 'stage2', 'time': 230.0, 'loggamma': -0.2}]
  assert list(timed_run.phases(rows, started=100.0, ended=245.0).values()) == [60.0, 70.0, 15.0]
  assert timed_run.final_values(rows, 'loggamma') == {'stage1': -0.4, 'stage2': -0.2}
