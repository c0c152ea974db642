#!/bin/bash
# One "+ DiVE IR" row of the bench's Table 1 at other generation settings, beside a finished bench:
# the bench's generation (256 external ids x infrared cameras x 6, 25 steps, seed 0), export and
# AGW recipe (the bench's own `reid_recipe`, one thread per run, two seeds in parallel), with
# GEN_ARGS changed. Then its rows with scripts/bench_progress.py.
#   GEN_ARGS="--guidance 7.5" bash scripts/bench_dive_row.sh checkpoints/dive-demo runs/bench-g7.5
set -euo pipefail
CKPT=${1:?checkpoint}; OUT=${2:?out folder}
GEN_ARGS=${GEN_ARGS:-}; SEEDS=${SEEDS:-"0 1 2"}; DATA=${DATA:-data/synthvi}; N=${N:-6}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
dive generate --checkpoint "$CKPT" --out "$OUT/synthetic/dive-camera" --min-images 12 --n "$N" --steps 25 \
  --seed 0 $GEN_ARGS
dive export --data "$DATA" --synthetic "$OUT/synthetic/dive-camera" --out "$OUT/exports/dive-camera"
# the bench's default ReID recipe as `dive reid run` flags
RECIPE=$(python - <<'PY'
from dive.bench.config import BenchConfig
from dive.bench.run import reid_recipe
r = reid_recipe(BenchConfig())
flags = ["--batches-per-epoch", r["batches_per_epoch"]]
if "epochs" in r:
    flags += ["--epochs", r["epochs"], "--warmup-epochs", r["warmup_epochs"], "--lr-steps", *r["lr_steps"]]
print(*flags)
PY
)
for s in $SEEDS; do
  run="$OUT/reid/dive-camera-agw-seed$s"
  [ -f "$run/report.json" ] && continue
  dive reid run --data "$OUT/exports/dive-camera" --out "$run" --seed "$s" --method agw $RECIPE \
    --threads 1 --force --no-progress > "$OUT/reid-seed$s.log" 2>&1 &
  # two at a time, as the bench runs them
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 5; done
done
wait
python scripts/bench_progress.py "$OUT"
