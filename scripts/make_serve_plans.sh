#!/usr/bin/env bash
# The six plans `taskprune serve` uses on the default model: attribution from 10 fit examples (seed 0),
# decoder pruned at p = 0.5 (the demo's setting). Needs ../shared/data (or TASKPRUNE_DATA).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
DATA=${TASKPRUNE_DATA:-../shared/data}
OUT=${1:-plans/minilm-glue6}
mkdir -p "$OUT" runs/scores
for task in sst2 mrpc qnli rte cb boolq; do
  "$BIN/taskprune" score --task "$task" --data-dir "$DATA" --samples 10 --seed 0 \
      --out "runs/scores/$task.safetensors" --overwrite
  "$BIN/taskprune" plan --scores "runs/scores/$task.safetensors" --rate 0.5 --modules decoder \
      --out "$OUT/$task.json" --overwrite
done
