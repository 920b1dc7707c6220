"""What the three command-line entry points share: flags, the workdir's config, exit statuses.

  python -m tsvae.main      train (and evaluate): `pipeline.run`
  python -m tsvae.evaluate  evaluate a finished workdir: `evaluators.evaluate`
  python -m tsvae.sample    extra sample grids of a finished workdir

Exit status, all three: 0 done; 2 bad input (config, data, workdir, checkpoint, weights:
nothing was changed); 3 NaN/Inf during training; 75 stopped by SIGTERM after a checkpoint
(rerun resumes).
"""

import os
import sys
from typing import Any, Callable, Dict, Optional

from absl import flags
from absl import logging
import ml_collections

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import fileio
from tsvae import input_pipeline
from tsvae import train
from tsvae.metrics import inception_weights

BAD_INPUT_EXIT_CODE = 2
NON_FINITE_EXIT_CODE = 3
PREEMPTED_EXIT_CODE = train.PREEMPTED_EXIT_CODE
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The errors that mean "bad input, nothing changed".
BAD_INPUT_ERRORS = (config_lib.ConfigError, input_pipeline.DataError,
                    checkpointing.CheckpointError, inception_weights.WeightsError)


def fail(message: str, code: int = 1):
  """Logs `message`, prints it to stderr and exits with `code`."""
  logging.error(message)
  print(message, file=sys.stderr)
  sys.exit(code)


def run_command(name: str, command: Callable[[], Any]) -> Any:
  """Runs `command`, mapping its errors to the exit statuses above (`name` prefixes them)."""
  try:
    return command()
  except BAD_INPUT_ERRORS as err:
    fail(f'{name}: {err}', BAD_INPUT_EXIT_CODE)
  except train.NonFiniteError as err:
    fail(f'{name}: {err}', NON_FINITE_EXIT_CODE)
  except train.Preempted as err:
    logging.warning(err.message)
    print(f'{name}: {err.message}', file=sys.stderr)
    sys.exit(PREEMPTED_EXIT_CODE)


def config_from_workdir(workdir: str, defaults=None,
                        overrides: Optional[Dict[str, Any]] = None) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json), over `defaults` if given.

  Keys added to the defaults after the workdir was created keep their default values, except
  those in config_lib.IMPLICIT_DEFAULTS, which get the value the workdir ran with. A recorded
  key the defaults lack is ignored with a warning. `overrides` (flat {key: value}, e.g. the
  command line's --config.* values) win over the record.
  """
  recorded = fileio.read_json(os.path.join(workdir, config_lib.CONFIG_FILENAME))
  if recorded is None:
    raise config_lib.ConfigError(f'{workdir} has no {config_lib.CONFIG_FILENAME}: not a '
                                 'tsvae workdir (run tsvae.main on it first).')
  if defaults is None:
    return config_lib.unflatten(recorded)
  # A key the workdir predates has the value it ran with, not this config's default.
  recorded = {**config_lib.implicit_values_of_absent_keys(recorded), **recorded}
  overrides = dict(overrides or {})
  # A copy: ConfigDict(defaults) would share (and so change) the defaults' nested dicts.
  config = ml_collections.ConfigDict(defaults.to_dict())
  for key, value in recorded.items():
    if key in overrides:
      continue
    *parents, leaf = key.split('.')
    node = config
    try:
      for parent in parents:
        node = node[parent]
      known = leaf in node
    except (KeyError, AttributeError, TypeError):
      known = False
    if known:
      node[leaf] = value
    else:
      logging.warning('The workdir records %s, which this config does not have; ignored.', key)
  return config


def define_workdir_flags(flag_values=None, sys_argv=None, workdir_help: str = ''):
  """--config (default configs/default.py: keys the workdir does not record) and --workdir.

  `sys_argv`: the command line the --config.* overrides are read from (None = sys.argv).
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  flag_values = flags.FLAGS if flag_values is None else flag_values
  if 'config' not in flag_values:
    config_flags.DEFINE_config_file(
        'config', os.path.join(REPO_ROOT, 'configs', 'default.py'),
        'Config file for keys the workdir does not record (default configs/default.py).',
        flag_values=flag_values, lock_config=True, sys_argv=sys_argv)
  if 'workdir' not in flag_values:
    flags.DEFINE_string('workdir', None,
                        workdir_help or 'A tsvae workdir whose stages are complete.',
                        flag_values=flag_values)
  return flag_values


def workdir_config(flag_values) -> ml_collections.ConfigDict:
  """The config of --workdir: its record over --config, with --config.* overrides winning."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if not flag_values.workdir:
    raise config_lib.ConfigError('--workdir is required.')
  overrides = config_flags.get_override_values(flag_values['config'])
  return config_from_workdir(flag_values.workdir, flag_values.config, overrides)
