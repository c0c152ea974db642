#!/bin/bash
# From a base model to its "+ DiVE IR" Table 1 row, unattended: the shipped demo recipe
# (checkpoints/README.md, `dive-demo/`) trained on BASE, packaged, then the bench's generation,
# export and AGW recipe (scripts/bench_dive_row.sh). Every stage resumes: a rerun after a stop
# continues training from its last checkpoint and reuses finished images and ReID runs.
#   bash scripts/base_to_row.sh runs/base-v3-6k/model runs/dive-v3-6k runs/bench-dive-6k
set -euo pipefail
BASE=${1:?base model}; RUN=${2:?training run folder}; OUT=${3:?bench row folder}
STEPS=${STEPS:-2000}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
if [ ! -f "$RUN/packaged/dive.json" ]; then
  dive train --base "$BASE" --data data/synthvi --out "$RUN" --steps "$STEPS" --camera-mode embedding \
    --infrared-share 0.5 --lora-targets all --identity-modalities visible --infrared-adapter \
    --captions checkpoints/caption-reader-synthvi/captions.json \
    --infrared-words checkpoints/caption-reader-synthvi/infrared_words.json \
    --preview-every 500 --save-every 250 --threads 2
  dive package "$RUN/final" "$RUN/packaged"
fi
bash "$(dirname "$0")/bench_dive_row.sh" "$RUN/packaged" "$OUT"
