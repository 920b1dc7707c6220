"""Runs the PyTorch yardstick (../shared/bench/torch_infogan_step.py) and records its JSON.

The yardstick is the same InfoGAN-SN stage-1 model, loss and Adam in PyTorch eager on the CPU
(see its docstring for setting up a torch venv; never install torch into the project's venv).
This wrapper only adds what `step_throughput.py` records (machine, load average, share of the
CPU used by other processes while it ran, time) so the two can be compared side by side.

  python benchmarks/torch_yardstick.py --batch_size 64 \
      --torch_python /work/torchvenv/bin/python --out benchmarks/results/torch_b64.json
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

DEFAULT_SCRIPT = os.path.join(step_throughput.REPO_ROOT, '..', 'shared', 'bench',
                              'torch_infogan_step.py')


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--batch_size', type=int, default=64)
  p.add_argument('--image_size', type=int, default=28)
  p.add_argument('--channels', type=int, default=1)
  p.add_argument('--steps', type=int, default=20)
  p.add_argument('--reps', type=int, default=7)
  p.add_argument('--torch_python', default=os.environ.get('TORCH_PYTHON',
                                                          '/work/torchvenv/bin/python'))
  p.add_argument('--script', default=DEFAULT_SCRIPT)
  p.add_argument('--autocast_bf16', action='store_true',
                 help='run the yardstick under torch.autocast(cpu, bfloat16) '
                 '(benchmarks/torch_autocast.py)')
  p.add_argument('--out', default='')
  return p.parse_args(argv)


def main(argv=None):
  args = parse_args(argv)
  wrapper = [os.path.join(HERE, 'torch_autocast.py')] if args.autocast_bf16 else []
  cmd = [args.torch_python, *wrapper, args.script, '--batch_size', str(args.batch_size), '--image_size',
         str(args.image_size), '--channels', str(args.channels), '--steps', str(args.steps),
         '--reps', str(args.reps)]
  import resource  # pylint: disable=g-import-not-at-top
  child0 = resource.getrusage(resource.RUSAGE_CHILDREN)
  load_before = os.getloadavg()
  busy = step_throughput._busy_processes()  # pylint: disable=protected-access
  cpu0, t0 = step_throughput._cpu_snapshot(), time.perf_counter()  # pylint: disable=protected-access
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  wall = time.perf_counter() - t0
  busy_after = step_throughput._cpu_snapshot()  # pylint: disable=protected-access
  if proc.returncode != 0:
    raise SystemExit(f'yardstick failed ({proc.returncode}):\n{proc.stderr[-2000:]}')
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  child = resource.getrusage(resource.RUSAGE_CHILDREN)
  child_cpu = (child.ru_utime + child.ru_stime) - (child0.ru_utime + child0.ru_stime)
  record = {
      'benchmark': 'torch_infogan_step (PyTorch yardstick)',
      'command': ' '.join(cmd),
      'autocast_bf16': args.autocast_bf16,
      'result': result,
      'wall_s_including_startup': round(wall, 1),
      'child_cpu_s_including_startup': round(child_cpu, 1),
      'other_processes_cpu_share': step_throughput._other_cpu_share(cpu0, busy_after, wall),  # pylint: disable=protected-access
      'loadavg_before': [round(x, 2) for x in load_before],
      'loadavg_after': [round(x, 2) for x in os.getloadavg()],
      'busy_processes_at_start': busy,
      'machine': step_throughput.machine_info(),
      'git': step_throughput.git_commit(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  return step_throughput.write_record(record, args.out)


if __name__ == '__main__':
  main()
