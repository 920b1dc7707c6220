"""benchmarks/compute_ceiling.py: its arguments, the product-rate timing and the ceiling arithmetic.
(Its measurements live in benchmarks/results, never here.)"""

import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import compute_ceiling  # pylint: disable=g-import-not-at-top,wrong-import-position


def test_need_parses_and_bad_ones_are_one_clear_error(capsys):
  assert compute_ceiling.parse_need('fid=inception:10.5') == ('fid', 'inception', 10.5)
  for bad, says in (('fid', 'NAME=WORKLOAD'), ('fid=inception', 'NAME=WORKLOAD'),
                    ('fid=resnet:3', 'unknown workload'), ('fid=inception:fast', 'not a number'),
                    ('fid=inception:0', 'must be > 0'), ('=inception:3', 'NAME=WORKLOAD')):
    with pytest.raises(ValueError, match=says):
      compute_ceiling.parse_need(bad)
  with pytest.raises(SystemExit) as exit_info:
    compute_ceiling.parse_args(['--need', 'fid=resnet:3'])
  assert exit_info.value.code == 2 and 'unknown workload' in capsys.readouterr().err
  for bad in (['--dtypes', 'float16'], ['--sizes', '0'], ['--sizes', 'big']):
    with pytest.raises(SystemExit):
      compute_ceiling.parse_args(bad)


def test_ceiling_and_needs_are_flops_over_the_product_rate():
  flops = {'inception': 11.4e9, 'stage1_b256': 149e6}
  assert compute_ceiling.ceiling(flops, 70.0) == {'inception': 6.1, 'stage1_b256': 469.8}
  need = compute_ceiling.needs([('fid_3x', 'inception', 10.95)], flops, 70.0)['fid_3x']
  assert need == {'workload': 'inception', 'img_per_s': 10.95, 'gflop_per_s': 124.8,
                  'fraction_of_product_rate': 1.783}


def test_product_rates_are_positive_for_each_dtype_and_size():
  rates = compute_ceiling.product_rates([32, 64], ['float32', 'bfloat16'], reps=1)
  assert set(rates) == {'float32', 'bfloat16'}
  assert all(set(r) == {32, 64} and min(r.values()) > 0 for r in rates.values())
