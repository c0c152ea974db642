#!/bin/bash
# One "+ DiVE IR" row of the bench's Table 1 at other generation settings, beside a finished bench:
# the bench's generation (256 external ids x infrared cameras x 6, 25 steps, seed 0) with GEN_ARGS
# changed, then the bench's export and AGW recipe (scripts/bench_row.sh).
#   GEN_ARGS="--guidance 7.5" bash scripts/bench_dive_row.sh checkpoints/dive-demo runs/bench-g7.5
set -euo pipefail
CKPT=${1:?checkpoint}; OUT=${2:?out folder}
GEN_ARGS=${GEN_ARGS:-}
export HF_HUB_OFFLINE=1 OMP_WAIT_POLICY=PASSIVE
# the bench's generation settings (BenchConfig) as `dive generate` flags; N overrides the count
read -r MIN BENCH_N STEPS GUIDANCE SEED < <(python -c 'from dive.bench.config import BenchConfig as B; c = B()
print(c.min_images, c.n_per_camera, c.gen_steps, c.guidance, c.gen_seed)')
N=${N:-$BENCH_N}
dive generate --checkpoint "$CKPT" --out "$OUT/synthetic/dive-camera" --min-images "$MIN" --n "$N" --steps "$STEPS" \
  --guidance "$GUIDANCE" --seed "$SEED" $GEN_ARGS
bash "$(dirname "$0")/bench_row.sh" "$OUT/synthetic/dive-camera" "$OUT" dive-camera
