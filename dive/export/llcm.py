"""The LLCM layout of `dive export` (see `dive.export.layouts` for what every layout export does).

Output, beside the input's own files (same paths, same bytes)::

    train_vis/camC/PPPP/PPPP_cCC_s000000_fKKKKK_v.jpg   added visible images (external ids' real ones)
    train_nir/camC/PPPP/PPPP_cCC_s000000_fKKKKK_n.jpg   added infrared images (the synthetic ones)
    idx/train_vis.txt, idx/train_nir.txt                 the input's lines, then one 'relpath label'
                                                         line per added image
    test_vis/, test_nir/, other idx/ files                as in the input

New ids are numbered after the largest LLCM id (train or test) and labelled after the largest
label of the lists, both in (dataset, external id) order. A synthetic image of an LLCM training
id joins that id (its folder, its label); one of a test id is refused. In a folder, added files
take the frame numbers 1, 2, ... that no input file there has (the file name's `s000000` field marks them).
Cameras: LLCM has cameras 1..9 on both sides, so a source camera c in 1..9 is kept and any other
goes to (c-1) % 9 + 1 (Market-1501's 1..6 and CUHK03's 1..2 are kept).
"""

from __future__ import annotations

from pathlib import Path

from dive.data.readers.llcm import LLCM_TEST_DIRS, LLCM_TRAIN_LISTS
from dive.data.registry import load_dataset
from dive.export import sysu
from dive.export.common import ImageItem, check_synthetic_rows, manifest_row
from dive.export.layouts import (LayoutInputs, LayoutPlan, added_images, added_items, append_lines, idx_files,
                                 listed_rel, name_added, new_id_numbers, suffix_for)

LLCM_CAMERA_COUNT = 9
LLCM_LIST_OF = {m.value: rel for rel, m in LLCM_TRAIN_LISTS}  # modality -> idx list
CAMERA_RULE = "LLCM cameras 1..9 on both sides: a source camera c in 1..9 is kept, another goes to (c-1)%9+1"


def export_camera(camid: int) -> int:
    """The LLCM camera an added image of source camera `camid` goes to."""
    return camid if 1 <= camid <= LLCM_CAMERA_COUNT else (camid - 1) % LLCM_CAMERA_COUNT + 1


def _folder(modality: str) -> str:
    return "train_vis" if modality == "visible" else "train_nir"


def plan_llcm(cfg: sysu.ExportConfig, inp: LayoutInputs) -> tuple[LayoutPlan, dict]:
    root = Path(cfg.data)
    ds = load_dataset("llcm", root)
    train = [r for r in ds.records if r.split == "train"]
    test_ids = {r.pid for r in ds.records if r.split == "test"}
    train_ids = {r.pid for r in train}
    syn_keys, tokens = check_synthetic_rows(
        inp.sources, vi_dataset="llcm", vi_ids=train_ids | test_ids, vi_test_ids=test_ids,
        external_dataset=inp.external_format, external_known={(r.dataset, r.pid) for r in inp.external_records})
    new_ids = new_id_numbers(cfg, inp, syn_keys, max(train_ids | test_ids, default=0) + 1)
    if new_ids and max(new_ids.values()) > 9999:
        raise ValueError(f"{len(new_ids)} new ids after LLCM id {min(new_ids.values()) - 1} exceed LLCM's "
                         "4-digit person folders (9999)")
    label_of: dict[int, int] = {}
    for r in sorted(train, key=lambda r: r.path):
        label_of.setdefault(r.pid, ds.labels[r.path])
    first_label = max(ds.labels.values(), default=-1) + 1
    new_label = {nid: first_label + i for i, nid in enumerate(sorted(new_ids.values()))}
    label_of |= new_label

    items: list[ImageItem] = []
    seen: set[str] = set()
    where = {"train": root / "idx", "test": root}
    for r in sorted(ds.records, key=lambda r: r.path):
        rel = listed_rel(r.path, root, where[r.split])
        if rel in seen:  # an image listed twice is one file
            continue
        seen.add(rel)
        row = manifest_row(path=rel, pid=r.pid, label=ds.labels.get(r.path) if r.split == "train" else None,
                           split=r.split, camera=r.camid, modality=r.modality.value, origin="real", source="vi",
                           source_dataset="llcm", source_pid=r.pid, source_camid=r.camid, source_path=rel,
                           identity_token=tokens.get(("llcm", r.pid)))
        items.append(ImageItem(Path(r.path), rel, row, keep_bytes=True))

    added = added_images(cfg, inp, new_ids, tokens, "llcm")
    plan = LayoutPlan([], {}, {}, tuple(d for d, _ in LLCM_TEST_DIRS), new_ids,
                      {nid: {"label": lab} for nid, lab in new_label.items()}, tokens, CAMERA_RULE)
    for a in added:
        cam = export_camera(a.camid)
        kind = "synthetic" if a.row["origin"] == "synthetic" else "external"
        label = f"{a.row['source_dataset']} cam{a.camid} ({a.modality})"
        plan.camera_mapping[kind][label] = f"cam{cam}"
        a.row.update(camera=cam, label=label_of[a.pid])
    added.sort(key=lambda a: (a.pid, a.modality, a.row["camera"]))
    rels = name_added(
        added, lambda a: f"{_folder(a.modality)}/cam{a.row['camera']}/{a.pid:04d}",
        lambda a, k: f"{a.pid:04d}_c{a.row['camera']:02d}_s000000_f{k:05d}_{'v' if a.modality == 'visible' else 'n'}",
        suffix_for(cfg), seen)
    new_items = added_items(added, rels)
    plan.items = sorted(items + new_items, key=lambda it: it.rel)

    plan.lists = idx_files(root)
    for modality, rel in LLCM_LIST_OF.items():
        lines = [f"{it.rel} {it.row['label']}" for it in new_items if it.row["modality"] == modality]
        plan.lists[rel] = append_lines(plan.lists[rel], lines)
        plan.added_lines[rel] = len(lines)
    plan.extra_counts = {"ids_per_split": {"train": len(train_ids) + len(new_ids), "test": len(test_ids)}}
    return plan, {"root": str(root.resolve()), "read_as": "llcm", "dataset": "llcm"}
