#!/usr/bin/env bash
# Create .venv (if missing) and install DiVE Studio with its exact pinned dependencies.
# Idempotent: a second run only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
# torch first and alone, exactly 2.13.0 (the CPU wheel; a looser spec would pull CUDA builds)
.venv/bin/pip install --quiet torch==2.13.0
.venv/bin/pip install --quiet -r requirements.txt -r requirements-dev.txt
.venv/bin/pip install --quiet --no-deps open_clip_torch==3.3.0  # only its CLIP vocabulary file; never imported
.venv/bin/pip install --quiet --no-build-isolation --no-deps -e .
.venv/bin/python -c "import torch, diffusers, transformers, peft, accelerate, gradio, dive; print('dive', dive.__version__, '| torch', torch.__version__, '| diffusers', diffusers.__version__, '| gradio', gradio.__version__)"
