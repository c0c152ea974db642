"""Everything an export writes besides its images: the output folder's claim and clean-up, the
image encoding, the manifest, and the training files other VI-ReID code bases read.

AGW / CAJ / DEEN arrays (their `pre_process_sysu.py` convention)::

    train_rgb_resized_img.npy    uint8 (N, H, W, 3), default 288x144 (HxW), Lanczos resize
    train_rgb_resized_label.npy  int64 (N,), labels 0..K-1
    train_ir_resized_img.npy     infrared images, stored as 3 channels
    train_ir_resized_label.npy

Order as the authors' script: ids in ascending order, then cameras (visible 1, 2, 4, 5; infrared
3, 6), then file names. Labels are relabelled 0..K-1 in ascending id order over the ids of the
label splits (train + val by default, as AGW trains on both). The arrays are filled through a
memory map in an atomic temporary file, so a full-size SYSU export never needs its array in RAM.

LLCM-style lists: `idx/train_vis.txt`, `idx/train_nir.txt`, lines `relpath label` (the same
images, order and labels as the arrays; paths relative to the export root).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from dive.utils.io import atomic_path, load_rgb, write_json, write_text
from dive.utils.lock import LOCK_FILE

EXPORT_VERSION = 1
DONE_FILE = "export.json"  # written last: marks a complete export
PARTIAL_FILE = "export.partial.json"  # written first: marks the folder as ours while unfinished
MANIFEST_FIELDS = (
    "path", "pid", "label", "split", "camera", "modality", "origin", "source", "source_dataset", "source_pid",
    "source_camid", "source_path", "identity_token", "camera_token", "prompt", "negative_prompt", "seed", "steps",
    "guidance", "scheduler", "checkpoint_hash", "height", "width", "sha256",
)
AGW_FILES = {
    "visible": ("train_rgb_resized_img.npy", "train_rgb_resized_label.npy"),
    "infrared": ("train_ir_resized_img.npy", "train_ir_resized_label.npy"),
}
LLCM_FILES = {"visible": "idx/train_vis.txt", "infrared": "idx/train_nir.txt"}
_CAMERA_ORDER = {1: 0, 2: 1, 4: 2, 5: 3, 3: 4, 6: 5}


class Stopped(Exception):
    """Raised inside a writer when `should_stop()` says so; the temporary file is discarded."""


def training_lists(rows: list[dict]) -> dict[str, list[tuple[str, int]]]:
    """(relpath, label) per modality, in the AGW order, from manifest rows with a label."""
    out: dict[str, list[tuple[str, int]]] = {"visible": [], "infrared": []}
    labelled = [r for r in rows if r["label"] is not None]
    for r in sorted(labelled, key=lambda r: (r["pid"], _CAMERA_ORDER.get(r["camera"], 9), r["path"])):
        out[r["modality"]].append((r["path"], int(r["label"])))
    return out


def agw_shapes_match(out: Path, lists: dict[str, list[tuple[str, int]]], height: int, width: int) -> bool:
    """Do the array files exist with the shapes these lists give (read from the headers only)?"""
    for modality, (img_name, label_name) in AGW_FILES.items():
        n = len(lists[modality])
        try:
            img = np.load(out / img_name, mmap_mode="r") if n else np.load(out / img_name)
            lab = np.load(out / label_name)
        except (OSError, ValueError):
            return False
        if img.shape != (n, height, width, 3) or img.dtype != np.uint8 or lab.shape != (n,):
            return False
        if not np.array_equal(lab, np.array([lab_ for _, lab_ in lists[modality]], dtype=np.int64)):
            return False
    return True


def write_agw_arrays(out: Path, lists: dict[str, list[tuple[str, int]]], height: int, width: int, *,
                     tick: Callable[[], None] | None = None,
                     should_stop: Callable[[], bool] | None = None) -> dict:
    """Write the four arrays; raises `Stopped` (leaving no partial file) when asked to stop."""
    shapes = {}
    for modality, (img_name, label_name) in AGW_FILES.items():
        items = lists[modality]
        with atomic_path(out / img_name) as tmp:
            if items:
                arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(items), height, width, 3))
                for i, (rel, _) in enumerate(items):
                    if should_stop is not None and should_stop():
                        del arr
                        raise Stopped
                    arr[i] = np.asarray(load_rgb(out / rel).resize((width, height), Image.Resampling.LANCZOS))
                    if tick is not None:
                        tick()
                arr.flush()
                del arr
            else:
                with open(tmp, "wb") as f:
                    np.save(f, np.zeros((0, height, width, 3), np.uint8))
        labels = np.array([lab for _, lab in items], dtype=np.int64)
        with atomic_path(out / label_name) as tmp, open(tmp, "wb") as f:
            np.save(f, labels)
        shapes[modality] = {"images": [len(items), height, width, 3], "labels": len(items),
                            "ids": len(set(labels.tolist()))}
    return shapes


def write_llcm_idx(out: Path, lists: dict[str, list[tuple[str, int]]]) -> None:
    for modality, name in LLCM_FILES.items():
        write_text(out / name, "".join(f"{rel} {lab}\n" for rel, lab in lists[modality]))


def _sniff(data: bytes) -> str:
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    return "other"


def encode_image(data: bytes, image_format: str, jpeg_quality: int, *, name: str | Path = "image") -> bytes:
    """The bytes an image is exported as: the source's own when it already has the format
    (`name` names the source in errors)."""
    if image_format == "keep" or _sniff(data) == image_format:
        return data
    rgb = load_rgb(name, data=data)
    buf = io.BytesIO()
    if image_format == "jpg":
        rgb.save(buf, format="JPEG", quality=jpeg_quality)
    else:
        rgb.save(buf, format="PNG")
    return buf.getvalue()


def _is_inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def check_output(out: Path, protected: list[Path]) -> None:
    """Refuse an output that is an input, lies inside one, or contains one."""
    o = out.resolve()
    for p in protected:
        q = p.resolve()
        if _is_inside(o, q) or _is_inside(q, o):
            raise ValueError(f"{out}: the export must be a new folder, outside every input (it overlaps {p})")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def prepare_out(out: Path, settings: dict, force: bool) -> dict | None:
    """Claim the output folder; returns the previous complete export.json (if any)."""
    previous = None
    if out.exists():
        if not out.is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        done, partial = _read_json(out / DONE_FILE), _read_json(out / PARTIAL_FILE)
        if done is None and partial is None and any(p.name != LOCK_FILE for p in out.iterdir()):
            raise FileExistsError(f"{out}: not empty and not a `dive export` folder; choose a new --out")
        old = (partial or done or {}).get("settings")
        if old is not None and old != settings and not force:
            raise FileExistsError(f"{out}: holds an export made with other settings; use a new --out or --force")
        previous = done if done is not None and done.get("settings") == settings else None
    write_json(out / PARTIAL_FILE, {"settings": settings, "version": EXPORT_VERSION})
    (out / DONE_FILE).unlink(missing_ok=True)
    return previous


def prune(out: Path, keep: set[str]) -> int:
    """Remove files of the export folder that the plan does not name, then empty folders."""
    removed = 0
    for dirpath, dirnames, filenames in os.walk(out, topdown=False):
        d = Path(dirpath)
        for name in filenames:
            rel = (d / name).relative_to(out).as_posix()
            if rel not in keep and rel != LOCK_FILE:
                (d / name).unlink()
                removed += 1
        if d != out and not any(d.iterdir()):
            d.rmdir()
    return removed


def manifest_texts(rows: list[dict]) -> tuple[str, str]:
    jsonl = "".join(json.dumps({k: r[k] for k in MANIFEST_FIELDS}) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: "" if r[k] is None else r[k] for k in MANIFEST_FIELDS})
    return jsonl, buf.getvalue()


def write_manifests(out: Path, rows: list[dict], which: str) -> tuple[set[str], str]:
    """Write manifest.jsonl and/or manifest.csv (`which`: jsonl, csv or both); returns the names
    written and the sha256 of the JSONL text (which a rerun compares)."""
    jsonl, csv_text = manifest_texts(rows)
    written = set()
    if which in ("jsonl", "both"):
        write_text(out / "manifest.jsonl", jsonl)
        written.add("manifest.jsonl")
    if which in ("csv", "both"):
        write_text(out / "manifest.csv", csv_text)
        written.add("manifest.csv")
    return written, hashlib.sha256(jsonl.encode()).hexdigest()
