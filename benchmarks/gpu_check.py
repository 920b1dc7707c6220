r"""Device check: step throughput, the longest MNIST two-stage run a budget allows, 10k samples.

Written for a lent accelerator machine that has JAX (+CUDA), flax, optax, orbax, numpy,
scikit-learn, Pillow and no TensorFlow, no tensorflow-datasets, no ml_collections and no network,
and that receives a copy of the repository plus ≤ 64 MiB. Everything it reads is prepared here:

  python benchmarks/gpu_check.py prep --manual_dir=../shared/data/mnist

writes benchmarks/gpu_check_data/ (git-ignored; ~12 MiB): `tsvae_mnist.npz`, MNIST as prepared
arrays (read with NumPy alone: tsvae.datasets.arrays; the pixels and order of the local tfds
builder) and `wheels/ml_collections-*.whl` (pure Python, imported from the wheel file via
PYTHONPATH). On the device, from the repository root (carry benchmarks/gpu_check_data):

  OUT=/some/dir bash benchmarks/gpu_check.sh [--budget_s=540] [--stage1_epochs=N ...]

It runs, in order, each step writing under $OUT:
1. `env.json`: devices, versions, which optional packages exist.
2. `throughput_stage1_b64.json`, `throughput_stage2_b64.json`, `throughput_stage2_b512.json`:
   benchmarks/step_throughput.py (per-step path; img/s, compile time). `--tiny` (CI) times
   stage 1 at its run's batch of 8 (`throughput_stage1_b8.json`).
3. the plan: stage-1 and stage-2 epochs that fit the rest of the budget at those rates (or the
   epochs given), capped at the paper's 400 + 800;
4. `python -m tsvae.main --config=configs/mnist.py` on the prepared arrays (evaluation off, stage 2
   with the README's GPU recipe: batch 512, lr 8e-4; scanned steps, `steps_per_call`), its log in
   `run.log`, its `metrics.jsonl`, `config.json` and sample grids copied to `run/`;
5. `samples_stage1.npz`, `samples_stage2.npz`, `samples_gmm.npz`: `images` uint8 [n, 28, 28, 1]
   (n = --num_samples, 10,000 by default: the paper's FID protocol, generated exactly as
   tsvae's evaluation does, min-max stretched) for FID on a CPU later (python -m tsvae.evaluate
   style scoring against the test split);
6. `summary.json`: the above, wall times, the trainer's img/s at its last log line, the last
   metrics of each stage, and a FLOP-based utilisation estimate (XLA's cost analysis of one
   compiled step × the measured steps/s, against --peak_tflops, H200 dense TF32 by default).

tests/gpu_check_test.py runs it under JAX_PLATFORMS=cpu with TensorFlow, tfds, array_record and
clu hidden, at a tiny budget (`--tiny`).
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(REPO_ROOT, 'benchmarks', 'gpu_check_data')
MNIST_TRAIN = 60_000
PAPER_EPOCHS = (400, 800)
OPTIONAL_MODULES = ('tensorflow', 'tensorflow_datasets', 'array_record', 'clu', 'ml_collections',
                    'sklearn', 'PIL', 'matplotlib', 'torch', 'tensorboard', 'tensorboardX')


# ------------------------------------------------------------------------------------- prep


def prep(args):
  """Writes the prepared MNIST arrays and the ml_collections wheel into args.out_dir."""
  sys.path.insert(0, REPO_ROOT)
  from tsvae.datasets import arrays  # pylint: disable=g-import-not-at-top
  path = arrays.prepare('mnist', args.manual_dir, args.out_dir, data_dir=args.data_dir or None)
  print(path, f'{os.path.getsize(path) / 2**20:.1f} MiB')
  if not args.no_wheels:
    import ml_collections  # pylint: disable=g-import-not-at-top
    version = getattr(ml_collections, '__version__', '')
    spec = f'ml_collections=={version}' if version else 'ml_collections'
    wheels = os.path.join(args.out_dir, 'wheels')
    subprocess.run([sys.executable, '-m', 'pip', 'download', '--quiet', '--no-deps',
                    '--only-binary=:all:', '-d', wheels, spec], check=True)
    print(*sorted(os.listdir(wheels)))
  total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(args.out_dir)
              for f in fs)
  print(f'{args.out_dir}: {total / 2**20:.1f} MiB to carry')


# -------------------------------------------------------------------------------------- run


def _write_json(out, name, obj):
  with open(os.path.join(out, name), 'w') as f:
    json.dump(obj, f, indent=1, sort_keys=True, default=str)
    f.write('\n')


def _env_record():
  import importlib.util  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  record = {'python': sys.version.split()[0], 'platform': platform.platform(),
            'jax': jax.__version__, 'backend': jax.default_backend(),
            'devices': [str(d) for d in jax.devices()],
            'device_kind': jax.devices()[0].device_kind,
            'modules': {}}
  for name in OPTIONAL_MODULES:
    try:
      record['modules'][name] = importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
      record['modules'][name] = False
  return record


def _throughput(args, mode, batch):
  """step_throughput.py in its own process; its JSON record (None if it failed)."""
  out = os.path.join(args.out, f'throughput_{mode}_b{batch}.json')
  cmd = [sys.executable, os.path.join(REPO_ROOT, 'benchmarks', 'step_throughput.py'), mode,
         '--batch_size', str(batch), '--out', out, '--note', 'benchmarks/gpu_check.py']
  if args.tiny:
    cmd += ['--steps', '2', '--reps', '1', '--warmup', '1']
    if mode == 'stage1':
      cmd += ['--latent_dim', '8']
    else:
      cmd += ['--latent_dim', '8', '--width', '32', '--depth', '1']
  start = time.time()
  proc = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True,
                        timeout=args.throughput_timeout_s)
  print(f'{mode} b{batch}: exit {proc.returncode} in {time.time() - start:.0f} s', flush=True)
  if proc.returncode != 0:
    print(proc.stderr[-3000:], file=sys.stderr)
    return None
  with open(out) as f:
    return json.load(f)


def step_flops(mode, batch, latent_dim=64, depth=3, width=1024):
  """XLA's FLOP count of one compiled training step (the step step_throughput.py times)."""
  sys.path.insert(0, REPO_ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import losses, models, train  # pylint: disable=g-import-not-at-top
  mesh = train.make_mesh(jax.devices()[:1])
  if mode == 'stage1':
    model = models.make_stage1_model('infogan', (28, 28, 1), latent_dim)
    prepare, example = train.image_input, np.zeros((batch, 28, 28, 1), np.float32)
  else:
    model = models.make_stage2_model(latent_dim, depth, width)
    prepare, example = train.latent_input, np.zeros((batch, latent_dim), np.float32)
  state = train.create_train_state(model, example, base_rng=jax.random.PRNGKey(0),
                                   tx=train.make_optimizer(lambda step: 1e-4))
  state = jax.device_put(state, train.replicated(mesh))
  step = train.jit_train_step(train.make_train_step(
      model, prepare_input=prepare, objective=losses.make_objective('vae')), mesh)
  cost = step.lower(state, train.shard_batch({'image': example} if mode == 'stage1' else
                                             {'mu': example, 'sigma': example + 1.0}, mesh)
                    ).compile().cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  return float(cost['flops'])


def plan_epochs(budget_s, rate1, rate2, num_train=MNIST_TRAIN, stage1_share=0.7,
                caps=PAPER_EPOCHS):
  """(stage-1 epochs, stage-2 epochs) that fit `budget_s` of training at img/s rate1, rate2."""
  def fit(share, rate, cap):
    if not rate or budget_s <= 0:
      return 1
    return int(max(1, min(cap, share * budget_s * rate // num_train)))
  return fit(stage1_share, rate1, caps[0]), fit(1 - stage1_share, rate2, caps[1])


def stage1_batch(args):
  """The stage-1 batch of the run: the reference 64, or `--tiny`'s 8 (timed at the same size)."""
  return 8 if args.tiny else 64


def _utilisation(args, rates):
  """FLOPs per step (XLA's count, in a child process) × measured steps/s, against a peak."""
  out = {'peak_tflops': args.peak_tflops, 'peak': 'H200 dense TF32 tensor-core spec (float32 '
         'matmuls run as TF32 by default on the GPU); the FLOPs are XLA cost analysis'}
  batch1 = stage1_batch(args)
  for key, mode, batch in ((f'stage1_b{batch1}', 'stage1', batch1),
                           (f'stage2_b{args.stage2_batch}', 'stage2', args.stage2_batch)):
    extra = ['--latent_dim', '8', '--width', '32', '--depth', '1'] if args.tiny else []
    proc = subprocess.run([sys.executable, os.path.abspath(__file__), 'flops', mode, str(batch),
                           *extra], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0 or key not in rates:
      out[key] = {'error': proc.stderr[-1500:] or 'no throughput measured'}
      continue
    flops = float(proc.stdout.strip().splitlines()[-1])
    tflops = flops * rates[key] / batch / 1e12
    out[key] = {'flop_per_step': flops, 'gflop_per_step': round(flops / 1e9, 3),
                'achieved_tflops': round(tflops, 4), 'utilisation': tflops / args.peak_tflops}
  return out


def _main_command(args, workdir, epochs1, epochs2):
  cmd = [sys.executable, '-m', 'tsvae.main', '--config=configs/mnist.py', f'--workdir={workdir}',
         f'--config.data.manual_dir={args.data}',
         f'--config.stage1.num_epochs={epochs1}', f'--config.stage2.num_epochs={epochs2}',
         '--config.eval.enabled=False',
         f'--config.stage2.batch_size={args.stage2_batch}',
         f'--config.stage2.learning_rate={args.stage2_lr}',
         f'--config.steps_per_call={args.steps_per_call}']
  if args.tiny:
    cmd += ['--config.latent_dim=8', '--config.batch_size=8', '--config.stage1.max_steps=4',
            '--config.stage2.max_steps=4', '--config.stage2.depth=1', '--config.stage2.width=32',
            '--config.sampling.num_grid_images=16', '--config.log_every_steps=2',
            '--config.checkpoint_every_steps=4']
  return cmd + list(args.main_flags)


def _last_rows(workdir):
  """{stage: the last metrics.jsonl row of that stage} (metric_logging.read_stage_rows)."""
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top
  last = {}
  for stage in ('stage1', 'stage2'):
    rows = metric_logging.read_stage_rows(workdir, stage)
    if rows:
      last[stage] = rows[-1]
  return last


def write_samples(workdir, out, num):
  """The evaluation's generated sets (stage 1, stage 2, GMM) as uint8 .npz files; their paths."""
  sys.path.insert(0, REPO_ROOT)
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import mnist  # pylint: disable=g-import-not-at-top
  from tsvae import cli, experiment, stages  # pylint: disable=g-import-not-at-top
  from tsvae.evaluators import inputs  # pylint: disable=g-import-not-at-top
  config = cli.config_from_workdir(workdir, defaults=mnist.get_config())
  config.eval.num_samples = int(num)
  setup = experiment.setup(config, workdir)
  state1 = stages.restore_final(setup, 'stage1')
  state2 = stages.restore_final(setup, 'stage2')
  gathered, timings = inputs.gather(setup, state1, state2)
  paths = {}
  for name in ('stage1', 'stage2', 'gmm'):
    images = gathered.generated.get(name)
    if images is None:
      print(f'no {name} samples: {gathered.missing.get(name)}', file=sys.stderr)
      continue
    images = np.clip(np.round(np.asarray(images, np.float32) * 255.0), 0, 255).astype(np.uint8)
    paths[name] = os.path.join(out, f'samples_{name}.npz')
    np.savez_compressed(paths[name], images=images,
                        min_max_stretch=bool(config.eval.min_max_stretch))
  return paths, {k: round(float(v), 2) for k, v in timings.items()}


def run(args):
  t0 = time.time()
  os.makedirs(args.out, exist_ok=True)
  args.data = os.path.abspath(args.data)
  summary = {'started': time.strftime('%Y-%m-%dT%H:%M:%S%z'), 'budget_s': args.budget_s,
             'tiny': args.tiny, 'data': args.data}
  # In a child process: JAX in this one would take the accelerator's memory from the others.
  env = subprocess.run([sys.executable, os.path.abspath(__file__), 'env'], cwd=REPO_ROOT,
                       capture_output=True, text=True, timeout=300)
  summary['env'] = (json.loads(env.stdout.strip().splitlines()[-1]) if env.returncode == 0
                    else {'error': env.stderr[-2000:]})
  _write_json(args.out, 'env.json', summary['env'])
  print(json.dumps(summary['env']), flush=True)

  rates = {}
  if not args.skip_throughput:
    for mode, batch in (('stage1', stage1_batch(args)), ('stage2', 64),
                        ('stage2', args.stage2_batch)):
      if (mode, batch) == ('stage2', 64) and (args.stage2_batch == 64 or args.tiny):
        continue
      record = _throughput(args, mode, batch)
      if record:
        rates[f'{mode}_b{batch}'] = record['result']['images_per_sec']
  summary['throughput_images_per_sec'] = rates
  if not args.skip_throughput and not args.skip_flops:
    summary['utilisation'] = _utilisation(args, rates)

  left = args.budget_s - (time.time() - t0) - args.reserve_s
  auto = plan_epochs(left * args.scan_speedup, rates.get(f'stage1_b{stage1_batch(args)}'),
                     rates.get(f'stage2_b{args.stage2_batch}'))
  epochs1 = args.stage1_epochs or auto[0]
  epochs2 = args.stage2_epochs or auto[1]
  summary['plan'] = {'training_budget_s': round(left, 1), 'scan_speedup': args.scan_speedup,
                     'auto_epochs': list(auto), 'stage1_epochs': epochs1,
                     'stage2_epochs': epochs2}
  print('plan:', json.dumps(summary['plan']), flush=True)

  workdir = args.workdir or os.path.join('/tmp', f'tsvae_gpu_check_{os.getpid()}')
  cmd = _main_command(args, workdir, epochs1, epochs2)
  summary['command'] = cmd[1:]
  start = time.time()
  with open(os.path.join(args.out, 'run.log'), 'w') as log:
    try:
      # What is left of the budget, less the sampling's share: a run past it is killed.
      proc = subprocess.run(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                            timeout=max(60.0, args.budget_s - (time.time() - t0) - 45.0))
      summary['run_exit'] = proc.returncode
    except subprocess.TimeoutExpired:
      summary['run_exit'] = 'timeout'
  summary['run_wall_s'] = round(time.time() - start, 1)
  rows = _last_rows(workdir)
  summary['last_metrics'] = rows
  batches = {'stage1': stage1_batch(args), 'stage2': args.stage2_batch or stage1_batch(args)}
  summary['training_images_per_sec'] = {  # The trainer's own rate at its last log line.
      stage: round(row['steps_per_sec'] * batches[stage], 1)
      for stage, row in rows.items() if stage in batches and 'steps_per_sec' in row}
  run_out = os.path.join(args.out, 'run')
  os.makedirs(run_out, exist_ok=True)
  for name in ('metrics.jsonl', 'config.json'):
    if os.path.exists(os.path.join(workdir, name)):
      shutil.copy(os.path.join(workdir, name), run_out)
  if os.path.isdir(os.path.join(workdir, 'samples')):
    shutil.copytree(os.path.join(workdir, 'samples'), os.path.join(run_out, 'samples'),
                    dirs_exist_ok=True)

  _write_json(args.out, 'summary.json', summary)  # Again below, once the samples are written.
  if summary['run_exit'] == 0:
    start = time.time()
    try:
      paths, timings = write_samples(workdir, args.out, args.num_samples)
      summary['samples'] = {k: os.path.basename(v) for k, v in paths.items()}
      summary['sample_timings_s'] = timings
    except Exception as e:  # pylint: disable=broad-except  (recorded; the run's files stay)
      summary['samples_error'] = f'{type(e).__name__}: {e}'
      print(summary['samples_error'], file=sys.stderr)
    summary['samples_wall_s'] = round(time.time() - start, 1)
  summary['total_wall_s'] = round(time.time() - t0, 1)
  _write_json(args.out, 'summary.json', summary)
  print(json.dumps({k: summary[k] for k in ('plan', 'run_exit', 'run_wall_s', 'total_wall_s')}))
  if not args.keep_workdir and not args.workdir:
    shutil.rmtree(workdir, ignore_errors=True)
  return 0 if summary['run_exit'] == 0 and len(summary.get('samples', {})) == 3 else 1


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest='command', required=True)
  pp = sub.add_parser('prep', help='here: write the prepared data (+ wheel) to carry')
  pp.add_argument('--manual_dir', required=True, help='local MNIST IDX files')
  pp.add_argument('--out_dir', default=DEFAULT_DATA)
  pp.add_argument('--data_dir', default='', help='tfds data_dir for the local builder')
  pp.add_argument('--no_wheels', action='store_true', help='skip pip download of ml_collections')
  sub.add_parser('env', help='print the devices, versions and optional modules as JSON')
  pf = sub.add_parser('flops', help='print the FLOPs of one compiled training step')
  pf.add_argument('mode', choices=('stage1', 'stage2'))
  pf.add_argument('batch', type=int)
  pf.add_argument('--latent_dim', type=int, default=64)
  pf.add_argument('--depth', type=int, default=3)
  pf.add_argument('--width', type=int, default=1024)
  pr = sub.add_parser('run', help='on the device: throughput, training, samples')
  pr.add_argument('--out', default=os.environ.get('OUT') or os.path.join(REPO_ROOT,
                                                                           'gpu_check_out'))
  pr.add_argument('--data', default=DEFAULT_DATA, help='folder holding tsvae_mnist.npz')
  pr.add_argument('--budget_s', type=float, default=540.0, help='wall-clock budget of it all')
  pr.add_argument('--reserve_s', type=float, default=120.0,
                  help='kept back from training: compiles, latents, sampling')
  pr.add_argument('--scan_speedup', type=float, default=1.0,
                  help='training img/s relative to the per-step throughput (plan only)')
  pr.add_argument('--stage1_epochs', type=int, default=0, help='0 = planned from the budget')
  pr.add_argument('--stage2_epochs', type=int, default=0, help='0 = planned from the budget')
  pr.add_argument('--stage2_batch', type=int, default=512)
  pr.add_argument('--stage2_lr', type=float, default=8e-4)
  pr.add_argument('--steps_per_call', type=int, default=50)
  pr.add_argument('--num_samples', type=int, default=10_000)
  pr.add_argument('--throughput_timeout_s', type=float, default=180.0)
  pr.add_argument('--skip_throughput', action='store_true')
  pr.add_argument('--skip_flops', action='store_true', help='no FLOP / utilisation estimate')
  pr.add_argument('--peak_tflops', type=float, default=494.7,
                  help='the device peak the utilisation is relative to (H200: dense TF32)')
  pr.add_argument('--workdir', default='', help='default: a fresh /tmp folder, deleted after')
  pr.add_argument('--keep_workdir', action='store_true')
  pr.add_argument('--tiny', action='store_true', help='CI: seconds-long settings')
  pr.add_argument('main_flags', nargs='*', help='extra --config.* flags for tsvae.main (after --)')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  if args.command == 'prep':
    return prep(args)
  if args.command == 'env':
    print(json.dumps(_env_record()))
    return 0
  if args.command == 'flops':
    print(step_flops(args.mode, args.batch, args.latent_dim, args.depth, args.width))
    return 0
  return run(args)


if __name__ == '__main__':
  sys.exit(main())
