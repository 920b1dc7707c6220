r"""What this machine's arithmetic allows: the ceiling behind the speed targets of #12, #15, #17.

Measures the float32 (and bf16) matrix-product rate this CPU sustains under XLA — `jnp.dot` of
square matrices, the best-vectorised work XLA:CPU has — and counts, with XLA's cost analysis, the
FLOPs of one image through each timed workload:

- `stage1_b64`, `stage1_b256`: the InfoGAN MNIST stage-1 training step (κ = 64);
- `stage2_b64`: the stage-2 training step (3×1024, κ = 64);
- `inception`: FID-Inception pool3 features of one MNIST image (resized to 299², float32).

Its `ceiling_img_per_s` is the rate at which a workload would run if every one of its FLOPs ran
at the measured product rate: no implementation on this machine beats it without doing fewer
FLOPs (convolutions, normalisation and optimiser updates all run below the product rate).
`--need NAME=WORKLOAD:IMG_PER_S` (repeatable) states a target rate; the record gives the GFLOP/s
it needs and that as a fraction of the product rate (> 1: above what the machine computes).

  python benchmarks/compute_ceiling.py --out benchmarks/results/compute_ceiling_zen1.json \
      --need fid_3x_pytorch=inception:10.95 --need stage1_b256_1.5x_pytorch=stage1_b256:382.4

Run it on a quiet machine: the product rate is a timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import step_profile  # pylint: disable=g-import-not-at-top,wrong-import-position
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

WORKLOADS = ('stage1_b64', 'stage1_b256', 'stage2_b64', 'inception')


def parse_need(text: str) -> tuple[str, str, float]:
  """'NAME=WORKLOAD:IMG_PER_S' → (name, workload, rate); ValueError naming what is wrong."""
  name, sep, rest = text.partition('=')
  workload, sep2, rate = rest.partition(':')
  if not (sep and sep2 and name):
    raise ValueError(f'--need {text!r}: expected NAME=WORKLOAD:IMG_PER_S.')
  if workload not in WORKLOADS:
    raise ValueError(f'--need {text!r}: unknown workload {workload!r} (one of {WORKLOADS}).')
  try:
    value = float(rate)
  except ValueError:
    raise ValueError(f'--need {text!r}: {rate!r} is not a number of images per second.') from None
  if not value > 0:
    raise ValueError(f'--need {text!r}: the rate must be > 0.')
  return name, workload, value


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--sizes', default='1024,2048,4096', help='square matrix sizes to time')
  p.add_argument('--dtypes', default='float32,bfloat16', help='operand dtypes of the products')
  p.add_argument('--reps', type=int, default=5, help='timed runs per size (the median is used)')
  p.add_argument('--need', action='append', default=[], metavar='NAME=WORKLOAD:IMG_PER_S')
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  try:
    args.needs = [parse_need(n) for n in args.need]
    args.size_list = [int(s) for s in args.sizes.split(',') if s]
  except ValueError as e:
    p.error(str(e))
  args.dtype_list = [d for d in args.dtypes.split(',') if d]
  unknown = set(args.dtype_list) - {'float32', 'bfloat16'}
  if unknown or not args.dtype_list or not args.size_list or min(args.size_list) < 1:
    p.error(f'--dtypes must name float32 and/or bfloat16 (got {args.dtypes!r}); --sizes '
            f'positive integers (got {args.sizes!r}).')
  return args


def product_rates(sizes, dtypes, reps: int) -> dict:
  """{dtype: {size: GFLOP/s}} of a jitted n×n by n×n product (float32 results)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  out = {}
  for dtype in dtypes:
    out[dtype] = {}
    for n in sizes:
      a = jnp.ones((n, n), dtype)
      product = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
      jax.block_until_ready(product(a, a))
      calls = max(1, min(200, int(2e10 // (2 * n ** 3))))  # ~20 GFLOP per timed run.
      times = []
      for _ in range(reps):
        t = time.perf_counter()
        for _ in range(calls):
          result = product(a, a)
        jax.block_until_ready(result)
        times.append((time.perf_counter() - t) / calls)
      out[dtype][n] = round(2 * n ** 3 / statistics.median(times) / 1e9, 1)
  return out


def inception_flops_per_image(batch: int = 2) -> float:
  """XLA's FLOPs of FID-Inception pool3 features per 28×28 image (float32, tf_graph resize)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tsvae.metrics import inception  # pylint: disable=g-import-not-at-top
  extractor = inception.FeatureExtractor(inception.random_variables(0), batch_size=batch,
                                         devices=jax.local_devices()[:1])
  images = np.zeros((batch, 28, 28, 3), np.float32)
  flops = step_profile.forward_flops(extractor._apply, extractor.variables, images)  # pylint: disable=protected-access
  return flops / batch


def workload_flops_per_image() -> dict:
  import gpu_check  # pylint: disable=g-import-not-at-top
  return {'stage1_b64': gpu_check.step_flops('stage1', 64) / 64,
          'stage1_b256': gpu_check.step_flops('stage1', 256) / 256,
          'stage2_b64': gpu_check.step_flops('stage2', 64) / 64,
          'inception': inception_flops_per_image()}


def ceiling(flops_per_image: dict, peak_gflops: float) -> dict:
  return {k: round(peak_gflops * 1e9 / v, 1) for k, v in flops_per_image.items()}


def needs(args_needs, flops_per_image: dict, peak_gflops: float) -> dict:
  out = {}
  for name, workload, rate in args_needs:
    gflops = rate * flops_per_image[workload] / 1e9
    out[name] = {'workload': workload, 'img_per_s': rate, 'gflop_per_s': round(gflops, 1),
                 'fraction_of_product_rate': round(gflops / peak_gflops, 3)}
  return out


def main(argv=None):
  args = parse_args(argv)
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
  if step_throughput.REPO_ROOT not in sys.path:
    sys.path.insert(0, step_throughput.REPO_ROOT)
  before, t0 = step_throughput._cpu_snapshot(), time.time()  # pylint: disable=protected-access
  rates = product_rates(args.size_list, args.dtype_list, args.reps)
  other = step_throughput._other_cpu_share(before, step_throughput._cpu_snapshot(),  # pylint: disable=protected-access
                                           time.time() - t0)
  peak = max(rates.get('float32', {0: 0.0}).values())
  flops = workload_flops_per_image()
  record = {
      'benchmark': 'compute_ceiling',
      'product_gflop_per_s': {d: {str(n): r for n, r in v.items()} for d, v in rates.items()},
      'float32_product_peak_gflop_per_s': peak,
      'flop_per_image': {k: round(v) for k, v in flops.items()},
      'ceiling_img_per_s': ceiling(flops, peak) if peak else None,
      'needs': needs(args.needs, flops, peak) if peak else {},
      'other_processes_cpu_share': other,
      'busy_processes': step_throughput._busy_processes(),  # pylint: disable=protected-access
      'machine': step_throughput.machine_info(),
      'versions': step_throughput.versions(),
      **step_throughput.git_commit(),
      'command': ' '.join([os.path.basename(sys.executable), 'benchmarks/compute_ceiling.py',
                           *(argv if argv is not None else sys.argv[1:])]),
  }
  return step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
