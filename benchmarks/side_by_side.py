r"""Benchmarks run side by side in rounds, so that a ratio between them survives a noisy machine.

On the 2-core VMs of this project one throughput run can read 15% above or below the next (the
same command, minutes apart). A ratio of two single runs then says little. This runs each named
benchmark command once per round, in an order that rotates every round (no command is always
first), and reports per benchmark the median over rounds and
per ratio the median, min and max of the per-round ratios, with the ratio of the medians.

  python benchmarks/side_by_side.py --rounds 3 --out benchmarks/results/zen5/b256 \
      --run 'tsvae_f32=python benchmarks/step_throughput.py stage1 --batch_size 256' \
      --run 'torch_f32=python benchmarks/torch_yardstick.py --batch_size 256' \
      --ratio tsvae_f32/torch_f32

Each command must accept `--out FILE` and write a JSON whose `result.images_per_sec` is its rate
(step_throughput.py and torch_yardstick.py do); round r of NAME writes `OUT/NAME_r{r}.json`, and
the summary goes to `OUT/summary.json`.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import step_throughput  # pylint: disable=g-import-not-at-top,wrong-import-position


def parse_named(text: str) -> tuple[str, str]:
  """'NAME=COMMAND' → (name, command); ValueError naming what is wrong."""
  name, sep, command = text.partition('=')
  if not sep or not name.strip() or not command.strip() or not name.strip().isidentifier():
    raise ValueError(f'--run wants NAME=COMMAND with NAME a plain identifier, got {text!r}')
  return name.strip(), command.strip()


def parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--run', action='append', required=True, help='NAME=COMMAND (repeatable)')
  p.add_argument('--ratio', action='append', default=[], help='NAME/NAME (repeatable)')
  p.add_argument('--rounds', type=int, default=3)
  p.add_argument('--out', required=True, help='folder for the per-run JSONs and summary.json')
  args = p.parse_args(argv)
  try:
    args.runs = dict(parse_named(text) for text in args.run)
  except ValueError as e:
    p.error(str(e))
  if len(args.runs) != len(args.run):
    p.error('--run names must be distinct')
  args.ratios = []
  for text in args.ratio:
    a, sep, b = text.partition('/')
    if not sep or a not in args.runs or b not in args.runs:
      p.error(f'--ratio wants NAME/NAME of two --run names, got {text!r}')
    args.ratios.append((a, b))
  if args.rounds < 1:
    p.error('--rounds must be >= 1')
  return args


def round_order(names: list[str], r: int) -> list[str]:
  """Round r's order: the list rotated by r (each name leads once every len(names) rounds)."""
  k = r % len(names)
  return names[k:] + names[:k]


def summarize(rates: dict[str, list[float]], ratios: list[tuple[str, str]]) -> dict:
  """Medians per benchmark; per ratio the per-round ratios, their median/min/max, and the
  ratio of the medians."""
  medians = {name: round(statistics.median(v), 1) for name, v in rates.items()}
  out = {'median_images_per_sec': medians, 'rates': rates, 'ratios': {}}
  for a, b in ratios:
    per_round = [x / y for x, y in zip(rates[a], rates[b])]
    out['ratios'][f'{a}/{b}'] = {
        'per_round': [round(v, 3) for v in per_round],
        'median': round(statistics.median(per_round), 3),
        'min': round(min(per_round), 3), 'max': round(max(per_round), 3),
        'of_medians': round(medians[a] / medians[b], 3)}
  return out


def run_one(command: str, out: str) -> float:
  subprocess.run([*shlex.split(command), '--out', out], cwd=REPO_ROOT, check=True,
                 stdout=subprocess.DEVNULL)
  with open(out) as f:
    return float(json.load(f)['result']['images_per_sec'])


def main(argv=None) -> dict:
  args = parse_args(argv)
  os.makedirs(args.out, exist_ok=True)
  names = list(args.runs)
  rates = {name: [] for name in names}
  started = time.time()
  load0 = os.getloadavg()
  for r in range(args.rounds):
    for name in round_order(names, r):
      rate = run_one(args.runs[name], os.path.join(args.out, f'{name}_r{r}.json'))
      rates[name].append(rate)
      print(f'round {r + 1}/{args.rounds} {name}: {rate:.1f} img/s', flush=True)
  record = {
      'benchmark': 'side_by_side', 'rounds': args.rounds, 'commands': args.runs,
      **summarize(rates, args.ratios),
      'wall_s': round(time.time() - started, 1), 'loadavg_before': [round(v, 2) for v in load0],
      'loadavg_after': [round(v, 2) for v in os.getloadavg()],
      'machine': step_throughput.machine_info(), 'git': step_throughput.git_commit(),
      'time': time.strftime('%Y-%m-%dT%H:%M:%S%z'),
  }
  step_throughput.write_record(record, os.path.join(args.out, 'summary.json'))
  return record


if __name__ == '__main__':
  main()
