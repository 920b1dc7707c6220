#!/usr/bin/env bash
# Trains tsvae on a Cloud TPU VM pod slice: one `python -m tsvae.main --distributed` process per
# TPU VM worker (`--worker=all`); JAX finds the other workers itself.
#
#   TPU_NAME=tsvae-v4-32 ZONE=us-central2-b ACCELERATOR_TYPE=v4-32 \
#   SHARED_FS=10.0.0.2:/tsvae WORKDIR=/mnt/tsvae/mnist CONFIG=configs/mnist.py \
#       launch/tpu_pod.sh [--dry_run] [--config.stage1.num_epochs=10 ...]
#
# or, with a GCS bucket as the workdir instead of an NFS share: WORKDIR=gs://BUCKET/tsvae/mnist
# and no SHARED_FS.
#
# Steps: reuse the TPU (`describe`) or `create` it; copy this checkout to every worker (or clone
# REPO_URL there, SOURCE=git); optionally mount a shared NFS file system (SHARED_FS) on every
# worker; `pip install 'jax[tpu]'` and the package on every worker; run training on every
# worker. Arguments other than --dry_run are passed to tsvae.main (e.g. --config.* overrides).
# --dry_run (or DRY_RUN=1) prints every command instead of running it.
#
# WORKDIR must be one location that every worker sees: process 0 writes config.json, the
# latents and the samples, and the other processes read them. Either a GCS bucket
# (WORKDIR=gs://BUCKET/run: the TPU VMs' service account needs read/write access to it) or an
# NFS share (e.g. Filestore) mounted on every worker: set SHARED_FS and a WORKDIR below
# MOUNT_POINT.
#
# Rerunning the script resumes the run from WORKDIR: a READY TPU is reused, a PREEMPTED spot TPU
# is deleted and recreated. SKIP_INSTALL=1 skips the copy and install steps when the workers
# still have them (ignored when the TPU is (re)created).
set -euo pipefail

# ---------------------------------------------------------------- knobs (override from the env)
TPU_NAME="${TPU_NAME:-tsvae-pod}"
ZONE="${ZONE:-us-central2-b}"
PROJECT="${PROJECT:-}"                            # '' = gcloud's default project
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-32}"     # v4-32 = 4 workers x 4 chips
RUNTIME_VERSION="${RUNTIME_VERSION:-tpu-ubuntu2204-base}"  # v5e: v2-alpha-tpuv5-lite
SPOT="${SPOT:-0}"                                 # 1: create a spot (preemptible) TPU
CONFIG="${CONFIG:-configs/mnist.py}"              # relative to the repository root
WORKDIR="${WORKDIR:-/mnt/tsvae/${TPU_NAME}}"      # shared by all workers: gs://... or NFS
SHARED_FS="${SHARED_FS:-}"                        # NFS export HOST:/PATH; '' = mount nothing
MOUNT_POINT="${MOUNT_POINT:-/mnt/tsvae}"
SOURCE="${SOURCE:-local}"                         # local: copy this checkout; git: clone REPO_URL
REPO_URL="${REPO_URL:-https://github.com/ORG/tsvae.git}"
REPO_REF="${REPO_REF:-main}"
REMOTE_DIR="${REMOTE_DIR:-tsvae}"                 # on each worker, relative to the home dir
PYTHON="${PYTHON:-python3}"
JAX_TPU="${JAX_TPU:-jax[tpu]}"                    # pip requirement for JAX with libtpu
SKIP_INSTALL="${SKIP_INSTALL:-0}"
DETACH="${DETACH:-0}"                             # 1: run under nohup, log to ~/tsvae_run.log
DRY_RUN="${DRY_RUN:-0}"

# ---------------------------------------------------------------- arguments
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

# Joins its arguments into one shell-quoted command line.
join() {
  local out="" word
  for word in "$@"; do
    out+="${out:+ }$(quote "$word")"
  done
  printf '%s' "$out"
}

# Prints the command (--dry_run) or runs it.
run() {
  if [[ "$DRY_RUN" == 1 ]]; then
    join "$@"
    echo
  else
    "$@"
  fi
}

note() { echo "# $*"; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

[[ "$SOURCE" == local || "$SOURCE" == git ]] || die "SOURCE must be 'local' or 'git', got '$SOURCE'."
[[ -f "$REPO_ROOT/$CONFIG" || "$SOURCE" == git ]] || die "CONFIG=$CONFIG: no such file in $REPO_ROOT."

# pip needs a path, not a bare name, to install a local folder.
if [[ "$REMOTE_DIR" == /* ]]; then REMOTE_PATH="$REMOTE_DIR"; else REMOTE_PATH="./$REMOTE_DIR"; fi

GCLOUD_FLAGS=(--zone="$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_FLAGS+=(--project="$PROJECT")

# Runs a shell command on every worker.
on_all_workers() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --worker=all \
    --command="$1"
}

# ---------------------------------------------------------------- 1. the TPU: reuse or create
CREATE=(gcloud compute tpus tpu-vm create "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
        --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
[[ "$SPOT" == 1 ]] && CREATE+=(--spot)
DELETE=(gcloud compute tpus tpu-vm delete "$TPU_NAME" "${GCLOUD_FLAGS[@]}" --quiet)
DESCRIBE=(gcloud compute tpus tpu-vm describe "$TPU_NAME" "${GCLOUD_FLAGS[@]}"
          --format='value(state)')
if [[ "$DRY_RUN" == 1 ]]; then
  run "${DESCRIBE[@]}"
  note "if that fails (no such TPU yet):"
  run "${CREATE[@]}"
  note "if its state is PREEMPTED or TERMINATED (a spot TPU was reclaimed): the delete, then" \
       "the create above"
  run "${DELETE[@]}"
else
  state="$("${DESCRIBE[@]}" 2>/dev/null || true)"
  case "$state" in
    READY) echo "Reusing TPU $TPU_NAME in $ZONE." ;;
    "") echo "Creating TPU $TPU_NAME ($ACCELERATOR_TYPE, $RUNTIME_VERSION) in $ZONE."
        run "${CREATE[@]}"
        SKIP_INSTALL=0 ;;
    PREEMPTED | TERMINATED)
        echo "TPU $TPU_NAME is $state; deleting and recreating it (the run resumes from WORKDIR)."
        run "${DELETE[@]}"
        run "${CREATE[@]}"
        SKIP_INSTALL=0 ;;
    *) die "TPU $TPU_NAME is $state; wait until it is READY (or delete it) and rerun." ;;
  esac
fi

if [[ "$SKIP_INSTALL" != 1 ]]; then
  # -------------------------------------------------------------- 2. the code on every worker
  if [[ "$SOURCE" == local ]]; then
    # Tracked and untracked-but-not-ignored files of this checkout (uncommitted edits included);
    # everything but .git when it is not a git checkout.
    TARBALL="${TMPDIR:-/tmp}/tsvae_src_${TPU_NAME}.tar.gz"
    # shellcheck disable=SC2016  # Expanded by the inner bash.
    PACK='if git -C "$1" rev-parse --git-dir >/dev/null 2>&1; then git -C "$1" ls-files -z -co --exclude-standard | tar -czf "$2" -C "$1" --null -T -; else tar -czf "$2" -C "$1" --exclude-vcs --exclude=__pycache__ .; fi'
    run bash -c "$PACK" pack "$REPO_ROOT" "$TARBALL"
    run gcloud compute tpus tpu-vm scp "$TARBALL" "$TPU_NAME:tsvae_src.tar.gz" \
      "${GCLOUD_FLAGS[@]}" --worker=all
    on_all_workers "rm -rf $(quote "$REMOTE_DIR") && mkdir -p $(quote "$REMOTE_DIR") && tar -xzf tsvae_src.tar.gz -C $(quote "$REMOTE_DIR")"
  else
    on_all_workers "rm -rf $(quote "$REMOTE_DIR") && git clone --depth=1 --branch=$(quote "$REPO_REF") $(quote "$REPO_URL") $(quote "$REMOTE_DIR")"
  fi

  # -------------------------------------------------------------- 3. the shared file system
  if [[ -n "$SHARED_FS" ]]; then
    on_all_workers "(dpkg -s nfs-common >/dev/null 2>&1 || (sudo apt-get update -qq && sudo apt-get install -y -qq nfs-common)) && sudo mkdir -p $(quote "$MOUNT_POINT") && (mountpoint -q $(quote "$MOUNT_POINT") || sudo mount -t nfs -o rw,hard $(quote "$SHARED_FS") $(quote "$MOUNT_POINT")) && sudo chmod 1777 $(quote "$MOUNT_POINT")"
  fi

  # -------------------------------------------------------------- 4. JAX for TPU and the package
  # (with the tf extra: gs:// workdirs and CelebA streaming need TensorFlow)
  on_all_workers "$(join "$PYTHON" -m pip install --quiet --upgrade "$JAX_TPU" "${REMOTE_PATH}[tf]")"
fi

# ---------------------------------------------------------------- 5. train on every worker
TRAIN="cd $(quote "$REMOTE_DIR") && $(join "$PYTHON" -m tsvae.main --distributed \
  --config="$CONFIG" --workdir="$WORKDIR" ${ARGS[@]+"${ARGS[@]}"})"
if [[ "$DETACH" == 1 ]]; then  # Survives the end of the ssh session.
  TRAIN="nohup bash -c $(quote "$TRAIN") </dev/null >~/tsvae_run.log 2>&1 &"
fi
status=0
on_all_workers "$TRAIN" || status=$?
if [[ "$status" != 0 ]]; then
  echo "tpu_pod.sh: training exited with status $status (tsvae.main: 2 bad input, 3 NaN/Inf," \
       "75 stopped by SIGTERM after a checkpoint). Rerun this script with SKIP_INSTALL=1 to" \
       "resume." >&2
  exit "$status"
fi
if [[ "$DETACH" == 1 && "$DRY_RUN" != 1 ]]; then
  echo "Training runs in the background on every worker; follow it with:"
  echo "  gcloud compute tpus tpu-vm ssh $TPU_NAME ${GCLOUD_FLAGS[*]} --worker=0 --command='tail -f ~/tsvae_run.log'"
fi
