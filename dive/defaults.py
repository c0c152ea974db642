"""The shipped defaults, named once. Every consumer (bench, studio, generate-bench, translate, grid,
base pretraining, tests) reads its default paths here, so the product has one set of models.

Paths are relative to the repository root (where `checkpoints/` lies); `shipped(name)` resolves a
shipped folder whatever the working directory.
"""

from __future__ import annotations

from pathlib import Path

#: the repository root: the folder holding `checkpoints/` and `dive/`
REPO_ROOT = Path(__file__).resolve().parents[1]
#: shipped models live here, relative to the repository root
CHECKPOINTS = Path("checkpoints")

#: the tiny Stable-Diffusion-architecture base (the stand-in for SD 1.5) the demo was trained on
BASE_NAME = "tiny-sd-base"
#: the DiVE demo checkpoint: one token per identity and per camera, both modalities
DEMO_NAME = "dive-demo"
#: the bench's Table 3 ablations, same base and recipe as the demo
ABLATION_MODALITY_NAME = "dive-ablation-modality"
ABLATION_IR_ONLY_NAME = "dive-ablation-ir-only"
#: the CycleGAN comparison baseline trained on the default world
CYCLEGAN_NAME = "cyclegan-synthvi"
#: the caption reader and infrared words of the default world (`dive train --captions`)
CAPTION_READER_NAME = "caption-reader-synthvi"

BASE = CHECKPOINTS / BASE_NAME
DEMO = CHECKPOINTS / DEMO_NAME
ABLATION_MODALITY = CHECKPOINTS / ABLATION_MODALITY_NAME
ABLATION_IR_ONLY = CHECKPOINTS / ABLATION_IR_ONLY_NAME
CYCLEGAN = CHECKPOINTS / CYCLEGAN_NAME
CAPTION_READER = CHECKPOINTS / CAPTION_READER_NAME

#: every shipped folder, by role
SHIPPED = {
    "base": BASE_NAME,
    "demo": DEMO_NAME,
    "ablation-modality": ABLATION_MODALITY_NAME,
    "ablation-ir-only": ABLATION_IR_ONLY_NAME,
    "cyclegan": CYCLEGAN_NAME,
    "caption-reader": CAPTION_READER_NAME,
}

#: the default SynthVI world (built with `dive data synth`)
DATA = Path("data/synthvi")
#: where commands write by default; nothing writes into checkpoints/ without --force
RUNS = Path("runs")


def shipped(name: str) -> Path:
    """The absolute path of a shipped folder (`shipped(DEMO_NAME)`), independent of the working directory."""
    return REPO_ROOT / CHECKPOINTS / name
