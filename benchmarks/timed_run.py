r"""Times one whole `tsvae.main` run from a fresh workdir and writes what a user would see.

The record (JSON) holds the command, wall time, the phases read off the run's own
`metrics.jsonl` timestamps (process start → last logged stage-1 step → last stage-2 step → the
sample grids), the final log γ of each stage, the machine (CPU family and vector extensions
included), the commit and the CPU share other processes took while it ran; the run's sample
grids are copied beside it.

  python benchmarks/timed_run.py --workdir=/tmp/quick --out=benchmarks/results/quick_mnist_zen5 \
      -- --config=configs/mnist.py:quick --config.data.manual_dir=../shared/data/mnist

Everything after `--` goes to `python -m tsvae.main` (with `--workdir` added). The workdir must
not exist yet: a resumed run would time only what was left.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position

GRIDS = ('stage1_samples.png', 'stage2_samples.png', 'reconstructions.png')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--workdir', required=True, help='a path that does not exist yet')
  p.add_argument('--out', required=True, help='folder for run.json and the sample grids')
  p.add_argument('run_args', nargs='*', help='after --: the arguments of tsvae.main')
  args = p.parse_args(argv)
  if os.path.exists(args.workdir):
    p.error(f'--workdir {args.workdir} exists: a resumed run would time only what was left; '
            'give a new path')
  return args


def phases(rows: list[dict], started: float, ended: float) -> dict:
  """Seconds per phase from metrics.jsonl rows (each has 'stage' and a wall-clock 'time')."""
  last = {}
  for row in rows:
    last[row['stage']] = max(last.get(row['stage'], 0.0), row['time'])
  out, mark = {}, started
  for stage in sorted(last):
    out[f'{stage} (start or previous phase → its last logged step)'] = round(last[stage] - mark, 1)
    mark = last[stage]
  out['after the last logged step (extraction is before stage 2; grids, end)'] = round(
      ended - mark, 1)
  return out


def final_values(rows: list[dict], key: str) -> dict:
  """The last logged value of `key` per stage."""
  out = {}
  for row in sorted(rows, key=lambda r: r['time']):
    if key in row:
      out[row['stage']] = row[key]
  return out


def read_rows(workdir: str) -> list[dict]:
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def main(argv=None) -> dict:
  args = parse_args(argv)
  command = [sys.executable, '-m', 'tsvae.main', f'--workdir={args.workdir}', *args.run_args]
  cpu0, load0 = step_throughput._cpu_snapshot(), os.getloadavg()  # pylint: disable=protected-access
  started = time.time()
  proc = subprocess.run(command, cwd=REPO_ROOT, check=False)
  ended = time.time()
  cpu1 = step_throughput._cpu_snapshot()  # pylint: disable=protected-access
  rows = read_rows(args.workdir)
  os.makedirs(args.out, exist_ok=True)
  copied = []
  for name in GRIDS:
    src = os.path.join(args.workdir, 'samples', name)
    if os.path.exists(src):
      shutil.copy(src, os.path.join(args.out, name))
      copied.append(name)
  record = {
      'command': ' '.join(['python -m tsvae.main', *command[3:]]),
      'returncode': proc.returncode,
      'wall_s': round(ended - started, 1),
      'wall_min': round((ended - started) / 60, 2),
      'phases_s': phases(rows, started, ended),
      'logged_steps': {stage: sum(1 for r in rows if r['stage'] == stage)
                       for stage in sorted({r['stage'] for r in rows})},
      'final_loggamma': final_values(rows, 'loggamma'),
      'final_loss': final_values(rows, 'loss'),
      'samples': copied,
      'loadavg_before': [round(v, 2) for v in load0],
      'other_processes_cpu_share': step_throughput._other_cpu_share(  # pylint: disable=protected-access
          cpu0, cpu1, ended - started),
      'started': time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(started)),
      'machine': step_throughput.machine_info(),
      'git': step_throughput.git_commit(),
  }
  step_throughput.write_record(record, os.path.join(args.out, 'run.json'))
  if proc.returncode:
    raise SystemExit(proc.returncode)
  return record


if __name__ == '__main__':
  main()
