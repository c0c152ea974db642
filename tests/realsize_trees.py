"""SYSU-MM01 and LLCM trees at their real size, with files that carry no pixels.

The trees have the real id counts, cameras, split sizes and image counts, and the file names the
readers expect; the files are empty (0 bytes) or, with ``content="stub"``, all hard links to one
tiny valid JPEG (1x1, written once per tree), for stages that decode images (the export does). A
tree of ~46k files is written in seconds and takes no data blocks beyond the one stub.

SYSU-MM01 (``make_sysu_realsize``)::

    cam1 .. cam6/NNNN/NNNN.jpg, exp/train_id.txt, val_id.txt, test_id.txt

    491 ids, numbered 1..531 with the multiples of 13 left out (the real ids run to 0533 with
    gaps); 296 train / 99 val / 96 test ids (a fixed shuffle), as the real id files list them.
    train + val ids (395, what AGW trains on): 22,258 visible + 11,909 infrared images
    test ids (96): 7,813 visible + 3,803 infrared images (the 3,803 infrared queries)
    in all 45,783 files: 30,071 visible (the published count) and 15,712 infrared. The paper
    counts 15,792 infrared images; the 80 that the standard splits do not account for are left
    out, so the query count (3,803) is the published one.
    Test ids sit in 301 (id, visible camera) pairs, 112 of them in cameras 1 and 2, so one
    single-shot trial draws the published gallery sizes: 301 (all-search), 112 (indoor-search).

LLCM (``make_llcm_realsize``), the layout of ``dive.data.readers.llcm``::

    idx/train_vis.txt, idx/train_nir.txt             'relpath label' lines
    {train,test}_{vis,nir}/camN/PPPP/PPPP_cNN_s200502_fFFFFF_{v,n}.jpg

    1,064 ids (1..1064): 713 train / 351 test (a fixed shuffle); 9 cameras on each side
    train: 16,946 visible + 13,975 infrared = 30,921 images (every one listed in idx/)
    test: 8,680 visible + 7,166 infrared = 15,846 images; 46,767 files in all.
    Each id is seen by 3 to 5 cameras per modality, the infrared ones shifted by two from the
    visible ones, so some (id, camera) pairs exist in both modalities (the pairs the LLCM
    protocols exclude) and some in one only.

In every group, the images are spread as evenly as possible over that group's (id, camera)
folders (the first folders get one more), and numbered 0001.. in each folder.
"""

from __future__ import annotations

import errno
import io
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

SYSU_SPLIT_SIZES = {"train": 296, "val": 99, "test": 96}
SYSU_TRAIN_IMAGES = {"visible": 22_258, "infrared": 11_909}  # train + val ids
SYSU_TEST_IMAGES = {"visible": 7_813, "infrared": 3_803}
SYSU_GALLERY_SIZE = {"sysu-all": 301, "sysu-indoor": 112}
SYSU_VISIBLE, SYSU_INFRARED = (1, 2, 4, 5), (3, 6)

LLCM_SPLIT_SIZES = {"train": 713, "test": 351}
LLCM_IMAGES = {("train", "visible"): 16_946, ("train", "infrared"): 13_975,
               ("test", "visible"): 8_680, ("test", "infrared"): 7_166}
LLCM_CAMERAS = tuple(range(1, 10))

CONTENTS = ("empty", "stub")


@dataclass
class RealSizeTree:
    """What was written: the counts a reader of the tree must find."""

    root: Path
    files: int = 0
    ids: dict[str, list[int]] = field(default_factory=dict)  # split -> ids
    images: dict[tuple[str, str], int] = field(default_factory=dict)  # (split, modality) -> images
    #: (split, modality) -> {(pid, camera): images}
    folders: dict[tuple[str, str], dict[tuple[int, int], int]] = field(default_factory=dict)

    def pairs(self, split: str, modality: str, cams=None) -> set[tuple[int, int]]:
        """(id, camera) pairs holding images of `split` and `modality` (optionally only `cams`)."""
        return {k for k in self.folders.get((split, modality), {}) if cams is None or k[1] in cams}


def stub_jpeg() -> bytes:
    """A valid 1x1 JPEG (a few hundred bytes)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (1, 1), (128, 128, 128)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


class _Writer:
    """Writes empty files, or hard links to one stub (a new stub when the link limit is hit)."""

    def __init__(self, content: str):
        if content not in CONTENTS:
            raise ValueError(f"content must be one of {CONTENTS}; got {content!r}")
        self.content = content
        self.stub = stub_jpeg() if content == "stub" else b""
        self.source: str | None = None
        self.count = 0

    def _fresh(self, path: str) -> None:
        with open(path, "xb") as f:
            f.write(self.stub)

    def put(self, path: str) -> None:
        self.count += 1
        if self.content == "empty":
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return
        if self.source is not None:
            try:
                os.link(self.source, path)
                return
            except OSError as err:
                if err.errno != errno.EMLINK:
                    raise
        self._fresh(path)
        self.source = path


def spread(total: int, keys: list) -> dict:
    """`total` items over `keys` as evenly as possible, the first keys getting one more."""
    if not keys:
        raise ValueError("no folders to spread images over")
    base, extra = divmod(total, len(keys))
    return {k: base + (1 if i < extra else 0) for i, k in enumerate(keys)}


def _split_ids(ids: list[int], sizes: dict[str, int], seed: int) -> dict[str, list[int]]:
    if sum(sizes.values()) != len(ids):
        raise ValueError(f"split sizes {sizes} do not add up to {len(ids)} ids")
    order = list(ids)
    random.Random(seed).shuffle(order)
    out, start = {}, 0
    for split in reversed(list(sizes)):  # the test ids are drawn first
        out[split] = sorted(order[start:start + sizes[split]])
        start += sizes[split]
    return {s: out[s] for s in sizes}


def sysu_ids() -> list[int]:
    return [i for i in range(1, 532) if i % 13]


def _sysu_pairs(train_ids: list[int], test_ids: list[int]) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """(pid, camera) folders per (group, modality); group "train" covers train + val ids."""
    pairs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    vis, ir = [], []
    for j, pid in enumerate(train_ids):
        vis += [(pid, c) for c in SYSU_VISIBLE if c != SYSU_VISIBLE[j % 4]]
        ir += [(pid, c) for c in ((3, 6), (3,), (6,))[j % 3]]
    pairs[("train", "visible")], pairs[("train", "infrared")] = vis, ir
    vis, ir = [], []
    n = len(test_ids)
    for j, pid in enumerate(test_ids):
        # 56 + 56 indoor and 94 + 95 outdoor pairs for 96 ids: 112 indoor, 301 in all
        cams = [c for c, keep in ((1, j < 56), (2, j >= n - 56), (4, j >= 2), (5, j < n - 1)) if keep]
        vis += [(pid, c) for c in cams]
        ir += [(pid, c) for c, keep in ((3, j < 60), (6, j >= 30)) if keep]
    pairs[("test", "visible")], pairs[("test", "infrared")] = vis, ir
    return pairs


def make_sysu_realsize(root: str | Path, content: str = "empty", seed: int = 2017) -> RealSizeTree:
    """Write a full-size SYSU-MM01 tree under `root` (see the module docstring for the counts)."""
    root = Path(root)
    split_ids = _split_ids(sysu_ids(), SYSU_SPLIT_SIZES, seed)
    tree = RealSizeTree(root, ids=split_ids)
    (root / "exp").mkdir(parents=True, exist_ok=True)
    for split, ids in split_ids.items():
        (root / "exp" / f"{split}_id.txt").write_text(",".join(map(str, ids)) + "\n")
    for cam in (*SYSU_VISIBLE, *SYSU_INFRARED):
        (root / f"cam{cam}").mkdir(exist_ok=True)
    train_ids = sorted(split_ids["train"] + split_ids["val"])
    totals = {("train", m): n for m, n in SYSU_TRAIN_IMAGES.items()} | {("test", m): n for m, n in SYSU_TEST_IMAGES.items()}
    writer = _Writer(content)
    val = set(split_ids["val"])
    for (group, modality), keys in _sysu_pairs(train_ids, split_ids["test"]).items():
        counts = spread(totals[(group, modality)], keys)
        for (pid, cam), n in counts.items():
            split = "val" if pid in val else group
            tree.folders.setdefault((split, modality), {})[(pid, cam)] = n
            tree.images[(split, modality)] = tree.images.get((split, modality), 0) + n
            folder = root / f"cam{cam}" / f"{pid:04d}"
            folder.mkdir()
            base = str(folder)
            for k in range(1, n + 1):
                writer.put(f"{base}/{k:04d}.jpg")
    tree.files = writer.count
    return tree


def llcm_file_name(pid: int, cam: int, frame: int, modality: str) -> str:
    return f"{pid:04d}_c{cam:02d}_s200502_f{frame:06d}_{'v' if modality == 'visible' else 'n'}.jpg"


def _llcm_cams(j: int, modality: str) -> list[int]:
    shift = 0 if modality == "visible" else 2
    return [(j + shift + k) % 9 + 1 for k in range(3 + j % 3)]


def make_llcm_realsize(root: str | Path, content: str = "empty", seed: int = 2023) -> RealSizeTree:
    """Write a full-size LLCM tree under `root` (see the module docstring for the counts)."""
    root = Path(root)
    split_ids = _split_ids(list(range(1, 1065)), LLCM_SPLIT_SIZES, seed)
    tree = RealSizeTree(root, ids=split_ids)
    writer = _Writer(content)
    (root / "idx").mkdir(parents=True, exist_ok=True)
    label = {pid: i for i, pid in enumerate(split_ids["train"])}
    frame = 0
    for modality, tag in (("visible", "vis"), ("infrared", "nir")):
        lines = []
        for split, ids in split_ids.items():
            keys = [(pid, cam) for j, pid in enumerate(ids) for cam in _llcm_cams(j, modality)]
            counts = spread(LLCM_IMAGES[(split, modality)], keys)
            tree.folders[(split, modality)] = counts
            tree.images[(split, modality)] = sum(counts.values())
            for (pid, cam), n in counts.items():
                rel_dir = f"{split}_{tag}/cam{cam}/{pid:04d}"
                (root / rel_dir).mkdir(parents=True)
                for _ in range(n):
                    frame += 1
                    rel = f"{rel_dir}/{llcm_file_name(pid, cam, frame, modality)}"
                    writer.put(f"{root}/{rel}")
                    if split == "train":
                        lines.append(f"{rel} {label[pid]}\n")
        (root / "idx" / f"train_{tag}.txt").write_text("".join(lines))
    tree.files = writer.count
    return tree
