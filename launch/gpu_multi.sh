#!/usr/bin/env bash
# Train on every GPU of one host: one process drives all local GPUs (JAX's
# single-controller model), so no launcher or coordinator is needed.
#   launch/gpu_multi.sh [--dry-run] WORKDIR [--config.a.b=v ...]
# Config: configs/gpu_qwen05b.py (override with CONFIG=...); the mesh takes all
# visible GPUs on fsdp unless the overrides say otherwise. CUDA_VISIBLE_DEVICES
# selects the GPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry-run" ]; then DRY=1; shift; fi
WORKDIR=${1:?usage: launch/gpu_multi.sh [--dry-run] WORKDIR [overrides...]}
shift
CONFIG=${CONFIG:-configs/gpu_qwen05b.py}
run() { echo "+ $*"; if [ "$DRY" = 0 ]; then "$@"; fi; }
run python3 -m venv .venv
run .venv/bin/pip install -q -e . "jax[cuda12]==0.10.2"
run .venv/bin/python -m mind_jax.train --config "$CONFIG" --workdir "$WORKDIR" \
  --config.mesh.data=1 --config.mesh.fsdp=-1 "$@"
