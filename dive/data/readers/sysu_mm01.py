from __future__ import annotations

import re
from pathlib import Path

from dive.data.records import Modality, Record
from dive.data.registry import Dataset, DatasetLayoutError, list_images, register_dataset

SYSU_CAMERAS = (1, 2, 3, 4, 5, 6)
SYSU_IR_CAMERAS = (3, 6)
SYSU_SPLIT_FILES = ("train", "val", "test")
_ID_DIR = re.compile(r"\d{4}")


def read_id_file(path: Path) -> list[int]:
    """`exp/*_id.txt`: one line of comma-separated ids (e.g. `1,2,4`)."""
    text = path.read_text().strip()
    if not text:
        return []
    try:
        return [int(tok) for tok in text.replace("\n", ",").split(",") if tok.strip()]
    except ValueError:
        raise DatasetLayoutError(path, "malformed id list; expected one line of comma-separated integers") from None


def format_id_file(ids) -> str:
    return ",".join(str(i) for i in ids) + "\n"


@register_dataset
class SYSUMM01(Dataset):
    """SYSU-MM01 (Wu et al., ICCV 2017 / IJCV 2020).

    Layout::

        root/cam1 .. cam6/NNNN/NNNN.jpg     person folder = 4-digit id, image = 4-digit index
        root/exp/train_id.txt, val_id.txt, test_id.txt   one line of comma-separated ids

    Visible cameras 1, 2 (indoor), 4, 5 (outdoor); infrared cameras 3 (indoor), 6 (outdoor).
    Real statistics: 491 ids (296 train, 99 val, 96 test), ~30k visible and ~15k infrared images.
    A camera folder may lack some ids (as in the real data). Images of ids listed in no split file
    get split "unlisted" so they stay visible in summaries rather than vanish.
    """

    name = "sysu_mm01"
    required_paths = (
        ("exp/train_id.txt", "a one-line comma-separated id list"),
        ("exp/val_id.txt", "a one-line comma-separated id list"),
        ("exp/test_id.txt", "a one-line comma-separated id list"),
        ("cam1", "the first visible camera folder (cam1/NNNN/*.jpg)"),
        ("cam3", "the indoor infrared camera folder (cam3/NNNN/*.jpg)"),
    )

    def check_layout(self) -> None:
        super().check_layout()
        for cam in SYSU_CAMERAS:
            p = self.root / f"cam{cam}"
            if not p.is_dir():
                raise DatasetLayoutError(p, "missing; SYSU-MM01 needs camera folders cam1..cam6")

    def _read(self) -> list[Record]:
        split_of: dict[int, str] = {}
        for split in SYSU_SPLIT_FILES:
            for pid in read_id_file(self.root / "exp" / f"{split}_id.txt"):
                if pid in split_of:
                    raise DatasetLayoutError(
                        self.root / "exp" / f"{split}_id.txt", f"id {pid} is already listed in {split_of[pid]}_id.txt"
                    )
                split_of[pid] = split
        records = []
        for cam in SYSU_CAMERAS:
            modality = Modality.INFRARED if cam in SYSU_IR_CAMERAS else Modality.VISIBLE
            cam_dir = self.root / f"cam{cam}"
            for id_dir in sorted(cam_dir.iterdir()):
                if not id_dir.is_dir():
                    continue
                if not _ID_DIR.fullmatch(id_dir.name):
                    raise DatasetLayoutError(id_dir, "malformed person folder; expected a 4-digit id such as 0001")
                pid = int(id_dir.name)
                split = split_of.get(pid, "unlisted")
                for img in list_images(id_dir):
                    records.append(Record(str(img), pid, cam, modality, self.name, split))
        return records

    def ids(self, split: str) -> list[int]:
        return read_id_file(self.root / "exp" / f"{split}_id.txt")
