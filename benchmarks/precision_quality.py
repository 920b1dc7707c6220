r"""Issue #17: what bf16 compute costs in quality — float32 vs bfloat16, same seed and budget.

Runs `tsvae.main` twice on MNIST (reference config, the same seed, data order and budget), once
with `stage{1,2}.compute_dtype=float32` (the reference) and once with `bfloat16`, then puts side
by side: the loss and log γ curves (metrics.jsonl), the final log γ_x and log γ_z, the active
dims, mmd_z / mmd_u, and the proxy FD and real FID (`tf_graph`, float32 Inception) of stage-2,
stage-1, GMM samples and reconstructions, plus the train-vs-test floor. One JSON per dtype, one
comparison JSON and one PNG of the curves.

  python benchmarks/precision_quality.py --manual_dir=../shared/data/mnist \
      --root=/tmp/precision_quality --out=benchmarks/results/precision_quality_mnist

A rerun resumes or reuses each workdir (tsvae.main resumes a finished run without training).
--num_samples below the paper's 10,000 keeps the FIDs affordable on a CPU; FIDs at one sample
size compare with each other only (Fréchet distances are biased upwards at small sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

DTYPES = ('float32', 'bfloat16')
SAMPLE_SETS = ('stage2', 'stage1', 'gmm', 'recon', 'train')
SCALARS = ('loggamma_x', 'loggamma_z', 'active_dims', 'mmd_z', 'mmd_u')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--manual_dir', required=True, help='MNIST IDX folder (data.manual_dir)')
  p.add_argument('--root', required=True, help='parent of the two workdirs (kept)')
  p.add_argument('--out', required=True, help='results folder')
  p.add_argument('--config', default='configs/mnist.py')
  p.add_argument('--stage1_epochs', type=int, default=3)
  p.add_argument('--stage2_epochs', type=int, default=10)
  p.add_argument('--num_samples', type=int, default=2000)
  p.add_argument('--python', default=sys.executable)
  p.add_argument('--extra', action='append', default=[],
                 help='more --config.X=Y flags for both runs (tests use tiny budgets)')
  return p.parse_args(argv)


def run_command(args, dtype: str) -> list[str]:
  return [args.python, '-m', 'tsvae.main', f'--config={args.config}',
          f'--workdir={os.path.join(args.root, dtype)}',
          f'--config.data.manual_dir={args.manual_dir}',
          f'--config.stage1.num_epochs={args.stage1_epochs}',
          f'--config.stage2.num_epochs={args.stage2_epochs}',
          f'--config.stage1.compute_dtype={dtype}', f'--config.stage2.compute_dtype={dtype}',
          f'--config.eval.num_samples={args.num_samples}', *args.extra]


def read_curves(workdir: str) -> dict:
  """{stage: {'step': [...], 'loss': [...], 'loggamma': [...]}} from metrics.jsonl (the last row
  of each step: a resumed run logs re-run steps again)."""
  from tsvae import metric_logging  # pylint: disable=g-import-not-at-top  (after argv parsing)
  curves = {}
  for stage in ('stage1', 'stage2'):
    rows = [r for r in metric_logging.read_stage_rows(workdir, stage) if 'loss' in r]
    if rows:
      curves[stage] = {'step': [r['step'] for r in rows], 'loss': [r['loss'] for r in rows],
                       'loggamma': [r.get('loggamma') for r in rows]}
  return curves


def summarize(workdir: str) -> dict:
  with open(os.path.join(workdir, 'eval', 'metrics.json')) as f:
    m = json.load(f)
  out = {k: m.get(k) for k in SCALARS}
  for s in SAMPLE_SETS:
    out[f'fid_{s}'] = m.get(f'fid_{s}')
    out[f'proxy_fd_{s}'] = m.get(f'proxy_fd_{s}')
  out['fid_unavailable_reason'] = m.get('fid_unavailable_reason')
  out['num_samples'] = m.get('num_samples')
  out['fid_protocol'] = {k: m.get(k) for k in ('fid_preprocess', 'inception_compute_dtype',
                                               'inception_weights_sha256')}
  return out


def run_one(args, dtype: str) -> dict:
  workdir = os.path.join(args.root, dtype)
  cmd = run_command(args, dtype)
  t0 = time.perf_counter()
  proc = subprocess.run(cmd, cwd=step_throughput.REPO_ROOT, check=False)
  wall = time.perf_counter() - t0
  if proc.returncode != 0:
    raise SystemExit(f'{dtype} run failed with status {proc.returncode}: {" ".join(cmd)}')
  curves = read_curves(workdir)
  record = {
      'benchmark': 'precision_quality', 'compute_dtype': dtype,
      'command': ' '.join(cmd[1:]), 'wall_s_this_call': round(wall, 1),
      'final': summarize(workdir),
      'final_loss': {s: c['loss'][-1] for s, c in curves.items()},
      'curves': curves,
      'machine': step_throughput.machine_info(), 'git': step_throughput.git_commit(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  _write(record, os.path.join(args.out, f'{dtype}.json'))
  return record


def _write(record: dict, path: str):
  with open(path, 'w') as f:
    f.write(json.dumps(record, indent=1) + '\n')


def compare(records: dict) -> dict:
  f32, b16 = records['float32'], records['bfloat16']
  rows = {}
  for key, v32 in f32['final'].items():
    v16 = b16['final'].get(key)
    if isinstance(v32, (int, float)) and isinstance(v16, (int, float)):
      rows[key] = {'float32': v32, 'bfloat16': v16, 'bfloat16_minus_float32': v16 - v32}
  for stage, v32 in f32['final_loss'].items():
    v16 = b16['final_loss'][stage]
    rows[f'final_loss_{stage}'] = {'float32': v32, 'bfloat16': v16,
                                   'bfloat16_minus_float32': v16 - v32}
  return rows


def plot(records: dict, path: str):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  stages = list(records['float32']['curves'])
  fig, axes = plt.subplots(2, len(stages), figsize=(5 * len(stages), 7), squeeze=False)
  for j, stage in enumerate(stages):
    for dtype, style in zip(DTYPES, ('-', '--')):
      c = records[dtype]['curves'][stage]
      axes[0, j].plot(c['step'], c['loss'], style, label=dtype)
      axes[1, j].plot(c['step'], c['loggamma'], style, label=dtype)
    axes[0, j].set_title(f'{stage}: loss')
    axes[1, j].set_title(f'{stage}: log γ')
    axes[1, j].set_xlabel('step')
    axes[0, j].legend()
  fig.tight_layout()
  fig.savefig(path, dpi=80)
  plt.close(fig)


def main(argv=None):
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  records = {dtype: run_one(args, dtype) for dtype in DTYPES}
  comparison = {'benchmark': 'precision_quality', 'rows': compare(records),
                'config': {k: getattr(args, k) for k in ('config', 'stage1_epochs',
                                                          'stage2_epochs', 'num_samples',
                                                          'extra')},
                'git': step_throughput.git_commit(), 'machine': step_throughput.machine_info()}
  _write(comparison, os.path.join(args.out, 'comparison.json'))
  plot(records, os.path.join(args.out, 'curves.png'))
  for key, row in comparison['rows'].items():
    print(f"{key:24s} float32 {row['float32']:10.4g}  bfloat16 {row['bfloat16']:10.4g}")
  return comparison


if __name__ == '__main__':
  main()
