"""Fault-injection points for the preemption tests (inert unless TSVAE_FAULT is set).

`TSVAE_FAULT=<point>[=<step>]` makes the process SIGKILL itself when it reaches that point:

  stage1.step=N        after stage-1 step N was computed (before any checkpoint of step N)
  stage2.step=N        likewise in stage 2
  stage1.checkpoint=N  while the checkpoint of stage-1 step N is being written (its temporary
                       directory exists, the rename that completes it has not happened)
  stage2.checkpoint=N  likewise in stage 2
  latents.write        after the latent codes were encoded, while their dataset is half written
  samples.write        after the first sample grid was written, before the others
  eval.write           after the first evaluation plot was written, before metrics.json

A SIGKILL cannot be caught, so this is exactly what an OOM killer or a lost VM does. The tests
in tests/faults_test.py use it to prove that every such death is resumed without loss.
"""

import glob
import os
import signal
import threading
import time
from typing import Optional

ENV_VAR = 'TSVAE_FAULT'


def _armed(point: str, step: Optional[int] = None) -> bool:
  spec = os.environ.get(ENV_VAR)
  if not spec:
    return False
  name, _, at = spec.partition('=')
  if name != point:
    return False
  return not at or (step is not None and int(at) == int(step))


def _die():
  os.kill(os.getpid(), signal.SIGKILL)
  time.sleep(60)  # Never reached: SIGKILL is immediate.


def kill_here(point: str, step: Optional[int] = None):
  """SIGKILLs this process if TSVAE_FAULT names this point (and step)."""
  if _armed(point, step):
    _die()


def kill_once_exists(pattern: str, point: str, step: Optional[int] = None):
  """If armed: a watcher thread SIGKILLs the process as soon as `pattern` (a glob) exists.

  Used to die in the middle of a write that happens inside a library (Orbax's checkpoint).
  """
  if not _armed(point, step):
    return

  def watch():
    while True:
      if glob.glob(pattern):
        _die()
      time.sleep(0.001)

  threading.Thread(target=watch, daemon=True).start()
