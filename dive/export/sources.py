"""What an export reads: the VI dataset (SYSU-MM01 layout), the external visible dataset and any
number of synthetic-image folders. Nothing here writes anything.

A synthetic source is a folder with a `manifest.jsonl`: one JSON object per image, the format
`dive generate` writes. Only five keys are required, so a baseline (grayscale copies, CycleGAN
outputs, ...) can be exported by the same code::

    {"path": "images/x/0001.png",   # inside the folder
     "dataset": "synthvi_ext",      # dataset of the identity (the VI set's name or the external one's)
     "pid": 12,                     # that dataset's own person id
     "camid": 3,                    # camera the image stands for (SYSU camera, or the source's own)
     "modality": "infrared"}        # or "visible"

Optional keys are carried into the export's manifest: identity_token, camera_token, index, prompt,
negative_prompt, seed, steps, guidance, scheduler, checkpoint_hash.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from dive.data.readers.sysu_mm01 import SYSU_SPLIT_FILES, read_id_file
from dive.data.records import Modality, Record
from dive.data.registry import DatasetLayoutError, detect_format, load_dataset, load_external

SYNTHETIC_REQUIRED = ("path", "dataset", "pid", "camid", "modality")
SYNTHETIC_OPTIONAL = ("identity_token", "camera_token", "index", "prompt", "negative_prompt", "seed", "steps",
                      "guidance", "scheduler", "checkpoint_hash", "source_path")  # source_path: image-to-image rows
VI_FORMATS = ("synthvi", "sysu_mm01")


@dataclass(frozen=True)
class SyntheticRow:
    source: int  # index of the folder among the synthetic sources
    rel: str  # image path inside its folder (posix)
    path: Path  # absolute image path
    dataset: str
    pid: int
    camid: int
    modality: str
    meta: dict = field(hash=False, compare=False)  # the optional keys present in the row


@dataclass
class SyntheticSource:
    root: Path
    rows: list[SyntheticRow]
    settings: dict | None  # generate.json when the folder has one


@dataclass
class ExportInputs:
    vi_root: Path  # the SYSU-layout folder
    vi_format: str  # synthvi / sysu_mm01 (how --data was read)
    vi_dataset: str  # the dataset name of VI records (synthvi_vi / sysu_mm01)
    vi_records: list[Record]
    split_ids: dict[str, list[int]]  # exp/{train,val,test}_id.txt, in file order
    external_root: Path | None
    external_format: str | None
    external_dataset: str | None
    external_records: list[Record]  # all readable external records (selection happens later)
    protected: list[Path]  # every input root: the export may neither be in one nor contain one


def load_inputs(data: Path, fmt: str = "auto", external: Path | None = None,
                external_format: str = "auto") -> ExportInputs:
    data = Path(data)
    fmt = detect_format(data) if fmt == "auto" else fmt
    if fmt not in VI_FORMATS:
        raise ValueError(f"{data}: format {fmt!r} cannot be exported; expected a SynthVI world, a SYSU-MM01, "
                         "LLCM or RegDB folder")
    protected = [data]
    if fmt == "synthvi":
        if external is not None:
            raise ValueError(f"{data} is a SynthVI world that already holds its external set; drop --external")
        ds = load_dataset("synthvi", data)
        vi_root, ext_root, ext_fmt = data / "vi", data / "external", "market1501"
        vi_name, ext_name = "synthvi_vi", "synthvi_ext"
        vi_recs = [r for r in ds.records if r.dataset == vi_name]
        ext_recs = [r for r in ds.records if r.dataset == ext_name]
    else:
        vi_root, vi_name = data, "sysu_mm01"
        vi_recs = list(load_dataset("sysu_mm01", data).records)
        ext_root, ext_fmt, ext_name, ext_recs = None, None, None, []
        if external is not None:
            ext_root = Path(external)
            ext_fmt, ext_ds = load_external(ext_root, external_format)
            ext_recs, ext_name = list(ext_ds.records), ext_fmt
            protected.append(ext_root)
    split_ids = {s: read_id_file(vi_root / "exp" / f"{s}_id.txt") for s in SYSU_SPLIT_FILES}
    return ExportInputs(vi_root, fmt, vi_name, vi_recs, split_ids, ext_root, ext_fmt, ext_name, ext_recs, protected)


def _row_error(path: Path, line: int, what: str) -> DatasetLayoutError:
    return DatasetLayoutError(path, f"line {line}: {what}")


def read_synthetic_source(root: Path, index: int) -> SyntheticSource:
    """Read and check a synthetic folder's manifest.jsonl (every listed image must exist)."""
    root = Path(root)
    manifest = root / "manifest.jsonl"
    if not manifest.is_file():
        hint = (" (only manifest-<rank>.jsonl shards: the generation has not finished; re-run `dive generate`)"
                if any(root.glob("manifest-*.jsonl")) else "")
        raise DatasetLayoutError(manifest, "missing; a synthetic source needs a manifest.jsonl with one JSON row "
                                           f"per image ({', '.join(SYNTHETIC_REQUIRED)}){hint}")
    rows, seen = [], set()
    for i, line in enumerate(manifest.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
        except json.JSONDecodeError:
            raise _row_error(manifest, i, "not valid JSON") from None
        missing = [k for k in SYNTHETIC_REQUIRED if k not in d]
        if missing:
            raise _row_error(manifest, i, f"missing key(s) {missing}; rows need {list(SYNTHETIC_REQUIRED)}")
        rel = PurePosixPath(str(d["path"]))
        if rel.is_absolute() or ".." in rel.parts:
            raise _row_error(manifest, i, f"path {d['path']!r} must be relative and inside the folder")
        if str(rel) in seen:
            raise _row_error(manifest, i, f"path {d['path']!r} listed twice")
        seen.add(str(rel))
        try:
            modality = Modality.parse(d["modality"]).value
            pid, camid = int(d["pid"]), int(d["camid"])
        except (ValueError, TypeError) as err:
            raise _row_error(manifest, i, str(err)) from None
        path = root / rel
        if not path.is_file():
            raise _row_error(manifest, i, f"image {path} does not exist")
        meta = {k: d[k] for k in SYNTHETIC_OPTIONAL if k in d}
        rows.append(SyntheticRow(index, str(rel), path, str(d["dataset"]), pid, camid, modality, meta))
    if not rows:
        raise DatasetLayoutError(manifest, "no rows; a synthetic source needs at least one image")
    rows.sort(key=lambda r: r.rel)
    settings = None
    if (root / "generate.json").is_file():
        settings = json.loads((root / "generate.json").read_text())
    return SyntheticSource(root, rows, settings)


def relpath_in(path: str | Path, root: Path) -> str:
    return Path(path).relative_to(root).as_posix()


def id_list(pids, limit: int = 12) -> str:
    """'3 ids: 4, 7, 9' for an error message (at most `limit` shown)."""
    pids = sorted(pids)
    shown = ", ".join(str(p) for p in pids[:limit])
    return f"{len(pids)} id{'s' if len(pids) > 1 else ''}: {shown}" + (", ..." if len(pids) > limit else "")
