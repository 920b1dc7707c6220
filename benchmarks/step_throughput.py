"""Throughput of the real tsvae train step (stage 1 or stage 2) and of the tfds input pipeline.

Times exactly what `tsvae.train.train_stage` runs: `make_train_step` + `jit_train_step` over a
1-D device mesh, fed with host numpy batches through `shard_batch` every step (the host->device
copy is part of the measured step, as in training). Nothing is re-implemented here.

Modes
  stage1  --arch infogan|wae|resnet --dataset mnist|fashion_mnist|cifar10|celeba (image shape)
  stage2  --latent_dim 64 --depth 3 --width 1024
  input   --dataset mnist|cifar10 --manual_dir ../shared/data/<name>: images/s delivered by
          `input_pipeline.make_image_dataset` (tfds) as numpy batches, optionally also through
          `shard_batch` (--to_device).

Each run warms up (the first call compiles), then times --reps runs of --steps steps and
reports the median images/s, all runs, the compile time, the peak host RSS and the load average,
and writes a JSON (machine, versions, git commit, config) to --out.

Devices: --devices N > 1 on the CPU sets XLA_FLAGS=--xla_force_host_platform_device_count=N
before JAX is imported (so run each device count in its own process).

Examples
  python benchmarks/step_throughput.py stage1 --batch_size 64 --out benchmarks/results/x.json
  python benchmarks/step_throughput.py stage1 --batch_size 256 --devices 2
  python benchmarks/step_throughput.py input --dataset mnist --batch_size 256
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_SHARED_DATA = os.path.join(REPO_ROOT, '..', 'shared', 'data')
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
from tsvae import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position  (stdlib only)

_DATASET_SHAPES = {
    'mnist': (28, 28, 1),
    'fashion_mnist': (28, 28, 1),
    'cifar10': (32, 32, 3),
    'celeba': (64, 64, 3),
}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('mode', choices=('stage1', 'stage2', 'input'))
  p.add_argument('--arch', default='infogan', choices=('infogan', 'wae', 'resnet'))
  p.add_argument('--dataset', default='mnist', choices=tuple(_DATASET_SHAPES))
  p.add_argument('--image_size', type=int, default=0,
                 help='override the dataset\'s square image size (0 = the dataset\'s)')
  p.add_argument('--batch_size', type=int, default=64, help='global batch size')
  p.add_argument('--latent_dim', type=int, default=64)
  p.add_argument('--depth', type=int, default=3, help='stage-2 depth')
  p.add_argument('--width', type=int, default=1024, help='stage-2 width')
  p.add_argument('--devices', type=int, default=1, help='devices in the data-parallel mesh')
  p.add_argument('--no_fast_vjp', action='store_true',
                 help='plain autodiff of the transposed convolutions (the slow reference)')
  p.add_argument('--bn_zero_debias', default='on', choices=('on', 'off'),
                 help="stage 1: BatchNorm averages bias-corrected (config.stage1.bn_zero_debias; "
                 "'on' is the training default, 'off' the plain EMA)")
  p.add_argument('--compute_dtype', default='float32', choices=('float32', 'bfloat16'),
                 help="config.stageN.compute_dtype: the dtype of the nets' matmuls and "
                 "convolutions (float32 parameters, loss and BatchNorm either way)")
  p.add_argument('--steps_per_call', type=int, default=1,
                 help='> 1: the trainer\'s scanned path (config.steps_per_call) — the batches '
                 'resident on the device, K steps per jitted call (train.jit_gathered_steps); '
                 '--steps must be a multiple of K, the warm-up rounds up to whole calls')
  p.add_argument('--input_dtype', default='float32', choices=('float32', 'uint8'),
                 help='dtype of the host batches fed to the step (the pipeline yields float32)')
  p.add_argument('--steps', type=int, default=20, help='steps per timed run')
  p.add_argument('--reps', type=int, default=7, help='timed runs')
  p.add_argument('--warmup', type=int, default=5, help='steps after the compiling first one')
  p.add_argument('--manual_dir', default='', help='input mode: local data folder '
                 '(default ../shared/data/<dataset>)')
  p.add_argument('--data_dir', default=os.path.join('/tmp', 'tsvae_bench_tfds'),
                 help='input mode: tfds data_dir (prepared once, then reused)')
  p.add_argument('--epochs', type=int, default=2,
                 help='input mode: epochs timed after the one that decodes into memory')
  p.add_argument('--max_batches', type=int, default=0,
                 help='input mode: batches per timed epoch (0 = the whole epoch)')
  p.add_argument('--to_device', action='store_true',
                 help='input mode: also put every batch on the device(s) with shard_batch')
  p.add_argument('--malloc', default='tuned', choices=('default', 'tuned'),
                 help="'tuned' (what tsvae.main does): before JAX starts, keep glibc from "
                 "mmapping (and page-faulting in) XLA:CPU's temp buffer afresh every step "
                 "(tsvae/hostmem.py); 'default': glibc's defaults")
  p.add_argument('--xla_flags', default='', help='extra XLA_FLAGS')
  p.add_argument('--note', default='', help='free text stored in the JSON')
  p.add_argument('--out', default='', help='write the JSON here (also printed)')
  return p.parse_args(argv)


def _setup_env(args):
  flags = os.environ.get('XLA_FLAGS', '')
  if args.devices > 1 and 'xla_force_host_platform_device_count' not in flags:
    flags += f' --xla_force_host_platform_device_count={args.devices}'
  if args.xla_flags:
    flags += ' ' + args.xla_flags
  os.environ['XLA_FLAGS'] = flags.strip()
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


# ----------------------------------------------------------------------------- bookkeeping


def cpu_identity(path='/proc/cpuinfo'):
  """Model name, family/model numbers and vector extensions of the first CPU in `path`.

  "AMD EPYC" alone names several machines here (Zen 1, AVX2 only; others with AVX-512) whose
  timings differ by 2-5x, so every record says which one it was.
  """
  keys = {'model name': 'cpu_model', 'cpu family': 'cpu_family', 'model': 'cpu_model_number'}
  info = {}
  with open(path) as f:
    for line in f:
      if not line.strip():
        break  # the first processor's block is enough
      key, _, value = (part.strip() for part in line.partition(':'))
      if key in keys:
        info[keys[key]] = value
      elif key == 'flags':
        info['cpu_vector_flags'] = sorted(
            flag for flag in value.split() if flag.startswith(('avx', 'amx', 'fma')))
  return info


def machine_info():
  info = {'platform': platform.platform(), 'python': platform.python_version(),
          'cpu_count': os.cpu_count()}
  try:
    info['usable_cores'] = len(os.sched_getaffinity(0))
  except AttributeError:
    pass
  try:
    info.update(cpu_identity())
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemTotal'):
          info['ram_gib'] = round(int(line.split()[1]) / 2**20, 1)
          break
  except OSError:
    pass
  return info


def git_commit():
  try:
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=REPO_ROOT, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--',
                            'tsvae'], cwd=REPO_ROOT, capture_output=True, text=True,
                           check=True).stdout.strip()
    return {'commit': head, 'tsvae_dirty': bool(dirty)}
  except (OSError, subprocess.CalledProcessError):
    return {'commit': None, 'tsvae_dirty': None}


def versions():
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  return {'jax': jax.__version__, 'jaxlib': jaxlib.__version__, 'flax': flax.__version__,
          'optax': optax.__version__, 'backend': jax.default_backend(),
          'device_kind': jax.devices()[0].device_kind,
          'num_devices_visible': jax.device_count()}


def peak_rss_mib():
  return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def _busy_processes():
  """Other processes using >20% CPU right now (ps), to flag a disturbed measurement."""
  try:
    out = subprocess.run(['ps', '-eo', 'pid,pcpu,comm', '--sort=-pcpu', '--no-headers'],
                         capture_output=True, text=True, check=True).stdout
  except (OSError, subprocess.CalledProcessError):
    return []
  busy = []
  for line in out.splitlines()[:8]:
    pid, pcpu, comm = line.split(None, 2)
    if int(pid) != os.getpid() and float(pcpu) > 20:
      busy.append(f'{comm}({pid}) {pcpu}%')
  return busy


def _cpu_snapshot():
  """(machine CPU seconds busy, CPU seconds of this process and its waited-for children) now.

  Children count as this benchmark's own work: a driver that times a subprocess (the PyTorch
  yardstick, a whole tsvae.main run) is not disturbed by it.
  """
  try:
    with open('/proc/stat') as f:
      fields = [int(v) for v in f.readline().split()[1:]]
    ticks = os.sysconf('SC_CLK_TCK')
    busy = (sum(fields) - fields[3] - fields[4]) / ticks
  except (OSError, ValueError):
    busy = float('nan')
  own = sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                resource.getrusage(resource.RUSAGE_CHILDREN)))
  return busy, own


def _other_cpu_share(before, after, wall_s):
  """Fraction of the machine's CPU time used by *other* processes between two snapshots."""
  others = (after[0] - before[0]) - (after[1] - before[1])
  return round(max(others, 0.0) / (wall_s * (os.cpu_count() or 1)), 3)


def _timed(fn, steps, batch_size, reps):
  rates = []
  for _ in range(reps):
    t = time.perf_counter()
    fn(steps)
    rates.append(steps * batch_size / (time.perf_counter() - t))
  return rates


# ----------------------------------------------------------------------------- step modes


def _host_batches(args, n=4):
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  if args.mode == 'stage2':
    return [{'mu': rng.standard_normal((args.batch_size, args.latent_dim), np.float32),
             'sigma': rng.random((args.batch_size, args.latent_dim), np.float32) + 0.1}
            for _ in range(n)]
  shape = (args.batch_size,) + image_shape(args)
  if args.input_dtype == 'uint8':
    return [{'image': rng.integers(0, 256, shape, np.uint8)} for _ in range(n)]
  return [{'image': rng.random(shape, np.float32)} for _ in range(n)]


def image_shape(args):
  h, w, c = _DATASET_SHAPES[args.dataset]
  if args.image_size:
    h = w = args.image_size
  return (h, w, c)


def build_runner(args):
  """(`run(steps)`, holder, number of parameters) for the real train step that `args` names:
  the trainer's model, optimizer and step, one step per call or scanned (`--steps_per_call`).
  `run` is not called yet, so the step is traced and compiled by its first call."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import losses  # pylint: disable=g-import-not-at-top
  from tsvae import models  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top

  if jax.device_count() < args.devices:
    raise SystemExit(f'asked for {args.devices} devices, JAX sees {jax.device_count()}')
  if args.batch_size % args.devices:
    raise SystemExit('--batch_size must be divisible by --devices')
  mesh = train.make_mesh(jax.devices()[:args.devices])
  if args.mode == 'stage1':
    model = models.make_stage1_model(args.arch, image_shape(args), args.latent_dim,
                                     fast_vjp=not args.no_fast_vjp,
                                     bn_zero_debias=args.bn_zero_debias == 'on',
                                     compute_dtype=args.compute_dtype)
    prepare_input = train.image_input
    example = np.zeros((args.batch_size,) + image_shape(args), np.float32)
  else:
    model = models.make_stage2_model(args.latent_dim, args.depth, args.width,
                                     compute_dtype=args.compute_dtype)
    prepare_input = train.latent_input
    example = np.zeros((args.batch_size, args.latent_dim), np.float32)

  tx = train.make_optimizer(lambda step: 1e-4)
  state = train.create_train_state(model, example, base_rng=jax.random.PRNGKey(0), tx=tx)
  num_params = sum(int(np.prod(p.shape)) for p in jax.tree_util.tree_leaves(state.params))
  state = jax.device_put(state, train.replicated(mesh))
  # train_stage's objective for a stage config at its defaults: the reference ELBO.
  train_step = train.make_train_step(model, prepare_input=prepare_input,
                                     objective=losses.make_objective('vae'))
  batches = _host_batches(args)
  holder = {'state': state, 'metrics': None}
  run = (_scanned_runner if args.steps_per_call > 1 else _single_step_runner)(
      args, train_step, mesh, batches, holder)
  return run, holder, num_params


def run_step(args):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  run, holder, num_params = build_runner(args)
  t = time.perf_counter()
  run(max(1, args.steps_per_call))
  first_call_s = time.perf_counter() - t
  run(args.warmup)
  load_before = os.getloadavg()
  busy_before = _busy_processes()
  cpu0, t0 = _cpu_snapshot(), time.perf_counter()
  rates = _timed(run, args.steps, args.batch_size, args.reps)
  wall = time.perf_counter() - t0
  cpu1 = _cpu_snapshot()
  load_after = os.getloadavg()
  median = statistics.median(rates)
  step_s = args.batch_size / median
  metrics = jax.tree_util.tree_map(lambda m: np.asarray(m).reshape(-1)[-1],
                                   jax.device_get(holder['metrics']))
  result = {
      'images_per_sec': round(median, 1),
      'rates': [round(r, 1) for r in rates],
      'step_ms_median': round(1000 * step_s, 2),
      'first_call_s': round(first_call_s, 2),
      'compile_s': round(max(first_call_s - max(1, args.steps_per_call) * step_s, 0.0), 2),
      'num_params': num_params,
      'cpu_s_per_step': round((cpu1[1] - cpu0[1]) / (args.steps * args.reps), 4),
      'other_processes_cpu_share': _other_cpu_share(cpu0, cpu1, wall),
      'final_loss': float(metrics['loss']),
      'finite': bool(metrics['finite']),
  }
  return result, (load_before, load_after), busy_before


def _single_step_runner(args, train_step, mesh, batches, holder):
  """`run(steps)`: one jitted step per host batch, copied in every step (as train_stage)."""
  import jax  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  step_fn = train.jit_train_step(train_step, mesh)

  def run(steps):
    s, m = holder['state'], None
    for i in range(steps):
      s, m = step_fn(s, train.shard_batch(batches[i % len(batches)], mesh))
    jax.block_until_ready((s, m))
    holder['state'], holder['metrics'] = s, m
  return run


def _scanned_runner(args, train_step, mesh, batches, holder):
  """`run(steps)`: the batches resident on the devices, `steps_per_call` steps per call."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  k, b = args.steps_per_call, args.batch_size
  if args.steps % k:
    raise SystemExit('--steps must be a multiple of --steps_per_call')
  data = train.put_sharded({key: np.concatenate([x[key] for x in batches])
                            for key in batches[0]}, mesh)
  rows = jax.device_put(np.stack([np.arange(b) + (i % len(batches)) * b for i in range(k)]),
                        train.replicated(mesh)).astype(np.int32)
  calls = train.jit_gathered_steps(train_step, mesh)

  def run(steps):
    s, m = holder['state'], None
    for _ in range(-(-steps // k)):  # the warm-up's count rounds up to whole calls
      s, m = calls(s, data, rows, 0, k)
    jax.block_until_ready((s, m))
    holder['state'], holder['metrics'] = s, m
  return run


# ----------------------------------------------------------------------------- input mode


def run_input(args):
  from tsvae import input_pipeline  # pylint: disable=g-import-not-at-top

  manual_dir = args.manual_dir or os.path.join(DEFAULT_SHARED_DATA, args.dataset)
  t = time.perf_counter()
  builder = input_pipeline.get_builder(args.dataset, data_dir=args.data_dir,
                                       manual_dir=manual_dir)
  prepare_s = time.perf_counter() - t
  n_train = input_pipeline.num_examples(builder, 'train')

  mesh = None
  if args.to_device:
    import jax  # pylint: disable=g-import-not-at-top
    from tsvae import train  # pylint: disable=g-import-not-at-top
    mesh = train.make_mesh(jax.devices()[:args.devices])

  def epoch_iter(epoch):
    ds = input_pipeline.make_image_dataset(builder, 'train', dataset=args.dataset,
                                           global_batch_size=args.batch_size,
                                           shuffle_seed=0, epoch=epoch)
    return input_pipeline.as_numpy(ds)

  def consume(epoch):
    n = 0
    last = None
    for i, batch in enumerate(epoch_iter(epoch)):
      if args.max_batches and i >= args.max_batches:
        break
      if mesh is not None:
        from tsvae import train  # pylint: disable=g-import-not-at-top
        last = train.shard_batch(batch, mesh)
      else:
        last = batch
      n += len(batch['image'])
    if mesh is not None and last is not None:
      import jax  # pylint: disable=g-import-not-at-top
      jax.block_until_ready(last)
    return n, last

  # Epoch 0 decodes the split into host memory (once per builder); timed separately.
  t = time.perf_counter()
  n0, last = consume(0)
  first_epoch_s = time.perf_counter() - t
  load_before = os.getloadavg()
  busy_before = _busy_processes()
  cpu0, t0 = _cpu_snapshot(), time.perf_counter()
  rates, total_images = [], 0
  for e in range(1, args.epochs + 1):
    t = time.perf_counter()
    n, _ = consume(e)
    rates.append(n / (time.perf_counter() - t))
    total_images += n
  wall = time.perf_counter() - t0
  cpu1 = _cpu_snapshot()
  load_after = os.getloadavg()
  result = {
      'images_per_sec': round(statistics.median(rates), 1),
      'rates': [round(r, 1) for r in rates],
      'prepare_s': round(prepare_s, 2),
      'first_epoch_s': round(first_epoch_s, 2),
      'first_epoch_images': n0,
      'train_examples': n_train,
      'batch_dtype': str(last['image'].dtype) if last is not None else None,
      'cpu_us_per_image': round(1e6 * (cpu1[1] - cpu0[1]) / max(total_images, 1), 2),
      'other_processes_cpu_share': _other_cpu_share(cpu0, cpu1, wall),
  }
  return result, (load_before, load_after), busy_before


# ----------------------------------------------------------------------------- main


def main(argv=None):
  args = parse_args(argv)
  # tune_malloc only works fully before JAX/TF have started their threads.
  malloc_late = args.malloc == 'tuned' and ('jax' in sys.modules or 'tensorflow' in sys.modules)
  malloc_tuned = hostmem.tune_malloc() if args.malloc == 'tuned' else False
  _setup_env(args)
  if args.mode == 'input':
    result, loads, busy = run_input(args)
  else:
    result, loads, busy = run_step(args)
  config = {
      'mode': args.mode, 'batch_size': args.batch_size, 'devices': args.devices,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'malloc': args.malloc, 'malloc_tuned': malloc_tuned,
      'malloc_tuned_after_jax_import': malloc_late,
  }
  if args.mode == 'stage1':
    config.update(arch=args.arch, dataset=args.dataset, image_shape=list(image_shape(args)),
                  latent_dim=args.latent_dim, fast_vjp=not args.no_fast_vjp,
                  input_dtype=args.input_dtype, bn_zero_debias=args.bn_zero_debias == 'on')
  elif args.mode == 'stage2':
    config.update(latent_dim=args.latent_dim, depth=args.depth, width=args.width)
  else:
    config.update(dataset=args.dataset, to_device=args.to_device,
                  max_batches=args.max_batches)
  if args.mode != 'input':
    config.update(steps=args.steps, reps=args.reps, warmup=args.warmup,
                  compute_dtype=args.compute_dtype, steps_per_call=args.steps_per_call)
  record = {
      'benchmark': 'tsvae.step_throughput',
      'config': config,
      'result': result,
      'peak_rss_mib': peak_rss_mib(),
      'loadavg_before': [round(x, 2) for x in loads[0]],
      'loadavg_after': [round(x, 2) for x in loads[1]],
      'busy_processes_at_start': busy,
      'machine': machine_info(),
      'versions': versions() if args.mode != 'input' or args.to_device else _tf_versions(),
      'git': git_commit(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
      'note': args.note,
  }
  return write_record(record, args.out)


def write_record(record: dict, out: str) -> dict:
  """Prints the benchmark record as JSON and, when `out` is set, writes it there."""
  text = json.dumps(record, indent=1)
  print(text)
  if out:
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, 'w') as f:
      f.write(text + '\n')
  return record


def _tf_versions():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = {'tensorflow': tf.__version__, 'tensorflow_datasets': tfds.__version__}
  try:
    out.update(versions())
  except ImportError:
    pass
  return out


if __name__ == '__main__':
  main()
