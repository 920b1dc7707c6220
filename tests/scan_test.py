"""steps_per_call > 1: scanned steps (lax.scan), on device-resident data or stacked host batches.

What holds, on the CPU (XLA 0.8):
- bitwise: the stage-2 MLP's scanned steps equal its single steps; device-resident data equal
  stacked host batches; and scanned steps do not depend on how they are cut into calls (lengths
  4, 2, 1 or 3), so a scanned run resumed after a SIGTERM with another steps_per_call and host
  batches equals an uninterrupted one.
- to float tolerance: with a convolution, XLA:CPU compiles the scan body's convolution kernel
  gradient differently from the single step's (last-bit differences from the first step on).
  Per leaf, ‖scanned − single‖ / ‖single‖ stays below 1e-7 for the parameters and about 1e-6
  for Adam's moments after 4 steps; the tests allow 1e-5.
"""

import json
import os
import signal

import flax.linen as nn
import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from testdata import TinyDecoder, tiny_config
from tsvae import checkpointing
from tsvae import config_lib
from tsvae import input_pipeline
from tsvae import losses
from tsvae import models
from tsvae import train
from tsvae import experiment as experiment_lib
from tsvae import pipeline
from tsvae import stages
from tsvae.models import layers

K = 4  # Steps per call in the unit tests: one epoch of 16 examples in batches of 4.


class BatchNormEncoder(nn.Module):
  """Images → (μ, σ, log σ) through a convolution with BatchNorm (so batch_stats change)."""
  latent_dim: int

  @nn.compact
  def __call__(self, x, train=False):
    h = nn.Conv(4, (3, 3), strides=(2, 2), use_bias=False)(x)  # BN follows.
    h = nn.relu(layers.batch_norm(train, zero_debias=True)(h))
    h = h.reshape((h.shape[0], -1))
    log_sigma = nn.Dense(self.latent_dim)(h)
    return nn.Dense(self.latent_dim)(h), jax.numpy.exp(log_sigma), log_sigma


def bn_stage1_model(arch, image_shape, latent_dim, gamma=None, model='vae', model_kwargs=None,
                    **unused):
  """`models.make_stage1_model` with small nets that still carry BatchNorm statistics."""
  del arch, unused
  return models.build_stage1_model(model, BatchNormEncoder(latent_dim),
                                   TinyDecoder(tuple(image_shape)), gamma, model_kwargs)


def _assert_bitwise_equal(a, b):
  leaves_a, tree_a = jax.tree_util.tree_flatten(jax.device_get(a))
  leaves_b, tree_b = jax.tree_util.tree_flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


RTOL = 1e-5  # Per leaf, relative to its norm (module docstring).


def _assert_close(a, b):
  """Every leaf within RTOL of b's, in norm; integer leaves (steps, counters) equal."""
  leaves_a, tree_a = jax.tree_util.tree_flatten(jax.device_get(a))
  leaves_b, tree_b = jax.tree_util.tree_flatten(jax.device_get(b))
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind != 'f':
      np.testing.assert_array_equal(x, y)
      continue
    error = np.linalg.norm((x - y).astype(np.float64))
    assert error <= RTOL * np.linalg.norm(y.astype(np.float64)), (error, y)


def _assert_same_state(a, b, same=_assert_bitwise_equal):
  """Parameters, BatchNorm statistics, Adam state, PRNG key and counters of two TrainStates."""
  for field in ('params', 'batch_stats', 'opt_state', 'rng', 'step', 'num_skipped'):
    same(getattr(a, field), getattr(b, field))


# ------------------------------------------------------------------------------ K steps


def _stage(name):
  """(model, prepare_input, device arrays, host batch of rows) of a tiny stage 1 or 2."""
  rng = np.random.default_rng(0)
  if name == 'stage1':
    images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
    model = bn_stage1_model('infogan', (28, 28, 1), 4)
    # The host pipeline's tf.cast(x, tf.float32) / 255.0, correctly rounded.
    host = lambda rows: {'image': images[rows].astype(np.float32) / np.float32(255)}
    return model, train.image_input, {'image': images}, host
  mu = rng.normal(size=(16, 4)).astype(np.float32)
  sigma = rng.uniform(0.1, 1.0, (16, 4)).astype(np.float32)
  model = models.make_stage2_model(4, depth=1, width=8)
  return model, train.latent_input, {'mu': mu, 'sigma': sigma}, (
      lambda rows: {'mu': mu[rows], 'sigma': sigma[rows]})


@pytest.mark.parametrize('name', ['stage1', 'stage2'])
def test_k_scanned_steps_equal_k_single_steps(name):
  model, prepare_input, arrays, host_batch = _stage(name)
  mesh = train.make_mesh()  # Two CPU devices (conftest): each batch is split over both.
  step = train.make_train_step(model, prepare_input=prepare_input,
                               objective=losses.make_objective('vae'))
  rows = input_pipeline.epoch_rows(16, 4, shuffle_seed=3, epoch=1)  # [K, 4]
  assert rows.shape == (K, 4)

  def fresh_state():
    example = next(iter(host_batch(rows[0]).values()))
    state = train.create_train_state(model, example, base_rng=jax.random.PRNGKey(1),
                                     tx=train.make_optimizer(lambda s: 1e-3))
    return jax.device_put(state, train.replicated(mesh))

  single_fn = train.jit_train_step(step, mesh)
  state, single_metrics = fresh_state(), []
  for r in rows:
    state, metrics = single_fn(state, train.shard_batch(host_batch(r), mesh))
    single_metrics.append(jax.device_get(metrics))
  single = jax.device_get(state)

  # (Stacked host batches, the other scanned path, are compared with these bitwise in
  # test_sigterm_mid_stage_then_resume_with_other_steps_per_call.)
  # The epoch's rows computed on the devices are the host pipeline's.
  device_rows = train.jit_epoch_rows(16, 4, 3, mesh)(1)
  np.testing.assert_array_equal(np.asarray(device_rows), rows)
  scanned_device, device_metrics = train.jit_gathered_steps(step, mesh)(
      fresh_state(), train.put_sharded(arrays, mesh), device_rows, 0, K)

  assert int(single.step) == K
  per_step = train._per_step([jax.device_get(device_metrics)])  # pylint: disable=protected-access
  assert len(per_step) == K
  same = _assert_bitwise_equal if name == 'stage2' else _assert_close
  _assert_same_state(single, scanned_device, same)
  for got, want in zip(per_step, single_metrics):
    same(got, want)
  if name == 'stage1':  # BatchNorm statistics moved: the comparison has teeth.
    assert jax.tree_util.tree_leaves(single.batch_stats)


def test_call_lengths_stop_at_boundaries():
  assert train.call_length(0, 100, 50) == 50
  assert [train.call_length(s, 8, 4) for s in (5, 7)] == [2, 1]  # 3 steps left: 2, then 1.
  assert train.call_length(900, 937, 100) == 32  # Powers of two below steps_per_call.


# ------------------------------------------------------------------------------ whole runs


def _rows(workdir):
  """metrics.jsonl as failures-and-resuming.md reads it: last row per (stage, step), no timings."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = sorted(map(json.loads, f), key=lambda r: r['attempt'])
  timing = ('attempt', 'steps_per_sec', 'examples_per_sec', 'time', 'wall_time')
  return {(r['stage'], r['step']): {k: v for k, v in r.items() if k not in timing}
          for r in rows}


# Stage 1: 5 steps (one epoch of 40 // 8); stage 2: 10 steps. Calls of steps_per_call=4 are cut
# at the log / checkpoint boundaries (every 4 steps) and at each epoch's end (step 5).
RUN = dict(log_every_steps=4, checkpoint_every_steps=4, keep_checkpoints=10)


def _run(workdir, **overrides):
  with tfds.testing.mock_data(num_examples=40):
    return pipeline.run(tiny_config(**RUN, **overrides), workdir)


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  """The same tiny two-stage run with 1 step per call and with 4 (device-resident data)."""
  patch = pytest.MonkeyPatch()
  patch.setattr(models, 'make_stage1_model', bn_stage1_model)
  root = tmp_path_factory.mktemp('scan_runs')
  try:
    results = {k: (str(root / f'k{k}'), _run(str(root / f'k{k}'), steps_per_call=k))
               for k in (1, K)}
    yield results
  finally:
    patch.undo()


def _assert_same_run(workdir, result, base_workdir, base_result, same=_assert_bitwise_equal,
                     skip_rows=()):
  """Final states, every logged value (`same`) and checkpoint steps of two workdirs' runs."""
  for stage in ('state1', 'state2'):
    _assert_same_state(result[stage], base_result[stage], same)
  rows, base_rows = _rows(workdir), _rows(base_workdir)
  assert sorted(rows) == sorted(base_rows)
  for key, row in rows.items():  # Losses, KL, grad norms, lr, epochs.
    if key not in skip_rows:
      same(row, base_rows[key])
  for stage in ('stage1', 'stage2'):
    steps = [set(checkpointing.StageCheckpointer(w, stage, experiment_fingerprint='').all_steps())
             for w in (workdir, base_workdir)]
    assert steps[1] <= steps[0]  # A preempted run has its SIGTERM checkpoint besides.


def test_whole_run_with_steps_per_call_equals_one_step_per_call(runs):
  (base_dir, base), (scan_dir, scanned) = runs[1], runs[K]
  assert int(scanned['state1'].step) == 5 and int(scanned['state2'].step) == 10
  _assert_same_run(scan_dir, scanned, base_dir, base, same=_assert_close)
  assert sorted(s for _, s in _rows(scan_dir)) == [4, 4, 5, 8, 10]


def test_device_rows_are_the_host_batches(runs, tmp_path):
  del runs  # Only for its patched stage-1 model's order of tests.
  with tfds.testing.mock_data(num_examples=40):
    spec = stages.stage1_spec(experiment_lib.setup(tiny_config(**RUN, steps_per_call=K),
                                                   str(tmp_path)))
    host = np.concatenate([b['image'] for b in spec.epoch_batches(1, 2)])
    images = spec.device_data.load()['image']
  mesh = train.make_mesh()
  rows = np.asarray(train.jit_epoch_rows(spec.device_data.num_examples, spec.examples_per_batch,
                                         spec.device_data.shuffle_seed, mesh)(1))
  rows = rows[2:spec.steps_per_epoch]
  np.testing.assert_array_equal(host, images[rows.ravel()].astype(np.float32) / np.float32(255))
  # On the devices, gathered from the sharded split: the same float32 batches, bitwise.
  data = train.put_sharded({'image': images}, mesh)
  gathered = jax.jit(lambda d, r: train._device_batch(mesh, d, r))(  # pylint: disable=protected-access
      data, jax.device_put(rows.ravel(), train.replicated(mesh)))
  np.testing.assert_array_equal(np.asarray(gathered['image']), host)
  # Over the budget (or steps_per_call 1): the host batches, stacked per call.
  for overrides in (dict(steps_per_call=K, data__device_resident_max_mb=0),
                    dict(steps_per_call=1)):
    with tfds.testing.mock_data(num_examples=40):
      setup = experiment_lib.setup(tiny_config(**RUN, **overrides), str(tmp_path))
      assert stages.stage1_spec(setup).device_data is None


def test_device_data_are_sharded_and_gathered_exactly():
  """Each device holds ⌈N/D⌉ rows (zero-padded); a gather returns data[rows] bit for bit, sharded
  on 'data', whatever device holds each row (floats with -0.0, NaN payloads and infinities)."""
  mesh = train.make_mesh()
  assert mesh.size == 2  # conftest
  rng = np.random.default_rng(0)
  floats = rng.normal(size=(7, 3)).astype(np.float32)
  floats[0, 0], floats[1, 1], floats[2, 2] = -0.0, np.inf, np.float32(np.nan)
  floats[3, 0] = np.frombuffer(np.uint32(0x7FC00001).tobytes(), np.float32)[0]  # NaN payload.
  images = rng.integers(0, 256, (7, 2, 2, 1), dtype=np.uint8)
  data = train.put_sharded({'f': floats, 'u': images}, mesh)
  assert data['f'].shape == (8, 3)  # 7 rows padded to a multiple of 2 devices.
  assert [s.data.shape for s in data['u'].addressable_shards] == [(4, 2, 2, 1)] * 2
  np.testing.assert_array_equal(np.asarray(data['u'])[7], 0)
  rows = np.array([6, 0, 3, 3, 5, 1], np.int32)  # Rows of both devices, one twice.
  gather = jax.jit(lambda d, r: {k: train.gather_rows(mesh, v, r) for k, v in d.items()})
  got = gather(data, jax.device_put(rows, train.replicated(mesh)))
  assert got['f'].sharding.is_equivalent_to(train.batch_sharded(mesh), 2)
  np.testing.assert_array_equal(np.asarray(got['f']).view(np.uint32), floats[rows].view(np.uint32))
  np.testing.assert_array_equal(np.asarray(got['u']), images[rows])


def test_device_budget_is_per_device(tmp_path):
  """The split is sharded: it stays on the devices when each one's share fits the budget."""
  # 4,000 mock MNIST images: 3.0 MiB, 1.5 MiB per device (the budget is in whole MiB).
  for budget, resident in ((2, True), (1, False)):
    with tfds.testing.mock_data(num_examples=4000):
      setup = experiment_lib.setup(tiny_config(**RUN, steps_per_call=K,
                                               data__device_resident_max_mb=budget),
                                   str(tmp_path))
      assert (stages.stage1_spec(setup).device_data is not None) == resident, budget


def test_sigterm_mid_stage_then_resume_with_other_steps_per_call(runs, tmp_path, monkeypatch):
  """A real SIGTERM during stage 2 (calls of 4): checkpoint, Preempted; resumed with calls of 3.

  The resumed run feeds stacked host batches (no device-resident data) and still equals the
  uninterrupted run with calls of 4 on device-resident data, bitwise.
  """
  monkeypatch.setattr(models, 'make_stage1_model', bn_stage1_model)
  real_kill_here = train.faults.kill_here

  def sigterm_at_stage2_step_6(point, step=None):
    if point == 'stage2.step' and step == 6:
      os.kill(os.getpid(), signal.SIGTERM)  # Handled by train's flag: the call finishes first.
    real_kill_here(point, step)

  workdir = str(tmp_path / 'run')
  monkeypatch.setattr(train.faults, 'kill_here', sigterm_at_stage2_step_6)
  with pytest.raises(train.Preempted) as preempted:
    _run(workdir, steps_per_call=K)
  assert preempted.value.code == train.PREEMPTED_EXIT_CODE
  assert 'after step 7' in preempted.value.message  # Step 6 ran in the call of steps 6 and 7.
  ckpt = checkpointing.StageCheckpointer(workdir, 'stage2', experiment_fingerprint='')
  assert ckpt.all_steps() == [4, 7]
  ckpt.close()
  assert not checkpointing.is_complete(workdir, 'stage2')

  monkeypatch.setattr(train.faults, 'kill_here', real_kill_here)
  # Run-control keys: may change on resume.
  result = _run(workdir, steps_per_call=3, data__device_resident_max_mb=0)
  # The first row after a resume averages only the steps since it (here step 8 alone): as with
  # steps_per_call=1, a preempted run's log window is not carried over.
  _assert_same_run(workdir, result, *runs[K], skip_rows=[('stage2', 8)])
  assert _rows(workdir)[('stage2', 8)]['loss'] != _rows(runs[K][0])[('stage2', 8)]['loss']


# ------------------------------------------------------------------------------ bad values


@pytest.mark.parametrize('key, value', [
    ('steps_per_call', -1), ('steps_per_call', -2), ('steps_per_call', 2.5),
    ('steps_per_call', True), ('data.device_resident_max_mb', -1),
    ('data.device_resident_max_mb', float('nan')), ('data.device_resident_max_mb', '1'),
])
def test_bad_values_are_refused_before_compute(tmp_path, key, value):
  workdir = tmp_path / 'run'
  config = tiny_config()
  *parents, leaf = key.split('.')
  parent = config.data if parents else config
  with parent.ignore_type():  # Past the ConfigDict's own type check, as a hand-built config.
    setattr(parent, leaf, value)
  with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')):
    pipeline.run(config, str(workdir))
  assert not workdir.exists()  # Nothing written.


def test_steps_per_call_is_run_control():
  assert 'steps_per_call' in config_lib.RUN_CONTROL_KEYS
  assert config_lib.experiment_keys(tiny_config()) == config_lib.experiment_keys(
      tiny_config(steps_per_call=50, data__device_resident_max_mb=0))
  with pytest.raises(ValueError, match='steps_per_call'):
    train.train_stage(None, mesh=None, workdir='', experiment_fingerprint='',
                      log_every_steps=1, checkpoint_every_steps=1, keep_checkpoints=1,
                      steps_per_call=0)


def test_auto_steps_per_call_is_one_on_cpus_and_fills_log_windows_on_accelerators(tmp_path):
  assert train.auto_steps_per_call('cpu', 100, 2000) == 1
  assert train.auto_steps_per_call('gpu', 100, 2000) == 100  # The defaults.
  assert train.auto_steps_per_call('tpu', 250, 1000) == 250
  assert train.auto_steps_per_call('gpu', 3000, 6000) == 1000  # Capped; divides both.
  assert train.auto_steps_per_call('gpu', 1200, 4000) == 400  # gcd 400.
  assert train.auto_steps_per_call('gpu', 7, 5) == 1
  config = tiny_config(**RUN, steps_per_call=0)
  with tfds.testing.mock_data(num_examples=40):
    setup = experiment_lib.setup(config, str(tmp_path))
    assert stages.steps_per_call(setup) == 1  # These tests run on CPU devices.
    assert stages.stage1_spec(setup).device_data is None  # One step per call: host batches.
    assert 'one step per call on 2 cpu device(s)' in pipeline.plan(setup)
    setup = experiment_lib.setup(tiny_config(**RUN, steps_per_call=K), str(tmp_path))
    assert 'up to 4 scanned steps per call' in pipeline.plan(setup)
