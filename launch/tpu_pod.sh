#!/usr/bin/env bash
# Create a TPU VM pod slice, install mind_jax on every worker, train, stream logs, delete.
#   launch/tpu_pod.sh [--dry-run] create|install|train|logs|delete
# Settings come from the environment:
#   TPU_NAME (mind-jax), ZONE (us-east5-a), ACCELERATOR (v5litepod-16),
#   RUNTIME (v2-alpha-tpuv5-lite), CONFIG (configs/tpu_v5e16.py), WORKDIR (gs://BUCKET/run),
#   REPO_URL (the git URL to clone on the workers), OVERRIDES ("--config.a.b=v ...").
# Every worker runs the same command (--worker=all); jax.distributed starts from the
# TPU metadata, so no coordinator address is needed.
set -euo pipefail
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
ACTION=${1:?usage: launch/tpu_pod.sh [--dry-run] create|install|train|logs|delete}
TPU_NAME=${TPU_NAME:-mind-jax}
ZONE=${ZONE:-us-east5-a}
ACCELERATOR=${ACCELERATOR:-v5litepod-16}
RUNTIME=${RUNTIME:-v2-alpha-tpuv5-lite}
CONFIG=${CONFIG:-configs/tpu_v5e16.py}
WORKDIR=${WORKDIR:-gs://YOUR_BUCKET/mind_jax/run}
REPO_URL=${REPO_URL:-YOUR_GIT_URL}
OVERRIDES=${OVERRIDES:-}
run() { echo "+ $*"; if [ "$DRY" = 0 ]; then "$@"; fi; }
on_all() {
  run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=all --command "$1"
}
case "$ACTION" in
  create)
    run gcloud compute tpus tpu-vm create "$TPU_NAME" --zone "$ZONE" \
      --accelerator-type "$ACCELERATOR" --version "$RUNTIME" ;;
  install)
    on_all "git clone $REPO_URL mind_jax || (cd mind_jax && git pull); cd mind_jax && python3 -m venv .venv && .venv/bin/pip install -q -e . 'jax[tpu]==0.10.2'" ;;
  train)
    on_all "cd mind_jax && nohup .venv/bin/python -m mind_jax.train --config $CONFIG --workdir $WORKDIR $OVERRIDES > train.log 2>&1 &" ;;
  logs)
    run gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone "$ZONE" --worker=0 --command "tail -f mind_jax/train.log" ;;
  delete)
    run gcloud compute tpus tpu-vm delete "$TPU_NAME" --zone "$ZONE" --quiet ;;
  *) echo "unknown action: $ACTION" >&2; exit 2 ;;
esac
