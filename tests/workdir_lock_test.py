"""One writer per workdir: the kernel lock, the ram:// lease, and a 2-process job.

The end-to-end case (two `tsvae.main` on one workdir) is in tests/faults_test.py.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid

import pytest
import tensorflow as tf

from tsvae import config_lib
from tsvae import workdir_lock

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SINGLE = dict(process_index=0, process_count=1)  # No JAX needed for a 1-process holder.


def _hold(workdir, command='test'):
  return workdir_lock.hold(workdir, command, **SINGLE)


def test_second_writer_is_refused_naming_the_holder_and_nothing_changes(tmp_path):
  workdir = str(tmp_path / 'run')
  with _hold(workdir, 'first'):
    lock_file = os.path.join(workdir, workdir_lock.LOCK_FILE)
    before = open(lock_file, 'rb').read()
    with pytest.raises(workdir_lock.WorkdirBusy) as refused:
      with _hold(workdir, 'second'):
        pytest.fail('the second writer got the lock')
    assert isinstance(refused.value, config_lib.ConfigError)  # tsvae.main: exit status 2.
    message = str(refused.value)
    assert (f'in use by host {socket.gethostname()}, pid {os.getpid()}, since ' in message and
            '(first); wait for it, or use another workdir' in message), message
    assert open(lock_file, 'rb').read() == before
    assert os.listdir(workdir) == [workdir_lock.LOCK_FILE]
  assert os.listdir(workdir) == []  # Released: the lock file goes with its holder.
  with _hold(workdir):  # And the workdir is free again.
    pass


_HOLDER = textwrap.dedent('''
    import sys, time
    from tsvae import workdir_lock
    with workdir_lock.hold(sys.argv[1], 'holder', process_index=0, process_count=1):
      print('held', flush=True)
      time.sleep(600)
''')


def test_sigkilled_holder_does_not_block_the_rerun(tmp_path):
  workdir = str(tmp_path / 'run')
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, workdir], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lock.WorkdirBusy, match=f'pid {holder.pid}, since'):
      with _hold(workdir):
        pass
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
  assert holder.returncode == -signal.SIGKILL
  # Its lock file stays behind (nobody deleted it), but the kernel lock died with it.
  assert json.load(open(os.path.join(workdir, workdir_lock.LOCK_FILE)))['pid'] == holder.pid
  with _hold(workdir, 'rerun'):
    record = json.load(open(os.path.join(workdir, workdir_lock.LOCK_FILE)))
    assert (record['pid'], record['command']) == (os.getpid(), 'rerun')


# ---------------------------------------------------------------------------- ram:// lease


@pytest.fixture
def ram():
  root = f'ram://tsvae-lock-{uuid.uuid4().hex[:12]}'
  tf.io.gfile.makedirs(root)
  yield root
  tf.io.gfile.rmtree(root)


def _lease(workdir, command, lease_seconds=0.5, renew_seconds=0.1):
  return workdir_lock.Lease(workdir, workdir_lock.holder_record(command),
                            lease_seconds=lease_seconds, renew_seconds=renew_seconds,
                            settle_seconds=0.05)


def test_lease_of_a_dead_holder_expires_on_ram(ram):
  workdir = f'{ram}/run'
  dead = _lease(workdir, 'dead')
  dead.acquire()  # ...and never renews it, as a SIGKILLed run would not.
  with pytest.raises(workdir_lock.WorkdirBusy, match=r'\(dead\).*Its lease .* expires at'):
    _lease(workdir, 'rerun').acquire()
  time.sleep(0.6)
  rerun = _lease(workdir, 'rerun')
  rerun.acquire()
  rerun.release()
  assert tf.io.gfile.listdir(workdir) == []


def test_renewed_lease_outlives_its_term_and_is_deleted_on_release(ram):
  workdir = f'{ram}/run'
  alive = _lease(workdir, 'alive')
  alive.acquire()
  alive.start_renewing()
  time.sleep(1.5)  # Three terms of 0.5 s.
  with pytest.raises(workdir_lock.WorkdirBusy, match=r'\(alive\)'):
    _lease(workdir, 'second').acquire()
  alive.release()
  assert tf.io.gfile.listdir(workdir) == []
  second = _lease(workdir, 'second')
  second.acquire()
  second.release()


# ---------------------------------------------------------------------------- multi-process


_JOB = textwrap.dedent('''
    import os, sys, time
    import jax
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(coordinator_address=sys.argv[2], num_processes=2,
                               process_id=int(sys.argv[3]))
    from jax.experimental import multihost_utils
    from tsvae import workdir_lock
    workdir = sys.argv[1]
    try:
      with workdir_lock.hold(workdir, 'job'):
        print('held', flush=True)
        while not os.path.exists(os.path.join(workdir, '..', 'done')):
          time.sleep(0.05)
        multihost_utils.sync_global_devices('done')
    except workdir_lock.WorkdirBusy as e:
      print('refused:', e, flush=True)
''')


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def _start_job(workdir):
  address = f'127.0.0.1:{_free_port()}'
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return [subprocess.Popen([sys.executable, '-c', _JOB, workdir, address, str(i)],
                           cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, text=True)
          for i in range(2)]


def _next_report(proc):
  """The child's next 'held' / 'refused: ...' line (Gloo prints its own lines too)."""
  for line in proc.stdout:
    if line.startswith(('held', 'refused')):
      return line.strip()
  return None


def test_two_process_job_holds_the_lock_once_and_is_not_refused(tmp_path):
  workdir = str(tmp_path / 'run')
  job = _start_job(workdir)
  try:
    assert [_next_report(p) for p in job] == ['held', 'held']
    record = json.load(open(os.path.join(workdir, workdir_lock.LOCK_FILE)))
    assert (record['pid'], record['processes']) == (job[0].pid, 2)  # Process 0, for the job.
    with pytest.raises(workdir_lock.WorkdirBusy, match=f'pid {job[0].pid}, since'):
      with _hold(workdir):  # An outsider is refused while the job holds it.
        pass
  finally:
    open(tmp_path / 'done', 'w').close()
    for p in job:
      p.wait(timeout=120)
  assert [p.returncode for p in job] == [0, 0]


def test_job_whose_process_0_is_refused_stops_on_every_process(tmp_path):
  workdir = str(tmp_path / 'run')
  with _hold(workdir, 'outsider'):
    job = _start_job(workdir)
    reports = [_next_report(p) for p in job]
    for p in job:
      p.communicate(timeout=120)
  assert [p.returncode for p in job] == [0, 0]
  assert reports[0].startswith('refused:') and '(outsider)' in reports[0], reports
  assert reports[1].startswith('refused: Process 0 of this job could not take'), reports
