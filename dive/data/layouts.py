"""A SynthVI world's VI set written in the LLCM or the RegDB layout (`dive data layout`).

The same identities and images as the world's SYSU-MM01-layout `vi/` folder, arranged and listed
as the real dataset's reader (`dive.data.readers.llcm`, `dive.data.readers.regdb`) expects, so
`detect_format` names the layout and `dive reid test` / `dive reid run --data` score or train on
it with that dataset's protocols. Images are hard links to the world's files (copies when a link
is impossible, or with ``copy=True``); no pixel changes.

LLCM (``to="llcm"``)::

    idx/train_vis.txt, idx/train_nir.txt         'relpath label' lines, label = 0-based training label
    train_vis/camN/PPPP/PPPP_cNN_s000001_fFFFFFF_v.jpg    visible training images
    train_nir/camN/PPPP/PPPP_cNN_s000001_fFFFFFF_n.jpg    infrared training images
    test_vis/camN/PPPP/..._v.jpg, test_nir/camN/PPPP/..._n.jpg    test images (the folders define
                                                  the query and gallery sets of each direction)

  Cameras keep their SynthVI numbers: visible cameras 1, 2, 4, 5 go to the visible side,
  infrared cameras 3 and 6 to the infrared side (LLCM numbers its cameras 1..9). No SynthVI camera
  sees both modalities, so LLCM's same-identity-same-camera exclusion removes no gallery image.
  LLCM has no validation split: the world's train and val ids are its training ids (labelled
  0.. in id order), its test ids are LLCM's test ids. Frame ``F`` numbers an image within its
  (id, camera) folder, in the world's file order.

RegDB (``to="regdb"``)::

    Visible/SynthVI/<id>/synthvi_v_NNNNN_<id>.jpg, Thermal/SynthVI/<id>/synthvi_t_NNNNN_<id>.jpg
    idx/{train,test}_{visible,thermal}_{T}.txt    for the 10 trials T = 1..10

  One visible and one thermal camera per identity, as RegDB's single camera pair: of the id's
  visible cameras (1, 2, 4, 5) the one with the most images, and of its infrared cameras (3, 6)
  the one with the most images, the lower camera number on a tie. Every id gets exactly
  ``regdb_images`` (10, as RegDB) images per modality: the camera's first 10 in file order, or,
  when it has fewer, its images repeated in order (1, 2, .., n, 1, 2, ..) until there are 10; each
  repeat is its own file name (a link to the same image). The files stay JPEG (named .jpg; real
  RegDB is .bmp). The group folder is ``SynthVI`` where real RegDB has ``Female`` / ``Male``.
  Trials: ``regdb_split="world"`` (default) lists the world's train + val ids as training ids and
  its test ids as test ids in all 10 trials, so a model trained on the world's training ids is
  scored on ids it never saw (the 10 trials are then the same split); ``"half"`` follows RegDB's
  own rule: each trial T shuffles all ids with ``numpy.random.default_rng([seed, T])`` and gives
  the first half (rounded down) to training, the rest to test. Labels are 0-based in id order
  within each split, as the RegDB reader takes them for person ids.

Both layouts carry ``synthvi_layout.json``: the world it came from, the settings, the ids of each
split, the camera choices and the padding. The tree is written into a hidden temporary folder
beside the output and renamed into place when complete, so a half-written layout never has the
output's name; the output must be new or an empty folder. Same world and settings, same files.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dive.data.readers.sysu_mm01 import SYSUMM01
from dive.data.records import Record
from dive.utils.errors import InputError

LAYOUTS = ("llcm", "regdb")
REGDB_SPLIT_RULES = ("world", "half")
REGDB_TRIAL_COUNT = 10
INFO_FILE = "synthvi_layout.json"
INFO_FORMAT = "dive-synthvi-layout"
LAYOUT_NAMES = {"llcm": "LLCM", "regdb": "RegDB"}
_LLCM_SEQUENCE = "s000001"  # the "s" field of LLCM file names, one fixed value in these layouts


@dataclass
class LayoutConfig:
    """Which world, which layout, where, and RegDB's choices."""

    data: Path = field(metadata={"help": "a SynthVI world (written by `dive data synth`)"})
    to: str = field(metadata={"help": "the layout to write the world's VI set in", "choices": list(LAYOUTS)})
    out: Path = field(metadata={"help": "output folder (new, or empty); written whole or not at all"})
    regdb_split: str = field(default="world", metadata={
        "help": "RegDB trials: world (every trial: the world's train+val ids vs its test ids) or half (RegDB's "
                "rule: each trial a seeded random half of all ids for training, the rest for test)",
        "choices": list(REGDB_SPLIT_RULES)})
    seed: int = field(default=0, metadata={"help": "RegDB --regdb-split half: seed of the 10 trials' id splits"})
    regdb_images: int = field(default=10, metadata={
        "help": "RegDB: images per id and modality (RegDB: 10); a camera with fewer is padded by repeating its "
                "images in order, one with more gives its first ones"})
    copy: bool = field(default=False, metadata={"help": "copy the images instead of hard-linking them"})

    def __post_init__(self) -> None:
        self.data, self.out = Path(self.data), Path(self.out)
        if self.to not in LAYOUTS:
            raise ValueError(f"to must be one of {', '.join(LAYOUTS)}; got {self.to!r}")
        if self.regdb_split not in REGDB_SPLIT_RULES:
            raise ValueError(f"regdb_split must be one of {', '.join(REGDB_SPLIT_RULES)}; got {self.regdb_split!r}")
        if self.regdb_images < 1:
            raise ValueError(f"regdb_images must be >= 1; got {self.regdb_images}")

    def key(self, world_sha256: str) -> dict:
        """What decides the written tree: the world's digest and the settings (not the paths)."""
        return {"layout": self.to, "world_sha256": world_sha256, "regdb_split": self.regdb_split,
                "seed": self.seed, "regdb_images": self.regdb_images, "version": 1}


@dataclass
class LayoutPlan:
    """Everything a layout writes: image files (relative path -> world image), text files, folders."""

    images: list[tuple[str, Path]]
    texts: dict[str, str]
    folders: list[str]
    info: dict


# -------------------------------------------------------------------------------------------------
# the world
# -------------------------------------------------------------------------------------------------


def world_sha256(root: Path) -> str:
    """A digest of what identifies a world: its summary and its id lists."""
    h = hashlib.sha256()
    for rel in ("synthvi.json", "vi/exp/train_id.txt", "vi/exp/val_id.txt", "vi/exp/test_id.txt"):
        p = root / rel
        h.update(rel.encode() + b"\0" + (p.read_bytes() if p.is_file() else b"-") + b"\n")
    return h.hexdigest()


def read_world(root: Path) -> tuple[dict[str, list[int]], list[Record]]:
    """The world's VI split ids and records; a clear error when `root` is not a complete world."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a directory; expected a SynthVI world written by `dive data synth`")
    if not (root / "synthvi.json").is_file():
        raise InputError(f"{root}: not a SynthVI world (no synthvi.json; `dive data synth` writes it last, so "
                         "an unfinished world has none)")
    if not (root / "vi").is_dir():
        raise InputError(f"{root / 'vi'}: missing; a SynthVI world keeps its VI set there (SYSU-MM01 layout)")
    vi = SYSUMM01(root / "vi")
    stray = sorted({r.pid for r in vi.records if r.split not in ("train", "val", "test")})
    if stray:
        raise InputError(f"{root / 'vi' / 'exp'}: ids {stray[:5]} have images but are in no split file; "
                         "expected every VI id in train_id.txt, val_id.txt or test_id.txt")
    split_ids = {s: sorted(vi.ids(s)) for s in ("train", "val", "test")}
    if not split_ids["test"] or not split_ids["train"]:
        raise InputError(f"{root}: the VI set needs training and test ids; found {len(split_ids['train'])} "
                         f"train and {len(split_ids['test'])} test")
    return split_ids, vi.records


def _folders(records: list[Record]) -> dict[tuple[int, str, int], list[Path]]:
    """(pid, modality, camera) -> its images in file order."""
    out: dict[tuple[int, str, int], list[Path]] = {}
    for r in records:
        out.setdefault((r.pid, r.modality.value, r.camid), []).append(Path(r.path))
    return {k: sorted(v) for k, v in sorted(out.items())}


def _cameras(records: list[Record]) -> dict[str, list[int]]:
    return {m: sorted({r.camid for r in records if r.modality.value == m}) for m in ("visible", "infrared")}


# -------------------------------------------------------------------------------------------------
# the two layouts
# -------------------------------------------------------------------------------------------------


def plan_llcm(split_ids: dict[str, list[int]], records: list[Record]) -> LayoutPlan:
    big = [pid for ids in split_ids.values() for pid in ids if not 0 <= pid <= 9999]
    if big:
        raise InputError(f"ids {big[:5]} do not fit LLCM's 4-digit person folders (0000..9999)")
    cams = _cameras(records)
    wrong = [c for c in cams["visible"] + cams["infrared"] if not 1 <= c <= 9]
    if wrong:
        raise InputError(f"cameras {wrong} do not fit LLCM's cam1..cam9 folders")
    train_ids = sorted(split_ids["train"] + split_ids["val"])
    label = {pid: i for i, pid in enumerate(train_ids)}
    group = {pid: "train" for pid in train_ids} | {pid: "test" for pid in split_ids["test"]}
    images: list[tuple[str, Path]] = []
    lines: dict[str, list[str]] = {"vis": [], "nir": []}
    counts: dict[str, dict[str, int]] = {"train": {"visible": 0, "infrared": 0}, "test": {"visible": 0, "infrared": 0}}
    for (pid, modality, cam), paths in _folders(records).items():
        tag, letter = ("vis", "v") if modality == "visible" else ("nir", "n")
        split = group[pid]
        for frame, src in enumerate(paths, 1):
            rel = f"{split}_{tag}/cam{cam}/{pid:04d}/{pid:04d}_c{cam:02d}_{_LLCM_SEQUENCE}_f{frame:06d}_{letter}" \
                  f"{src.suffix.lower()}"
            images.append((rel, src))
            counts[split][modality] += 1
            if split == "train":
                lines[tag].append(f"{rel} {label[pid]}")
    texts = {f"idx/train_{tag}.txt": "".join(line + "\n" for line in lines[tag]) for tag in ("vis", "nir")}
    info = {"splits": {"train": train_ids, "test": list(split_ids["test"])},
            "val_ids_in_train": list(split_ids["val"]), "labels": "0-based, training ids in ascending order",
            "cameras": {"visible": cams["visible"], "infrared": cams["infrared"],
                        "rule": "SynthVI camera numbers kept: visible cameras on LLCM's visible side, infrared "
                                "cameras on its infrared side"},
            "images": counts}
    return LayoutPlan(images, texts, ["test_vis", "test_nir", "train_vis", "train_nir"], info)


def regdb_trial_splits(split_ids: dict[str, list[int]], rule: str, seed: int) -> dict[int, tuple[list[int], list[int]]]:
    """(train ids, test ids) of each trial 1..10 under `rule` (see the module docstring)."""
    everyone = sorted(split_ids["train"] + split_ids["val"] + split_ids["test"])
    out = {}
    for t in range(1, REGDB_TRIAL_COUNT + 1):
        if rule == "world":
            out[t] = (sorted(split_ids["train"] + split_ids["val"]), list(split_ids["test"]))
        else:
            perm = np.random.default_rng([int(seed), t]).permutation(np.asarray(everyone))
            half = len(everyone) // 2
            out[t] = (sorted(int(p) for p in perm[:half]), sorted(int(p) for p in perm[half:]))
    return out


def plan_regdb(split_ids: dict[str, list[int]], records: list[Record], n_images: int, rule: str,
               seed: int) -> LayoutPlan:
    by_id: dict[tuple[int, str], dict[int, list[Path]]] = {}
    for (pid, modality, cam), paths in _folders(records).items():
        by_id.setdefault((pid, modality), {})[cam] = paths
    everyone = sorted(split_ids["train"] + split_ids["val"] + split_ids["test"])
    images: list[tuple[str, Path]] = []
    files: dict[tuple[int, str], list[str]] = {}  # (pid, modality) -> its n_images relative paths
    chosen: dict[str, dict[str, int]] = {"visible": {}, "infrared": {}}
    repeats: dict[str, dict[str, int]] = {"visible": {}, "infrared": {}}  # padded ids only
    for pos, pid in enumerate(everyone):
        for modality, word, letter in (("visible", "Visible", "v"), ("infrared", "Thermal", "t")):
            own = by_id.get((pid, modality), {})
            if not own:
                raise InputError(f"VI id {pid} has no {modality} image; RegDB needs both modalities of every id")
            cam = max(own, key=lambda c: (len(own[c]), -c))
            src = own[cam]
            chosen[modality][str(pid)] = cam
            if len(src) < n_images:
                repeats[modality][str(pid)] = n_images - len(src)
            rels = []
            for slot in range(n_images):
                n = pos * n_images + slot + 1
                path = src[slot % len(src)]
                rel = f"{word}/SynthVI/{pid}/synthvi_{letter}_{n:05d}_{pid}{path.suffix.lower()}"
                images.append((rel, path))
                rels.append(rel)
            files[(pid, modality)] = rels
    texts = {}
    trials = regdb_trial_splits(split_ids, rule, seed)
    for t, (train, test) in trials.items():
        for split, ids in (("train", train), ("test", test)):
            for modality, word in (("visible", "visible"), ("infrared", "thermal")):
                lines = [f"{rel} {label}" for label, pid in enumerate(ids) for rel in files[(pid, modality)]]
                texts[f"idx/{split}_{word}_{t}.txt"] = "".join(line + "\n" for line in lines)
    total = n_images * len(everyone)
    info = {"splits": {"rule": rule, "seed": seed if rule == "half" else None,
                       "trials": {str(t): {"train": tr, "test": te} for t, (tr, te) in trials.items()},
                       "world": {s: list(v) for s, v in split_ids.items()}},
            "labels": "0-based in ascending id order within each split of each trial",
            "cameras": {"rule": "per id: its visible camera with the most images and its infrared camera with the "
                                "most images (the lower number on a tie); the reader gives visible images camera 1, "
                                "thermal images camera 2",
                        "visible": chosen["visible"], "thermal": chosen["infrared"]},
            "padding": {"images_per_modality": n_images,
                        "rule": f"a camera's first {n_images} images in file order; fewer: repeated in order",
                        "repeated_images": {"visible": repeats["visible"], "thermal": repeats["infrared"]}},
            "images": {"visible": total, "thermal": total}}
    return LayoutPlan(images, texts, ["Visible", "Thermal"], info)


def plan_layout(cfg: LayoutConfig) -> LayoutPlan:
    """What `write_layout` writes, worked out (and checked) before anything is written."""
    split_ids, records = read_world(cfg.data)
    if cfg.to == "llcm":
        plan = plan_llcm(split_ids, records)
    else:
        plan = plan_regdb(split_ids, records, cfg.regdb_images, cfg.regdb_split, cfg.seed)
    plan.info = {"format": INFO_FORMAT, "layout": cfg.to, "key": cfg.key(world_sha256(cfg.data)),
                 "source": str(cfg.data.resolve())} | plan.info
    return plan


# -------------------------------------------------------------------------------------------------
# writing
# -------------------------------------------------------------------------------------------------


def _check_out(cfg: LayoutConfig) -> None:
    out = cfg.out
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out}: output is not empty; choose a new folder (a layout is written whole, "
                              "never into existing files)")
    data, target = cfg.data.resolve(), out.resolve()
    if target == data or data in target.parents:
        raise InputError(f"{out}: output inside the SynthVI world {cfg.data}; choose a folder outside it")


def _place(src: Path, dst: Path, copy: bool) -> bool:
    """Hard-link `src` at `dst` (True), or copy it when told to or when no link is possible (False)."""
    if not copy:
        try:
            os.link(src, dst)
            return True
        except OSError as err:
            if err.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES):
                raise
    shutil.copyfile(src, dst)
    return False


def layout_info(folder: Path) -> dict | None:
    """The `synthvi_layout.json` of a written layout, or None when there is none."""
    p = Path(folder) / INFO_FILE
    return json.loads(p.read_text()) if p.is_file() else None


def write_layout(cfg: LayoutConfig) -> dict:
    """Write the world's VI set in `cfg.to`'s layout at `cfg.out`; returns a summary."""
    plan = plan_layout(cfg)  # a folder that is no SynthVI world is refused first
    _check_out(cfg)
    out = cfg.out
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    linked = 0
    try:
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp's folder is private; the layout gets the usual mode
        for rel in plan.folders:
            (tmp / rel).mkdir(parents=True, exist_ok=True)
        for rel, src in plan.images:
            dst = tmp / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            linked += _place(src, dst, cfg.copy)
        for rel, text in plan.texts.items():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            (tmp / rel).write_text(text)
        (tmp / INFO_FILE).write_text(json.dumps(plan.info, indent=1, sort_keys=True) + "\n")
        try:
            os.rename(tmp, out)  # replaces an empty folder; refuses one that filled meanwhile
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR):
                raise FileExistsError(f"{out}: output is not empty; choose a new folder") from None
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"layout": cfg.to, "out": str(out), "images": len(plan.images), "linked": linked,
            "copied": len(plan.images) - linked, "lists": sorted(plan.texts), "info": plan.info}
