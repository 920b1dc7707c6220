"""Metric writers: TensorBoard event files plus a JSON-lines file, and human progress lines.

`metrics.jsonl` holds one JSON object per logged step, e.g.
`{"stage": "stage1", "step": 200, "attempt": "2026-12-05T10:11:12.345678Z host:4242",
"loss": 123.4, "loggamma": -1.2, "steps_per_sec": 6.1, ...}`; it is what benchmarks and notebooks
read. Only process 0 writes; other processes log nothing. `attempt` names the process that wrote
the row (its start time in UTC, sortable as text, then host:pid): steps re-run after a resume
appear again under a later attempt, so a reader keeps the last row per (stage, step).

On a local workdir each record is appended and flushed at once. An object in a remote workdir
(gs://) cannot be appended to, so there the file is rewritten whole (atomically, see
`tsvae.fileio`) at most every `REMOTE_UPLOAD_SECS` seconds and at every `flush()` (the training
loop flushes at the end of each stage, SIGTERM included): a SIGKILL loses at most the records of
the last `REMOTE_UPLOAD_SECS` seconds there, and the file is never half written.
"""

import datetime
import json
import logging as logging_std
import os
import socket
import time
from typing import Any, Mapping, Optional

from absl import logging
import jax
import numpy as np

from tsvae import fileio


class _MultiWriter:
  """Forwards every writer call (write_scalars, write_images, flush, close, ...) to each writer."""

  def __init__(self, writers):
    self._writers = list(writers)

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


class TensorBoardWriter:
  """Scalars and images as TensorBoard event files in a local folder, by tensorboardX: no
  TensorFlow in the process (a remote workdir uses clu's TensorFlow writer, see create_writer).

  The calls are clu's `MetricWriter` ones that tsvae makes: `write_scalars(step, {tag: value})`,
  `write_images(step, {tag: uint8 or [0, 1] float [N, H, W, C]})` (the first image of each),
  `flush()`, `close()`.
  """

  def __init__(self, logdir: str):
    import tensorboardX  # pylint: disable=g-import-not-at-top
    self._writer = tensorboardX.SummaryWriter(logdir)

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    for tag, value in scalars.items():
      self._writer.add_scalar(tag, float(np.asarray(value)), int(step))

  def write_images(self, step: int, images: Mapping[str, Any]):
    for tag, batch in images.items():
      image = np.asarray(batch)[0]
      self._writer.add_image(tag, image, int(step), dataformats='HWC')

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


def _tensorboard_writer(logdir: str):
  """tensorboardX locally; clu's (TensorFlow) writer in a remote (gs://) workdir; None, saying
  why once, where the package that would write it is missing."""
  try:
    if not fileio.is_remote(logdir):
      return TensorBoardWriter(logdir)
    from clu import metric_writers  # pylint: disable=g-import-not-at-top  (imports TensorFlow)
    return metric_writers.SummaryWriter(logdir)
  except ImportError as e:
    logging.log_first_n(logging.INFO, 'No TensorBoard summaries (%s: pip install tensorboardX, or '
                        "for a remote workdir 'tsvae[tf]'); metrics.jsonl is written.", 1, e)
    return None


# Remote metrics.jsonl: the longest time a record waits before the file is uploaded again.
REMOTE_UPLOAD_SECS = 30.0


def attempt_id() -> str:
  """This moment in UTC (to the microsecond, sortable as text), this host and pid."""
  now = datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%dT%H:%M:%S.%fZ')
  return f'{now} {socket.gethostname()}:{os.getpid()}'


# The attempt of this process: every metrics.jsonl row it writes carries it.
ATTEMPT = attempt_id()

class JsonlWriter:
  """Appends scalars as JSON lines (local or remote `path`); images are ignored."""

  def __init__(self, path: str, extra: Optional[Mapping[str, Any]] = None, *,
               remote_upload_secs: float = REMOTE_UPLOAD_SECS):
    self._extra = dict(extra or {})
    self._path = path
    self._remote = fileio.is_remote(path)
    if self._remote:
      # The whole file, kept in memory and uploaded whole (existing records first).
      self._chunks = [fileio.read_bytes(path)] if fileio.exists(path) else []
      if self._chunks and not self._chunks[0].endswith(b'\n'):
        self._chunks[0] += b'\n'
      self._dirty = False
      self._upload_secs = remote_upload_secs
      self._last_upload = float('-inf')  # The first record goes out at once.
      self._file = None
    else:
      os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
      self._file = open(path, 'a')

  def write_scalars(self, step: int, scalars: Mapping[str, Any]):
    record = {**self._extra, 'step': int(step), 'time': time.time()}
    record.update({k: float(np.asarray(v)) for k, v in scalars.items()})
    line = json.dumps(record) + '\n'
    if self._remote:
      self._chunks.append(line.encode())
      self._dirty = True
      if time.monotonic() - self._last_upload >= self._upload_secs:
        self._upload()
    else:
      self._file.write(line)
      self._file.flush()

  def _upload(self):
    data = b''.join(self._chunks)
    self._chunks = [data]
    fileio.atomic_write_bytes(self._path, data)
    self._dirty = False
    self._last_upload = time.monotonic()

  def write_images(self, step, images):
    del step, images  # Images go to TensorBoard only.

  def flush(self):
    if self._remote:
      if self._dirty:
        self._upload()
    else:
      self._file.flush()

  def close(self):
    if self._remote:
      self.flush()
    else:
      self._file.close()


def read_stage_rows(workdir: str, stage: str) -> list:
  """The rows of `stage` in workdir/metrics.jsonl, one per step in step order: the last one
  written for each step (a resumed run logs the re-run steps again, under a later attempt)."""
  rows = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        row = json.loads(line)
        if row.get('stage') == stage and 'step' in row:
          rows[row['step']] = row
  return [rows[step] for step in sorted(rows)]


def create_writer(workdir: str, stage: str):
  """TensorBoard (workdir/tensorboard/<stage>) + workdir/metrics.jsonl on process 0.

  Without the TensorBoard writer's package (`_tensorboard_writer`) only metrics.jsonl is written.
  """
  if jax.process_index() != 0:
    return _MultiWriter([])
  writers = [JsonlWriter(os.path.join(workdir, 'metrics.jsonl'),
                         extra={'stage': stage, 'attempt': ATTEMPT})]
  tensorboard = _tensorboard_writer(os.path.join(workdir, 'tensorboard', stage))
  if tensorboard is not None:
    writers.insert(0, tensorboard)
  return _MultiWriter(writers)


class _DropLibraryChatter(logging_std.Filter):
  """Keeps INFO records of Orbax / TensorStore internals out of the run log (warnings stay)."""

  _NOISY = ('orbax', 'tensorstore', 'tensorflow_datasets')

  def filter(self, record):
    if record.levelno >= logging_std.WARNING:
      return True
    return not any(name in record.pathname for name in self._NOISY)


def quiet_library_logs():
  """Installs the filter on the 'absl' logger that absl.logging writes through (idempotent)."""
  logger = logging_std.getLogger('absl')
  if not any(isinstance(f, _DropLibraryChatter) for f in logger.filters):
    logger.addFilter(_DropLibraryChatter())


def format_duration(seconds: float) -> str:
  seconds = int(max(seconds, 0))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m' if hours else f'{minutes}m{secs:02d}s'


def log_progress(stage: str, step: int, total_steps: int, epoch: int,
                 metrics: Mapping[str, float], steps_per_sec: float, images_per_sec: float):
  eta = (total_steps - step) / steps_per_sec if steps_per_sec > 0 else float('nan')
  logging.info(
      '%s step %d/%d (epoch %d) loss %.4f kl %.3f gen %.3f log_gamma %.4f lr %.2e | '
      '%.2f steps/s %.0f ex/s ETA %s', stage, step, total_steps, epoch,
      metrics['loss'], metrics['kl'], metrics['gen'], metrics['loggamma'],
      metrics.get('learning_rate', float('nan')), steps_per_sec, images_per_sec,
      format_duration(eta) if np.isfinite(eta) else '?')
