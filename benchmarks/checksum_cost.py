"""What the checksums of issue #16 cost: an MNIST stage-1 checkpoint and the 60k MNIST latents.

Checkpoint: a freshly initialised MNIST stage-1 TrainState (configs/mnist.py: InfoGAN, Adam)
whose Adam moments are filled with random normals, saved with `checkpointing.StageCheckpointer`.
(A fresh state's moments are zeros, which Orbax's compressed storage shrinks to almost nothing:
its checkpoint is about a third of a trained one's. Random moments give a trained one's bytes.)
Timed as
  save      Orbax's save + the checksum record (what training does at every checkpoint),
  record    the checksum record alone (`record_checksums`: SHA-256 of every file of the step),
  restore   verification + Orbax's restore (what a resume does),
  verify    the verification alone (`verify`).
Latents: 60,000 x 64 (mu, sigma) float32 written with `input_pipeline.write_latent_dataset`
and opened with `read_latent_dataset_builder`, timed as
  write     the whole write, checksums included,    checksums   their part of it,
  open      opening with verification,              verify      its part of it,
  load      reading every row (for scale: what stage 2 does next).

The files were just written, so they are in the page cache: this measures hashing, not disk
reads (a cold read hashes at the disk's speed, after which Orbax / tf.data read the cache).

  python benchmarks/checksum_cost.py --out benchmarks/results/checksum_cost_mnist.json
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
  sys.path.insert(0, REPO_ROOT)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def _timed(fn, reps):
  """Seconds of `reps` calls of fn()."""
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def _summary(times, num_bytes=None):
  out = {'median_s': round(statistics.median(times), 4), 'runs_s': [round(t, 4) for t in times]}
  if num_bytes:
    out['mb_per_s'] = round(num_bytes / 1e6 / statistics.median(times), 1)
  return out


def _tree_bytes(directory):
  return sum(os.path.getsize(os.path.join(d, n)) for d, _, names in os.walk(directory)
             for n in names)


def measure_checkpoint(workdir, reps):
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from configs import mnist  # pylint: disable=g-import-not-at-top
  from tsvae import checkpointing, train  # pylint: disable=g-import-not-at-top
  from tsvae import experiment as experiment_lib  # pylint: disable=g-import-not-at-top
  config = mnist.get_config()
  experiment = experiment_lib.setup(config, workdir)
  example = np.zeros((config.batch_size,) + tuple(experiment.image_shape), np.float32)
  state = train.create_train_state(experiment.model1, example,
                                   base_rng=jax.random.PRNGKey(config.seed),
                                   tx=train.make_optimizer(lambda step: 1e-4))
  state = jax.device_get(state)
  rng = np.random.default_rng(0)
  state = state.replace(opt_state=jax.tree_util.tree_map(
      lambda x: (rng.standard_normal(np.shape(x)).astype(x.dtype)
                 if np.ndim(x) > 0 and np.issubdtype(np.asarray(x).dtype, np.floating) else x),
      state.opt_state))
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state)
  ckpt = checkpointing.StageCheckpointer(workdir, 'stage1', experiment_fingerprint='bench',
                                         max_to_keep=2)
  steps = iter(range(1, 10 * reps + 1))
  last = []

  def save():
    last.append(next(steps))
    ckpt.save(last[-1], state, {'epoch': 0})

  save_times = _timed(save, reps)
  step = last[-1]
  record_times = _timed(lambda: ckpt.record_checksums(step), reps)
  verify_times = _timed(lambda: ckpt.verify(step), reps)
  restore_times = _timed(lambda: ckpt.restore(step, abstract), reps)
  ckpt.close()
  step_dir = os.path.join(workdir, 'stage1', 'checkpoints', str(step))
  num_bytes = _tree_bytes(step_dir)
  num_params = sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(state.params))
  return {
      'num_params': num_params,
      'checkpoint_bytes': num_bytes,
      'checkpoint_files': sum(len(n) for _, _, n in os.walk(step_dir)),
      'save': _summary(save_times),
      'record': _summary(record_times, num_bytes),
      'restore': _summary(restore_times),
      'verify': _summary(verify_times, num_bytes),
      'record_share_of_save': round(statistics.median(record_times)
                                    / statistics.median(save_times), 3),
      'verify_share_of_restore': round(statistics.median(verify_times)
                                       / statistics.median(restore_times), 3),
  }


def measure_latents(workdir, reps, num_examples, latent_dim):
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae import fileio, input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  mu = rng.standard_normal((num_examples, latent_dim)).astype(np.float32)
  sigma = rng.uniform(0.01, 1.0, (num_examples, latent_dim)).astype(np.float32)
  directory = os.path.join(workdir, 'latents')
  write_times = _timed(lambda: input_pipeline.write_latent_dataset(directory, mu, sigma), reps)
  names = [n for n in sorted(os.listdir(directory)) if n != 'tsvae_latents.json']
  checksum_times = _timed(lambda: fileio.checksums(directory, names), reps)
  recorded = fileio.checksums(directory, names)
  verify_times = _timed(lambda: fileio.checksum_mismatches(directory, recorded), reps)
  open_times = _timed(lambda: input_pipeline.read_latent_dataset_builder(directory), reps)
  load_times = _timed(lambda: input_pipeline.read_latent_dataset_builder(directory).load(),
                      reps)
  num_bytes = _tree_bytes(directory)
  return {
      'num_examples': num_examples,
      'latent_dim': latent_dim,
      'dataset_bytes': num_bytes,
      'write': _summary(write_times),
      'checksums': _summary(checksum_times, num_bytes),
      'open': _summary(open_times),
      'verify': _summary(verify_times, num_bytes),
      'load': _summary(load_times),
      'checksum_share_of_write': round(statistics.median(checksum_times)
                                       / statistics.median(write_times), 3),
      'verify_share_of_open_and_load': round(
          statistics.median(verify_times) / (statistics.median(open_times)
                                             + statistics.median(load_times)), 3),
  }


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--reps', type=int, default=5)
  p.add_argument('--num_examples', type=int, default=60000, help='MNIST training images')
  p.add_argument('--latent_dim', type=int, default=64, help='configs/mnist.py latent_dim')
  p.add_argument('--out', default='', help='write the JSON here (also printed)')
  args = p.parse_args(argv)
  workdir = tempfile.mkdtemp(prefix='tsvae-checksum-bench-')
  try:
    load_before = os.getloadavg()
    checkpoint = measure_checkpoint(os.path.join(workdir, 'run'), args.reps)
    latents = measure_latents(os.path.join(workdir, 'run'), args.reps, args.num_examples,
                              args.latent_dim)
    record = {
        'benchmark': 'checksum_cost', 'dataset': 'mnist', 'algorithm': 'sha256',
        'config': {'config_file': 'configs/mnist.py', 'reps': args.reps,
                   'num_examples': args.num_examples, 'latent_dim': args.latent_dim,
                   'adam_moments': 'random normal (the bytes of a trained state)',
                   'page_cache': 'warm (files just written)'},
        'checkpoint': checkpoint, 'latents': latents,
        'machine': step_throughput.machine_info(), 'git': step_throughput.git_commit(),
        'versions': step_throughput.versions(),
        'loadavg_before': [round(x, 2) for x in load_before],
        'loadavg_after': [round(x, 2) for x in os.getloadavg()],
        'created': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
    }
  finally:
    shutil.rmtree(workdir, ignore_errors=True)
  step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
