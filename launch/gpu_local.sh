#!/usr/bin/env bash
# Train on the local GPU(s): installs the CUDA build of jax into .venv, then runs train.
#   launch/gpu_local.sh [--dry-run] WORKDIR [--config.a.b=v ...]
# Config: configs/gpu_qwen05b.py (override with CONFIG=...).
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
WORKDIR=${1:?usage: launch/gpu_local.sh [--dry-run] WORKDIR [overrides...]}
shift
CONFIG=${CONFIG:-configs/gpu_qwen05b.py}
run() { echo "+ $*"; if [ "$DRY" = 0 ]; then "$@"; fi; }
run python3 -m venv .venv
run .venv/bin/pip install -q -e . "jax[cuda12]==0.10.2"
run .venv/bin/python -m mind_jax.train --config "$CONFIG" --workdir "$WORKDIR" "$@"
