"""Host-memory allocator settings for the training process (glibc only; stdlib only).

XLA:CPU allocates each executable's temp buffer (~100 MB for the InfoGAN MNIST step at batch
64, ~400 MB at batch 256) from a worker thread on every run. glibc serves any block over
32 MB (64 MB in a thread's arena) with a fresh mmap and unmaps it on free, so every step
page-faults the whole buffer back in: ~25k minor faults and 40-50 ms of kernel time per step
on the 2-core CPU VM this project is developed on, which capped the batch-256 step at ~660
images/s instead of ~850 (benchmarks/results/throughput_*.json). One arena, no mmap for large
blocks and no trimming keep those pages mapped from step to step.

`tsvae.main` applies this before JAX or TensorFlow is imported (their threads' arenas are
fixed at their first malloc). `TSVAE_TUNE_MALLOC=0` turns it off; so does running on a libc
that is not glibc (nothing happens). The same effect, for any other entry point:
`MALLOC_ARENA_MAX=1 MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1073741824`.

This module must not import anything heavy: it runs first.
"""

from __future__ import annotations

import ctypes
import os
import sys

ENV_SWITCH = 'TSVAE_TUNE_MALLOC'

# mallopt parameter numbers from glibc's <malloc.h>.
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
TRIM_THRESHOLD_BYTES = 1 << 30


def tune_malloc() -> bool:
  """Keeps large, short-lived host buffers mapped between steps; True when applied."""
  try:
    libc = ctypes.CDLL('libc.so.6')
    mallopt = libc.mallopt
  except (OSError, AttributeError):  # Not glibc (macOS, musl): nothing to do.
    return False
  return bool(mallopt(_M_ARENA_MAX, 1) and mallopt(_M_MMAP_MAX, 0) and
              mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def tune_malloc_for_training() -> dict:
  """Applies `tune_malloc` unless `TSVAE_TUNE_MALLOC=0`; says what happened (for the log).

  Returns {'applied': bool, 'late': bool}: late means JAX or TensorFlow was already imported,
  so threads they started keep their own arenas (the large-block setting still applies).
  """
  if os.environ.get(ENV_SWITCH, '1').strip().lower() in ('0', 'false', 'no', 'off'):
    return {'applied': False, 'late': False}
  late = 'jax' in sys.modules or 'tensorflow' in sys.modules
  return {'applied': tune_malloc(), 'late': late}


def describe(result: dict) -> str:
  """The log line for a `tune_malloc_for_training` result."""
  return (f"Host malloc tuned for XLA:CPU temp buffers: {result['applied']}"
          f"{' (after JAX import)' if result['late'] else ''} ({ENV_SWITCH}=0 turns it off).")
