r"""Two or more forms of the train step, timed in one process in alternating blocks.

On the 2-core VMs of this project the speed of a whole process drifts by 15% or more between
runs minutes apart (benchmarks/side_by_side.py), which hides a change of 10%. Here every
variant is compiled in the same process and the timed blocks alternate (A B, B A, A B, ...),
so each block of a variant has a neighbour of the other under nearly the same machine state;
the per-block ratios against the first variant are reported with their median and range.

A variant is the real `tsvae.train` step (as benchmarks/step_throughput.py builds it, one step
per call or `--steps_per_call` scanned), traced while a named change is in force:

  current       the code as it is
  norm_barrier  the gradient norm read through `lax.optimization_barrier`, so that XLA does not
                share g*g between the norm and Adam's second moment (no materialised g*g)
  finite_gate   Adam reads the gradients gated on the step being finite (`where(finite, g,
                nan)`): every parameter update then depends on every gradient, so XLA:CPU needs
                no copy of a kernel that a backward product reads before updating it in place
                (kept in the step at bedd62b as `train.gate_on_finite`, then removed: no gain)

Like the whole-run benchmarks, it applies `hostmem.tune_malloc` first, as `tsvae.main` does:
without it XLA:CPU's per-step temporary buffers are fresh mmaps, and a form with larger
temporaries looks slower by their page faults, not by its arithmetic.

  python benchmarks/step_ab.py stage2 --variants current,finite_gate --out /tmp/ab.json
  (the commands behind benchmarks/results/zen5/step_ab/ are in the README, Throughput)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position
from tsvae import hostmem  # pylint: disable=g-import-not-at-top,wrong-import-position  (stdlib only)


@contextlib.contextmanager
def _patched(obj, name, value):
  old = getattr(obj, name)
  setattr(obj, name, value)
  try:
    yield
  finally:
    setattr(obj, name, old)


def _current():
  return contextlib.nullcontext()


def _norm_barrier():
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  norm = optax.global_norm
  return _patched(optax, 'global_norm', lambda g: norm(jax.lax.optimization_barrier(g)))


def _finite_gate():
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  from tsvae import train  # pylint: disable=g-import-not-at-top
  apply = train.TrainState.apply_gradients

  def gated(self, *, grads, **kwargs):
    finite = jnp.isfinite(optax.global_norm(grads))
    grads = jax.tree_util.tree_map(lambda g: jnp.where(finite, g, jnp.nan), grads)
    return apply(self, grads=grads, **kwargs)
  return _patched(train.TrainState, 'apply_gradients', gated)


VARIANTS = {'current': _current, 'norm_barrier': _norm_barrier, 'finite_gate': _finite_gate}


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('mode', choices=('stage1', 'stage2'))
  p.add_argument('--variants', default='current,norm_barrier',
                 help=f'comma-separated, two or more of {sorted(VARIANTS)}; ratios are against '
                      'the first')
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--compute_dtype', default='float32', choices=('float32', 'bfloat16'))
  p.add_argument('--steps_per_call', type=int, default=1)
  p.add_argument('--steps', type=int, default=0,
                 help='steps per timed block (default: 6 for stage 1, 100 for stage 2)')
  p.add_argument('--blocks', type=int, default=12, help='timed blocks per variant')
  p.add_argument('--out', default='')
  args = p.parse_args(argv)
  args.variant_names = [v.strip() for v in args.variants.split(',') if v.strip()]
  unknown = [v for v in args.variant_names if v not in VARIANTS]
  if unknown or len(args.variant_names) < 2 or len(set(args.variant_names)) != len(
      args.variant_names):
    p.error(f'--variants wants two or more distinct names of {sorted(VARIANTS)}, '
            f'got {args.variants!r}')
  if args.steps <= 0:
    args.steps = 6 if args.mode == 'stage1' else 100
  if args.steps_per_call > 1 and args.steps % args.steps_per_call:
    p.error('--steps must be a multiple of --steps_per_call')
  if args.blocks < 2:
    p.error('--blocks must be >= 2')
  return args


def build_runner(args, variant: str):
  """`run(steps)` for the real step (`step_throughput.build_runner`) compiled under `variant`
  (compiled here, before returning)."""
  import jax  # pylint: disable=g-import-not-at-top
  st_args = step_throughput.parse_args([
      args.mode, '--batch_size', str(args.batch_size), '--compute_dtype', args.compute_dtype,
      '--steps_per_call', str(args.steps_per_call), '--steps', str(args.steps)])
  run, _, _ = step_throughput.build_runner(st_args)
  jax.clear_caches()  # no trace of an earlier variant is reused
  with VARIANTS[variant]():
    run(max(1, args.steps_per_call))  # traces and compiles under the variant
  return run


def block_order(names: list[str], block: int) -> list[str]:
  """Block b's order: as given for even b, reversed for odd b (A B, B A, ...)."""
  return list(names) if block % 2 == 0 else list(reversed(names))


def summarize(rates: dict[str, list[float]], names: list[str]) -> dict:
  out = {'median_images_per_sec': {n: round(statistics.median(rates[n]), 1) for n in names},
         'rates': {n: [round(r, 1) for r in rates[n]] for n in names}, 'ratios': {}}
  for n in names[1:]:
    per_block = [a / b for a, b in zip(rates[n], rates[names[0]])]
    out['ratios'][f'{n}/{names[0]}'] = {
        'per_block': [round(r, 3) for r in per_block], 'median': round(statistics.median(
            per_block), 3), 'min': round(min(per_block), 3), 'max': round(max(per_block), 3)}
  return out


def main(argv=None) -> dict:
  args = parse_args(argv)
  malloc = hostmem.tune_malloc_for_training()  # as tsvae.main and step_throughput.py do
  names = args.variant_names
  runners = {n: build_runner(args, n) for n in names}
  for n in names:  # one untimed block each, after all are built: first-touch costs land here
    runners[n](args.steps)
  rates = {n: [] for n in names}
  load0 = os.getloadavg()
  cpu0, t0 = step_throughput._cpu_snapshot(), time.perf_counter()  # pylint: disable=protected-access
  for block in range(args.blocks):
    for n in block_order(names, block):
      t = time.perf_counter()
      runners[n](args.steps)
      rates[n].append(args.steps * args.batch_size / (time.perf_counter() - t))
    print(f'block {block + 1}/{args.blocks}: ' + ', '.join(
        f'{n} {rates[n][-1]:.1f}' for n in names) + ' img/s', flush=True)
  share = step_throughput._other_cpu_share(cpu0, step_throughput._cpu_snapshot(),  # pylint: disable=protected-access
                                           time.perf_counter() - t0)
  record = {
      'benchmark': 'tsvae.step_ab',
      'config': {'mode': args.mode, 'variants': names, 'batch_size': args.batch_size,
                 'compute_dtype': args.compute_dtype, 'steps_per_call': args.steps_per_call,
                 'steps_per_block': args.steps, 'blocks': args.blocks, 'malloc_tuned': malloc},
      **summarize(rates, names),
      'other_processes_cpu_share': share,
      'loadavg_before': [round(v, 2) for v in load0],
      'loadavg_after': [round(v, 2) for v in os.getloadavg()],
      'machine': step_throughput.machine_info(), 'versions': step_throughput.versions(),
      'git': step_throughput.git_commit(), 'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  return step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
