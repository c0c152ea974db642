#!/usr/bin/env bash
# How well does a DiVE checkpoint draw the external ids' identities in infrared? The generator's
# acceptance figures for a checkpoint (default: the shipped demo):
#  1. a grid: rows = external identities, columns = real visible images, then generated IR per IR camera;
#  2. identity check: generated IR of every external id with >= 12 images (N per IR camera) vs
#     grayscale copies of their visible images, both scored by `dive metrics` with the VI-only AGW
#     model (identity Rank-1 against the ids' real visible images, FD to real IR), with the world's
#     own infrared renders of those ids (`dive baseline oracle`) as the ceiling a perfect generator reaches;
#  3. the same check on 256 VI ids, which training showed in infrared (row dive-vi);
#  4. `dive translate` (img2img from the ids' own visible images, the grayscale copies' sources) at
#     each strength of STRENGTHS (rows translate-S; STRENGTHS="" skips them).
#   bash research/evaluate_demo.sh [CHECKPOINT] [OUT] [N]      (~5 minutes on 2 cores)
#   BASE=DIR bash research/evaluate_demo.sh ...                 (a base other than the one the checkpoint names)
#   GUIDANCE=1 bash research/evaluate_demo.sh ...               (classifier-free guidance; default 3, dive generate's)
#   GUIDANCE=4 NEGATIVE='a {camera} photo of person' bash ...  (guidance along the identity token only)
set -euo pipefail
CKPT=${1:-checkpoints/dive-demo}
OUT=${2:-runs/evaluate-demo}
N=${3:-2}
# The scoring ReID models: AGW trained on the VI set with each of these seeds. Identity Rank-1 near
# 1% moves with the ReID model's own training run (grayscale copies: 1.66 with one seed-0
# model, 0.88 with a retrained one), so compare rows under the same model and read several:
# REID_SEEDS="0 1 2" writes OUT/metrics-seed0, -seed1, -seed2.
REID_SEEDS=${REID_SEEDS:-0}
BASE_ARGS=()   # default: the base the checkpoint's dive.json names
if [ -n "${BASE:-}" ]; then BASE_ARGS=(--base "$BASE"); fi
GUIDANCE=${GUIDANCE:-3}
NEGATIVE=${NEGATIVE:-}   # e.g. 'a {camera} photo of person': guidance along the identity token only
STRENGTHS=${STRENGTHS-0.6}

for S in $REID_SEEDS; do
  if [ ! -f "runs/reid-baselines/agw-seed$S/model.safetensors" ]; then
    dive reid run --data data/synthvi --out "runs/reid-baselines/agw-seed$S" --seed "$S"
  fi
done
dive grid "${BASE_ARGS[@]}" --checkpoint "$CKPT" --out "$OUT/grid.png" --identities 8 --n 2 --guidance "$GUIDANCE" --negative-prompt "$NEGATIVE"
dive generate "${BASE_ARGS[@]}" --checkpoint "$CKPT" --out "$OUT/dive" --n "$N" --guidance "$GUIDANCE" --negative-prompt "$NEGATIVE"
# 256 of the VI ids, which the generator saw in infrared: can it draw a *trained* id's infrared identity?
dive generate "${BASE_ARGS[@]}" --checkpoint "$CKPT" --out "$OUT/dive-vi" --identities vi --random-k 256 --n "$N" --guidance "$GUIDANCE" --negative-prompt "$NEGATIVE"
dive baseline grayscale --data data/synthvi --out "$OUT/grayscale" --n "$N"
dive baseline oracle --data data/synthvi --out "$OUT/oracle" --n "$N"   # true IR renders: the ceiling
TRANSLATED=()
for ST in $STRENGTHS; do
  dive translate "${BASE_ARGS[@]}" --checkpoint "$CKPT" --data data/synthvi --out "$OUT/translate-$ST" --n "$N" \
    --strength "$ST" --guidance "$GUIDANCE" --negative-prompt "$NEGATIVE"
  TRANSLATED+=("$OUT/translate-$ST")
done
for S in $REID_SEEDS; do
  dive metrics --synthetic "$OUT/dive" "$OUT/grayscale" "$OUT/oracle" "$OUT/dive-vi" "${TRANSLATED[@]}" --real-ir data/synthvi \
    --reid-run "runs/reid-baselines/agw-seed$S" --out "$OUT/metrics-seed$S"
done
