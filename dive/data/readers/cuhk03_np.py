from __future__ import annotations

import re
from pathlib import Path

from dive.data.readers.market1501 import MARKET_SPLITS, read_market_folder
from dive.data.records import Record
from dive.data.registry import Dataset, DatasetLayoutError, register_dataset

CUHK03_SUBSETS = ("detected", "labeled")
# lenient on the part after the camera: copies differ in how they number the images
CUHK03_NAME = re.compile(r"(\d{4})_c([12])_(.+)\.(png|jpg|jpeg)", re.IGNORECASE)
CUHK03_FOLDERS = tuple(folder for folder, _ in MARKET_SPLITS)


@register_dataset
class CUHK03NP(Dataset):
    """CUHK03 in the new protocol (CUHK03-NP, Zhong et al., CVPR 2017): visible only, each
    person seen by a pair of cameras (1 and 2).

    Layout::

        root/detected/bounding_box_train/0001_c1_1.png   split "train"
        root/detected/bounding_box_test/...              split "gallery"
        root/detected/query/...                          split "query"
        root/labeled/...                                 the same three folders, hand-drawn boxes

    File name: `PPPP_cC_<index>.png` (4-digit id, camera 1 or 2). `subset` picks the
    detector-cropped ("detected") or hand-labelled ("labeled") boxes. Real statistics: 1,467
    ids, 767 train / 700 test; detected 7,365 train / 5,332 gallery / 1,400 query images,
    labeled 7,368 / 5,328 / 1,400.
    """

    name = "cuhk03_np"
    required_paths = tuple(
        (f"detected/{folder}", f"the detected subset's {split} folder") for folder, split in MARKET_SPLITS
    )
    file_pattern = CUHK03_NAME
    expected_name = "PPPP_cC_<index>.png such as 0001_c1_1.png (PPPP = 4-digit id, C = camera 1 or 2)"

    def __init__(self, root, subset: str = "detected"):
        if subset not in CUHK03_SUBSETS:
            raise ValueError(f"CUHK03-NP subset must be 'detected' or 'labeled', got {subset!r}")
        self.subset = subset
        self.dropped: dict[str, int] = {"junk": 0, "distractor": 0}
        super().__init__(root)

    def check_layout(self) -> None:
        # the folders to check depend on the subset, not only on the class-level (detected) paths
        if not self.root.is_dir():
            raise DatasetLayoutError(self.root, f"dataset root for {self.name!r} does not exist or is not a directory")
        for folder, split in MARKET_SPLITS:
            p = self.root / self.subset / folder
            if not p.is_dir():
                raise DatasetLayoutError(p, f"missing; the CUHK03-NP {self.subset} subset needs its {split} folder")

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        """Either subset complete is enough (some copies ship only one)."""
        return any(all((Path(root) / sub / f).is_dir() for f in CUHK03_FOLDERS) for sub in CUHK03_SUBSETS)

    def _read(self) -> list[Record]:
        records = []
        for folder, split in MARKET_SPLITS:
            recs, dropped = read_market_folder(
                self.root / self.subset / folder, self.file_pattern, self.expected_name, self.name, split,
                keep_junk=False, keep_distractors=True,
            )
            records += recs
            for k, v in dropped.items():
                self.dropped[k] += v
        return records
