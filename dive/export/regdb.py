"""The RegDB layout of `dive export` (see `dive.export.layouts` for what every layout export does).

Output, beside the input's own files (same paths, same bytes)::

    Visible/External/NNN/external_v_KKKKK_NNN.jpg   added visible images (external ids' real ones)
    Thermal/External/NNN/external_t_KKKKK_NNN.jpg   added thermal images (the synthetic ones)
    idx/train_visible_T.txt, train_thermal_T.txt    for every trial T whose lists the input has:
                                                    the input's lines, then one 'relpath label'
                                                    line per added image
    idx/test_*_T.txt, other idx/ files, every listed image      as in the input

RegDB numbers its people by folder (Female/ and Male/ hold 1..412); the added ids take the folder
numbers after the largest one, in (dataset, external id) order, under a folder of their own
(External/, as their gender is unknown). A trial's lists carry labels, not folder numbers: in
trial T the added ids are labelled after the largest label of T's training lists, so each trial
trains on its own ids plus all added ids, and tests on its own test lists, unchanged.

Only external ids are added: a RegDB id is a label of one trial's split, so synthetic images of
RegDB's own ids (`dataset` "regdb" in a manifest) are refused. Cameras: RegDB has one visible
(1) and one thermal (2) camera; every added image goes to its modality's.
"""

from __future__ import annotations

import re
from pathlib import Path

from dive.data.readers.regdb import REGDB_CAMERAS, REGDB_TRIALS, regdb_idx_paths
from dive.data.records import Modality
from dive.data.registry import DatasetLayoutError, load_dataset
from dive.export import sysu
from dive.export.common import ImageItem, check_synthetic_rows, manifest_row
from dive.export.layouts import (LayoutInputs, LayoutPlan, added_images, added_items, append_lines, idx_files,
                                 listed_rel, name_added, new_id_numbers, suffix_for)

CAMERA_RULE = "RegDB has one camera per modality: visible images go to Visible/ (camera 1), infrared to Thermal/ (2)"
_TRAIN_LIST = re.compile(r"train_(?:visible|thermal)_(\d+)\.txt")
_WORD = {"visible": ("Visible", "v"), "infrared": ("Thermal", "t")}


def regdb_trials(root: Path) -> list[int]:
    """Trials with a training list in root/idx (each must then have all four lists)."""
    idx = root / "idx"
    found = {int(m.group(1)) for p in idx.iterdir() if (m := _TRAIN_LIST.fullmatch(p.name))} if idx.is_dir() else set()
    trials = sorted(found & set(REGDB_TRIALS))
    if not trials:
        raise DatasetLayoutError(idx, "no training lists; RegDB needs train_visible_T.txt and train_thermal_T.txt "
                                      "for a trial T in 1..10")
    return trials


def _folder_id(rel: str) -> int | None:
    parent = Path(rel).parent.name
    return int(parent) if parent.isdigit() else None


def plan_regdb(cfg: sysu.ExportConfig, inp: LayoutInputs) -> tuple[LayoutPlan, dict]:
    root = Path(cfg.data)
    for src in inp.sources:
        for s in src.rows:
            if s.dataset == "regdb":
                raise ValueError(f"{src.root / 'manifest.jsonl'}: {s.rel}: synthetic images of RegDB's own ids "
                                 "cannot be exported (a RegDB id is a label of one trial's split); a RegDB export "
                                 "adds external ids (generate with --identities external)")
    trials = regdb_trials(root)
    records: dict[str, tuple] = {}  # rel -> (record, ...) over every trial: the files to copy
    first_label: dict[int, int] = {}
    ids_per_trial: dict[int, dict[str, int]] = {}
    for t in trials:
        ds = load_dataset("regdb", root, trial=t)
        for r in ds.records:
            records.setdefault(listed_rel(r.path, root, root / "idx"), r)
        train_labels = [r.pid for r in ds.records if r.split == "train"]
        first_label[t] = max(train_labels, default=-1) + 1
        ids_per_trial[t] = {s: len({r.pid for r in ds.records if r.split == s}) for s in ("train", "test")}
    syn_keys, tokens = check_synthetic_rows(
        inp.sources, vi_dataset="regdb", vi_ids=set(), vi_test_ids=set(), external_dataset=inp.external_format,
        external_known={(r.dataset, r.pid) for r in inp.external_records})
    folders = [f for f in map(_folder_id, records) if f is not None]
    new_ids = new_id_numbers(cfg, inp, syn_keys, max(folders, default=0) + 1)
    order = sorted(new_ids.values())
    labels = {nid: {f"trial {t}": first_label[t] + i for t in trials} for i, nid in enumerate(order)}

    items = []
    for rel, r in sorted(records.items()):
        row = manifest_row(path=rel, pid=_folder_id(rel), camera=r.camid, modality=r.modality.value, origin="real",
                           source="vi", source_dataset="regdb", source_pid=_folder_id(rel), source_camid=r.camid,
                           source_path=rel)
        items.append(ImageItem(Path(r.path), rel, row, keep_bytes=True))

    plan = LayoutPlan([], {}, {}, ("Visible", "Thermal"), new_ids, labels, tokens, CAMERA_RULE)
    added = added_images(cfg, inp, new_ids, tokens, "regdb")
    for a in added:
        cam = REGDB_CAMERAS[Modality(a.modality)]
        kind = "synthetic" if a.row["origin"] == "synthetic" else "external"
        plan.camera_mapping[kind][f"{a.row['source_dataset']} cam{a.camid} ({a.modality})"] = \
            f"{_WORD[a.modality][0]} (camera {cam})"
        same = set(labels[a.pid].values())
        a.row.update(camera=cam, label=same.pop() if len(same) == 1 else None)
    added.sort(key=lambda a: (a.pid, a.modality))
    rels = name_added(added, lambda a: f"{_WORD[a.modality][0]}/External/{a.pid}",
                      lambda a, k: f"external_{_WORD[a.modality][1]}_{k:05d}_{a.pid}", suffix_for(cfg), set(records))
    new_items = added_items(added, rels)
    plan.items = sorted(items + new_items, key=lambda it: it.rel)

    plan.lists = idx_files(root)
    for t in trials:
        for rel, split, modality in regdb_idx_paths(t):
            if split != "train":
                continue
            lines = [f"{it.rel} {labels[it.row['pid']][f'trial {t}']}" for it in new_items
                     if it.row["modality"] == modality.value]
            plan.lists[rel] = append_lines(plan.lists[rel], lines)
            plan.added_lines[rel] = len(lines)
    plan.extra_counts = {"trials": trials, "ids_per_trial": {
        str(t): {"train": n["train"] + len(new_ids), "test": n["test"]} for t, n in ids_per_trial.items()}}
    return plan, {"root": str(root.resolve()), "read_as": "regdb", "dataset": "regdb"}
