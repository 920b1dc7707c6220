"""Fixed-shape batching of host arrays: one compiled shape serves a whole pass."""

from typing import Callable

import numpy as np


def map_padded(fn: Callable[[np.ndarray], object], x: np.ndarray, batch_size: int):
  """fn over x in batches of exactly `batch_size` (the last one zero-padded), so that a jitted
  fn compiles one shape; its outputs (an array or a tuple of arrays) trimmed and concatenated.
  `x` must have at least one row."""
  outs = []
  for start in range(0, len(x), batch_size):
    chunk = x[start:start + batch_size]
    n = len(chunk)
    if n < batch_size:
      chunk = np.concatenate([chunk, np.zeros((batch_size - n,) + chunk.shape[1:], chunk.dtype)])
    out = fn(chunk)
    outs.append(tuple(np.asarray(o)[:n] for o in out) if isinstance(out, tuple)
                else np.asarray(out)[:n])
  if outs and isinstance(outs[0], tuple):
    return tuple(np.concatenate(parts) for parts in zip(*outs))
  return np.concatenate(outs)
