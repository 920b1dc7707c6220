"""configs/mnist.py:quick — the README's first command: the reference nets with a short budget.

It validates, changes only the budget, the stage-2 recipe and the end-of-run evaluation, and is
reachable as `--config=configs/mnist.py:quick` (ml_collections' `get_config(arg)`). Its wall
time is measured, not asserted (README, Set up and run).
"""

from absl import flags
from ml_collections import config_flags
import pytest

from configs import mnist
from tsvae import validation

QUICK_CHANGES = {'stage1.num_epochs': 5, 'stage2.num_epochs': 25, 'stage2.batch_size': 512,
                 'stage2.learning_rate': 8e-4, 'eval.enabled': False}


def _flat(config, prefix=''):
  out = {}
  for key, value in config.items():
    if hasattr(value, 'items'):
      out.update(_flat(value, f'{prefix}{key}.'))
    else:
      out[f'{prefix}{key}'] = value
  return out


def test_quick_changes_only_the_budget_and_the_stage2_recipe():
  reference, quick = _flat(mnist.get_config()), _flat(mnist.get_config('quick'))
  changed = {k: quick[k] for k in reference if quick[k] != reference[k]}
  assert changed == QUICK_CHANGES
  validation.validate_config(mnist.get_config('quick'), num_devices=1)


def test_quick_is_reachable_from_the_command_line():
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values)
  flag_values(['prog', '--config=configs/mnist.py:quick'])
  assert flag_values.config.stage2.batch_size == 512
  assert flag_values.config.stage1.num_epochs == 5


def test_unknown_variant_is_refused():
  with pytest.raises(ValueError, match="variant 'quik'"):
    mnist.get_config('quik')
