#!/usr/bin/env bash
# debug: one device, configs/debug.yaml.  multi: torchrun on every local GPU (8 by default), configs/soft_arm.yaml.
# Multi-node: set NNODES, NODE_RANK, MASTER_ADDR (and MASTER_PORT) on every node; torchrun does the rendezvous.
# A rank that dies is restarted with its group up to MAX_RESTARTS (3) times; training resumes from the last checkpoint.
# Extra arguments are config overrides, e.g. data.path=/data/softarm_prepared train.steps=1000
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
shift || true
venv=${VENV:-.venv}
case "$mode" in
  debug)
    exec "$venv/bin/softarm" train --config configs/debug.yaml "$@"
    ;;
  multi)
    exec "$venv/bin/torchrun" \
      --nnodes="${NNODES:-1}" --node-rank="${NODE_RANK:-0}" --nproc-per-node="${GPUS_PER_NODE:-8}" \
      --max-restarts="${MAX_RESTARTS:-3}" \
      --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}" \
      -m softarm.cli train --config configs/soft_arm.yaml "$@"
    ;;
  *)
    echo "usage: $0 debug|multi [key=value ...]" >&2
    exit 2
    ;;
esac
