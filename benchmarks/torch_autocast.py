"""Runs a PyTorch yardstick script under CPU bf16 autocast, as a user of this machine would try.

    python benchmarks/torch_autocast.py ../shared/bench/torch_infogan_step.py --batch_size 64

Everything after the script's path goes to it unchanged. The whole script (forward, loss,
backward, Adam) runs inside ``torch.autocast('cpu', dtype=torch.bfloat16)``: PyTorch then runs
matmuls and convolutions in bf16 and keeps its float32 list (losses, reductions, exp/log) in
float32; parameters and Adam stay float32. It needs torch (the yardstick's own venv), never the
project's. ``benchmarks/torch_yardstick.py --autocast_bf16`` calls it.
"""

import runpy
import sys

import torch


def main():
  if len(sys.argv) < 2:
    raise SystemExit(__doc__)
  script = sys.argv[1]
  sys.argv = sys.argv[1:]
  with torch.autocast('cpu', dtype=torch.bfloat16):
    runpy.run_path(script, run_name='__main__')


if __name__ == '__main__':
  main()
