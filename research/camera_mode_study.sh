#!/usr/bin/env bash
# Do learned camera embeddings draw better infrared than the paper's camera tokens? Frozen random
# strings read by the LoRA (the paper) vs learned embeddings (also read by the LoRA). Two short DiVE runs with identical settings, then generated IR images of 64 external
# ids are scored by `dive metrics` (FD to real IR, identity Rank-1 against real visible, with the
# VI-only AGW model as feature extractor). ~20 minutes on 2 cores.
#   bash research/camera_mode_study.sh [STEPS] [OUT]
set -euo pipefail
STEPS=${1:-800}
OUT=${2:-runs/camera-mode-study}
REID=${REID:-runs/reid-baselines/agw-seed0}
BASE=${BASE:-$(python -c "from dive import defaults; print(defaults.BASE)")}   # the shipped base

for mode in string embedding; do
  dive train --base "$BASE" --data data/synthvi --out "$OUT/$mode" --steps "$STEPS" \
      --camera-mode "$mode" --threads 2 --preview-every 0 --save-every "$STEPS"
  dive generate --base "$BASE" --checkpoint "$OUT/$mode/final" --out "$OUT/gen-$mode" \
      --top-k 64 --n 4
done
dive metrics --synthetic "$OUT/gen-string" "$OUT/gen-embedding" --real-ir data/synthvi --reid-run "$REID" \
    --out "$OUT/metrics" --no-tsne
cat "$OUT/metrics/metrics.md"
