"""`dive export`: the expanded VI dataset V* = V + V_ext, I* = I + I_ext(synthetic), written as a
NEW SYSU-MM01 tree that any SYSU reader (this project's, AGW / CAJ / DEEN's scripts) trains on.

Output layout::

    cam1 .. cam6/NNNN/NNNN.jpg   VI images keep their id and file name; new (external) ids are
                                 numbered after the largest VI id; in a folder, images that are not
                                 VI files are numbered after the largest index already there
    exp/train_id.txt             VI train ids (input order) + the new ids (ascending)
    exp/val_id.txt, test_id.txt  as in the input (written into the copy; inputs are never touched)
    manifest.csv / .jsonl        one row per image: path, export id and training label, camera,
                                 modality, real/synthetic, source dataset / id / camera / path,
                                 identity and camera token, prompt, seed, steps, guidance,
                                 scheduler, checkpoint hash, height, width, sha256
    train_*_resized_{img,label}.npy    with --agw-arrays (see dive/export/files.py)
    idx/train_vis.txt, train_nir.txt   with --llcm-idx
    export.json                  settings, inputs, camera mapping, id mapping, counts: written LAST,
                                 its presence marks a complete export
    export.partial.json          written first, removed after export.json: marks our own folder

Files: `--image-format jpg` (default) writes every image as `.jpg` as SYSU does; JPEG sources are
copied byte for byte, others (the generator's PNGs) are encoded once as RGB JPEG at
`--jpeg-quality` (95), so real and synthetic images carry the same kind of compression. `png`
does the same the other way (lossless); `keep` copies every file's bytes under its own suffix.
Images are copies, never links. Infrared images are stored with 3 channels, as SYSU stores them.

Camera mapping (deterministic, recorded in export.json): SYSU visible cameras are 1, 2, 4, 5 and
infrared cameras 3, 6. External real images (visible) go to visible camera `[1,2,4,5][(c-1) % 4]`
for their own camera c (Market-1501: c1->1, c2->2, c3->4, c4->5, c5->1, c6->2; CUHK03: 1->1,
2->2). A synthetic image keeps its camera when it is already a SYSU camera of its modality (a
DiVE image generated with the token of VI infrared camera 3 goes to cam3, of camera 6 to cam6);
any other camera c goes to `[3,6][(c-1) % 2]` (infrared) or `[1,2,4,5][(c-1) % 4]` (visible).

Re-running: the tree is a pure function of the inputs and the settings, so the same command
gives the same bytes. A file already present with the expected bytes is left alone, anything
else is rewritten atomically, and files of this export's folder that the plan does not name
(a killed run's temporary files, a previous export's stale images) are removed before
export.json is written. A folder that is not empty and not an export is never written into, nor
is any input folder, a folder inside one, or a folder containing one.
"""

from __future__ import annotations

import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dive.data.readers.sysu_mm01 import SYSU_SPLIT_FILES, format_id_file
from dive.export.common import (Progress, carry_meta, check_synthetic_rows, export_settings, export_suffix,
                                external_by_key, image_counts, manifest_row, refuse_single_modality,
                                select_external_keys, synthetic_inputs, write_images)
from dive.export.files import (AGW_FILES, DONE_FILE, EXPORT_VERSION, LLCM_FILES, MANIFEST_FIELDS, PARTIAL_FILE,
                               Stopped, agw_shapes_match, check_output, prepare_out, prune, training_lists,
                               write_agw_arrays, write_llcm_idx, write_manifests)
from dive.export.sources import ExportInputs, SyntheticSource, load_inputs, read_synthetic_source, relpath_in
from dive.utils.io import write_json, write_text
from dive.utils.lock import output_lock

SYSU_VISIBLE = (1, 2, 4, 5)
SYSU_INFRARED = (3, 6)
_FOUR_DIGITS = re.compile(r"\d{4}")


@dataclass
class ExportConfig:
    """Export of an expanded VI dataset (SYSU-MM01 layout; LLCM and RegDB in their own)."""

    data: Path = field(metadata={"help": "the VI dataset: a SynthVI world (its vi/ and external/), a SYSU-MM01, LLCM "
                                         "or RegDB folder (LLCM and RegDB are written in their own layout)"})
    out: Path = field(metadata={"help": "new output folder (an unfinished export of the same command is completed)"})
    synthetic: tuple[Path, ...] = field(default=(), metadata={
        "help": "synthetic-image folders, each with a manifest.jsonl (a `dive generate` output or a baseline's "
                "folder); repeat the option or list several"})
    format: str = field(default="auto", metadata={
        "help": "layout of --data", "choices": ["auto", "synthvi", "sysu_mm01", "llcm", "regdb"]})
    external: Path | None = field(default=None, metadata={
        "help": "external visible dataset (Market-1501 or CUHK03-NP layout); a SynthVI world uses its external/"})
    external_format: str = field(default="auto", metadata={
        "help": "layout of --external", "choices": ["auto", "market1501", "cuhk03_np"]})
    external_ids: str = field(default="synthetic", metadata={
        "help": "external ids added: those with synthetic images, or all (ids without synthetic images are then "
                "visible-only, which AGW's own sampler cannot batch)", "choices": ["synthetic", "all"]})
    external_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "external splits whose real images are copied (Market/CUHK03: train, query, gallery)"})
    min_external_images: int = field(default=1, metadata={
        "help": "with --external-ids all: only external ids with at least this many images"})
    external_images: bool = field(default=True, metadata={
        "help": "copy the real visible images of the added external ids (--no-external-images: synthetic only)"})
    image_format: str = field(default="jpg", metadata={
        "help": "jpg: all .jpg (JPEG sources copied as is, others encoded once); png: all .png; keep: copy bytes",
        "choices": ["jpg", "png", "keep"]})
    jpeg_quality: int = field(default=95, metadata={"help": "JPEG quality of re-encoded images"})
    manifest: str = field(default="both", metadata={"help": "manifest file(s)", "choices": ["csv", "jsonl", "both"]})
    label_splits: tuple[str, ...] = field(default=("train", "val"), metadata={
        "help": "splits whose ids get training labels 0..K-1 (manifest, AGW arrays, LLCM lists; AGW: train val)"})
    agw_arrays: bool = field(default=False, metadata={"help": "also write AGW/CAJ/DEEN train_*_resized_*.npy arrays"})
    agw_height: int = field(default=288, metadata={"help": "AGW array image height"})
    agw_width: int = field(default=144, metadata={"help": "AGW array image width"})
    llcm_idx: bool = field(default=False, metadata={"help": "also write LLCM-style idx/train_vis.txt, idx/train_nir.txt"})
    force: bool = field(default=False, metadata={"help": "replace a previous export in --out made with other settings"})
    allow_single_modality: bool = field(default=False, metadata={
        "help": "export added ids that end with images of one modality only (visible-only external ids of "
                "--external-ids all, infrared-only ids of --no-external-images); refused otherwise, naming them"})

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        self.synthetic = tuple(Path(p) for p in (self.synthetic or ()))
        if self.external is not None:
            self.external = Path(self.external)
        self.external_splits, self.label_splits = tuple(self.external_splits), tuple(self.label_splits)
        for name, value, allowed in (("external_ids", self.external_ids, ("synthetic", "all")),
                                     ("image_format", self.image_format, ("jpg", "png", "keep")),
                                     ("manifest", self.manifest, ("csv", "jsonl", "both"))):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}; got {value!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in 1..100; got {self.jpeg_quality}")
        if self.agw_height < 1 or self.agw_width < 1:
            raise ValueError("agw_height and agw_width must be positive")


@dataclass
class _Item:
    folder: tuple[int, int]  # (camera, export id)
    src: Path
    keep_stem: str | None  # a VI file keeps its 4-digit name
    suffix: str
    row: dict
    rel: str = ""


# ----------------------------------------------------------------------------------------------
# camera mapping
# ----------------------------------------------------------------------------------------------


def map_camera(modality: str, camid: int, *, keep_sysu: bool) -> int:
    """SYSU camera for an image of `modality` from camera `camid` (see the module docstring)."""
    cams = SYSU_INFRARED if modality == "infrared" else SYSU_VISIBLE
    if keep_sysu and camid in cams:
        return camid
    return cams[(camid - 1) % len(cams)]


# ----------------------------------------------------------------------------------------------
# the plan: every file of the export, decided before anything is written
# ----------------------------------------------------------------------------------------------


@dataclass
class ExportPlan:
    items: list[_Item]
    split_ids: dict[str, list[int]]
    new_ids: dict[tuple[str, int], int]
    identity_tokens: dict[tuple[str, int], str]
    camera_mapping: dict[str, dict[str, str]]
    labels: dict[int, int]


def plan_export(cfg: ExportConfig, inp: ExportInputs, sources: list[SyntheticSource]) -> ExportPlan:
    vi_split = {pid: s for s in SYSU_SPLIT_FILES for pid in inp.split_ids[s]}
    vi_ids = {r.pid for r in inp.vi_records} | set(vi_split)
    max_id = max(vi_ids, default=0)

    ext_by_key = external_by_key(inp.external_records, cfg.external_splits)
    syn_keys, tokens = check_synthetic_rows(
        sources, vi_dataset=inp.vi_dataset, vi_ids=vi_ids, vi_test_ids={p for p, s in vi_split.items() if s == "test"},
        external_dataset=inp.external_dataset, external_known={(r.dataset, r.pid) for r in inp.external_records},
        hint=" (or the SynthVI world root as --data)" if inp.vi_format != "synthvi" else "")
    new_ids = {key: max_id + 1 + i for i, key in enumerate(select_external_keys(cfg, syn_keys, ext_by_key))}
    if new_ids and max(new_ids.values()) > 9999:
        raise ValueError(f"{len(new_ids)} new ids after id {max_id} exceed SYSU's 4-digit id folders (9999)")
    split_of = dict(vi_split) | {nid: "train" for nid in new_ids.values()}

    items: list[_Item] = []
    cam_map: dict[str, dict[str, str]] = {"external": {}, "synthetic": {}}

    def base_row(pid: int, cam: int, modality: str, origin: str, source: str, dataset: str, spid: int,
                 scam: int, spath: str, token: str | None) -> dict:
        return manifest_row(pid=pid, split=split_of.get(pid, "unlisted"), camera=cam, modality=modality,
                            origin=origin, source=source, source_dataset=dataset, source_pid=spid, source_camid=scam,
                            source_path=spath, identity_token=token)

    for r in sorted(inp.vi_records, key=lambda r: r.path):
        rel = relpath_in(r.path, inp.vi_root)
        stem = Path(r.path).stem
        items.append(_Item((r.camid, r.pid), Path(r.path), stem if _FOUR_DIGITS.fullmatch(stem) else None,
                           export_suffix(Path(r.path), cfg.image_format),
                           base_row(r.pid, r.camid, r.modality.value, "real", "vi", r.dataset, r.pid, r.camid, rel,
                                    tokens.get((r.dataset, r.pid)))))
    if cfg.external_images:
        for key in sorted(new_ids):
            for r in ext_by_key.get(key, []):
                cam = map_camera("visible", r.camid, keep_sysu=False)
                cam_map["external"][f"{r.dataset} cam{r.camid} (visible)"] = f"cam{cam}"
                items.append(_Item((cam, new_ids[key]), Path(r.path), None,
                                   export_suffix(Path(r.path), cfg.image_format),
                                   base_row(new_ids[key], cam, "visible", "real", "external", r.dataset, r.pid,
                                            r.camid, relpath_in(r.path, inp.external_root), tokens.get(key))))
    for src in sources:
        for row in src.rows:
            key = (row.dataset, row.pid)
            pid = row.pid if row.dataset == inp.vi_dataset else new_ids[key]
            cam = map_camera(row.modality, row.camid, keep_sysu=True)
            cam_map["synthetic"][f"cam{row.camid} ({row.modality})"] = f"cam{cam}"
            items.append(_Item((cam, pid), row.path, None, export_suffix(row.path, cfg.image_format), carry_meta(
                base_row(pid, cam, row.modality, "synthetic", f"synthetic:{row.source}", row.dataset, row.pid,
                         row.camid, row.rel, tokens.get(key)), row.meta)))

    # names: in each folder, VI files keep their 4-digit name; the others follow the largest index
    by_folder: dict[tuple[int, int], list[_Item]] = defaultdict(list)
    for it in items:
        by_folder[it.folder].append(it)
    for (cam, pid), group in by_folder.items():
        used: set[int] = set()
        for it in group:
            if it.keep_stem is not None and int(it.keep_stem) not in used:
                used.add(int(it.keep_stem))
            else:
                it.keep_stem = None
        nxt = max(used, default=0) + 1
        for it in group:
            if it.keep_stem is None:
                it.keep_stem, nxt = f"{nxt:04d}", nxt + 1
            it.rel = f"cam{cam}/{pid:04d}/{it.keep_stem}{it.suffix}"
            it.row["path"] = it.rel
    rels = [it.rel for it in items]
    if len(set(rels)) != len(rels):  # cannot happen with the naming above; a guard against silent overwrites
        dup = sorted(r for r, n in Counter(rels).items() if n > 1)[:3]
        raise ValueError(f"two input images map to the same export file ({', '.join(dup)})")
    if any(len(it.keep_stem) > 4 for it in items):
        raise ValueError("a camera folder would hold more than 9999 images (SYSU names files with 4 digits)")

    if not cfg.allow_single_modality:
        refuse_single_modality([it.row for it in items], new_ids)
    labelled = sorted({it.row["pid"] for it in items if it.row["split"] in cfg.label_splits})
    labels = {pid: i for i, pid in enumerate(labelled)}
    for it in items:
        it.row["label"] = labels.get(it.row["pid"])
    split_ids = dict(inp.split_ids)
    split_ids["train"] = list(inp.split_ids["train"]) + sorted(new_ids.values())
    items.sort(key=lambda it: it.rel)
    return ExportPlan(items, split_ids, new_ids, tokens, cam_map, labels)


def export_dataset(cfg: ExportConfig, *, progress: bool = True, should_stop: Callable[[], bool] | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """Write (or complete) the export; returns a summary (`complete` False when stopped). Holds the
    output folder's lock."""
    check_output(Path(cfg.out), [Path(cfg.data), *([Path(cfg.external)] if cfg.external else []), *cfg.synthetic])
    with output_lock(cfg.out):  # taken once the output is known to be no input
        return _export(cfg, progress, should_stop, on_progress)


def _export(cfg: ExportConfig, progress: bool, should_stop: Callable[[], bool] | None,
            on_progress: Callable[[int, int], None] | None) -> dict:
    t0 = time.time()
    out = Path(cfg.out)
    inp = load_inputs(cfg.data, cfg.format, cfg.external, cfg.external_format)
    check_output(out, inp.protected + list(cfg.synthetic))
    sources = [read_synthetic_source(p, i) for i, p in enumerate(cfg.synthetic)]
    plan = plan_export(cfg, inp, sources)
    settings = export_settings(cfg)
    previous = prepare_out(out, settings, cfg.force)

    rows = [it.row for it in plan.items]
    lists = training_lists(rows) if (cfg.agw_arrays or cfg.llcm_idx) else None
    n_agw = sum(len(v) for v in lists.values()) if (lists and cfg.agw_arrays) else 0
    prog = Progress(out, len(plan.items) + n_agw, progress, should_stop, on_progress, t0=t0)
    if not write_images(out, plan.items, cfg.image_format, cfg.jpeg_quality, prog):
        return prog.stopped()

    keep = {it.rel for it in plan.items} | {PARTIAL_FILE, DONE_FILE}
    for split in SYSU_SPLIT_FILES:
        write_text(out / "exp" / f"{split}_id.txt", format_id_file(plan.split_ids[split]))
        keep.add(f"exp/{split}_id.txt")
    manifests, manifest_sha = write_manifests(out, rows, cfg.manifest)
    keep |= manifests
    files: dict = {}
    if cfg.llcm_idx:
        write_llcm_idx(out, lists)
        keep |= set(LLCM_FILES.values())
        files["llcm_idx"] = {m: {"file": LLCM_FILES[m], "lines": len(lists[m])} for m in LLCM_FILES}
    if cfg.agw_arrays:
        keep |= {name for pair in AGW_FILES.values() for name in pair}
        reuse = (previous is not None and previous.get("manifest_sha256") == manifest_sha
                 and agw_shapes_match(out, lists, cfg.agw_height, cfg.agw_width))
        if reuse:
            files["agw"] = previous["files"]["agw"]
            for _ in range(n_agw):
                prog.tick()
        else:
            try:
                files["agw"] = write_agw_arrays(out, lists, cfg.agw_height, cfg.agw_width, tick=prog.tick,
                                                should_stop=should_stop)
            except Stopped:
                return prog.stopped()
    prog.close()
    removed = prune(out, keep)

    per_cam = Counter(f"cam{r['camera']}" for r in rows)
    ids_per_split = {s: len({r["pid"] for r in rows if r["split"] == s}) for s in sorted({r["split"] for r in rows})}
    origin_count = Counter((r["pid"], r["origin"]) for r in rows)
    summary = {
        "version": EXPORT_VERSION,
        "layout": "sysu_mm01",
        "settings": settings,
        "inputs": {
            "vi": {"root": str(inp.vi_root.resolve()), "read_as": inp.vi_format, "dataset": inp.vi_dataset},
            "external": None if inp.external_root is None else {
                "root": str(inp.external_root.resolve()), "format": inp.external_format, "dataset": inp.external_dataset},
            "synthetic": synthetic_inputs(sources),
        },
        "camera_mapping": {
            "rule": "external visible camera c -> [1,2,4,5][(c-1)%4]; synthetic: a SYSU camera of the image's "
                    "modality is kept, another camera c -> [3,6][(c-1)%2] (infrared) or [1,2,4,5][(c-1)%4] (visible)",
            **{k: dict(sorted(v.items())) for k, v in plan.camera_mapping.items()},
        },
        "new_ids": [{"dataset": d, "pid": p, "id": nid, "identity_token": plan.identity_tokens.get((d, p)),
                     "real_images": origin_count[(nid, "real")], "synthetic_images": origin_count[(nid, "synthetic")]}
                    for (d, p), nid in sorted(plan.new_ids.items(), key=lambda kv: kv[1])],
        "counts": {
            **image_counts(rows),
            "per_camera": dict(sorted(per_cam.items())),
            "ids_per_split": ids_per_split,
            "new_ids": len(plan.new_ids),
            "labels": len(plan.labels),
        },
        "split_files": {s: len(plan.split_ids[s]) for s in SYSU_SPLIT_FILES},
        "label_splits": list(cfg.label_splits),
        "manifest_sha256": manifest_sha,
        "files": files,
    }
    write_json(out / DONE_FILE, summary)  # last: marks the export complete
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return summary | {"out": str(out), "complete": True, "written": prog.written, "skipped": prog.skipped,
                      "removed": removed, "seconds": prog.seconds()}
