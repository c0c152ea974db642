#!/bin/bash
# One Table 1 row beside a finished bench, from a folder of synthetic infrared images that already
# exists (any generator, a baseline, or a control such as scripts/vae_ceiling.py's round trip): the
# bench's export and AGW recipe (the bench's own `reid_recipe`, one thread per run, two seeds in
# parallel). NAME names the export and the ReID runs (reid/NAME-METHOD-seedS); rows by
# scripts/bench_progress.py. SRC may also be `baseline` (the VI set alone) or `external-rgb` (the
# external ids' visible images only), the bench's reference rows; METHOD=caj gives Table 2's rows.
#   bash scripts/bench_row.sh runs/control/oracle-vae runs/bench-control oracle-vae
#   bash scripts/bench_row.sh baseline runs/bench-control baseline
set -euo pipefail
SRC=${1:?synthetic folder}; OUT=${2:?out folder}; NAME=${3:?row name}
SEEDS=${SEEDS:-"0 1 2"}; DATA=${DATA:-data/synthvi}; METHOD=${METHOD:-agw}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
case "$SRC" in
  baseline) TRAIN="$DATA" ;;
  external-rgb)  # as the bench: every external id with at least its min_images visible images
    MIN=$(python -c 'from dive.bench.config import BenchConfig; print(BenchConfig().min_images)')
    dive export --data "$DATA" --out "$OUT/exports/$NAME" --external-ids all --min-external-images "$MIN"
    TRAIN="$OUT/exports/$NAME" ;;
  *) dive export --data "$DATA" --synthetic "$SRC" --out "$OUT/exports/$NAME"
     TRAIN="$OUT/exports/$NAME" ;;
esac
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
  run="$OUT/reid/$NAME-$METHOD-seed$s"
  [ -f "$run/report.json" ] && continue
  dive reid run --data "$TRAIN" --out "$run" --seed "$s" --method "$METHOD" $RECIPE \
    --threads 1 --force --no-progress > "$OUT/reid-$NAME-$METHOD-seed$s.log" 2>&1 &
  # two at a time, as the bench runs them
  while [ "$(jobs -rp | wc -l)" -ge 2 ]; do sleep 5; done
done
wait
python scripts/bench_progress.py "$OUT"
