#!/usr/bin/env bash
# Trains tsvae on all GPUs of this machine with one process: the jit-compiled step is
# data-parallel over every visible device, so no --distributed is needed.
#
#   CONFIG=configs/celeba.py WORKDIR=/data/runs/celeba CUDA_VISIBLE_DEVICES=0,1 \
#       launch/gpu_local.sh [--dry_run] [--config.data.manual_dir=../shared/data/celeba ...]
#
# Needs JAX with CUDA in the active Python environment, once:
#   pip install -e . && pip install -U 'jax[cuda12]'
# (the package itself pulls the CPU build of JAX; TensorFlow, used only for the input pipeline,
# is kept off the GPUs by tsvae). config.batch_size is the global batch and must be divisible by
# the number of GPUs. Arguments other than --dry_run are passed to tsvae.main (e.g. --config.*
# overrides); --dry_run (or DRY_RUN=1) prints the commands instead of running them. Rerunning
# the same command resumes the run in WORKDIR.
set -euo pipefail

# ---------------------------------------------------------------- knobs (override from the env)
CONFIG="${CONFIG:-configs/mnist.py}"              # relative to the repository root
WORKDIR="${WORKDIR:-/tmp/tsvae_$(basename "$CONFIG" .py)}"
CUDA_VISIBLE_DEVICES="${CUDA_VISIBLE_DEVICES:-}"  # e.g. 0,1; '' = all GPUs
PYTHON="${PYTHON:-python}"
DRY_RUN="${DRY_RUN:-0}"

ARGS=()
for arg in "$@"; do
  case "$arg" in
    --dry_run | --dry-run) DRY_RUN=1 ;;
    *) ARGS+=("$arg") ;;
  esac
done

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

# Quotes one word for a POSIX shell, readably: bare when safe, else --flag='value' or
# --flag="value" (the value alone quoted), single quotes escaped as '\'' when nothing else fits.
quote() {
  local word="$1" prefix=""
  if [[ "$word" =~ ^[A-Za-z0-9_./:=@%+,-]+$ ]]; then
    printf '%s' "$word"
    return
  fi
  if [[ "$word" =~ ^(--?[A-Za-z0-9_.-]+=)(.*)$ ]]; then
    prefix="${BASH_REMATCH[1]}"
    word="${BASH_REMATCH[2]}"
  fi
  if [[ "$word" != *"'"* ]]; then
    printf "%s'%s'" "$prefix" "$word"
  elif [[ "$word" != *[\"\$\`\\!]* ]]; then
    printf '%s"%s"' "$prefix" "$word"
  else
    printf "%s'%s'" "$prefix" "${word//\'/\'\\\'\'}"
  fi
}

# Prints the command, shell-quoted (--dry_run), or runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    local out="" word
    for word in "$@"; do
      out+="${out:+ }$(quote "$word")"
    done
    printf '%s\n' "$out"
  else
    "$@"
  fi
}

[[ -f "$REPO_ROOT/$CONFIG" ]] || { echo "gpu_local.sh: CONFIG=$CONFIG: no such file in $REPO_ROOT." >&2; exit 2; }

# Config files import configs.default: run from the repository root.
run cd "$REPO_ROOT"
ENV=()
[[ -n "$CUDA_VISIBLE_DEVICES" ]] && ENV=(env CUDA_VISIBLE_DEVICES="$CUDA_VISIBLE_DEVICES")
status=0
run ${ENV[@]+"${ENV[@]}"} "$PYTHON" -m tsvae.main --config="$CONFIG" --workdir="$WORKDIR" \
  ${ARGS[@]+"${ARGS[@]}"} || status=$?
case "$status" in
  0) ;;
  2) echo "gpu_local.sh: bad input (see the message above); nothing was changed." >&2 ;;
  3) echo "gpu_local.sh: loss or gradients became NaN/Inf (see the message above)." >&2 ;;
  75) echo "gpu_local.sh: stopped by SIGTERM after a checkpoint; rerun to resume." >&2 ;;
  *) echo "gpu_local.sh: tsvae.main exited with status $status." >&2 ;;
esac
exit "$status"
