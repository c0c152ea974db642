#!/bin/bash
# One "+ DiVE IR" row of the bench's Table 1 at other generation settings, beside a finished bench:
# the bench's generation (256 external ids x infrared cameras x 6, 25 steps, seed 0) with GEN_ARGS
# changed, then the bench's export and AGW recipe (scripts/bench_row.sh).
#   GEN_ARGS="--guidance 7.5" bash scripts/bench_dive_row.sh checkpoints/dive-demo runs/bench-g7.5
set -euo pipefail
CKPT=${1:?checkpoint}; OUT=${2:?out folder}
GEN_ARGS=${GEN_ARGS:-}; N=${N:-6}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
dive generate --checkpoint "$CKPT" --out "$OUT/synthetic/dive-camera" --min-images 12 --n "$N" --steps 25 \
  --seed 0 $GEN_ARGS
bash "$(dirname "$0")/bench_row.sh" "$OUT/synthetic/dive-camera" "$OUT" dive-camera
