#!/bin/bash
# Which guidance scale gives a DiVE checkpoint's infrared the most identity? Identity figures at several scales: the 256 external ids
# x 2 infrared cameras x N images per guidance, scored by the three VI-only AGW models
# (runs/reid-baselines/agw-seed{0,1,2}, as checkpoints/README.md makes them).
#   GUIDANCES="3 5 7.5" bash research/guidance_sweep.sh checkpoints/dive-demo runs/evaluate-guidance 2
set -euo pipefail
CKPT=${1:?checkpoint}; OUT=${2:?out folder}; N=${3:-2}
GUIDANCES=${GUIDANCES:-"3 5 7.5"}; REID_SEEDS=${REID_SEEDS:-"0 1 2"}; DATA=${DATA:-data/synthvi}
export HF_HUB_OFFLINE=1
sources=()
for g in $GUIDANCES; do
  dive generate --checkpoint "$CKPT" --out "$OUT/guidance-$g" --n "$N" --guidance "$g"
  sources+=("$OUT/guidance-$g")
done
for s in $REID_SEEDS; do
  dive metrics --synthetic "${sources[@]}" --real-ir "$DATA" --reid-run "runs/reid-baselines/agw-seed$s" \
    --out "$OUT/metrics-seed$s" --no-tsne
done
python scripts/metrics_table.py "$OUT"
