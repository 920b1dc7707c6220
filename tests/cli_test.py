"""tsvae.cli: the workdir's config (one loader), the exit-status wrapper of the three commands."""

import logging as std_logging

from absl import logging
import pytest

from testdata import tiny_config
from tsvae import checkpointing
from tsvae import cli
from tsvae import config_lib
from tsvae import fileio
from tsvae import input_pipeline
from tsvae import train


def _record(tmp_path, **overrides):
  config = tiny_config(**overrides)
  config_lib.record_config(config, str(tmp_path))
  return config


def test_config_from_workdir_record_wins_over_defaults_overrides_win_over_record(tmp_path):
  _record(tmp_path, latent_dim=8, eval__num_samples=7)
  defaults = tiny_config(latent_dim=16, eval__num_samples=99)
  config = cli.config_from_workdir(str(tmp_path), defaults)
  assert config.latent_dim == 8 and config.eval.num_samples == 7
  assert defaults.latent_dim == 16  # The defaults are not changed.
  overridden = cli.config_from_workdir(str(tmp_path), defaults, {'eval.num_samples': 99})
  assert overridden.eval.num_samples == 99 and overridden.latent_dim == 8


def test_config_from_workdir_without_defaults_is_the_record(tmp_path):
  config = _record(tmp_path, latent_dim=8)
  loaded = cli.config_from_workdir(str(tmp_path))
  assert config_lib.flatten(loaded) == config_lib.flatten(config)


def test_config_from_workdir_ignores_unknown_recorded_keys_with_a_warning(tmp_path, caplog):
  _record(tmp_path)
  path = f'{tmp_path}/{config_lib.CONFIG_FILENAME}'
  recorded = fileio.read_json(path)
  fileio.atomic_write_json(path, dict(recorded, **{'stage1.retired_knob': 3, 'gone.x': 1}))
  logging.get_absl_logger().propagate = True
  with caplog.at_level(std_logging.WARNING):
    config = cli.config_from_workdir(str(tmp_path), tiny_config())
  assert 'retired_knob' not in config.stage1 and 'gone' not in config
  assert 'stage1.retired_knob' in caplog.text and 'gone.x' in caplog.text


def test_config_from_workdir_refuses_a_folder_that_is_no_workdir(tmp_path):
  with pytest.raises(config_lib.ConfigError, match='not a tsvae workdir'):
    cli.config_from_workdir(str(tmp_path), tiny_config())


@pytest.mark.parametrize('error, code', [
    (config_lib.ConfigError('bad key'), cli.BAD_INPUT_EXIT_CODE),
    (input_pipeline.DataError('no data'), cli.BAD_INPUT_EXIT_CODE),
    (checkpointing.CheckpointError('torn'), cli.BAD_INPUT_EXIT_CODE),
    (train.NonFiniteError('nan'), cli.NON_FINITE_EXIT_CODE),
    (train.Preempted('sigterm'), cli.PREEMPTED_EXIT_CODE),
])
def test_run_command_maps_errors_to_exit_statuses(error, code, capsys):
  def command():
    raise error
  with pytest.raises(SystemExit) as exit_info:
    cli.run_command('tsvae.x', command)
  assert exit_info.value.code == code
  assert capsys.readouterr().err.startswith('tsvae.x: ')


def test_run_command_returns_the_result_and_lets_other_errors_through():
  assert cli.run_command('tsvae.x', lambda: 42) == 42
  with pytest.raises(ZeroDivisionError):
    cli.run_command('tsvae.x', lambda: 1 / 0)
