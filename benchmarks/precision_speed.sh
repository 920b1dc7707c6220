#!/usr/bin/env bash
# Issue #17: the stage-1 InfoGAN MNIST step, float32 and bf16, batch 64 and 256, tsvae vs the
# PyTorch yardstick (eager float32 and bf16 autocast), side by side in one run, one device;
# then the scanned paths, stage 2 and the batch-256 profile (below).
#
#   bash benchmarks/precision_speed.sh [OUT_DIR [pairs]]  (default benchmarks/results/precision_speed)
#
# With `pairs` it runs only the side-by-side pairs (tsvae vs PyTorch, batch 64 and 256) and the
# summary: a quick record for another machine.
#
# Needs the project's venv on PATH (python) and a torch venv for the yardstick (TORCH_PYTHON,
# default /work/torchvenv/bin/python; see ../shared/bench/torch_infogan_step.py). Run it on a
# quiet machine: every JSON records the load and the CPU share of other processes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results/precision_speed}
parts=${2:-all}
if [[ "$parts" != all && "$parts" != pairs ]]; then
  echo "precision_speed.sh: the second argument is 'all' or 'pairs', got '$parts'" >&2
  exit 2
fi
mkdir -p "$out"
for b in 64 256; do
  for dtype in float32 bfloat16; do
    python benchmarks/step_throughput.py stage1 --batch_size "$b" --compute_dtype "$dtype" \
        --out "$out/tsvae_b${b}_${dtype}.json" > /dev/null
  done
  python benchmarks/torch_yardstick.py --batch_size "$b" --out "$out/torch_b${b}_float32.json" > /dev/null
  python benchmarks/torch_yardstick.py --batch_size "$b" --autocast_bf16 \
      --out "$out/torch_b${b}_bf16_autocast.json" > /dev/null
done
if [[ "$parts" != pairs ]]; then
# The scanned path (steps_per_call=10, batches resident on the device) at batch 64 (on XLA:CPU
# it is several times slower than one step per call for the convolutional stage 1).
python benchmarks/step_throughput.py stage1 --batch_size 64 --steps_per_call 10 \
    --out "$out/tsvae_b64_float32_scan10.json" > /dev/null
# Stage 2 (the 3x1024 MLP, the most dispatch-bound step): one step per call vs scanned.
python benchmarks/step_throughput.py stage2 --batch_size 64 --out "$out/tsvae_stage2_b64_float32.json" > /dev/null
python benchmarks/step_throughput.py stage2 --batch_size 64 --steps 100 --steps_per_call 100 \
    --out "$out/tsvae_stage2_b64_float32_scan100.json" > /dev/null
# The batch-256 profile's XLA:CPU library variants (float32): no YNNPACK fusions (Eigen dots),
# and oneDNN dot fusions instead of YNNPACK.
python benchmarks/step_throughput.py stage1 --batch_size 256 \
    --xla_flags=--xla_cpu_experimental_ynn_fusion_type= --out "$out/tsvae_b256_float32_no_ynn.json" > /dev/null
python benchmarks/step_throughput.py stage1 --batch_size 256 \
    --xla_flags='--xla_cpu_experimental_ynn_fusion_type= --xla_cpu_experimental_onednn_fusion_type=dot' \
    --out "$out/tsvae_b256_float32_onednn_dot.json" > /dev/null
for b in 64 256; do
  python benchmarks/step_profile.py --batch_size "$b" --out "$out/profile_b${b}_float32.json" > /dev/null
done
fi
python - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
rate = lambda f: json.load(open(os.path.join(out, f)))['result']['images_per_sec']
for b in (64, 256):
  t32, t16 = rate(f'tsvae_b{b}_float32.json'), rate(f'tsvae_b{b}_bfloat16.json')
  p32, p16 = rate(f'torch_b{b}_float32.json'), rate(f'torch_b{b}_bf16_autocast.json')
  print(f'b{b}: tsvae f32 {t32} bf16 {t16} | torch f32 {p32} autocast {p16} | '
        f'f32/f32 {t32 / p32:.2f}x bf16/autocast {t16 / p16:.2f}x bf16/f32 {t16 / p32:.2f}x')
if os.path.exists(os.path.join(out, 'tsvae_b64_float32_scan10.json')):
  print('b64 scanned (10 per call):', rate('tsvae_b64_float32_scan10.json'))
  s1, s100 = rate('tsvae_stage2_b64_float32.json'), rate('tsvae_stage2_b64_float32_scan100.json')
  print(f'stage 2 b64: one step per call {s1}, scanned (100 per call) {s100} ({s100 / s1:.2f}x)')
PY
