#!/usr/bin/env bash
# Device check for a lent accelerator machine (JAX + CUDA, flax, optax, orbax, numpy,
# scikit-learn; no TensorFlow, tensorflow-datasets, ml_collections or network): step throughput,
# the longest MNIST two-stage run that fits the budget, and 10k stage-1 / stage-2 / GMM samples
# as uint8 .npz under $OUT for FID on a CPU. See benchmarks/gpu_check.py for what it writes.
#
# Prepare here first (needs tfds; the result is git-ignored and carried, ~12 MiB):
#   python benchmarks/gpu_check.py prep --manual_dir=../shared/data/mnist
# Then on the device, from the repository root (extra flags go to `gpu_check.py run`):
#   OUT=/path/to/out bash benchmarks/gpu_check.sh [--budget_s=540] [--stage1_epochs=N]
# GPU_CHECK_DATA overrides the data folder, PYTHON the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA="${GPU_CHECK_DATA:-benchmarks/gpu_check_data}"
PYTHON="${PYTHON:-python3}"
OUT="${OUT:-$PWD/gpu_check_out}"
if [[ ! -f "$DATA/tsvae_mnist.npz" ]]; then
  echo "gpu_check: $DATA/tsvae_mnist.npz is missing; run 'python benchmarks/gpu_check.py prep" \
       "--manual_dir=...' where tfds is installed and carry $DATA." >&2
  exit 2
fi
# Pure-Python wheels carried along (ml_collections) are imported straight from the .whl files,
# unless the module is installed already.
EXTRA_PATH="$PWD"
for wheel in "$DATA"/wheels/*.whl; do
  [[ -e "$wheel" ]] || continue
  module="$(basename "$wheel" | cut -d- -f1)"
  if ! "$PYTHON" -c "import $module" >/dev/null 2>&1; then
    EXTRA_PATH="$EXTRA_PATH:$PWD/$wheel"
  fi
done
export PYTHONPATH="$EXTRA_PATH${PYTHONPATH:+:$PYTHONPATH}"
export OUT
mkdir -p "$OUT"
exec "$PYTHON" benchmarks/gpu_check.py run --data "$DATA" --out "$OUT" "$@"
