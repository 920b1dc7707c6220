"""Each epoch's example order of an in-memory training set: one JAX function of (seed, epoch).

The scanned train loop computes it on the devices (`global_batches` inside a jitted call), and
the in-memory host pipeline computes the same order on the host's CPU (`host_order`), so a
run fed either way trains on the same global batches:
- a pure function of (seed, epoch): a resumed run replays its epochs exactly;
- the whole permutation in every process: the same global batches for any process count;
- the last partial global batch is dropped.

The order comes from JAX's threefry PRNG (`jax.random.permutation`, a stable sort on random
keys), which gives the same bits on every platform. A different JAX release may change it (as it
may change any of JAX's random streams), so resume a run with the JAX it started with.

Stage 1 shuffles with `config.seed`, stage 2 with `config.seed + 1`.
"""

import functools
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

_PURPOSE = 3  # Separates the epoch-order stream from the other host streams of a seed.


def _key(seed: int) -> jax.Array:
  """A threefry key for any Python int seed (negative and > 32-bit ones included)."""
  words = np.random.SeedSequence([int(seed) & 0xFFFF_FFFF_FFFF_FFFF, _PURPOSE]).generate_state(
      2, np.uint32)
  return jax.random.wrap_key_data(jnp.asarray(words), impl='threefry2x32')


def permutation(num_examples: int, seed: int, epoch) -> jax.Array:
  """int32 [num_examples]: the order of `epoch` (traceable in `epoch`)."""
  key = jax.random.fold_in(_key(seed), epoch)
  return jax.random.permutation(key, int(num_examples)).astype(jnp.int32)


def global_batches(num_examples: int, global_batch_size: int, seed: Optional[int],
                   epoch) -> jax.Array:
  """int32 [num_examples // global_batch_size, global_batch_size]: the rows of each global batch.

  seed None keeps the stored order. Traceable in `epoch`: the scanned loop calls it on device.
  """
  n = int(num_examples)
  order = jnp.arange(n, dtype=jnp.int32) if seed is None else permutation(n, seed, epoch)
  return _batched(order, global_batch_size)


def _batched(order, global_batch_size: int):
  """The order cut into whole global batches (the last partial one dropped); numpy or JAX."""
  batch = int(global_batch_size)
  num_batches = len(order) // batch
  return order[:num_batches * batch].reshape(num_batches, batch)


@functools.lru_cache(maxsize=16)
def _jitted_permutation(num_examples: int, seed: int):
  return jax.jit(lambda epoch: permutation(num_examples, seed, epoch))


def host_order(num_examples: int, seed: Optional[int], epoch: int) -> np.ndarray:
  """`permutation` (the stored order for seed None) computed on the host's CPU, as numpy: the
  host in-memory pipeline's order."""
  if int(epoch) < 0:
    raise ValueError(f'epoch must be >= 0, got {epoch}.')
  if seed is None:
    return np.arange(int(num_examples), dtype=np.int32)
  # This process's own CPU device (jax.devices('cpu')[0] is process 0's in a multi-process run).
  epoch_on_cpu = jax.device_put(np.int32(epoch), jax.local_devices(backend='cpu')[0])
  return np.asarray(_jitted_permutation(int(num_examples), int(seed))(epoch_on_cpu))


def host_global_batches(num_examples: int, global_batch_size: int, seed: Optional[int],
                        epoch: int) -> np.ndarray:
  """`global_batches` computed on the host's CPU, as numpy."""
  return _batched(host_order(num_examples, seed, epoch), global_batch_size)
