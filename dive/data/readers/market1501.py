from __future__ import annotations

import re
from pathlib import Path

from dive.data.records import Modality, Record
from dive.data.registry import Dataset, list_images, parse_or_raise, register_dataset

MARKET_NAME = re.compile(r"(-1|\d{4})_c(\d)s(\d)_(\d{6})_(\d{2})\.(jpg|jpeg|png)", re.IGNORECASE)
MARKET_SPLITS = (("bounding_box_train", "train"), ("bounding_box_test", "gallery"), ("query", "query"))


def read_market_folder(folder: Path, pattern: re.Pattern, expected: str, dataset: str, split: str,
                       keep_junk: bool, keep_distractors: bool) -> tuple[list[Record], dict[str, int]]:
    """Read one flat folder of `PID_c<cam>...` images; returns records and counts of dropped ones."""
    records, dropped = [], {"junk": 0, "distractor": 0}
    for img in list_images(folder):
        m = parse_or_raise(pattern, img, expected)
        pid, cam = int(m.group(1)), int(m.group(2))
        if pid == -1 and not keep_junk:
            dropped["junk"] += 1
            continue
        if pid == 0 and not keep_distractors:
            dropped["distractor"] += 1
            continue
        records.append(Record(str(img), pid, cam, Modality.VISIBLE, dataset, split))
    return records, dropped


@register_dataset
class Market1501(Dataset):
    """Market-1501 (Zheng et al., ICCV 2015): visible only, 6 cameras.

    Layout::

        root/bounding_box_train/0002_c1s1_000451_03.jpg   split "train"
        root/bounding_box_test/...                         split "gallery"
        root/query/...                                     split "query"

    File name: `PPPP_cCsS_FFFFFF_BB.jpg` (person id, camera 1-6, sequence, frame, box).
    Person id `-1` marks junk boxes and `0000` distractors: junk is dropped, distractors are kept
    in the gallery by default (as the standard protocol scores them); `dropped` counts both.
    Real statistics: 1,501 ids (751 train / 750 test), 12,936 train, 19,732 gallery, 3,368 query.
    """

    name = "market1501"
    required_paths = (
        ("bounding_box_train", "the training images folder"),
        ("bounding_box_test", "the gallery images folder"),
        ("query", "the query images folder"),
    )
    file_pattern = MARKET_NAME
    expected_name = "PPPP_cCsS_FFFFFF_BB.jpg such as 0002_c1s1_000451_03.jpg (PPPP = 4-digit id or -1)"

    def __init__(self, root, keep_junk: bool = False, keep_distractors: bool = True):
        self.keep_junk = keep_junk
        self.keep_distractors = keep_distractors
        self.dropped: dict[str, int] = {"junk": 0, "distractor": 0}
        super().__init__(root)

    def _read(self) -> list[Record]:
        records = []
        for folder, split in MARKET_SPLITS:
            recs, dropped = read_market_folder(
                self.root / folder, self.file_pattern, self.expected_name, self.name, split,
                keep_junk=self.keep_junk, keep_distractors=self.keep_distractors,
            )
            records += recs
            for k, v in dropped.items():
                self.dropped[k] += v
        return records
