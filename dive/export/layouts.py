"""`dive export` of an LLCM or RegDB tree: the expanded set written in the input's own layout, so
code that trains on that dataset (its authors', AGW's, `dive reid run --data`) reads it unchanged.

The export holds everything the dataset's reader reads: the images its lists and test folders
name (copied byte for byte under their own paths), every file of `idx/` (test lists and other
lists copied as they are), and the added images: the real visible images of the external ids
and the synthetic images, numbered as new ids after the dataset's largest id. Their lines are
appended to the training lists; nothing else in a list changes, so the test split is the
input's. Layouts: `dive.export.llcm` (LLCM) and `dive.export.regdb` (RegDB).

Added images are encoded as `--image-format` says (jpg by default: the generator's PNGs become
RGB JPEGs once; JPEG sources are copied). The manifest (csv / jsonl) has one row per image, as
the SYSU-MM01 export writes it; export.json is written last and marks a complete export.
Re-running, stopping and resuming, the refusals and `--force` work as in `dive.export.sysu`.
`--agw-arrays` and `--llcm-idx` are SYSU-MM01 options (these layouts are read from their lists);
`--label-splits` does not apply (labels are the lists' own).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from dive.data.registry import DatasetLayoutError, detect_format, load_external
from dive.export import sysu
from dive.export.common import (ImageItem, Progress, carry_meta, export_settings, export_suffix, external_by_key,
                                image_counts, manifest_row, refuse_single_modality, select_external_keys,
                                synthetic_inputs, write_images)
from dive.export.files import (DONE_FILE, EXPORT_VERSION, PARTIAL_FILE, check_output, prepare_out, prune,
                               write_manifests)
from dive.export.sources import SyntheticSource, read_synthetic_source, relpath_in
from dive.utils.io import write_bytes, write_json
from dive.utils.lock import output_lock

LAYOUT_FORMATS = ("llcm", "regdb")
LAYOUT_NAMES = {"sysu_mm01": "SYSU-MM01", "synthvi": "SYSU-MM01", "llcm": "LLCM", "regdb": "RegDB"}


@dataclass
class LayoutInputs:
    """The external dataset and the synthetic sources of a layout export."""

    external_root: Path | None
    external_format: str | None
    external_records: list
    sources: list[SyntheticSource]


@dataclass
class Added:
    """An image the export adds: an external id's real visible image or a synthetic image."""

    pid: int  # its id in the export: a new id, or the VI id a synthetic image joins
    modality: str
    camid: int  # the camera of its source
    src: Path
    row: dict  # manifest row (path, camera and label are filled by the layout)


@dataclass
class LayoutPlan:
    """Every file of a layout export, decided before anything is written."""

    items: list[ImageItem]
    lists: dict[str, bytes]  # idx/ files, as written (training lists with the added lines)
    added_lines: dict[str, int]  # training list -> lines appended
    required_dirs: tuple[str, ...]  # folders the reader needs, created even when empty
    new_ids: dict[tuple[str, int], int]
    new_labels: dict[int, dict[str, int]]  # new id -> {list or trial: its label there}
    tokens: dict[tuple[str, int], str]
    camera_rule: str
    camera_mapping: dict[str, dict[str, str]] = field(default_factory=lambda: {"external": {}, "synthetic": {}})
    extra_counts: dict = field(default_factory=dict)


def export_dataset(cfg: sysu.ExportConfig, *, progress: bool = True, should_stop: Callable[[], bool] | None = None,
                   on_progress: Callable[[int, int], None] | None = None) -> dict:
    """`dive export`: an LLCM or RegDB tree in its own layout, anything else as a SYSU-MM01 tree."""
    # a --data that is no folder goes to the SYSU export, which names it once it holds the output's lock
    fmt = cfg.format if cfg.format != "auto" else detect_format(cfg.data) if Path(cfg.data).is_dir() else "auto"
    if fmt not in LAYOUT_FORMATS:
        return sysu.export_dataset(cfg, progress=progress, should_stop=should_stop, on_progress=on_progress)
    for flag, on in (("--agw-arrays", cfg.agw_arrays), ("--llcm-idx", cfg.llcm_idx)):
        if on:
            raise ValueError(f"{flag} applies to SYSU-MM01 exports; {LAYOUT_NAMES[fmt]} exports write the "
                             "dataset's own training lists")
    check_output(Path(cfg.out), [Path(cfg.data), *([Path(cfg.external)] if cfg.external else []), *cfg.synthetic])
    with output_lock(cfg.out):
        return _export(cfg, fmt, progress, should_stop, on_progress)


def load_layout_inputs(cfg: sysu.ExportConfig) -> LayoutInputs:
    ext_root, ext_fmt, ext_recs = None, None, []
    if cfg.external is not None:
        ext_root = Path(cfg.external)
        ext_fmt, ext_ds = load_external(ext_root, cfg.external_format)
        ext_recs = list(ext_ds.records)
    sources = [read_synthetic_source(p, i) for i, p in enumerate(cfg.synthetic)]
    return LayoutInputs(ext_root, ext_fmt, ext_recs, sources)


def listed_rel(path: str, root: Path, where: Path) -> str:
    """The path of a dataset file relative to its root; a list line leading outside it is refused."""
    rel = relpath_in(path, root)
    if ".." in Path(rel).parts:
        raise DatasetLayoutError(where, f"names {rel!r}, outside the dataset folder; expected paths inside {root}")
    return rel


def added_images(cfg: sysu.ExportConfig, inp: LayoutInputs, new_ids: dict[tuple[str, int], int],
                 tokens: dict[tuple[str, int], str], vi_dataset: str) -> list[Added]:
    """The real visible images of the added external ids (with --external-images) and every
    synthetic image, with their manifest rows."""
    out: list[Added] = []
    if cfg.external_images:
        by_key = external_by_key(inp.external_records, cfg.external_splits)
        for key in sorted(new_ids):
            for r in by_key.get(key, []):
                row = manifest_row(pid=new_ids[key], split="train", modality="visible", origin="real",
                                   source="external", source_dataset=r.dataset, source_pid=r.pid, source_camid=r.camid,
                                   source_path=relpath_in(r.path, inp.external_root), identity_token=tokens.get(key))
                out.append(Added(new_ids[key], "visible", r.camid, Path(r.path), row))
    for src in inp.sources:
        for s in src.rows:
            key = (s.dataset, s.pid)
            pid = s.pid if s.dataset == vi_dataset else new_ids[key]
            row = manifest_row(pid=pid, split="train", modality=s.modality, origin="synthetic",
                               source=f"synthetic:{s.source}", source_dataset=s.dataset, source_pid=s.pid,
                               source_camid=s.camid, source_path=s.rel, identity_token=tokens.get(key))
            out.append(Added(pid, s.modality, s.camid, s.path, carry_meta(row, s.meta)))
    return out


def new_id_numbers(cfg: sysu.ExportConfig, inp: LayoutInputs, syn_keys: set, first: int) -> dict[tuple[str, int], int]:
    """The added external ids, numbered from `first` in (dataset, pid) order."""
    keys = select_external_keys(cfg, syn_keys, external_by_key(inp.external_records, cfg.external_splits))
    return {key: first + i for i, key in enumerate(keys)}


def name_added(added: list[Added], folder_of: Callable[[Added], str], name_of: Callable[[Added, int], str],
               suffix_of: Callable[[Added], str], taken: set[str]) -> list[str]:
    """A path for each added image: in its folder, the first numbers (1, 2, ...) whose name no
    file of the dataset (`taken`) has; in the order of `added`."""
    nxt: dict[str, int] = {}
    rels = []
    for a in added:
        folder = folder_of(a)
        k = nxt.get(folder, 1)
        while f"{folder}/{name_of(a, k)}{suffix_of(a)}" in taken:
            k += 1
        nxt[folder] = k + 1
        rels.append(f"{folder}/{name_of(a, k)}{suffix_of(a)}")
    return rels


def append_lines(original: bytes, lines: list[str]) -> bytes:
    """A list file with `lines` appended, its own lines untouched (a missing final newline added)."""
    if not lines:
        return original
    if original and not original.endswith(b"\n"):
        original += b"\n"
    return original + "".join(f"{line}\n" for line in lines).encode()


def idx_files(root: Path) -> dict[str, bytes]:
    """Every file directly in root/idx, by its relative path."""
    idx = root / "idx"
    return {f"idx/{p.name}": p.read_bytes() for p in sorted(idx.iterdir()) if p.is_file()} if idx.is_dir() else {}


def added_items(added: list[Added], rels: list[str]) -> list[ImageItem]:
    items = []
    for a, rel in zip(added, rels):
        a.row["path"] = rel
        items.append(ImageItem(a.src, rel, a.row))
    return items


def _plan(cfg: sysu.ExportConfig, fmt: str, inp: LayoutInputs) -> tuple[LayoutPlan, dict]:
    # imported here: the layout modules build on this one
    if fmt == "llcm":
        from dive.export.llcm import plan_llcm as plan
    else:
        from dive.export.regdb import plan_regdb as plan
    return plan(cfg, inp)


def _export(cfg: sysu.ExportConfig, fmt: str, progress: bool, should_stop: Callable[[], bool] | None,
            on_progress: Callable[[int, int], None] | None) -> dict:
    out = Path(cfg.out)
    t0 = time.time()
    inp = load_layout_inputs(cfg)
    plan, vi_info = _plan(cfg, fmt, inp)
    rows = [it.row for it in plan.items]
    rels = [it.rel for it in plan.items]
    if len(set(rels)) != len(rels):  # a guard against silent overwrites
        raise ValueError("two input images map to the same export file")
    if not cfg.allow_single_modality:
        refuse_single_modality([r for r in rows if r["pid"] is not None], plan.new_ids)
    settings = export_settings(cfg)
    prepare_out(out, settings, cfg.force)

    prog = Progress(out, len(plan.items), progress, should_stop, on_progress, t0=t0)
    if not write_images(out, plan.items, cfg.image_format, cfg.jpeg_quality, prog):
        return prog.stopped()
    prog.close()
    keep = set(rels) | set(plan.lists) | {PARTIAL_FILE, DONE_FILE}
    for rel, data in plan.lists.items():
        dest = out / rel
        if not (dest.is_file() and dest.read_bytes() == data):
            write_bytes(dest, data)
    manifests, manifest_sha = write_manifests(out, rows, cfg.manifest)
    keep |= manifests
    removed = prune(out, keep)
    for rel in plan.required_dirs:
        (out / rel).mkdir(parents=True, exist_ok=True)

    by_origin = Counter((r["pid"], r["origin"]) for r in rows)
    per_cam = Counter(f"{r['modality']}/cam{r['camera']}" for r in rows)
    summary = {
        "version": EXPORT_VERSION,
        "layout": fmt,
        "settings": settings,
        "inputs": {
            "vi": vi_info,
            "external": None if inp.external_root is None else {
                "root": str(inp.external_root.resolve()), "format": inp.external_format,
                "dataset": inp.external_format},
            "synthetic": synthetic_inputs(inp.sources),
        },
        "camera_mapping": {"rule": plan.camera_rule, **{k: dict(sorted(v.items()))
                                                        for k, v in plan.camera_mapping.items()}},
        "new_ids": [{"dataset": d, "pid": p, "id": nid, "labels": plan.new_labels.get(nid, {}),
                     "identity_token": plan.tokens.get((d, p)), "real_images": by_origin[(nid, "real")],
                     "synthetic_images": by_origin[(nid, "synthetic")]}
                    for (d, p), nid in sorted(plan.new_ids.items(), key=lambda kv: kv[1])],
        "counts": {**image_counts(rows), "per_camera": dict(sorted(per_cam.items())), "new_ids": len(plan.new_ids),
                   **plan.extra_counts},
        "lists": {rel: {"lines": len(plan.lists[rel].splitlines()), "added": n}
                  for rel, n in sorted(plan.added_lines.items())},
        "manifest_sha256": manifest_sha,
    }
    write_json(out / DONE_FILE, summary)  # last: marks the export complete
    (out / PARTIAL_FILE).unlink(missing_ok=True)
    return summary | {"out": str(out), "complete": True, "written": prog.written, "skipped": prog.skipped,
                      "removed": removed, "seconds": prog.seconds()}


def suffix_for(cfg: sysu.ExportConfig) -> Callable[[Added], str]:
    return lambda a: export_suffix(a.src, cfg.image_format)
