"""One writer per workdir: a kernel lock on POSIX file systems, an expiring lease on gs://.

`hold(workdir, command)` is taken by every command that writes into a workdir (`tsvae.main`
through `pipeline.run`, `tsvae.evaluate`, `tsvae.sample`), after its read-only
checks and before its first write. A second writer gets `WorkdirBusy` (a ConfigError: exit
status 2) before any compute, naming the holder, and changes nothing. Readers (TensorBoard, a
notebook reading metrics.jsonl) take no lock and are never blocked.

* Local or shared POSIX file system (ext4, NFS, Lustre, Filestore): `flock` on `<workdir>/LOCK`.
  The kernel drops it when the holding process ends in any way (SIGKILL included), so a run
  that died never blocks its rerun. On NFS, Linux implements `flock` with the protocol's byte-
  range locks, which the server also drops when the client machine stops renewing them (NFSv4:
  its lease, 90 s by default). The file holds the holder's host, pid and start time for the
  message, and is deleted when the holder finishes.
* gs:// (and other URLs, `ram://` in the tests): object stores have no locks, so `<workdir>/LOCK`
  is a lease: a JSON object with an expiry time `LEASE_SECONDS` (60 s) ahead, rewritten every
  `RENEW_SECONDS` (15 s) by a thread of the holder while it lives, deleted when it finishes. A
  run that died (SIGKILL, a lost VM) blocks the workdir until its lease expires: at most 60 s.
  A new holder writes its lease, waits `SETTLE_SECONDS` (2 s) and reads it back, so of two
  starts within that window the later writer wins and the other is refused. Expiry compares
  the writer's clock with the reader's: the hosts' clocks must agree to well within 60 s (NTP).

In a multi-process job process 0 takes the lock for the whole job and tells the other
processes whether it got it; they never touch the lock themselves, so they are not refused.
"""

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time
import uuid
from typing import Any, Dict, Iterator, Optional

from absl import logging

from tsvae import config_lib
from tsvae import fileio

LOCK_FILE = 'LOCK'
LEASE_SECONDS = 60.0
RENEW_SECONDS = 15.0
SETTLE_SECONDS = 2.0


class WorkdirBusy(config_lib.ConfigError):
  """Another process writes into this workdir."""


def holder_record(command: str, processes: int = 1) -> Dict[str, Any]:
  """Who holds the lock: this process's host and pid, the time, the command."""
  return {'host': socket.gethostname(), 'pid': os.getpid(),
          'since': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'command': command,
          'processes': processes}


def busy_error(workdir: str, record: Optional[Dict[str, Any]], note: str = '') -> WorkdirBusy:
  """The refusal for a second writer, naming the holder as far as it is known."""
  if record:
    who = (f'host {record.get("host")}, pid {record.get("pid")}, since {record.get("since")} '
           f'({record.get("command")})')
  else:
    who = 'another process (it is starting: its details are not written yet)'
  return WorkdirBusy(f'workdir {workdir} in use by {who}; wait for it, or use another '
                     f'workdir.{note}')


class KernelLock:
  """flock on a local (or NFS / Lustre) lock file; dies with the process that holds it."""

  def __init__(self, workdir: str, record: Dict[str, Any]):
    self.workdir = workdir
    self.path = os.path.join(fileio.abspath(workdir), LOCK_FILE)
    self.record = record
    self._fd = None

  def acquire(self):
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    while self._fd is None:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError as e:
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
          raise
        raise busy_error(self.workdir, self._read_holder()) from None
      if self._still_linked(fd):
        self._fd = fd
      else:  # The previous holder deleted the file between our open and flock: take the new one.
        os.close(fd)
    try:
      os.ftruncate(self._fd, 0)
      os.pwrite(self._fd, json.dumps(self.record).encode(), 0)
      os.fsync(self._fd)
    except OSError:
      self.release()
      raise

  def _still_linked(self, fd: int) -> bool:
    try:
      st = os.stat(self.path)
    except FileNotFoundError:
      return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)

  def _read_holder(self) -> Optional[Dict[str, Any]]:
    try:
      with open(self.path, 'rb') as f:
        return json.loads(f.read().decode())
    except (OSError, ValueError):
      return None

  def release(self):
    if self._fd is not None:
      try:
        os.remove(self.path)  # While still locked, so no one locks the file being deleted.
      except OSError as e:
        logging.warning('Could not delete the lock file %s (%s).', self.path, e)
      finally:
        os.close(self._fd)
        self._fd = None


class Lease:
  """An expiring lease object for file systems without locks (gs://); see the module doc."""

  def __init__(self, workdir: str, record: Dict[str, Any], *,
               lease_seconds: float = LEASE_SECONDS, renew_seconds: float = RENEW_SECONDS,
               settle_seconds: float = SETTLE_SECONDS):
    self.workdir = workdir
    self.path = f'{workdir.rstrip("/")}/{LOCK_FILE}'
    self.record = dict(record, token=uuid.uuid4().hex, lease_seconds=lease_seconds)
    self._lease_seconds = lease_seconds
    self._renew_seconds = renew_seconds
    self._settle_seconds = settle_seconds
    self._stop = threading.Event()
    self._renewer = None

  def _read(self) -> Optional[Dict[str, Any]]:
    try:
      return fileio.read_json(self.path)
    except ValueError:  # Not ours and unreadable: treated as no lease.
      return None

  def _write(self):
    expires = time.time() + self._lease_seconds
    fileio.atomic_write_json(self.path, dict(
        self.record, expires=expires,
        expires_utc=time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(expires))))

  def _refusal(self, current: Dict[str, Any]) -> WorkdirBusy:
    left = current.get('expires', 0) - time.time()
    return busy_error(self.workdir, current,
                      f' Its lease ({self.path}) expires at {current.get("expires_utc")} '
                      f'({max(left, 0):.0f} s from now) unless its holder renews it; a run that '
                      'died frees the workdir then.')

  def acquire(self):
    """Takes the lease, or raises WorkdirBusy; does not renew it (see `start_renewing`)."""
    current = self._read()
    if current and current.get('token') != self.record['token'] and (
        current.get('expires', 0) > time.time()):
      raise self._refusal(current)
    self._write()
    time.sleep(self._settle_seconds)
    current = self._read()
    if not current or current.get('token') != self.record['token']:
      raise self._refusal(current or {})

  def renew(self):
    current = self._read()
    if current and current.get('token') != self.record['token']:
      logging.error('The lease on %s was taken by host %s, pid %s while this run held it (it '
                    'was not renewed for %.0f s?): two writers now share the workdir.',
                    self.workdir, current.get('host'), current.get('pid'), self._lease_seconds)
      return
    self._write()

  def start_renewing(self):
    def renew_until_stopped():
      while not self._stop.wait(self._renew_seconds):
        try:
          self.renew()
        except OSError as e:
          logging.warning('Renewing the lease on %s failed (%s); retrying in %.0f s.',
                          self.workdir, e, self._renew_seconds)
    self._renewer = threading.Thread(target=renew_until_stopped, daemon=True,
                                     name='tsvae-lease')
    self._renewer.start()

  def release(self):
    self._stop.set()
    if self._renewer is not None:
      self._renewer.join()
    try:
      current = self._read()
      if current and current.get('token') == self.record['token']:
        fileio.remove(self.path)
    except OSError as e:  # It expires by itself.
      logging.warning('Could not delete the lease %s (%s); it expires within %.0f s.',
                      self.path, e, self._lease_seconds)


def _job_shape(process_index: Optional[int], process_count: Optional[int]):
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index, process_count = jax.process_index(), jax.process_count()
  return process_index, process_count


def _tell_the_job(refusal: Optional[Exception], process_count: int) -> Optional[Exception]:
  """Process 0's outcome (refused or not) on every process of the job."""
  if process_count == 1:
    return refusal
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  refused = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is not None)))
  if refused and refusal is None:
    return WorkdirBusy('Process 0 of this job could not take the workdir lock (its log names '
                       'the holder); wait for the other writer, or use another workdir.')
  return refusal


def _acquire(workdir: str, record: Dict[str, Any]):
  """(the lock now held, None), or (None, why not)."""
  lock = Lease(workdir, record) if fileio.is_remote(workdir) else KernelLock(workdir, record)
  try:
    lock.acquire()
  except WorkdirBusy as e:
    return None, e
  except OSError as e:
    return None, config_lib.ConfigError(f'Cannot take the lock of workdir {workdir} ({e}).')
  return lock, None


@contextlib.contextmanager
def hold(workdir: str, command: str, *, process_index: Optional[int] = None,
         process_count: Optional[int] = None) -> Iterator[None]:
  """Holds the workdir's lock (process 0 for the job) for the block; WorkdirBusy if taken."""
  process_index, process_count = _job_shape(process_index, process_count)
  lock, refusal = None, None
  if process_index == 0:
    lock, refusal = _acquire(workdir, holder_record(command, process_count))
  try:
    refusal = _tell_the_job(refusal, process_count)
    if refusal is not None:
      raise refusal
    if isinstance(lock, Lease):
      lock.start_renewing()
    yield
  finally:
    if lock is not None:
      lock.release()


def is_inside(path: str, workdir: str) -> bool:
  """Whether `path` is `workdir` or below it (local paths resolved; URLs compared as text)."""
  if fileio.is_remote(path) or fileio.is_remote(workdir):
    return (path.rstrip('/') + '/').startswith(workdir.rstrip('/') + '/')
  path, workdir = (os.path.realpath(fileio.abspath(p)) for p in (path, workdir))
  return os.path.commonpath([path, workdir]) == workdir


def hold_until_exit(workdir: str, command: str):
  """`hold` for the rest of this process (a command-line tool's main): released at exit."""
  import atexit  # pylint: disable=g-import-not-at-top
  held = hold(workdir, command)
  held.__enter__()  # pylint: disable=unnecessary-dunder-call
  atexit.register(held.__exit__, None, None, None)
