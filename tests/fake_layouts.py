"""Builders of tiny fake dataset trees in each real layout (real file naming, 4x8 images).

Each builder writes the tree under `root` and returns what a correct reader must find, as
`expected_counts` of (split, pid, camid, modality) rows, so a test compares exactly:
ids, cameras, modality and image counts per split.
"""

from __future__ import annotations

import io
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

from PIL import Image

_FORMATS = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}
_IMAGE_BYTES: dict[str, bytes] = {}

SYSU_IR_CAMERAS = (3, 6)
Row = tuple[str, int, int, str]


def write_image(path: Path) -> Path:
    """Write a tiny valid image (width 4, height 8); encoded once per format to stay fast."""
    suffix = path.suffix.lower()
    if suffix not in _IMAGE_BYTES:
        buf = io.BytesIO()
        Image.new("RGB", (4, 8), (120, 60, 30)).save(buf, format=_FORMATS[suffix])
        _IMAGE_BYTES[suffix] = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_IMAGE_BYTES[suffix])
    return path


def expected_counts(rows: Iterable[Row]) -> dict:
    """Summary of (split, pid, camid, modality) rows; apply it to a reader's records to compare.

    Keys: `records` (Counter of rows), `images` {split: n}, `ids` {split: sorted ids},
    `cameras` {split: {modality: sorted cams}}, `modality` {split: {modality: n}}.
    """
    rows = Counter(rows)
    images: Counter = Counter()
    ids: dict[str, set] = {}
    cams: dict[str, dict[str, set]] = {}
    mods: dict[str, Counter] = {}
    for (split, pid, cam, mod), n in rows.items():
        images[split] += n
        ids.setdefault(split, set()).add(pid)
        cams.setdefault(split, {}).setdefault(mod, set()).add(cam)
        mods.setdefault(split, Counter())[mod] += n
    return {
        "records": rows,
        "images": dict(sorted(images.items())),
        "ids": {s: sorted(v) for s, v in sorted(ids.items())},
        "cameras": {s: {m: sorted(c) for m, c in sorted(v.items())} for s, v in sorted(cams.items())},
        "modality": {s: dict(sorted(v.items())) for s, v in sorted(mods.items())},
    }


COUNT_KEYS = ("records", "images", "ids", "cameras", "modality")


def counts_of(records) -> dict:
    """`expected_counts` of a reader's records, for comparison with what a builder returns."""
    return expected_counts((r.split, r.pid, r.camid, r.modality.value) for r in records)


def counts_only(expected: dict) -> dict:
    """A builder's result without its extra keys (`labels`, `dropped`, ...)."""
    return {k: expected[k] for k in COUNT_KEYS}


def make_sysu_tree(
    root: str | Path,
    ids_per_split: dict[str, Sequence[int]] | None = None,
    images_per_cam: int = 2,
    unlisted: Sequence[int] = (),
    skip: Iterable[tuple[int, int]] = (),
) -> dict:
    """SYSU-MM01: cam1..cam6/NNNN/NNNN.jpg plus exp/{train,val,test}_id.txt.

    `unlisted` ids get images but appear in no split file (split "unlisted"); `skip` holds
    (pid, cam) pairs with no folder, as real cameras lack some ids.
    """
    root = Path(root)
    if ids_per_split is None:
        ids_per_split = {"train": [1, 2], "val": [3], "test": [4, 5]}
    split_of = {pid: split for split, ids in ids_per_split.items() for pid in ids}
    split_of.update({pid: "unlisted" for pid in unlisted})
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        (root / "exp" / f"{split}_id.txt").write_text(",".join(str(i) for i in ids_per_split.get(split, ())) + "\n")
    skip = set(skip)
    rows = []
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True, exist_ok=True)
        mod = "infrared" if cam in SYSU_IR_CAMERAS else "visible"
        for pid, split in sorted(split_of.items()):
            if (pid, cam) in skip:
                continue
            for k in range(1, images_per_cam + 1):
                write_image(root / f"cam{cam}" / f"{pid:04d}" / f"{k:04d}.jpg")
                rows.append((split, pid, cam, mod))
    return expected_counts(rows)


def market_name(pid: int, cam: int, frame: int, box: int = 0, seq: int = 1) -> str:
    pid_part = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_part}_c{cam}s{seq}_{frame:06d}_{box:02d}.jpg"


def make_market_tree(
    root: str | Path,
    train_ids: Sequence[int] = (2, 7),
    test_ids: Sequence[int] = (3, 5),
    cams: Sequence[int] = (1, 2, 3),
    images_per_cam: int = 1,
    query_cams: Sequence[int] = (1, 2),
    junk: int = 1,
    distractors: int = 2,
) -> dict:
    """Market-1501: bounding_box_train/, bounding_box_test/ (with junk `-1_...` and distractor
    `0000_...` boxes, as in the real gallery) and query/ (one image per test id per query cam).

    Expected counts assume the reader's defaults (junk dropped, distractors kept as pid 0);
    extra keys: `dropped` (what the defaults drop) and `distractors` (how many were written).
    """
    root = Path(root)
    frame = 0
    rows = []

    def put(folder: str, split: str | None, pid: int, cam: int) -> None:
        nonlocal frame
        frame += 1
        write_image(root / folder / market_name(pid, cam, frame))
        if split is not None:
            rows.append((split, pid, cam, "visible"))

    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True, exist_ok=True)
    for pid in train_ids:
        for cam in cams:
            for _ in range(images_per_cam):
                put("bounding_box_train", "train", pid, cam)
    for pid in test_ids:
        for cam in cams:
            for _ in range(images_per_cam):
                put("bounding_box_test", "gallery", pid, cam)
        for cam in query_cams:
            put("query", "query", pid, cam)
    for i in range(distractors):
        put("bounding_box_test", "gallery", 0, cams[i % len(cams)])
    for i in range(junk):
        # the first one is exactly the real junk name -1_c1s1_000001_00.jpg
        name = "-1_c1s1_000001_00.jpg" if i == 0 else market_name(-1, cams[i % len(cams)], 900000 + i)
        write_image(root / "bounding_box_test" / name)
    out = expected_counts(rows)
    out["dropped"] = {"junk": junk, "distractor": 0}
    out["distractors"] = distractors
    return out


def llcm_name(pid: int, cam: int, frame: int, modality: str) -> str:
    return f"{pid:04d}_c{cam:02d}_s200502_f{5000 + frame}_{'v' if modality == 'visible' else 'n'}.jpg"


def make_llcm_tree(
    root: str | Path,
    train_ids: Sequence[int] = (1, 2),
    test_ids: Sequence[int] = (3, 4),
    vis_cams: Sequence[int] = (1, 2, 3),
    nir_cams: Sequence[int] = (1, 2, 9),
    images_per_cam: int = 1,
) -> dict:
    """LLCM: idx/train_vis.txt, idx/train_nir.txt ('relpath label', label = 0-based index of
    the id among `train_ids`), {train,test}_{vis,nir}/camN/PPPP/PPPP_cNN_s..._f..._{v,n}.jpg.

    Extra key: `labels` {absolute image path: label} for the training images.
    """
    root = Path(root)
    rows, labels, frame = [], {}, 0
    label_of = {pid: i for i, pid in enumerate(sorted(train_ids))}
    for tag, mod, cams in (("vis", "visible", vis_cams), ("nir", "infrared", nir_cams)):
        lines = []
        for split, ids in (("train", train_ids), ("test", test_ids)):
            (root / f"{split}_{tag}").mkdir(parents=True, exist_ok=True)
            for pid in ids:
                for cam in cams:
                    for _ in range(images_per_cam):
                        frame += 1
                        rel = f"{split}_{tag}/cam{cam}/{pid:04d}/{llcm_name(pid, cam, frame, mod)}"
                        write_image(root / rel)
                        rows.append((split, pid, cam, mod))
                        if split == "train":
                            lines.append(f"{rel} {label_of[pid]}")
                            labels[str(root / rel)] = label_of[pid]
        (root / "idx").mkdir(parents=True, exist_ok=True)
        (root / "idx" / f"train_{tag}.txt").write_text("\n".join(lines) + "\n")
    out = expected_counts(rows)
    out["labels"] = labels
    return out


def make_regdb_tree(
    root: str | Path, n_ids: int = 4, images_per_id: int = 2, trials: Sequence[int] = (1, 2)
) -> dict[int, dict]:
    """RegDB: Visible/<Female|Male>/<id>/*_v_*.bmp, Thermal/.../*_t_*.bmp and, per trial,
    idx/{train,test}_{visible,thermal}_T.txt. Trial T rotates the id list by T-1 and gives the
    first half to train; labels are 0-based within each split (pid = label).

    Returns {trial: expected counts}; visible rows use camera 1, thermal camera 2.
    """
    root = Path(root)
    persons = []  # (folder id, gender)
    for fid in range(1, n_ids + 1):
        gender = "Female" if fid % 2 else "Male"
        persons.append((fid, gender))
        for word, letter in (("Visible", "v"), ("Thermal", "t")):
            for k in range(images_per_id):
                write_image(root / word / gender / str(fid) / f"{gender.lower()}_front_{letter}_{fid * 100 + k:05d}_{fid}.bmp")
    (root / "idx").mkdir(parents=True, exist_ok=True)
    out = {}
    for trial in trials:
        shift = (trial - 1) % n_ids
        order = persons[shift:] + persons[:shift]
        half = n_ids // 2
        rows = []
        for split, group in (("train", order[:half]), ("test", order[half:])):
            for word, letter, mod, cam in (("Visible", "v", "visible", 1), ("Thermal", "t", "infrared", 2)):
                lines = []
                for label, (fid, gender) in enumerate(sorted(group)):
                    for k in range(images_per_id):
                        lines.append(f"{word}/{gender}/{fid}/{gender.lower()}_front_{letter}_{fid * 100 + k:05d}_{fid}.bmp {label}")
                        rows.append((split, label, cam, mod))
                name = "visible" if word == "Visible" else "thermal"
                (root / "idx" / f"{split}_{name}_{trial}.txt").write_text("\n".join(lines) + "\n")
        out[trial] = expected_counts(rows)
    return out


def make_cuhk03np_tree(
    root: str | Path,
    train_ids: Sequence[int] = (1, 2),
    test_ids: Sequence[int] = (3, 4),
    images_per_cam: dict[str, int] | None = None,
    subsets: Sequence[str] = ("detected", "labeled"),
) -> dict[str, dict]:
    """CUHK03-NP: <subset>/{bounding_box_train,bounding_box_test,query}/PPPP_cC_K.png, cameras
    1 and 2; per test id and camera the first image goes to query, the rest to the gallery.

    Returns {subset: expected counts}; the subsets differ in images per camera by default.
    """
    root = Path(root)
    if images_per_cam is None:
        images_per_cam = {"detected": 2, "labeled": 3}
    out = {}
    for subset in subsets:
        n = images_per_cam[subset]
        rows = []
        for folder in ("bounding_box_train", "bounding_box_test", "query"):
            (root / subset / folder).mkdir(parents=True, exist_ok=True)
        for pid in list(train_ids) + list(test_ids):
            k = 0
            for cam in (1, 2):
                for j in range(n):
                    k += 1
                    if pid in train_ids:
                        folder, split = "bounding_box_train", "train"
                    else:
                        folder, split = ("query", "query") if j == 0 else ("bounding_box_test", "gallery")
                    write_image(root / subset / folder / f"{pid:04d}_c{cam}_{k}.png")
                    rows.append((split, pid, cam, "visible"))
        out[subset] = expected_counts(rows)
    return out
