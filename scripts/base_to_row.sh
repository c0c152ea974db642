#!/bin/bash
# From a base model to its "+ DiVE IR" Table 1 row, unattended: the shipped demo's training recipe
# (read from its dive.json by the bench's own `variant_recipe`, so it cannot drift from the demo)
# trained on BASE, packaged, then the bench's generation, export and AGW recipe
# (scripts/bench_dive_row.sh). Every stage resumes: a rerun after a stop continues training from
# its last checkpoint and reuses finished images and ReID runs.
#   bash scripts/base_to_row.sh runs/base-v3-6k/model runs/dive-v3-6k runs/bench-dive-6k
#   RECIPE_FROM=checkpoints/dive-demo (default): the checkpoint whose recipe is copied
#   TRAIN_SEED=1: another DiVE training seed (default 0, the demo's): recipe or luck?
set -euo pipefail
BASE=${1:?base model}; RUN=${2:?training run folder}; OUT=${3:?bench row folder}
export RECIPE_FROM=${RECIPE_FROM:-checkpoints/dive-demo} TRAIN_SEED=${TRAIN_SEED:-0} BASE RUN
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
if [ ! -f "$RUN/packaged/dive.json" ]; then
  python - <<'PY'
import os
from pathlib import Path

from dive.bench.run import variant_recipe
from dive.train.trainer import DiVETrainConfig, train_dive

recipe = variant_recipe(Path(os.environ["RECIPE_FROM"]))
train_dive(DiVETrainConfig(**recipe, base=Path(os.environ["BASE"]), data=Path("data/synthvi"),
                           out=Path(os.environ["RUN"]), seed=int(os.environ["TRAIN_SEED"]), threads=2,
                           save_every=250, preview_every=500))
PY
  dive package "$RUN/final" "$RUN/packaged"
fi
bash "$(dirname "$0")/bench_dive_row.sh" "$RUN/packaged" "$OUT"
