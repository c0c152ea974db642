"""The one record type every stage speaks: an image with its person id, camera and modality."""

from __future__ import annotations

import enum
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

from dive.utils.errors import InputError


class Modality(str, enum.Enum):
    VISIBLE = "visible"
    INFRARED = "infrared"

    @classmethod
    def parse(cls, value: "str | Modality") -> "Modality":
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"unknown modality {value!r}; expected 'visible' or 'infrared'") from None


def whole_number(value, what: str) -> int:
    """`value` as an int when it is one (an int, a digit string such as "0012", or a float with no
    fraction); a ValueError saying what was expected otherwise ("abc", "3.5", True, None)."""
    if isinstance(value, bool) or value is None:
        ok = False
    elif isinstance(value, int) or (hasattr(value, "__index__") and not isinstance(value, str)):
        return int(value.__index__())
    elif isinstance(value, float):
        ok = value.is_integer()
    elif isinstance(value, str):
        ok = value.strip().lstrip("+-").isdigit() and value.strip().isascii()
    else:
        ok = False
    if not ok:
        raise ValueError(f"{what} {value!r} is not an integer; expected a whole number such as 12")
    return int(float(value)) if isinstance(value, float) else int(value)


@dataclass(frozen=True, order=True)
class Record:
    """One image.

    `pid` is the dataset's own person id (not a training label); `camid` is the dataset's own
    camera number; `split` names the part of the dataset the image belongs to (train, val, test,
    query, gallery, ...). `dataset` names the source, so merged sets keep their provenance.
    """

    path: str
    pid: int
    camid: int
    modality: Modality
    dataset: str
    split: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", str(self.path))
        try:
            object.__setattr__(self, "pid", whole_number(self.pid, "person id"))
            object.__setattr__(self, "camid", whole_number(self.camid, "camera id"))
            object.__setattr__(self, "modality", Modality.parse(self.modality))
        except ValueError as err:
            raise InputError(f"{self.path}: {err}") from None

    @property
    def is_infrared(self) -> bool:
        return self.modality is Modality.INFRARED

    def to_dict(self) -> dict:
        return {
            "path": self.path,
            "pid": self.pid,
            "camid": self.camid,
            "modality": self.modality.value,
            "dataset": self.dataset,
            "split": self.split,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Record":
        return cls(d["path"], d["pid"], d["camid"], d["modality"], d["dataset"], d["split"])


def filter_records(
    records: Iterable[Record],
    *,
    split: str | Sequence[str] | None = None,
    modality: Modality | str | None = None,
    cams: Iterable[int] | None = None,
    pids: Iterable[int] | None = None,
    dataset: str | None = None,
) -> list[Record]:
    """Select records by any combination of split, modality, cameras, ids and source dataset."""
    splits = {split} if isinstance(split, str) else (set(split) if split is not None else None)
    mod = Modality.parse(modality) if modality is not None else None
    cam_set = set(cams) if cams is not None else None
    pid_set = set(pids) if pids is not None else None
    return [
        r
        for r in records
        if (splits is None or r.split in splits)
        and (mod is None or r.modality is mod)
        and (cam_set is None or r.camid in cam_set)
        and (pid_set is None or r.pid in pid_set)
        and (dataset is None or r.dataset == dataset)
    ]


def relabel(records: Iterable[Record]) -> dict[int, int]:
    """Map dataset person ids to training labels 0..K-1 in sorted id order (as AGW relabels)."""
    return {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}


def images_per_id(records: Iterable[Record]) -> Counter:
    return Counter(r.pid for r in records)


def summarize(records: Sequence[Record]) -> dict:
    """Counts a person wants first: ids, images, and images per (modality, camera)."""
    per_cam = Counter((r.modality.value, r.camid) for r in records)
    return {
        "images": len(records),
        "ids": len({r.pid for r in records}),
        "per_camera": {f"{m}/cam{c}": n for (m, c), n in sorted(per_cam.items())},
        "per_modality": dict(sorted(Counter(r.modality.value for r in records).items())),
        "splits": dict(sorted(Counter(r.split for r in records).items())),
    }


def common_root(records: Sequence[Record]) -> Path:
    import os

    return Path(os.path.commonpath([r.path for r in records]))
