"""Config helpers, the generic config checks, and the workdir's record of the config it was
trained with.

This is the bottom layer of config handling: it imports no model, data or metric code. Each of
those validates its own keys (`models.validate_config`, `input_pipeline.validate_config`,
`metrics.fid.validate_config`) with the helpers and the `ConfigError` defined here, and
`tsvae.validation.validate_config` runs every check. Everything runs before any compute: a bad
config or a workdir that belongs to another experiment gives one `ConfigError` that says what to
change, and nothing on disk is touched.

Keys fall into two groups:
- *run-control* keys (`RUN_CONTROL_KEYS`): epochs, step caps, logging / checkpoint cadence, data
  locations and sampling knobs. A resumed run may change them (e.g. to train longer).
- everything else defines the experiment (dataset, arch, sizes, seed, optimiser, losses). A workdir
  remembers them in `config.json`; a run whose values differ is refused instead of mixing two
  experiments in one set of checkpoints.
"""

import difflib
import json
import math
import os
from typing import Any, Dict, Iterable, Mapping, Tuple

import ml_collections

from tsvae import fileio

CONFIG_FILENAME = 'config.json'
STAGES = ('stage1', 'stage2')
# config.nan_policy: what a step with a non-finite loss or gradient does (tsvae.train).
NAN_POLICIES = ('error', 'skip')

# Dotted keys (or prefixes ending in '.') that a resumed run may change.
RUN_CONTROL_KEYS = (
    'data.manual_dir',
    'data.data_dir',
    'stage1.num_epochs',
    'stage1.max_steps',
    'stage2.num_epochs',
    'stage2.max_steps',
    'stage2.enabled',  # Stage 1 does not depend on it: stage 2 can be added to a finished run.
    'log_every_steps',
    'checkpoint_every_steps',
    'keep_checkpoints',
    'steps_per_call',  # Same steps, same order; equal to float tolerance (tests/scan_test.py).
    'data.device_resident_max_mb',  # Device-resident batches equal the host's.
    'sampling.',
    'eval.',
    'distributed.',
)


_NO_FLOOR = float('-inf')
# Experiment keys added after the first workdirs were written, each with the value that gives
# the behaviour from before the key existed. A workdir that does not record such a key ran with
# that value, so the key is left out of comparisons and fingerprints while it has that value:
# adding an option never orphans existing workdirs.
IMPLICIT_DEFAULTS = {
    f'{stage}.{key}': value
    for stage in ('stage1', 'stage2')
    for key, value in (('gamma_mode', 'learned'), ('gamma_value', 1.0),
                       ('running_mse_momentum', 0.99), ('optimal_gamma_floor', _NO_FLOOR),
                       ('loggamma_floor', _NO_FLOOR))
}
IMPLICIT_DEFAULTS.update({'data.outlier_fraction': 0.0, 'data.outlier_seed': 0})
IMPLICIT_DEFAULTS.update({  # Stage-1 model families (issue #4); 'vae' is the reference.
    'stage1.model': 'vae', 'stage1.flow.num_steps': 4, 'stage1.flow.hidden': 512,
    'stage1.wae.lambda_mmd': 10.0, 'stage1.wae.recon_scale': 0.05,
    'stage1.rae.z_weight': 2.45e-3, 'stage1.rae.decoder_l2': 7.84e-5,
    'stage2.enabled': True})
# Issue #13: the reference's bias-corrected BN averages are the default now, but a workdir that
# does not record the key trained with Flax's plain EMA; its checkpoints have no BN step counter.
IMPLICIT_DEFAULTS['stage1.bn_zero_debias'] = False
# Issue #19: stage 2's own batch size (0 = config.batch_size, which every earlier run used).
IMPLICIT_DEFAULTS['stage2.batch_size'] = 0
# Issue #17: the nets' compute dtype per stage; every earlier run computed in float32.
IMPLICIT_DEFAULTS.update({'stage1.compute_dtype': 'float32', 'stage2.compute_dtype': 'float32'})
# Issue #18: the β-conditioned stage-1 VAE's keys (stage1.model='vae_beta'); unused before.
IMPLICIT_DEFAULTS.update({'stage1.beta_cond.beta_range': [0.1, 3.0],
                          'stage1.beta_cond.beta': 1.0})
_ABSENT = object()


class ConfigError(ValueError):
  """A config or workdir problem found before any compute."""


def flatten(config: Any, prefix: str = '') -> Dict[str, Any]:
  """{'a.b': value} for a (nested) ConfigDict or dict."""
  items = config.items() if hasattr(config, 'items') else []
  flat = {}
  for key, value in items:
    name = f'{prefix}{key}'
    if isinstance(value, (ml_collections.ConfigDict, dict)):
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def _is_run_control(key: str) -> bool:
  return any(key == k or (k.endswith('.') and key.startswith(k))
             for k in RUN_CONTROL_KEYS)


def _defining(flat: Mapping[str, Any]) -> Dict[str, Any]:
  """Drops run-control keys and keys at their implicit default (see IMPLICIT_DEFAULTS)."""
  flat = json.loads(json.dumps(dict(flat)))
  return {k: v for k, v in sorted(flat.items())
          if not _is_run_control(k) and IMPLICIT_DEFAULTS.get(k, _ABSENT) != v}


def implicit_values_of_absent_keys(recorded: Mapping[str, Any]) -> Dict[str, Any]:
  """{key: value} of the IMPLICIT_DEFAULTS a recorded (flat) config.json does not hold: the
  values the workdir ran with, which a config's current defaults must not replace."""
  return {k: v for k, v in IMPLICIT_DEFAULTS.items() if k not in recorded}


def experiment_keys(config) -> Dict[str, Any]:
  """The keys that define the experiment (all but run-control), JSON-normalised."""
  return _defining(flatten(config))


def suggest(name: str, choices: Iterable[str]) -> str:
  close = difflib.get_close_matches(str(name), list(choices), n=1)
  return f' Did you mean {close[0]!r}?' if close else ''


def check_choice(value: str, choices: Tuple[str, ...], key: str):
  """ConfigError unless config.`key` (= `value`) is one of `choices`, with a suggestion."""
  if value not in choices:
    raise ConfigError(f'config.{key}={value!r} is not one of {list(choices)}.'
                      f'{suggest(value, choices)}')


def check_positive(config, keys: Iterable[str]):
  """ConfigError unless each dotted key of `config` is a positive number."""
  flat = flatten(config)
  for key in keys:
    value = flat[key]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
      raise ConfigError(f'config.{key} must be a positive number, got {value!r}.')


def validate(config, *, num_devices: int, num_processes: int = 1):
  """The generic checks (sizes, schedules, run control, sampling, the batch split); raises
  ConfigError. The keys of the models, the data and the metrics are theirs to check:
  `tsvae.validation.validate_config` runs every check."""
  check_sizes(config)
  for stage in STAGES:
    check_schedule(config, stage)
  check_nan_policy(config)
  check_sampling(config)
  check_steps_per_call(config)
  check_batch_sizes(config, num_devices=num_devices, num_processes=num_processes)


def check_sizes(config):
  check_positive(config, [
      'latent_dim', 'batch_size', 'log_every_steps', 'checkpoint_every_steps',
      'keep_checkpoints', 'sampling.num_grid_images',
      'resnet.num_scale', 'resnet.block_per_scale', 'resnet.depth_per_block',
      'resnet.kernel_size', 'resnet.base_dim', 'resnet.fc_dim',
      'stage2.depth', 'stage2.width',
  ])


def check_schedule(config, stage: str):
  """config.`stage`'s epochs, learning-rate schedule, β and step cap."""
  check_positive(config, [f'{stage}.num_epochs', f'{stage}.learning_rate',
                          f'{stage}.lr_decay_epochs', f'{stage}.lr_decay_factor',
                          f'{stage}.beta'])
  max_steps = config[stage].max_steps
  if max_steps != -1 and max_steps <= 0:
    raise ConfigError(f'config.{stage}.max_steps must be -1 (no cap) or positive, '
                      f'got {max_steps}.')


def check_nan_policy(config):
  check_choice(config.nan_policy, NAN_POLICIES, 'nan_policy')


def check_sampling(config):
  noise_scale = config.sampling.stage2_noise_scale
  if (not isinstance(noise_scale, (int, float)) or isinstance(noise_scale, bool)
      or not math.isfinite(noise_scale) or noise_scale < 0):
    raise ConfigError('config.sampling.stage2_noise_scale multiplies the γ_z·ε noise of '
                      f'stage-2 samples and must be a finite number >= 0, got {noise_scale!r}.')


def check_steps_per_call(config):
  steps = config.get('steps_per_call', 1)
  if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
    raise ConfigError('config.steps_per_call is the number of train steps per jitted call and '
                      'must be an integer >= 0 (1 = one step per call, 0 = auto: 1 on CPUs, '
                      f'scanned calls on accelerators), got {steps!r}.')
  budget = config.data.get('device_resident_max_mb', 0)
  if (not isinstance(budget, (int, float)) or isinstance(budget, bool)
      or not math.isfinite(budget) or budget < 0):
    raise ConfigError('config.data.device_resident_max_mb is the largest training set (MiB) '
                      'kept on the devices and must be a finite number >= 0 (0 = always feed '
                      f'from the host), got {budget!r}.')


def check_batch_sizes(config, *, num_devices: int, num_processes: int = 1):
  """config.batch_size and config.stage2.batch_size split over the devices and processes."""
  _check_batch_size('batch_size', config.batch_size, num_devices, num_processes)
  stage2_batch = config.stage2.get('batch_size', 0)
  if not isinstance(stage2_batch, int) or isinstance(stage2_batch, bool) or stage2_batch < 0:
    raise ConfigError('config.stage2.batch_size must be a non-negative integer (0 = '
                      f'config.batch_size), got {stage2_batch!r}.')
  if stage2_batch:
    _check_batch_size('stage2.batch_size', stage2_batch, num_devices, num_processes)


def stage2_batch_size(config) -> int:
  """Stage 2's global batch: config.stage2.batch_size, or config.batch_size when that is 0."""
  return int(config.stage2.get('batch_size', 0)) or int(config.batch_size)


def _check_batch_size(key: str, value: int, num_devices: int, num_processes: int):
  if value % num_devices:
    raise ConfigError(
        f'config.{key}={value} is not divisible by the {num_devices} '
        f'devices the batch is split over; use a multiple of {num_devices}.')
  if value % num_processes:
    raise ConfigError(f'config.{key}={value} is not divisible by the '
                      f'{num_processes} processes.')


def check_workdir(config, workdir: str):
  """Refuses a workdir that holds another experiment, or that cannot be written.

  Creates nothing: call `record_config` once all checks have passed. `workdir` may be local or a
  remote URL (gs://bucket/run; see `tsvae.fileio`).
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  if fileio.exists(path):
    try:
      recorded = json.loads(fileio.read_bytes(path).decode())
    except (OSError, ValueError) as e:
      raise ConfigError(f'{path} is unreadable ({e}); it records which experiment this '
                        'workdir holds. Restore it or use a new --workdir.') from None
    mine = experiment_keys(config)
    theirs = _defining(recorded)
    implicit = implicit_values_of_absent_keys(recorded)
    diffs = [f'  {k}: workdir has {theirs.get(k, implicit.get(k, "<absent>"))!r}'
             f'{" (not recorded: from before the key existed)" if k in implicit else ""}, '
             'this run has '
             f'{mine.get(k, "<absent>")!r}'
             for k in sorted(set(mine) | set(theirs)) if mine.get(k) != theirs.get(k)]
    if diffs:
      raise ConfigError(
          f'--workdir={workdir} holds checkpoints of a different experiment:\n'
          + '\n'.join(diffs) +
          '\nUse a new --workdir, or run with the recorded values '
          f'(see {path}). Only run-control keys ({", ".join(RUN_CONTROL_KEYS)}) may change '
          'between a run and its resumption.')
  elif any(fileio.exists(os.path.join(workdir, d)) for d in ('stage1', 'stage2', 'latents')):
    raise ConfigError(f'--workdir={workdir} holds tsvae stage folders but no '
                      f'{CONFIG_FILENAME}, so it cannot be checked against this config. '
                      'Use a new --workdir.')
  try:
    fileio.check_writable(workdir)
  except PermissionError as e:
    raise ConfigError(f'--workdir: {e} Choose a writable --workdir.') from None


def record_config(config, workdir: str):
  """Writes workdir/config.json (all keys) the first time a workdir is used (never replaces it).

  This is a run's first write: a workdir that cannot be written (e.g. a read-only bucket, which
  `check_workdir` cannot probe without creating something) fails here with a ConfigError.
  """
  path = os.path.join(workdir, CONFIG_FILENAME)
  try:
    if not fileio.exists(path):
      fileio.atomic_write_json(path, flatten(config))
  except OSError as e:
    raise ConfigError(f'--workdir={workdir}: cannot write {CONFIG_FILENAME} ({e}). Choose a '
                      'writable --workdir.') from e


def unflatten(flat: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Inverse of `flatten`: {'a.b': v} → ConfigDict(a=ConfigDict(b=v)).

  A JSON list (how config.json stores a tuple) becomes a tuple again: configs hold sequences as
  tuples (e.g. eval.beta_values), which is also what a --config.* override parses to.
  """
  config = ml_collections.ConfigDict()
  for key, value in sorted(flat.items()):
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      if parent not in node:
        node[parent] = ml_collections.ConfigDict()
      node = node[parent]
    node[leaf] = tuple(value) if isinstance(value, list) else value
  return config


def set_dotted(config, key: str, value: Any):
  """config['a']['b'] = value for key 'a.b' (KeyError if a parent is missing)."""
  node = config
  *parents, leaf = key.split('.')
  for parent in parents:
    node = node[parent]
  node[leaf] = value


def as_dict(config: Mapping) -> Dict[str, Any]:
  return json.loads(json.dumps(flatten(config)))
