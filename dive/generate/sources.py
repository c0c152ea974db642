"""External identities and their source images, shared by every source of synthetic images (the
comparison baselines and img2img translation): reading the inputs, choosing identities and source
images, and writing a synthetic-source folder (images, `manifest.jsonl`, `generate.json`).

Inputs (`load_baseline_inputs`), the same as `dive export` reads them:

- a SynthVI world root: its `vi/` set (records "synthvi_vi") and its `external/` set
  ("synthvi_ext");
- a VI dataset (SYSU-MM01, LLCM, RegDB layout) plus `--external` (Market-1501 or CUHK03-NP);
- a Market-1501 / CUHK03-NP folder alone: the external set, with SYSU's infrared cameras 3 and 6.

The infrared cameras are those of the VI set's infrared records (SYSU / SynthVI: 3 and 6) unless
named with `--cameras`. External identities: training-split records with a real id (pid > 0),
ids with at least `min_images` of them (the paper's "more than 11"), optionally the `top_k` with
the most images. The rows' `dataset` is the external dataset's name as `dive export` reads it
(`synthvi_ext` for a world, `market1501` / `cuhk03_np` otherwise), so pass `dive export` the same
`--data` (and `--external`).

Source images (`assign_sources`): an identity's images sorted by path are permuted once by
(seed, dataset, pid); camera number k (in sorted order) takes permuted images k*n .. k*n+n-1,
cycling when the identity has fewer than (cameras x n) images. Baselines given the same seed use
the same source for every output image.
"""

from __future__ import annotations

import json
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dive.checkpoint import identity_token_name
from dive.data.records import Modality, Record
from dive.data.registry import EXTERNAL_FORMATS, detect_format, load_dataset, load_external
from dive.utils.io import load_rgb, write_json, write_text
from dive.utils.lock import LOCK_FILE

SYSU_INFRARED = (3, 6)
SETTINGS_FILE = "generate.json"  # the name `dive.export.sources.read_synthetic_source` reads
MANIFEST_FILE = "manifest.jsonl"


@dataclass(kw_only=True)
class BaselineSelection:
    """What every baseline reads and writes: the inputs, which external ids and infrared cameras,
    how many images each. Baseline configs add their own settings to it."""

    data: Path = field(metadata={"help": "a SynthVI world, a VI dataset (with --external), or a Market-1501 / "
                                         "CUHK03-NP folder alone (then infrared cameras 3 and 6)"})
    out: Path = field(metadata={"help": "output folder (new, or an earlier output of this command)"})
    format: str = field(default="auto", metadata={"help": "layout of --data (auto: detected)"})
    external: Path | None = field(default=None, metadata={
        "help": "external visible dataset (Market-1501 or CUHK03-NP) when --data is a VI dataset"})
    external_format: str = field(default="auto", metadata={
        "help": "layout of --external", "choices": ["auto", "market1501", "cuhk03_np"]})
    min_images: int = field(default=12, metadata={"help": "only external ids with at least this many training images"})
    top_k: int = field(default=0, metadata={"help": "then keep the K ids with the most images (0: all)"})
    cameras: tuple[int, ...] = field(default=(), metadata={
        "help": "infrared cameras to write (default: the VI set's infrared cameras, SYSU 3 and 6)"})
    n: int = field(default=18, metadata={"help": "images per identity and infrared camera (paper: 18)"})
    seed: int = field(default=0, metadata={"help": "seed of the choice and order of source images"})
    force: bool = field(default=False, metadata={"help": "overwrite an earlier output made with other settings"})

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.external = Path(self.external) if self.external is not None else None
        self.cameras = tuple(int(c) for c in (self.cameras or ()))


@dataclass
class BaselineInputs:
    data: Path
    data_format: str
    vi_dataset: str | None  # dataset name of the VI records (None: external set given alone)
    vi_records: list[Record]  # every VI record (all splits)
    external_root: Path | None
    external_format: str | None
    external_dataset: str | None
    external_records: list[Record]  # training split, pid > 0
    infrared_cameras: tuple[int, ...]
    protected: list[Path]  # input roots: an output may neither be in one nor contain one


def _external_train(records) -> list[Record]:
    return [r for r in records if r.split == "train" and r.pid > 0]


def load_baseline_inputs(data: Path, fmt: str = "auto", external: Path | None = None,
                         external_format: str = "auto", *, need_external: bool = True) -> BaselineInputs:
    data = Path(data)
    if not data.exists():
        raise FileNotFoundError(f"{data}: does not exist; expected a SynthVI world, a VI dataset or an external dataset")
    fmt = detect_format(data) if fmt == "auto" else fmt
    protected = [data]
    vi_name, vi_recs = None, []
    ext_root = ext_fmt = ext_name = None
    ext_recs: list[Record] = []
    if fmt == "synthvi":
        if external is not None:
            raise ValueError(f"{data} is a SynthVI world that already holds its external set; drop --external")
        ds = load_dataset("synthvi", data)
        vi_name, ext_name, ext_root, ext_fmt = "synthvi_vi", "synthvi_ext", data / "external", "market1501"
        vi_recs = [r for r in ds.records if r.dataset == vi_name]
        ext_recs = _external_train(r for r in ds.records if r.dataset == ext_name)
    elif fmt in EXTERNAL_FORMATS:
        if external is not None:
            raise ValueError(f"{data} is already an external ({fmt}) dataset; drop --external or pass the VI set as --data")
        ext_root, ext_fmt, ext_name = data, fmt, fmt
        ext_recs = _external_train(load_dataset(fmt, data).records)
    else:
        vi_ds = load_dataset(fmt, data)
        vi_recs = list(vi_ds.records)
        vi_name = vi_recs[0].dataset if vi_recs else fmt
        if external is not None:
            ext_root = Path(external)
            ext_fmt, ext_ds = load_external(ext_root, external_format)
            ext_recs = _external_train(ext_ds.records)
            ext_name = ext_fmt
            protected.append(ext_root)
    if need_external and ext_root is None:
        raise ValueError(f"{data}: a {fmt} dataset holds no external identities; pass the external set with --external")
    ir = tuple(sorted({r.camid for r in vi_recs if r.modality is Modality.INFRARED})) or SYSU_INFRARED
    return BaselineInputs(data, fmt, vi_name, vi_recs, ext_root, ext_fmt, ext_name, ext_recs, ir, protected)


def select_external_ids(records: list[Record], *, min_images: int = 12, top_k: int = 0) -> list[tuple[str, int]]:
    """(dataset, pid) of the external ids with at least `min_images` images (then the `top_k` with
    the most images, ties by id), sorted."""
    counts = Counter((r.dataset, r.pid) for r in records)
    keys = [k for k, n in counts.items() if n >= min_images]
    if top_k:
        keys = sorted(keys, key=lambda k: (-counts[k], k))[:top_k]
    return sorted(keys)


def resolve_cameras(inputs: BaselineInputs, cameras: tuple[int, ...]) -> tuple[int, ...]:
    cams = tuple(sorted(set(int(c) for c in cameras))) if cameras else inputs.infrared_cameras
    if any(c < 1 for c in cams):
        raise ValueError(f"cameras must be positive camera numbers; got {cameras}")
    return cams


def assign_sources(records: list[Record], cameras: tuple[int, ...], n: int, seed: int) -> list[tuple[int, int, Record]]:
    """(camera, index, source record) for one identity's outputs; see the module docstring."""
    if not records:
        return []
    recs = sorted(records, key=lambda r: r.path)
    r0 = recs[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(r0.dataset.encode()), r0.pid, 7331]))
    perm = rng.permutation(len(recs))
    out = []
    for k, cam in enumerate(cameras):
        for i in range(n):
            out.append((cam, i, recs[int(perm[(k * n + i) % len(recs)])]))
    return out


@dataclass
class Job:
    rel: str  # output path inside the folder
    source: Record
    row: dict  # the manifest row


def plan_jobs(inputs: BaselineInputs, *, min_images: int, top_k: int, cameras: tuple[int, ...], n: int,
              seed: int, baseline: str) -> tuple[list[Job], list[tuple[str, int]], tuple[int, ...]]:
    """Every output image of a baseline run: selection, cameras and source images."""
    if n < 1:
        raise ValueError(f"n must be at least 1; got {n}")
    cams = resolve_cameras(inputs, cameras)
    keys = select_external_ids(inputs.external_records, min_images=min_images, top_k=top_k)
    if not keys:
        raise ValueError(f"{inputs.external_root}: no external training id has at least {min_images} images; "
                         "lower --min-images")
    by_id: dict[tuple[str, int], list[Record]] = defaultdict(list)
    for r in inputs.external_records:
        by_id[(r.dataset, r.pid)].append(r)
    jobs = []
    for ds, pid in keys:
        for cam, i, src in assign_sources(by_id[(ds, pid)], cams, n, seed):
            rel = f"images/{ds}-{pid:04d}/cam{cam}/{i:04d}.png"
            row = {"path": rel, "dataset": ds, "pid": pid, "camid": cam, "modality": "infrared",
                   "identity_token": identity_token_name(ds, pid), "index": i, "seed": seed, "baseline": baseline,
                   "source_path": Path(src.path).relative_to(inputs.external_root).as_posix(),
                   "source_camid": src.camid}
            jobs.append(Job(rel, src, row))
    return jobs, keys, cams


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def prepare_out(out: Path, settings: dict, protected: list[Path], force: bool) -> None:
    """Claim the output folder: new, empty, or a previous output of the same baseline (same
    settings unless `force`). The old manifest is removed first, so an interrupted re-run is never
    read as complete; the settings are written before any image."""
    o = Path(out).resolve()
    for p in protected:
        q = Path(p).resolve()
        if _inside(o, q) or _inside(q, o):
            raise ValueError(f"{out}: the output must be a new folder outside every input (it overlaps {p})")
    settings_path = Path(out) / SETTINGS_FILE
    if Path(out).exists():
        if not Path(out).is_dir():
            raise FileExistsError(f"{out}: exists and is not a folder")
        if any(p.name != LOCK_FILE for p in Path(out).iterdir()):  # the run's own lock does not count
            try:
                old = json.loads(settings_path.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if not isinstance(old, dict) or old.get("baseline") != settings["baseline"]:
                raise FileExistsError(f"{out}: not empty and not a `dive baseline {settings['baseline']}` folder; "
                                      "choose a new --out")
            if old != settings and not force:
                raise FileExistsError(f"{settings_path}: this folder was made with other settings; "
                                      "use a new --out or --force")
    (Path(out) / MANIFEST_FILE).unlink(missing_ok=True)
    write_json(settings_path, settings)


def finish_out(out: Path, jobs: list[Job]) -> Path:
    """Remove images of an earlier run that this one does not list, then write the manifest."""
    out = Path(out)
    keep = {j.rel for j in jobs}
    images = out / "images"
    if images.is_dir():
        for p in sorted(images.rglob("*"), reverse=True):
            if p.is_file() and p.relative_to(out).as_posix() not in keep:
                p.unlink()
            elif p.is_dir() and not any(p.iterdir()):
                p.rmdir()
    rows = sorted((j.row for j in jobs), key=lambda r: r["path"])
    write_text(out / MANIFEST_FILE, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
    return out


def read_rgb(path: str | Path, height: int, width: int):
    """A source image as RGB at height x width (bicubic resize when needed); a clear error naming
    the file when it cannot be read."""
    from PIL import Image

    im = load_rgb(path)
    if im.size != (width, height):
        im = im.resize((width, height), Image.Resampling.BICUBIC)
    return im


def base_settings(baseline: str, inputs: BaselineInputs, cams: tuple[int, ...], keys: list[tuple[str, int]],
                  **values) -> dict:
    """The part of generate.json every baseline writes."""
    return {"baseline": baseline, "data": str(Path(inputs.data).resolve()), "format": inputs.data_format,
            "external": str(Path(inputs.external_root).resolve()) if inputs.external_root else None,
            "external_format": inputs.external_format, "external_dataset": inputs.external_dataset,
            "cameras_selected": list(cams), "identities_selected": [identity_token_name(d, p) for d, p in keys],
            **values}
