"""Fault injection: SIGKILL at every phase, NaN batches, corrupt checkpoints, a full disk.

The chain test kills the real `tsvae.main` (a subprocess) at one phase after another on the same
workdir, checks after every death that nothing half-written is taken as complete, and finally
compares the resumed run's parameters with an uninterrupted run's: they must be bitwise equal
(same data order, same noise, same XLA program on the CPU).
"""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import jax
import ml_collections
import numpy as np
import pytest

from testdata import tiny_config, tiny_flags, write_mnist_dir
from tsvae import checkpointing
from tsvae import faults
from tsvae import input_pipeline
from tsvae import train
from tsvae import experiment as experiment_lib
from tsvae import stages
from tsvae import workdir_lock
from tsvae import models

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# 64 training images, batch 8: 8 steps per epoch. Stage 1: 12 steps (1.5 epochs), stage 2: 16.
RUN = dict(stage1__num_epochs=2, stage1__max_steps=12, stage2__num_epochs=2,
           checkpoint_every_steps=4, log_every_steps=4)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp('fault_data')
  write_mnist_dir(str(root / 'manual'), n_train=64, n_test=16)
  return str(root / 'manual'), str(root / 'tfds')


def _config(data_dirs):
  manual_dir, data_dir = data_dirs
  return tiny_config(data__manual_dir=manual_dir, data__data_dir=data_dir, **RUN)


def _command(workdir, data_dirs):
  manual_dir, data_dir = data_dirs
  return [sys.executable, '-m', 'tsvae.main', '--config=configs/default.py',
          f'--workdir={workdir}', f'--config.data.manual_dir={manual_dir}',
          f'--config.data.data_dir={data_dir}', *tiny_flags(**RUN)]


def _env(fault=None):
  env = dict(os.environ)
  env.pop(faults.ENV_VAR, None)
  if fault:
    env[faults.ENV_VAR] = fault
  return env


def _run(workdir, data_dirs, fault=None):
  return subprocess.run(_command(workdir, data_dirs), cwd=REPO_ROOT, env=_env(fault),
                        capture_output=True, text=True, timeout=600)


def _last_rows(workdir):
  """metrics.jsonl as failures-and-resuming.md reads it: last row per (stage, step), by attempt."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = sorted(map(json.loads, f), key=lambda r: r['attempt'])
  return {(r['stage'], r['step']): r for r in rows}


def _final_params(workdir, data_dirs):
  setup = experiment_lib.setup(_config(data_dirs), workdir)
  return (jax.device_get(stages.restore_final(setup, 'stage1')),
          jax.device_get(stages.restore_final(setup, 'stage2')))


def _assert_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree_util.tree_flatten(a)
  leaves_b, tree_b = jax.tree_util.tree_flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _no_partial_checkpoints_visible(workdir, stage):
  steps = checkpointing.StageCheckpointer(workdir, stage, experiment_fingerprint='').all_steps()
  for step in steps:  # Every step Orbax lists is a finalised directory.
    assert os.path.isdir(os.path.join(workdir, stage, 'checkpoints', str(step)))
  return steps


def test_sigkill_at_every_phase_then_resume_is_bitwise_identical(tmp_path, data):
  baseline = str(tmp_path / 'baseline')
  result = _run(baseline, data)
  assert result.returncode == 0, result.stderr[-3000:]

  workdir = str(tmp_path / 'killed')
  chain = [
      ('stage1.step=6', lambda: (not checkpointing.is_complete(workdir, 'stage1')
                                 and _no_partial_checkpoints_visible(workdir, 'stage1') == [4])),
      ('stage1.checkpoint=8', lambda: _no_partial_checkpoints_visible(workdir, 'stage1') == [4]),
      ('latents.write', lambda: (checkpointing.is_complete(workdir, 'stage1')
                                 and not os.path.exists(os.path.join(workdir, 'latents')))),
      ('stage2.step=5', lambda: _no_partial_checkpoints_visible(workdir, 'stage2') == [4]),
      ('stage2.checkpoint=12', lambda: _no_partial_checkpoints_visible(workdir, 'stage2') == [4, 8]),
      ('samples.write', lambda: (checkpointing.is_complete(workdir, 'stage2') and not
                                 os.path.exists(os.path.join(workdir, 'samples',
                                                             'stage1_samples.png')))),
  ]
  for fault, invariant in chain:
    result = _run(workdir, data, fault)
    assert result.returncode == -signal.SIGKILL, (fault, result.returncode,
                                                  result.stderr[-3000:])
    assert invariant(), fault
    if fault.startswith('stage2'):  # The latents written after the latents.write death.
      latents = input_pipeline.read_latent_dataset_builder(os.path.join(workdir, 'latents'))
      assert latents.num_examples == 64
  result = _run(workdir, data)
  assert result.returncode == 0, result.stderr[-3000:]
  for name in ('stage2_samples.png', 'stage1_samples.png', 'reconstructions.png'):
    assert os.path.exists(os.path.join(workdir, 'samples', name))

  (b1, b2), (k1, k2) = _final_params(baseline, data), _final_params(workdir, data)
  assert int(k1.step) == 12 and int(k2.step) == 16
  # Re-run steps were logged again by later attempts; the last row per (stage, step) is the
  # uninterrupted run's (same loss, bitwise).
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    attempts = {json.loads(line)['attempt'] for line in f}
  assert len(attempts) == len(chain)  # Each killed run logged; the last one only drew samples.
  killed_rows, baseline_rows = _last_rows(workdir), _last_rows(baseline)
  assert killed_rows.keys() == baseline_rows.keys()
  assert all(killed_rows[k]['loss'] == baseline_rows[k]['loss'] for k in baseline_rows)
  for field in ('params', 'batch_stats', 'opt_state', 'rng'):
    _assert_bitwise_equal(getattr(b1, field), getattr(k1, field))
    _assert_bitwise_equal(getattr(b2, field), getattr(k2, field))


def test_nan_batch_stops_with_the_last_good_checkpoint_intact(tmp_path):
  model = models.make_stage2_model(4, depth=1, width=8)
  good = {'mu': np.zeros((8, 4), np.float32), 'sigma': np.ones((8, 4), np.float32)}
  bad = {'mu': np.full((8, 4), np.nan, np.float32), 'sigma': np.ones((8, 4), np.float32)}

  def epoch_batches(epoch, skip):
    batches = [good] * 6 + [bad] + [good]  # Step 7 is poisoned.
    return iter(batches[skip:])

  stage_config = ml_collections.ConfigDict(dict(
      num_epochs=1, learning_rate=1e-3, lr_decay_epochs=1, lr_decay_factor=0.5, max_steps=-1,
      reconstruction_loss='gaussian', beta=1.0))
  spec = train.StageSpec(name='stage2', model=model, config=stage_config,
                         prepare_input=train.latent_input, example_input=good['mu'],
                         steps_per_epoch=8, epoch_batches=epoch_batches,
                         base_rng=jax.random.PRNGKey(0), examples_per_batch=8)
  kwargs = dict(mesh=train.make_mesh(), workdir=str(tmp_path), experiment_fingerprint='f',
                log_every_steps=4, checkpoint_every_steps=4, keep_checkpoints=5)
  with pytest.raises(train.NonFiniteError, match=r'stage2.*step 7.*last good checkpoint is step 4'):
    train.train_stage(spec, **kwargs)
  ckpt = checkpointing.StageCheckpointer(str(tmp_path), 'stage2', experiment_fingerprint='f')
  assert ckpt.all_steps() == [4]
  state = train.create_train_state(model, good['mu'], base_rng=jax.random.PRNGKey(0),
                                   tx=train.make_optimizer(lambda s: 1e-3))
  restored, _ = ckpt.restore(4, jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state))
  assert all(np.all(np.isfinite(x)) for x in jax.tree_util.tree_leaves(restored.params))
  ckpt.close()

  # With nan_policy='skip' the same data trains through, the bad step counted.
  state = train.train_stage(spec, nan_policy='skip', **dict(kwargs, workdir=str(tmp_path / 's')))
  assert int(state.step) == 8 and int(state.num_skipped) == 1


@pytest.fixture(scope='module')
def finished_run(tmp_path_factory, data):
  workdir = str(tmp_path_factory.mktemp('finished') / 'run')
  result = _run(workdir, data)
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir


def _snapshot(directory):
  return {p: (os.path.getsize(p), os.path.getmtime(p))
          for p in glob.glob(os.path.join(directory, '**'), recursive=True) if os.path.isfile(p)}


def test_corrupt_checkpoint_is_one_clear_error_and_nothing_changes(tmp_path, data, finished_run):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  latest = os.path.join(workdir, 'stage1', 'checkpoints', '12')
  files = [p for p in glob.glob(os.path.join(latest, 'state', '**'), recursive=True)
           if os.path.isfile(p)]
  victim = max(files, key=os.path.getsize)
  with open(victim, 'r+b') as f:
    f.truncate(os.path.getsize(victim) // 2)
  before = _snapshot(workdir)
  result = _run(workdir, data)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'stage1/checkpoints/12 cannot be restored' in result.stderr
  assert 'previous checkpoint (step 8)' in result.stderr
  assert _snapshot(workdir) == before


def _flip_one_byte(path):
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0x01]))


def test_flipped_byte_in_a_checkpoint_array_file_is_one_clear_error(tmp_path, data,
                                                                    finished_run):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  array_files = glob.glob(os.path.join(workdir, 'stage1', 'checkpoints', '12', 'state',
                                       'ocdbt.process_0', 'd', '*'))
  victim = max(array_files, key=os.path.getsize)
  _flip_one_byte(victim)
  before = _snapshot(workdir)
  result = _run(workdir, data)
  assert result.returncode == 2, result.stderr[-3000:]
  assert 'stage1/checkpoints/12 cannot be restored' in result.stderr
  assert (f'state/ocdbt.process_0/d/{os.path.basename(victim)} does not match the SHA-256 '
          'recorded when it was written') in result.stderr
  assert 'previous checkpoint (step 8)' in result.stderr
  assert _snapshot(workdir) == before


def test_flipped_byte_in_a_latents_shard_is_one_clear_error(tmp_path, data, finished_run):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  shard = os.path.join(workdir, 'latents', 'tsvae_latents.npz')  # The run's latents (npz).
  _flip_one_byte(shard)
  before = _snapshot(workdir)
  result = _run(workdir, data)
  assert result.returncode == 2, result.stderr[-3000:]
  message = ' '.join(result.stderr.split())  # absl may wrap long lines.
  assert (f'is corrupt: {os.path.basename(shard)} does not match the SHA-256 recorded when it '
          'was written' in message and 'move it aside' in message), result.stderr[-3000:]
  assert _snapshot(workdir) == before  # Not encoded again, not trained on.


def test_second_writer_exits_2_and_the_first_finishes_unchanged(tmp_path, data, finished_run):
  workdir = str(tmp_path / 'run')
  first = subprocess.Popen(_command(workdir, data), cwd=REPO_ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  lock_file = os.path.join(workdir, 'LOCK')
  deadline = time.time() + 300
  while first.poll() is None and time.time() < deadline:
    try:
      if json.load(open(lock_file))['pid'] == first.pid:
        break
    except (OSError, ValueError):
      pass
    time.sleep(0.1)
  second = _run(workdir, data)
  first_was_running = first.poll() is None
  first_stderr = first.communicate(timeout=600)[1]
  assert first.returncode == 0, first_stderr[-3000:]
  assert first_was_running  # The second came and went while the first held the workdir.
  assert second.returncode == 2, second.stderr[-3000:]
  assert (f'in use by host {socket.gethostname()}, pid {first.pid}, since' in second.stderr and
          'wait for it, or use another workdir' in second.stderr), second.stderr[-3000:]
  # The first run ended as an uninterrupted run does, every step logged once, by one attempt.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [json.loads(line) for line in f]
  assert len({r['attempt'] for r in rows}) == 1
  assert sorted((r['stage'], r['step']) for r in rows) == sorted(_last_rows(finished_run))
  (b1, b2), (k1, k2) = _final_params(finished_run, data), _final_params(workdir, data)
  for field in ('params', 'batch_stats', 'opt_state', 'rng'):
    _assert_bitwise_equal(getattr(b1, field), getattr(k1, field))
    _assert_bitwise_equal(getattr(b2, field), getattr(k2, field))
  assert not os.path.exists(lock_file)


def test_sample_writing_elsewhere_runs_beside_a_writer(tmp_path, data, finished_run):
  manual_dir, data_dir = data
  cmd = [sys.executable, '-m', 'tsvae.sample', f'--workdir={finished_run}',
         f'--config.data.manual_dir={manual_dir}', f'--config.data.data_dir={data_dir}']
  before = _snapshot(finished_run)
  with workdir_lock.hold(finished_run, 'a writer', process_index=0, process_count=1):
    into_workdir = subprocess.run(cmd, cwd=REPO_ROOT, env=_env(), capture_output=True,
                                  text=True, timeout=600)
    elsewhere = subprocess.run(cmd + [f'--output_dir={tmp_path / "grids"}'], cwd=REPO_ROOT,
                               env=_env(), capture_output=True, text=True, timeout=600)
  assert into_workdir.returncode == 2, into_workdir.stderr[-3000:]
  assert '(a writer); wait for it, or use another workdir' in into_workdir.stderr
  assert elsewhere.returncode == 0, elsewhere.stderr[-3000:]
  assert os.path.getsize(tmp_path / 'grids' / 'mean_vs_ancestral.png') > 0
  assert _snapshot(finished_run) == before  # The reader changed nothing in the workdir.


def test_disk_full_while_checkpointing(tmp_path, monkeypatch):
  model = models.make_stage2_model(4, depth=1, width=8)
  batch = {'mu': np.zeros((8, 4), np.float32), 'sigma': np.ones((8, 4), np.float32)}
  stage_config = ml_collections.ConfigDict(dict(
      num_epochs=1, learning_rate=1e-3, lr_decay_epochs=1, lr_decay_factor=0.5, max_steps=-1,
      reconstruction_loss='gaussian', beta=1.0))
  spec = train.StageSpec(name='stage2', model=model, config=stage_config,
                         prepare_input=train.latent_input, example_input=batch['mu'],
                         steps_per_epoch=8, epoch_batches=lambda e, s: iter([batch] * (8 - s)),
                         base_rng=jax.random.PRNGKey(0), examples_per_batch=8)
  real_save = checkpointing.ocp.CheckpointManager.save

  def save_until_full(self, step, *args, **kwargs):
    if step >= 8:
      raise OSError(28, 'No space left on device')
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpointing.ocp.CheckpointManager, 'save', save_until_full)
  with pytest.raises(checkpointing.CheckpointError,
                     match=r'step 8.*No space left.*step 4 is intact'):
    train.train_stage(spec, mesh=train.make_mesh(), workdir=str(tmp_path),
                      experiment_fingerprint='f', log_every_steps=4, checkpoint_every_steps=4,
                      keep_checkpoints=5)
  monkeypatch.undo()
  ckpt = checkpointing.StageCheckpointer(str(tmp_path), 'stage2', experiment_fingerprint='f')
  assert ckpt.all_steps() == [4]
  ckpt.close()


def test_sigkill_during_evaluation_then_rerun(tmp_path, data, finished_run):
  import shutil  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / 'run')
  shutil.copytree(finished_run, workdir)
  manual_dir, data_dir = data
  cmd = [sys.executable, '-m', 'tsvae.evaluate', f'--workdir={workdir}',
         f'--config.data.manual_dir={manual_dir}', f'--config.data.data_dir={data_dir}',
         '--config.eval.num_samples=32', '--config.eval.classifier_epochs=1',
         '--config.eval.batch_size=64', '--config.eval.allow_download=False',
         f'--config.eval.cache_dir={tmp_path / "cache"}']
  metrics = os.path.join(workdir, 'eval', 'metrics.json')
  env = dict(os.environ, **{faults.ENV_VAR: 'eval.write'})
  killed = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert not os.path.exists(metrics)  # The completion record is written last.
  env.pop(faults.ENV_VAR)
  rerun = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                         timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  import json  # pylint: disable=g-import-not-at-top
  with open(metrics) as f:
    record = json.load(f)
  assert record['num_samples_requested'] == 32
  assert record['num_samples'] == 16  # Capped by the 16 test images of the tiny data set.
