"""Which training images are synthetic, for ``--synthetic-share`` and ``--synthetic-weight``.

A training set written by ``dive export`` records it: ``export.json`` marks a complete export and
its manifest (``manifest.jsonl``, else ``manifest.csv``) has one row per image with the image's
path inside the export and its ``origin``, ``real`` or ``synthetic``. ``synthetic_flags`` gives
one flag per training record from them; a record outside the export folder (an ``--external``
set beside it) is real. A folder that is no export (a SynthVI world, the original SYSU-MM01) has
no such record, and the options are refused there, naming the file that was looked for.

``row_weights`` gives the loss weight of every row of an assembled batch (``dive.reid.device``:
visible images, their channel-augmented copies when on, then infrared images; with several
processes only this process's identities), checked against the batch's labels.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from dive.data.records import Record

EXPORT_FILE = "export.json"  # dive.export.files.DONE_FILE: written last, marks a complete export
MANIFESTS = ("manifest.jsonl", "manifest.csv")
OPTIONS = "--synthetic-share / --synthetic-weight"


def _manifest_rows(root: Path) -> tuple[Path, list[dict]]:
    for name in MANIFESTS:
        path = root / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if name.endswith(".jsonl"):
            rows = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            rows = list(csv.DictReader(text.splitlines()))
        return path, rows
    raise ValueError(f"{root / MANIFESTS[0]}: not found (nor {MANIFESTS[1]}); {OPTIONS} read which images are "
                     "synthetic from the manifest of a `dive export` folder")


def _relative(path: str, root: Path, resolved_root: Path) -> str | None:
    p = Path(path)
    try:
        return p.relative_to(root).as_posix()
    except ValueError:
        pass
    try:
        return p.resolve().relative_to(resolved_root).as_posix()
    except ValueError:
        return None


def synthetic_flags(root: str | Path, records: Sequence[Record]) -> np.ndarray:
    """One bool per record: True for an image the export at `root` marks as synthetic.

    Refused (ValueError naming the file): `root` is no complete export (no export.json), it has no
    manifest, or a record inside `root` has no manifest row (the folder changed after the export)."""
    root = Path(root)
    marker = root / EXPORT_FILE
    if not marker.is_file():
        raise ValueError(f"{marker}: not found; {OPTIONS} need a training set written by `dive export` (its "
                         "export.json and manifest say which images are synthetic); this folder is no export")
    where, rows = _manifest_rows(root)
    origin: dict[str, str] = {}
    for i, row in enumerate(rows, 1):
        if "path" not in row or row.get("origin") not in ("real", "synthetic"):
            raise ValueError(f"{where}: row {i} lacks a path or an origin of 'real' or 'synthetic'")
        origin[Path(row["path"]).as_posix()] = row["origin"]
    resolved = root.resolve()
    flags = np.zeros(len(records), dtype=bool)
    missing = []
    for i, r in enumerate(records):
        rel = _relative(r.path, root, resolved)
        if rel is None:
            continue  # outside the export (an --external set): real
        if rel not in origin:
            missing.append(rel)
            continue
        flags[i] = origin[rel] == "synthetic"
    if missing:
        raise ValueError(f"{where}: no row for {len(missing)} training image(s) of the folder (first: "
                         f"{missing[0]}); the folder changed after the export, export it again")
    return flags


def image_weights(flags: np.ndarray, weight: float) -> torch.Tensor:
    """The loss weight of every training image: `weight` for a synthetic one, 1 for a real one."""
    return torch.where(torch.from_numpy(np.asarray(flags, dtype=bool)), float(weight), 1.0).to(torch.float32)


def row_weights(batch, weights: torch.Tensor, labels: torch.Tensor, channel_aug: bool,
                share: tuple[int, int], expected: torch.Tensor) -> torch.Tensor:
    """The weights of an assembled batch's rows, in its row order (see the module docstring).
    `expected`: the batch's labels as assembled, which the rows found here must match."""
    parts = [torch.from_numpy(batch.visible)] * (2 if channel_aug and batch.visible.size else 1)
    idx = torch.cat(parts + [torch.from_numpy(batch.infrared)]).long()
    rank, world = share
    if world > 1:
        idx = idx[torch.isin(labels[idx], torch.as_tensor(batch.ids[rank::world], dtype=labels.dtype))]
    if not torch.equal(labels[idx], expected.cpu()):
        raise RuntimeError("the loss weights do not line up with the batch's images (the batch layout changed)")
    return weights[idx]


def synthetic_summary(flags: np.ndarray, labels: Sequence[int]) -> dict:
    """Synthetic images and expanded ids (ids with a synthetic image) of a training set."""
    flags = np.asarray(flags, dtype=bool)
    labels = np.asarray(labels)
    return {"synthetic_images": int(flags.sum()), "expanded_ids": int(np.unique(labels[flags]).size)}
