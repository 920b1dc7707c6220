#!/usr/bin/env bash
# Issues #15 and #17: the speed ratios, side by side in rounds (benchmarks/side_by_side.py), for a
# machine whose single runs scatter by 15%:
#   - b256: the batch-256 stage-1 step, tsvae float32 / bf16 / scanned (10 steps per call) vs the
#     PyTorch yardstick eager float32 and bf16 autocast;
#   - b64: the same at batch 64 (no scanned run);
#   - stage2: the stage-2 step (3x1024 MLP, batch 64), one step per call vs scanned (100 per
#     call), float32 and bf16.
#
#   bash benchmarks/speed_rounds.sh [OUT_DIR [ROUNDS]]   (default benchmarks/results/speed_rounds, 3)
#
# Needs the project's venv on PATH (python) and the torch venv of benchmarks/torch_yardstick.py.
# Run it on a quiet machine; each round's JSON records the load and other processes' CPU share.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/speed_rounds}
rounds=${2:-3}
if ! [[ "$rounds" =~ ^[1-9][0-9]*$ ]]; then
  echo "speed_rounds.sh: ROUNDS must be a positive integer, got '$rounds'" >&2
  exit 2
fi
s1="python benchmarks/step_throughput.py stage1"
s2="python benchmarks/step_throughput.py stage2 --batch_size 64 --steps 200 --reps 5"
yard="python benchmarks/torch_yardstick.py"
python benchmarks/side_by_side.py --rounds "$rounds" --out "$out/b256" \
    --run "tsvae_f32=$s1 --batch_size 256" --run "tsvae_bf16=$s1 --batch_size 256 --compute_dtype bfloat16" \
    --run "tsvae_f32_scan10=$s1 --batch_size 256 --steps_per_call 10" \
    --run "torch_f32=$yard --batch_size 256" --run "torch_autocast=$yard --batch_size 256 --autocast_bf16" \
    --ratio tsvae_f32/torch_f32 --ratio tsvae_f32_scan10/torch_f32 --ratio tsvae_bf16/torch_autocast \
    --ratio tsvae_bf16/torch_f32
python benchmarks/side_by_side.py --rounds "$rounds" --out "$out/b64" \
    --run "tsvae_f32=$s1 --batch_size 64" --run "tsvae_bf16=$s1 --batch_size 64 --compute_dtype bfloat16" \
    --run "torch_f32=$yard --batch_size 64" --run "torch_autocast=$yard --batch_size 64 --autocast_bf16" \
    --ratio tsvae_f32/torch_f32 --ratio tsvae_bf16/torch_autocast --ratio tsvae_bf16/torch_f32
python benchmarks/side_by_side.py --rounds "$rounds" --out "$out/stage2" \
    --run "f32=$s2" --run "f32_scan100=$s2 --steps_per_call 100" \
    --run "bf16=$s2 --compute_dtype bfloat16" --run "bf16_scan100=$s2 --steps_per_call 100 --compute_dtype bfloat16" \
    --ratio f32_scan100/f32 --ratio bf16_scan100/bf16 --ratio bf16_scan100/f32
