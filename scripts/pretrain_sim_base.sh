#!/usr/bin/env bash
# Pretrain the simulator's base models (with the graph and without it) from scratch and write them where the project
# ships them, models/sim_base/{graph,no_graph}: the recipe of docs/sim_base.md, in one resumable command (run it
# again after an interruption). About 1 h 10 min on 2 CPU cores, added up from its stages' measured times
# (docs/sim_base.md): ~7 min of demonstrations and conversion, ~4 min of vision warm-up, ~27 min per base.
#   scripts/pretrain_sim_base.sh [OUT_DIR] [KEY=VALUE ...]     (OUT_DIR default: pretrain_out)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-pretrain_out}
shift || true
make setup
exec .venv/bin/softarm pretrain --out "$out" --export models/sim_base "$@"
