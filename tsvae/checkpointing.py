"""Orbax checkpoints of one stage, with the experiment fingerprint stored beside the state.

Layout: `<workdir>/<stage>/checkpoints/<step>/{state,meta}`. Orbax writes each step into a
temporary directory and renames it when complete, so a process killed mid-save leaves no step
directory that `latest_step()` would return. A stage's completion is a separate marker file
(`<workdir>/<stage>/COMPLETE`) written atomically after its final checkpoint.

The workdir may be local or a gs:// URL. On GCS Orbax cannot rename a directory atomically; it
writes the step's files, then a `commit_success.txt` file last, and `latest_step()` only returns
steps that have it (Orbax's `CommitFileTemporaryPath`, its default for gs:// paths). The COMPLETE
marker and the metadata go through `tsvae.fileio`, which handles both kinds of path.

Corruption is caught, not trusted: once Orbax has finished a step, process 0 records the size and
SHA-256 of every file of it in `<step>/tsvae_checksums.json` (written atomically), and `restore`
verifies them before Orbax reads the step. A step without that record (written before records
existed, or whose writer died in the moment between Orbax finishing it and the record) is
restored unverified, with a warning.
"""

import hashlib
import json
import os
import time
from typing import Any, Dict, Optional, Tuple

from absl import logging
import jax
import orbax.checkpoint as ocp

from tsvae import faults
from tsvae import fileio

COMPLETE_MARKER = 'COMPLETE'
CHECKSUMS_FILE = 'tsvae_checksums.json'


class CheckpointError(RuntimeError):
  """A checkpoint that cannot be used (corrupt, truncated, or of another experiment)."""


def fingerprint(experiment: Dict[str, Any]) -> str:
  """Short hash of the experiment-defining config keys."""
  blob = json.dumps(experiment, sort_keys=True).encode()
  return hashlib.sha256(blob).hexdigest()[:16]


def stage_dir(workdir: str, stage: str) -> str:
  return os.path.join(workdir, stage)


def is_complete(workdir: str, stage: str) -> bool:
  return fileio.exists(os.path.join(stage_dir(workdir, stage), COMPLETE_MARKER))


def mark_complete(workdir: str, stage: str, info: Dict[str, Any]):
  if jax.process_index() == 0:
    fileio.atomic_write_json(os.path.join(stage_dir(workdir, stage), COMPLETE_MARKER), info)


class StageCheckpointer:
  """Saves and restores one stage's TrainState and metadata."""

  def __init__(self, workdir: str, stage: str, *, experiment_fingerprint: str,
               max_to_keep: int = 2):
    self.directory = os.path.join(stage_dir(workdir, stage), 'checkpoints')
    self.stage = stage
    self.fingerprint = experiment_fingerprint
    # Synchronous saves: a save has either completed or raised when `save` returns, so a
    # failure (e.g. a full disk) is reported at the step that caused it. A checkpoint of the
    # 13 M-parameter InfoGAN state takes about a second on a CPU.
    self._manager = ocp.CheckpointManager(
        fileio.abspath(self.directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True,
                                             enable_async_checkpointing=False),
        item_names=('state', 'meta'))

  def latest_step(self) -> Optional[int]:
    return self._manager.latest_step()

  def all_steps(self):
    return self._manager.all_steps()

  def save(self, step: int, state: Any, meta: Dict[str, Any]):
    meta = dict(meta, step=int(step), stage=self.stage, fingerprint=self.fingerprint)
    if not fileio.is_remote(self.directory):  # The fault tests watch a local directory.
      faults.kill_once_exists(os.path.join(fileio.abspath(self.directory), f'{step}.*tmp*'),
                              f'{self.stage}.checkpoint', step)
    try:
      self._manager.save(int(step), args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)), force=True)
      if jax.process_index() == 0:
        self.record_checksums(step)
    except OSError as e:
      previous = [s for s in self.all_steps() if s != step]
      kept = (f'the checkpoint of step {max(previous)} is intact' if previous
              else 'no earlier checkpoint of this stage exists')
      raise CheckpointError(
          f'{self.stage}: writing the checkpoint of step {step} to {self.directory} failed '
          f'({e}); {kept}. Free space (or fix the file system) and rerun to resume.') from e

  def restore(self, step: int, abstract_state: Any) -> Tuple[Any, Dict[str, Any]]:
    """Restores `step` into the structure of `abstract_state`; CheckpointError if unusable."""
    path = os.path.join(self.directory, str(step))
    self.verify(step)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise self._unusable(step, f'{type(e).__name__}: {str(e)[:300]}') from e
    meta = restored['meta']
    if meta.get('fingerprint') != self.fingerprint:
      raise CheckpointError(
          f'Checkpoint {path} was written by a different experiment (fingerprint '
          f'{meta.get("fingerprint")} != {self.fingerprint}). Use a new --workdir.')
    logging.info('Restored %s from %s', self.stage, path)
    return restored['state'], meta

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def record_checksums(self, step: int):
    """Writes <step>/tsvae_checksums.json: size and SHA-256 of every file Orbax wrote."""
    step_dir = self._step_dir(step)
    names = [n for n in fileio.walk_files(step_dir) if n != CHECKSUMS_FILE]
    fileio.atomic_write_json(os.path.join(step_dir, CHECKSUMS_FILE),
                             {'files': fileio.checksums(step_dir, names)})

  def verify(self, step: int):
    """CheckpointError unless every file of `step` matches its recorded size and SHA-256."""
    start = time.time()
    step_dir = self._step_dir(step)
    try:
      record = fileio.read_json(os.path.join(step_dir, CHECKSUMS_FILE))
      if record is None:
        logging.warning('Checkpoint %s has no %s (written before checksums were recorded, or '
                        'its writer died just after Orbax finished it); restoring it '
                        'unverified.', step_dir, CHECKSUMS_FILE)
        return
      problems = fileio.checksum_mismatches(step_dir, record['files'])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
      problems = [f'{CHECKSUMS_FILE} cannot be read ({type(e).__name__}: {e})']
    if problems:
      raise self._unusable(step, '; '.join(problems[:5]))
    logging.info('Verified the checksums of %d files of %s in %.2f s.', len(record['files']),
                 step_dir, time.time() - start)

  def _unusable(self, step: int, reason: str) -> CheckpointError:
    """The error for a step that cannot be restored, naming the checkpoint to fall back to."""
    others = [s for s in self.all_steps() if s != step]
    hint = (f' Move it aside to resume from the previous checkpoint (step {max(others)}).'
            if others else ' Move it aside to restart this stage from scratch.')
    return CheckpointError(
        f'Checkpoint {self._step_dir(step)} cannot be restored ({reason}). It is truncated, '
        f'corrupt, or from an incompatible model.{hint}')

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()
