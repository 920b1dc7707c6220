r"""Issue #17: where the InfoGAN stage-1 step's time goes, layer by layer, at a batch size.

Times, each as its own jitted function after a warm-up, the forward and the forward+backward
(input and kernel gradients) of every product in the InfoGAN-SN MNIST step — the two stride-2
4x4 convolutions, the two transposed convolutions (`layers.conv_transpose`, the trainer's fast
VJP) and the two 6272x1024 dense products (`layers.matmul`) — in float32 or bf16 operands with
float32 results, exactly as the layers compute them. Prints a table and writes a JSON with the
GFLOP/s of each, so batch 64 and 256 (and the two dtypes) can be compared.

  python benchmarks/step_profile.py --batch_size 256 --out benchmarks/results/x.json

Layer times measured alone add up to more than the step (XLA overlaps independent products in
the step); they show the shares, not the step time (benchmarks/step_throughput.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position

# (name, kind, input shape without batch, kernel shape) of the MNIST InfoGAN-SN step, κ = 64.
LAYERS = (
    ('encoder conv1 (1→64, 28→14)', 'conv', (28, 28, 1), (4, 4, 1, 64)),
    ('encoder conv2 (64→128, 14→7)', 'conv', (14, 14, 64), (4, 4, 64, 128)),
    ('encoder fc3 (6272→1024)', 'dense', (6272,), (6272, 1024)),
    ('decoder fc2 (1024→6272)', 'dense', (1024,), (1024, 6272)),
    ('decoder deconv3 (128→64, 7→14)', 'deconv', (7, 7, 128), (4, 4, 64, 128)),
    ('decoder deconv4 (64→1, 14→28)', 'deconv', (14, 14, 64), (4, 4, 1, 64)),
)


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch_size', type=int, default=256)
  p.add_argument('--compute_dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--calls', type=int, default=10, help='calls per timed run')
  p.add_argument('--reps', type=int, default=5, help='timed runs (the median is reported)')
  p.add_argument('--out', default='')
  return p.parse_args(argv)


def _median_ms(fn, args, calls: int, reps: int) -> float:
  import jax  # pylint: disable=g-import-not-at-top
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(reps):
    t = time.perf_counter()
    for _ in range(calls):
      out = fn(*args)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / calls * 1000)
  return statistics.median(times)


def _product(kind: str, dtype):
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from jax import lax  # pylint: disable=g-import-not-at-top
  from tsvae.models import layers  # pylint: disable=g-import-not-at-top
  wide = None if dtype == jnp.float32 else jnp.float32

  def conv(x, w):
    return lax.conv_general_dilated(x.astype(dtype), w.astype(dtype), (2, 2), 'SAME',
                                    dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                    preferred_element_type=wide)

  def deconv(x, w):
    return layers.conv_transpose(x.astype(dtype), w.astype(dtype), 2).astype(jnp.float32)

  def dense(x, w):
    return layers.matmul(x.astype(dtype), w.astype(dtype))

  return {'conv': conv, 'deconv': deconv, 'dense': dense}[kind]


def forward_flops(fn, *args) -> float:
  """XLA's count of the flops of jitted `fn` at `args` (multiply-adds × 2, padding excluded)."""
  analysis = fn.lower(*args).compile().cost_analysis()
  analysis = analysis[0] if isinstance(analysis, (list, tuple)) else analysis
  return float(analysis['flops'])


def profile(args) -> list[dict]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  dtype = jnp.bfloat16 if args.compute_dtype == 'bfloat16' else jnp.float32
  key = jax.random.PRNGKey(0)
  rows = []
  for name, kind, in_shape, kernel in LAYERS:
    x = jax.random.normal(key, (args.batch_size, *in_shape))
    w = 0.02 * jax.random.normal(key, kernel)
    f = _product(kind, dtype)
    forward = jax.jit(f)

    @jax.jit
    def forward_backward(x, w, f=f):
      y, vjp = jax.vjp(f, x, w)
      return vjp(y)

    fwd_ms = _median_ms(forward, (x, w), args.calls, args.reps)
    both_ms = _median_ms(forward_backward, (x, w), args.calls, args.reps)
    flops = forward_flops(forward, x, w)
    rows.append({'layer': name, 'forward_ms': round(fwd_ms, 2),
                 'forward_backward_ms': round(both_ms, 2),
                 'forward_gflops_per_s': round(flops / fwd_ms / 1e6, 1),
                 'backward_gflops_per_s': round(2 * flops / max(both_ms - fwd_ms, 1e-9) / 1e6, 1)})
  return rows


def main(argv=None):
  args = parse_args(argv)
  hostmem.tune_malloc()  # As tsvae.main and step_throughput do, before JAX starts.
  step_throughput._setup_env(argparse.Namespace(devices=1, xla_flags=''))  # pylint: disable=protected-access
  rows = profile(args)
  for r in rows:
    print(f"{r['layer']:34s} fwd {r['forward_ms']:7.2f} ms ({r['forward_gflops_per_s']:6.1f} "
          f"GFLOP/s)  fwd+bwd {r['forward_backward_ms']:7.2f} ms  "
          f"(bwd {r['backward_gflops_per_s']:6.1f} GFLOP/s)")
  record = {
      'benchmark': 'step_profile (InfoGAN-SN MNIST layers)',
      'config': {'batch_size': args.batch_size, 'compute_dtype': args.compute_dtype,
                 'calls': args.calls, 'reps': args.reps},
      'layers': rows,
      'sum_forward_backward_ms': round(sum(r['forward_backward_ms'] for r in rows), 1),
      'loadavg': [round(x, 2) for x in os.getloadavg()],
      'machine': step_throughput.machine_info(), 'versions': step_throughput.versions(),
      'git': step_throughput.git_commit(), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  if args.out:
    step_throughput.write_record(record, args.out)
  return record


if __name__ == '__main__':
  main()
