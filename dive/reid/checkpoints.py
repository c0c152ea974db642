"""ReID checkpoints: ``<name>.safetensors`` (weights) + ``<name>.json`` (metadata: the network's
``ModelSpec``, the training config, label map, epoch, timing), each written atomically. No pickle.

``load_checkpoint`` rebuilds the network from the stored spec (``dive.reid.model.build_model``), so a
run folder, a ``model.safetensors`` or its ``model.json`` is enough to get an eval-mode network back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file

from dive.reid.model import ModelSpec, TwoStreamReID, build_model
from dive.utils.io import save_safetensors, sha256_file, write_json

CHECKPOINT_FORMAT = "dive-reid-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: TwoStreamReID, meta: dict,
                    state: dict[str, torch.Tensor] | None = None) -> Path:
    """`<path>.safetensors` (weights) + `<path>.json` (metadata), each written atomically."""
    path = Path(path).with_suffix(".safetensors")
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in (state or model.state_dict()).items()}
    save_safetensors(tensors, path, {"format": CHECKPOINT_FORMAT})
    meta = dict(meta, weights=path.name, weights_sha256=sha256_file(path))
    write_json(path.with_suffix(".json"), meta)
    return path


def load_checkpoint(path: str | os.PathLike) -> tuple[TwoStreamReID, dict]:
    """Load a run folder (its model.safetensors) or a .safetensors / .json checkpoint; eval mode."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    weights = path.with_suffix(".safetensors")
    meta_path = path.with_suffix(".json")
    for p in (weights, meta_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p}: checkpoint file missing (expected <name>.safetensors + <name>.json)")
    meta = json.loads(meta_path.read_text())
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{meta_path}: not a {CHECKPOINT_FORMAT} metadata file")
    model = build_model(ModelSpec(**meta["model_spec"]))
    model.load_state_dict(load_file(str(weights)))
    model.eval()
    return model, meta
