"""TrainState, the data-parallel step (the ELBO or a baseline's objective), and the one train
loop both stages use.

Data parallelism: the step is `jax.jit` over a 1-D device mesh (axis 'data'). The global batch is
a `jax.Array` sharded along its first axis over every device of every process; the state is
replicated. XLA inserts the gradient all-reduce, and BatchNorm statistics are computed over the
*global* batch, so a step on N devices computes the same function as on 1 device (tests check
this). This is the form JAX recommends since `jax.Array` (pmap is in maintenance mode and is
itself lowered through shard_map in current JAX); it also needs no per-device reshapes, no
`pmean` bookkeeping, and no replicate/unreplicate of the state around checkpoints.

Randomness: each stage has a base key (seed folded with the stage); step `t` uses
`fold_in(base, t)`, and the noise arrays are drawn for the whole global batch with JAX's
partitionable threefry, so every example's noise depends on (seed, stage, step, index) only —
not on the device count. This replaces the per-device folding a pmap step needs, and makes
resumed runs replay exactly the noise of an uninterrupted one.
"""

import dataclasses
import functools
import itertools
import math
import signal
import time
from typing import Any, Callable, Dict, Iterable, Mapping, Optional

from absl import logging
import flax
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import numpy as np
import optax

from tsvae import checkpointing
from tsvae import config_lib
from tsvae import epoch_order
from tsvae import faults
from tsvae import losses
from tsvae import metric_logging

# Exit status of a run stopped by SIGTERM after saving its checkpoint (EX_TEMPFAIL: rerun it).
PREEMPTED_EXIT_CODE = 75
NAN_POLICIES = config_lib.NAN_POLICIES  # Re-exported: config_lib checks config.nan_policy.


class TrainState(train_state.TrainState):
  batch_stats: Any = None
  rng: Any = None  # Step t draws its noise from fold_in(rng, t).
  num_skipped: Any = 0  # Steps skipped for non-finite loss/gradients (nan_policy='skip').


class NonFiniteError(FloatingPointError):
  """Loss or gradients became NaN/Inf; nothing past the last good checkpoint is saved."""


class Preempted(SystemExit):
  """Raised after a SIGTERM-triggered checkpoint; exits with PREEMPTED_EXIT_CODE."""

  def __init__(self, message: str):
    super().__init__(PREEMPTED_EXIT_CODE)
    self.message = message


# ----------------------------------------------------------------------------- parallelism


def make_mesh(devices: Optional[Iterable[jax.Device]] = None) -> Mesh:
  """1-D mesh over `devices` (default: all devices of all processes)."""
  devices = list(devices) if devices is not None else jax.devices()
  return Mesh(np.asarray(devices), ('data',))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P('data'))


def host_local(x):
  """This process's copy of a replicated (possibly multi-process) array, as numpy; other values
  as they are."""
  return np.asarray(x.addressable_data(0)) if isinstance(x, jax.Array) else x


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """This process's slice of the global batch → a global jax.Array sharded on 'data'."""
  sharding = batch_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


# ----------------------------------------------------------------------------- state & step


def lr_schedule(stage_config, steps_per_epoch: int) -> optax.Schedule:
  """lr0 · factor^floor(epoch / lr_decay_epochs), applied per step (the reference's schedule)."""
  return optax.exponential_decay(
      init_value=stage_config.learning_rate,
      transition_steps=max(1, steps_per_epoch * stage_config.lr_decay_epochs),
      decay_rate=stage_config.lr_decay_factor,
      staircase=True)


def make_optimizer(schedule: optax.Schedule) -> optax.GradientTransformation:
  # Adam with TF's defaults (β1 0.9, β2 0.999, ε 1e-8). TF1 adds ε to √v before bias correction,
  # optax after; the difference is ≤ 3e-7 in the denominator and only in the first steps.
  return optax.adam(schedule, b1=0.9, b2=0.999, eps=1e-8)


def create_train_state(model, example_input: np.ndarray, *, base_rng: jax.Array,
                       tx: optax.GradientTransformation) -> TrainState:
  """Initialises the VAE from `base_rng` (the stage's key) on the default device."""
  init_rng, noise_rng, step_rng = jax.random.split(base_rng, 3)
  variables = jax.jit(lambda x: model.init({'params': init_rng, 'noise': noise_rng}, x,
                                           train=False))(example_input)
  variables = flax.core.unfreeze(variables)
  state = TrainState.create(
      apply_fn=model.apply, params=variables['params'], tx=tx,
      batch_stats=variables.get('batch_stats', {}), rng=step_rng,
      num_skipped=jnp.zeros((), jnp.int32))
  return state.replace(step=jnp.zeros((), jnp.int32))  # An array leaf, like every other.


def image_input(batch: Mapping[str, jax.Array], rng: jax.Array) -> jax.Array:
  """Stage-1 input: the images, as floats in [0, 1] (uint8 batches are scaled by 1/255)."""
  del rng
  image = batch['image']
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def latent_input(batch: Mapping[str, jax.Array], rng: jax.Array) -> jax.Array:
  """Stage-2 input: a fresh z = μ_z + σ_z·ε for every example, every step (hence every epoch)."""
  mu, sigma = batch['mu'], batch['sigma']
  return mu + sigma * jax.random.normal(rng, mu.shape, mu.dtype)


def make_train_step(model, *, prepare_input: Callable[..., jax.Array],
                    objective: losses.Objective, nan_policy: str = 'error'
                    ) -> Callable[[TrainState, Any], Any]:
  """The pure (un-jitted) step: (state, batch) → (new_state, metrics).

  ``objective(x, outputs, params) → (loss, metrics)`` is the loss (``losses.make_objective``:
  the reference ELBO is ``make_objective('vae', reconstruction_loss=..., beta=...)``).
  """
  if nan_policy not in NAN_POLICIES:
    raise ValueError(f'nan_policy must be one of {NAN_POLICIES}, got {nan_policy!r}')

  def train_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    input_rng, noise_rng = jax.random.split(rng)
    x = prepare_input(batch, input_rng)

    def loss_fn(params):
      outputs, updates = model.apply(
          {'params': params, 'batch_stats': state.batch_stats}, x, train=True,
          rngs={'noise': noise_rng}, mutable=['batch_stats'])
      loss, metrics = objective(x, outputs, params)
      return loss, (metrics, updates.get('batch_stats', state.batch_stats))

    (loss, (metrics, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state.params)
    # One reduction over the gradients gives both the metric and the check: a NaN/Inf anywhere
    # in them makes the global norm NaN/Inf. (So does a norm beyond float32 range, ~1.8e19,
    # which Adam's second moment could not represent either.) A separate isfinite pass over
    # all 13 M gradients was a second full read of them (XLA:CPU even materialised it as a
    # bool array per leaf).
    grad_norm = optax.global_norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
    if nan_policy == 'skip':
      keep_old = lambda new, old: jnp.where(finite, new, old)
      new_state = new_state.replace(
          params=jax.tree_util.tree_map(keep_old, new_state.params, state.params),
          opt_state=jax.tree_util.tree_map(keep_old, new_state.opt_state, state.opt_state),
          batch_stats=jax.tree_util.tree_map(keep_old, new_state.batch_stats,
                                             state.batch_stats),
          num_skipped=state.num_skipped + jnp.where(finite, 0, 1).astype(jnp.int32))
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite)
    return new_state, metrics

  return train_step


def jit_train_step(train_step, mesh: Mesh):
  """jit over the mesh: replicated state, batch sharded on 'data', state buffers donated.

  On CPU the step is compiled with XLA's YNNPACK library fusions for dots and reductions only,
  not for convolutions: on a 2-core AVX-512 machine YNNPACK ran the InfoGAN 4x4 stride-2
  convolutions and their kernel gradients 25-40% slower (in CPU time) than XLA's Eigen
  convolutions, while its dots (notably g @ W^T) and channel reductions (BatchNorm) are the
  faster ones. A YNN setting in XLA_FLAGS is left to take effect instead.
  """
  return jax.jit(train_step,
                 in_shardings=(replicated(mesh), batch_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,), compiler_options=_compiler_options(mesh))


def _compiler_options(mesh: Mesh) -> Optional[Dict[str, str]]:
  """The CPU YNNPACK setting of `jit_train_step` (None off the CPU or when XLA_FLAGS sets it)."""
  import os  # pylint: disable=g-import-not-at-top
  if (not all(d.platform == 'cpu' for d in mesh.devices.flat)
      or 'ynn_fusion_type' in os.environ.get('XLA_FLAGS', '')):
    return None
  compiler_options = {'xla_cpu_experimental_ynn_fusion_type':
                      'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT,LIBRARY_FUSION_TYPE_REDUCE'}
  try:  # An experimental option: a jaxlib that does not know it compiles without it.
    jax.jit(lambda x: x + 1, compiler_options=compiler_options).lower(
        np.float32(0)).compile()
  except Exception:  # pylint: disable=broad-except
    return None
  return compiler_options


# ----------------------------------------------------------------------------- scanned steps
# `steps_per_call` > 1: one jitted call runs n <= steps_per_call steps with `lax.scan` and returns
# the metrics stacked along a leading axis of length n. The scan body is the very step function
# of `make_train_step`: step t trains on the same batch with the same noise as in the one-step
# path. On XLA:CPU the results agree with it to float tolerance (a convolution's kernel gradient
# compiles differently inside the loop) and are bitwise the same for any cut into calls
# (tests/scan_test.py).


def calls_sharded(mesh: Mesh) -> NamedSharding:
  """[n, global_batch, ...] stacks of batches: steps along axis 0, each batch sharded on 'data'."""
  return NamedSharding(mesh, P(None, 'data'))


def shard_stacked_batches(batches, mesh: Mesh) -> Dict[str, jax.Array]:
  """n of this process's numpy batches → one [n, global_batch, ...] jax.Array per key."""
  sharding = calls_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.stack([b[k] for b in batches]))
          for k in batches[0]}


def jit_scanned_steps(train_step, mesh: Mesh):
  """(state, stacked batches [n, B, ...]) → (state after n steps, metrics stacked [n])."""

  def run(state, batches):
    return jax.lax.scan(train_step, state, batches)

  return jax.jit(run, in_shardings=(replicated(mesh), calls_sharded(mesh)),
                 out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,), compiler_options=_compiler_options(mesh))


# float32(i) / 255 correctly rounded, as the host pipeline's tf.cast(x, tf.float32) / 255.0
# computes it. XLA rewrites a division by the constant 255 into a multiplication by its
# reciprocal, which differs in the last bit for some i: a table look-up keeps the device-resident
# batches bitwise equal to the host's.
_UINT8_TO_UNIT = np.arange(256, dtype=np.float32) / np.float32(255)


def _as_integers(x: jax.Array) -> jax.Array:
  """Floats reinterpreted as same-width integers (exact under a sum with zeros); ints as is."""
  if jnp.issubdtype(x.dtype, jnp.floating):
    return jax.lax.bitcast_convert_type(x, jnp.dtype(f'int{8 * x.dtype.itemsize}'))
  return x


def gather_rows(mesh: Mesh, data: jax.Array, rows: jax.Array) -> jax.Array:
  """data[rows], sharded on 'data': `data` is sharded on 'data' along its rows, `rows` [B] is
  replicated.

  Each device gathers the rows it holds (zeros for the others); a reduce-scatter over 'data' of
  those partial batches, summed as integers (exact: one term is non-zero), leaves each device
  its 1/D of the batch. One batch of examples crosses the interconnect per step.
  """

  def local(shard, rows):
    size = shard.shape[0]
    local_rows = rows - jax.lax.axis_index('data') * size
    held = (local_rows >= 0) & (local_rows < size)
    values = jnp.take(shard, jnp.clip(local_rows, 0, size - 1), axis=0)
    values = jnp.where(held.reshape(held.shape + (1,) * (values.ndim - 1)), values,
                       jnp.zeros((), values.dtype))
    summed = jax.lax.psum_scatter(_as_integers(values), 'data', scatter_dimension=0,
                                  tiled=True)
    return jax.lax.bitcast_convert_type(summed, values.dtype)

  return jax.shard_map(local, mesh=mesh, in_specs=(P('data'), P()), out_specs=P('data'))(
      data, rows)


def _device_batch(mesh: Mesh, data: Mapping[str, jax.Array],
                  rows: jax.Array) -> Dict[str, jax.Array]:
  """The rows of the device-resident arrays, as the host pipeline would have fed them."""
  batch = {}
  for key, array in data.items():
    values = gather_rows(mesh, array, rows)
    if values.dtype == jnp.uint8:
      values = jnp.take(jnp.asarray(_UINT8_TO_UNIT), values.astype(jnp.int32), axis=0)
    batch[key] = values
  return batch


def jit_gathered_steps(train_step, mesh: Mesh):
  """(state, device arrays, epoch rows [S, B], first, num) → (state after `num` steps, metrics
  stacked [num]).

  Step i of the call trains on `data[rows[first + i]]`. The data are sharded on 'data' along
  their rows (`put_sharded`) and the epoch's rows come from `jit_epoch_rows`: nothing but the
  call's first step index leaves the host. `num` is static (one compilation per call length).
  """

  def run(state, data, rows, first, num):
    def body(state, step_rows):
      return train_step(state, _device_batch(mesh, data, step_rows))
    return jax.lax.scan(body, state, jax.lax.dynamic_slice_in_dim(rows, first, num))

  return jax.jit(run, static_argnums=(4,), out_shardings=(replicated(mesh), replicated(mesh)),
                 donate_argnums=(0,), compiler_options=_compiler_options(mesh))


def jit_epoch_rows(num_examples: int, global_batch_size: int, shuffle_seed: Optional[int],
                   mesh: Mesh):
  """epoch → int32 [S, B] on the devices (replicated): `epoch_order.global_batches`, the rows of
  each global batch of that epoch, computed there."""
  return jax.jit(functools.partial(epoch_order.global_batches, num_examples, global_batch_size,
                                   shuffle_seed), out_shardings=replicated(mesh))


def put_sharded(arrays: Mapping[str, np.ndarray], mesh: Mesh) -> Dict[str, jax.Array]:
  """Host arrays (the whole split, identical in every process) → global arrays sharded on 'data'
  along their rows, zero-padded to a multiple of the devices: each device holds ⌈N/D⌉ rows."""
  sharding = batch_sharded(mesh)
  num_devices = mesh.devices.size
  placed = {}
  for key, values in arrays.items():
    n = len(values)
    padded = -(-n // num_devices) * num_devices

    def block(index, values=values, n=n, padded=padded):
      start, stop, _ = index[0].indices(padded)
      out = np.zeros((stop - start,) + values.shape[1:], values.dtype)
      held = values[start:min(stop, n)]
      out[:len(held)] = held
      return out

    placed[key] = jax.make_array_from_callback((padded,) + values.shape[1:], sharding, block)
  return placed


AUTO_STEPS_PER_CALL_MAX = 1000


def auto_steps_per_call(platform: str, log_every_steps: int, checkpoint_every_steps: int) -> int:
  """What `steps_per_call=0` (auto) runs on `platform`.

  CPU: 1, one step per call (the scanned InfoGAN step is about as fast there, and 1 keeps the
  bitwise resumption of workdirs started with it; docs/design.md). Accelerators: the largest
  divisor of both log_every_steps and checkpoint_every_steps up to AUTO_STEPS_PER_CALL_MAX, so
  that every call is whole and a log window is one or a few calls.
  """
  if platform == 'cpu':
    return 1
  both = math.gcd(int(log_every_steps), int(checkpoint_every_steps))
  return next(k for k in range(min(both, AUTO_STEPS_PER_CALL_MAX), 0, -1) if both % k == 0)


def call_length(step: int, stop: int, steps_per_call: int) -> int:
  """Steps of the call that starts at `step` and may not pass `stop` (a boundary).

  steps_per_call when they fit; else the largest power of two that does, so that the short
  calls before a boundary compile at most 1 + log2(steps_per_call) more scan lengths.
  """
  room = stop - step
  if room >= steps_per_call:
    return steps_per_call
  return 1 << (room.bit_length() - 1)


# ----------------------------------------------------------------------------- the loop


@dataclasses.dataclass
class DeviceData:
  """An in-memory training set that the scanned path (steps_per_call > 1) keeps on the devices.

  Attributes:
    load: () → the whole training split as host arrays {key: [N, ...]}, the same in every
      process (uint8 images are fed as float32 / 255, as the host pipeline feeds them).
    num_examples: N.
    shuffle_seed: the stage's shuffle seed: each epoch's global batches are
      `epoch_order.global_batches(N, global_batch, shuffle_seed, epoch)`, the rows the host
      pipeline's `epoch_batches` yields (None: the stored order).
  """
  load: Callable[[], Mapping[str, np.ndarray]]
  num_examples: int
  shuffle_seed: Optional[int]


@dataclasses.dataclass
class StageSpec:
  """What differs between stage 1 and stage 2; the loop below is shared.

  Attributes:
    name: 'stage1' or 'stage2' (also the workdir sub-folder).
    model: the VAE module.
    config: the stage's ConfigDict (num_epochs, learning_rate, ..., max_steps).
    prepare_input: batch → the data x the VAE models (`image_input` / `latent_input`).
    example_input: an array shaped like one input batch (for init).
    steps_per_epoch: full global batches per epoch (the last partial batch is dropped).
    epoch_batches: (epoch, skip_batches) → iterable of this process's numpy batches of that
      epoch, starting after `skip_batches` batches; a pure function of its arguments.
    base_rng: the stage's PRNG key.
    examples_per_batch: global batch size (for examples/s).
    objective: (x, outputs, params) → (loss, metrics); None = the ELBO of `config`
      (reconstruction_loss, beta).
    device_data: the training set to keep on the devices when steps run scanned (None: the
      scanned path stacks `epoch_batches`' host batches instead).
  """
  name: str
  model: Any
  config: Any
  prepare_input: Callable[..., jax.Array]
  example_input: np.ndarray
  steps_per_epoch: int
  epoch_batches: Callable[[int, int], Iterable[Mapping[str, np.ndarray]]]
  base_rng: jax.Array
  examples_per_batch: int
  objective: Optional[losses.Objective] = None
  device_data: Optional[DeviceData] = None


def total_steps(stage_config, steps_per_epoch: int) -> int:
  steps = stage_config.num_epochs * steps_per_epoch
  if stage_config.max_steps > 0:
    steps = min(steps, stage_config.max_steps)
  return steps


class _SigtermFlag:
  """Turns SIGTERM into a flag the loop polls between jitted calls (of steps_per_call steps)."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    def handler(signum, frame):
      del signum, frame
      self.raised = True
      logging.warning('SIGTERM received: finishing the current call (at most steps_per_call '
                      'steps), then checkpointing.')
    try:
      self._previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # Not the main thread (e.g. a notebook worker): no handler.
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(stage: str, step_metrics, first_step: int, last_good: Optional[int],
                  nan_policy: str):
  finite = np.asarray([m['finite'] for m in step_metrics])
  if nan_policy == 'error' and not finite.all():
    bad_step = first_step + int(np.argmin(finite))
    where = (f'the last good checkpoint is step {last_good}' if last_good is not None
             else 'no checkpoint of this stage was written yet')
    raise NonFiniteError(
        f'{stage}: loss or gradients became NaN/Inf at step {bad_step}; training stopped and '
        f'nothing after it was saved ({where}). Lower the learning rate, check the input '
        'data, or set --config.nan_policy=skip to skip such steps.')


def restore_checkpoint(ckpt: checkpointing.StageCheckpointer, step: int, template: TrainState,
                       mesh: Mesh) -> TrainState:
  """Checkpoint `step` in the structure of `template`, one replicated global array per leaf."""
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated(mesh)), template)
  state, _ = ckpt.restore(step, abstract)
  # Host values (identical in every process) → one replicated global array per leaf.
  return jax.device_put(jax.device_get(state), replicated(mesh))


def restore_state(template: TrainState, workdir: str, stage: str, step: int, *, mesh: Mesh,
                  experiment_fingerprint: str) -> TrainState:
  """Checkpoint `step` of `stage` in `workdir` (verified, fingerprint-checked), replicated."""
  ckpt = checkpointing.StageCheckpointer(workdir, stage,
                                         experiment_fingerprint=experiment_fingerprint)
  try:
    return restore_checkpoint(ckpt, step, template, mesh)
  finally:
    ckpt.close()


def _initial_state(spec: StageSpec, ckpt: checkpointing.StageCheckpointer,
                   tx: optax.GradientTransformation, mesh: Mesh):
  """(the stage's state: its latest checkpoint or fresh from the stage's key, replicated; the
  latest checkpoint's step or None)."""
  state = create_train_state(spec.model, spec.example_input, base_rng=spec.base_rng, tx=tx)
  last_good = ckpt.latest_step()
  if last_good is not None:
    return restore_checkpoint(ckpt, last_good, state, mesh), last_good
  return jax.device_put(jax.device_get(state), replicated(mesh)), None


def _objective_of(spec: StageSpec) -> losses.Objective:
  """The stage's objective; None in the spec is the reference ELBO of the stage config."""
  if spec.objective is not None:
    return spec.objective
  return losses.make_objective('vae', reconstruction_loss=spec.config.reconstruction_loss,
                               beta=spec.config.beta)


def _boundaries(steps_per_epoch: int, num_steps: int, log_every_steps: int,
                checkpoint_every_steps: int) -> Callable[[int], int]:
  """step → the first boundary after it that a call may not cross (epoch end, the stage's
  end, the next log or checkpoint step)."""
  def next_stop(at_step):
    epoch_end = (at_step // steps_per_epoch + 1) * steps_per_epoch
    return min(epoch_end, num_steps, (at_step // log_every_steps + 1) * log_every_steps,
               (at_step // checkpoint_every_steps + 1) * checkpoint_every_steps)
  return next_stop


def _log_window(writer, spec: StageSpec, learning_rate, state: TrainState, step: int,
                num_steps: int, epoch: int, host_metrics, steps_per_sec: float):
  """Writes the mean metrics of the steps since the last log line (metrics.jsonl, TensorBoard,
  the progress line)."""
  mean = {k: float(np.mean([m[k] for m in host_metrics]))
          for k in host_metrics[0] if k != 'finite'}
  mean['learning_rate'] = float(learning_rate)
  mean['steps_per_sec'] = steps_per_sec
  mean['examples_per_sec'] = steps_per_sec * spec.examples_per_batch
  mean['epoch'] = epoch
  mean['num_skipped'] = float(state.num_skipped)
  writer.write_scalars(step, mean)
  metric_logging.log_progress(spec.name, step, num_steps, epoch, mean, steps_per_sec,
                              mean['examples_per_sec'])


def _after_steps(stage: str, steps, on_step: Optional[Callable[[int], None]]):
  """Per step run by the last call: the fault-injection point, then the caller's hook."""
  for called in steps:
    faults.kill_here(f'{stage}.step', called)
    if on_step is not None:
      on_step(called)


def train_stage(spec: StageSpec, *, mesh: Mesh, workdir: str, experiment_fingerprint: str,
                log_every_steps: int, checkpoint_every_steps: int, keep_checkpoints: int,
                nan_policy: str = 'error', target_steps: Optional[int] = None,
                on_step: Optional[Callable[[int], None]] = None,
                steps_per_call: int = 1) -> TrainState:
  """Trains one stage to its end (or resumes it), checkpointing as it goes.

  Resumes from the stage's latest checkpoint; the data order and the noise of step t are pure
  functions of (seed, stage, t), so a resumed run continues exactly like an uninterrupted one.
  `target_steps` overrides the number of steps the config asks for (e.g. a study's milestone).

  `steps_per_call` > 1 runs up to that many steps per jitted call (`lax.scan`), on the
  device-resident `spec.device_data` when there is one, else on stacked host batches. A call
  never crosses a log, checkpoint or epoch boundary or the stage's end; the NaN check, logging,
  checkpoints, the ETA probe and SIGTERM are handled between calls, and a SIGTERM waits for at
  most one call. Scanned results do not depend on how the steps are cut into calls (bitwise);
  they equal steps_per_call=1's to float tolerance (tests/scan_test.py).
  """
  if steps_per_call < 1:
    raise ValueError(f'steps_per_call must be >= 1, got {steps_per_call}.')
  schedule = lr_schedule(spec.config, spec.steps_per_epoch)
  ckpt = checkpointing.StageCheckpointer(
      workdir, spec.name, experiment_fingerprint=experiment_fingerprint,
      max_to_keep=keep_checkpoints)
  state, last_good = _initial_state(spec, ckpt, make_optimizer(schedule), mesh)
  num_steps = (target_steps if target_steps is not None
               else total_steps(spec.config, spec.steps_per_epoch))
  step = int(state.step)
  logging.info('%s: step %d of %d (%d steps per epoch, %d epochs)', spec.name, step,
               num_steps, spec.steps_per_epoch, spec.config.num_epochs)
  train_step = make_train_step(spec.model, prepare_input=spec.prepare_input,
                               objective=_objective_of(spec), nan_policy=nan_policy)
  if step >= num_steps:  # Nothing to train: the stage is only restored.
    ckpt.close()
    return state
  epoch_calls = _epoch_calls(spec, train_step, mesh, steps_per_call)
  writer = metric_logging.create_writer(workdir, spec.name)

  next_stop = _boundaries(spec.steps_per_epoch, num_steps, log_every_steps,
                         checkpoint_every_steps)
  pending = []  # Device metrics of the calls since the last host check.
  window_start_time, window_start_step = time.time(), step
  eta_probe = EtaProbe(spec.name, first_step=step, num_steps=num_steps,
                       examples_per_batch=spec.examples_per_batch)
  try:
    with _SigtermFlag() as sigterm:
      while step < num_steps:
        epoch, skip = divmod(step, spec.steps_per_epoch)
        epoch_start_step = step
        for state, num_called, metrics in epoch_calls(state, epoch, skip, next_stop):
          pending.append(metrics)
          first_called, step = step + 1, step + num_called
          eta_probe.after_step(step, metrics)
          _after_steps(spec.name, range(first_called, step + 1), on_step)
          log_now = step % log_every_steps == 0 or step == num_steps
          save_now = step % checkpoint_every_steps == 0 or step == num_steps
          if log_now or save_now or sigterm.raised:
            host_metrics = _per_step(jax.device_get(pending))
            _check_finite(spec.name, host_metrics, step - len(host_metrics) + 1, last_good,
                          nan_policy)
            pending = []
            if log_now:
              steps_per_sec = (step - window_start_step) / max(
                  time.time() - window_start_time, 1e-9)
              _log_window(writer, spec, schedule(step - 1), state, step, num_steps, epoch,
                          host_metrics, steps_per_sec)
              window_start_time, window_start_step = time.time(), step
            if save_now or sigterm.raised:
              ckpt.save(step, state, {'epoch': step // spec.steps_per_epoch})
              last_good = step
          if sigterm.raised:
            ckpt.wait()
            raise Preempted(f'{spec.name}: stopped by SIGTERM after step {step}; checkpoint '
                            'saved. Rerun the same command to resume.')
          if step >= num_steps:
            break
        if step == epoch_start_step:
          raise RuntimeError(f'{spec.name}: epoch {epoch} yielded no batch after skipping '
                             f'{skip}; the data set is smaller than steps_per_epoch says.')
  finally:
    writer.flush()
    ckpt.close()
  return state


def _epoch_calls(spec: StageSpec, train_step, mesh: Mesh, steps_per_call: int):
  """(state, epoch, skip, next_stop) → iterator of (state, steps run, metrics) per jitted call.

  steps_per_call=1: one jitted step per host batch (metrics: scalars). Otherwise scanned calls
  (metrics stacked [n]) over the device-resident data set, or over stacked host batches.
  """
  per_epoch = spec.steps_per_epoch
  if steps_per_call == 1:
    step_fn = jit_train_step(train_step, mesh)

    def one_step_calls(state, epoch, skip, next_stop):
      del next_stop  # Every step is a call.
      for batch in itertools.islice(spec.epoch_batches(epoch, skip), per_epoch - skip):
        state, metrics = step_fn(state, shard_batch(batch, mesh))
        yield state, 1, metrics

    return one_step_calls

  if spec.device_data is None:
    scan_fn = jit_scanned_steps(train_step, mesh)

    def host_calls(state, epoch, skip, next_stop):
      step = epoch * per_epoch + skip
      batches = itertools.islice(spec.epoch_batches(epoch, skip), per_epoch - skip)
      while True:
        chunk = list(itertools.islice(batches, call_length(step, next_stop(step),
                                                           steps_per_call)))
        if not chunk:
          return
        state, metrics = scan_fn(state, shard_stacked_batches(chunk, mesh))
        step += len(chunk)
        yield state, len(chunk), metrics

    return host_calls

  device_data = spec.device_data
  gather_fn = jit_gathered_steps(train_step, mesh)
  rows_fn = jit_epoch_rows(device_data.num_examples, spec.examples_per_batch,
                           device_data.shuffle_seed, mesh)
  data = put_sharded(device_data.load(), mesh)  # Once per stage.

  def device_calls(state, epoch, skip, next_stop):
    rows = rows_fn(epoch)  # On the devices; [per_epoch, B].
    step, offset = epoch * per_epoch + skip, skip
    while offset < per_epoch:
      num = call_length(step, next_stop(step), steps_per_call)
      state, metrics = gather_fn(state, data, rows, offset, num)
      step, offset = step + num, offset + num
      yield state, num, metrics

  return device_calls


def _per_step(calls_metrics):
  """Host metrics of calls (a scalar per key, or [n] stacked per key) → one dict per step."""
  steps = []
  for metrics in calls_metrics:
    if np.ndim(metrics['finite']) == 0:
      steps.append(metrics)
    else:
      steps.extend({k: v[i] for k, v in metrics.items()} for i in range(len(metrics['finite'])))
  return steps


class EtaProbe:
  """Logs the stage's ETA as soon as a few steps after the compiling call have been timed.

  The regular progress lines come every `log_every_steps` (100 by default: minutes at the
  start of a CPU run); this one line comes once `PROBE_STEPS` steps after the first call (which
  compiles) have run. `after_step` is called after every call (every step when steps_per_call
  is 1) with the step reached.
  """
  PROBE_STEPS = 10

  def __init__(self, stage: str, *, first_step: int, num_steps: int, examples_per_batch: int):
    self.stage, self.first_step, self.num_steps = stage, first_step, num_steps
    self.examples_per_batch = examples_per_batch
    self.start_time = self.start_step = None
    self.steps_per_sec = None  # Once measured.
    self._done = False

  def after_step(self, step: int, metrics):
    if self._done or step <= self.first_step:
      return
    if self.start_step is None:  # The first call compiled; timing starts after it.
      if step + self.PROBE_STEPS > self.num_steps:
        self._done = True  # Too few steps left to time: no ETA line.
        return
      jax.block_until_ready(metrics)
      self.start_time, self.start_step = time.time(), step
      return
    if step - self.start_step < self.PROBE_STEPS:
      return
    jax.block_until_ready(metrics)
    timed = step - self.start_step
    self._done = True
    self.steps_per_sec = timed / max(time.time() - self.start_time, 1e-9)
    remaining = (self.num_steps - step) / self.steps_per_sec
    logging.info('%s: %d steps to go; the first %d timed steps ran at %.2f steps/s (%.0f ex/s): '
                 'ETA %s for this stage.', self.stage, self.num_steps - step, timed,
                 self.steps_per_sec, self.steps_per_sec * self.examples_per_batch,
                 metric_logging.format_duration(remaining))
