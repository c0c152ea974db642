from __future__ import annotations

import re
from pathlib import Path, PurePosixPath

from dive.data.readers.regdb import read_idx_file, resolve_idx_image
from dive.data.records import Modality, Record
from dive.data.registry import Dataset, DatasetLayoutError, list_images, records_sorted, register_dataset

LLCM_CAMERAS = tuple(range(1, 10))
LLCM_TRAIN_LISTS = (("idx/train_vis.txt", Modality.VISIBLE), ("idx/train_nir.txt", Modality.INFRARED))
LLCM_TEST_DIRS = (("test_vis", Modality.VISIBLE), ("test_nir", Modality.INFRARED))
LLCM_IDX_LINE = "'<relative/path/to/image> <integer label>' such as 'train_vis/cam1/0001/0001_c01_s200502_f5075_v.jpg 0'"

_CAM_DIR = re.compile(r"cam(\d+)")
_CAM_IN_NAME = re.compile(r"_c(\d+)_")
_ID_DIR = re.compile(r"\d{4}")
_ID_PREFIX = re.compile(r"(\d{4})_")


def llcm_camera(path: Path, parts: tuple[str, ...]) -> int:
    """Camera from a `camN` folder in `parts`, else from `_cNN_` in the file name."""
    for part in reversed(parts[:-1]):
        m = _CAM_DIR.fullmatch(part)
        if m:
            return int(m.group(1))
    m = _CAM_IN_NAME.search(path.name)
    if m:
        return int(m.group(1))
    raise DatasetLayoutError(path, "no camera id; expected a camN folder in the path or _cNN_ in the file name")


def llcm_pid(parts: tuple[str, ...]) -> int | None:
    """Person id from the 4-digit person folder, else from the file name's 4-digit prefix."""
    if len(parts) >= 2 and _ID_DIR.fullmatch(parts[-2]):
        return int(parts[-2])
    m = _ID_PREFIX.match(parts[-1])
    return int(m.group(1)) if m else None


@register_dataset
class LLCM(Dataset):
    """LLCM, Low-Light Cross-Modality (Zhang & Wang, CVPR 2023): 9 cameras, each switching
    between visible (day) and near-infrared (night) capture.

    Layout::

        root/idx/train_vis.txt, train_nir.txt     'relpath label' lines, relpath relative to root,
                                                  e.g. 'train_vis/cam1/0001/0001_c01_s200502_f5075_v.jpg 0'
        root/train_vis/camN/PPPP/*.jpg, root/train_nir/camN/PPPP/*.jpg    images the lists name
        root/test_vis/camN/PPPP/*.jpg             visible test images, split "test"
        root/test_nir/camN/PPPP/*.jpg             infrared test images, split "test"

    The training set is what the idx lists name (every named image must exist); the person id
    is parsed from the 4-digit person folder (or the file-name prefix), since the list's label
    is a 0-based training label; that label is kept in `labels` (image path -> label). The
    camera comes from the `camN` folder, else from `_cNN_` in the file name. Test images are
    read from the folders, as the standard evaluation does. vis = visible, nir = infrared.
    Real statistics: 1,064 ids (713 train / 351 test), 46,767 images, 9 cameras; about 30,921
    training images (~16,946 visible / ~13,975 infrared) and 15,846 test images (approximate).
    """

    name = "llcm"
    required_paths = (
        ("idx/train_vis.txt", "the visible training list ('relpath label' lines)"),
        ("idx/train_nir.txt", "the infrared training list ('relpath label' lines)"),
        ("test_vis", "the visible test folder (test_vis/camN/PPPP/*.jpg)"),
        ("test_nir", "the infrared test folder (test_nir/camN/PPPP/*.jpg)"),
    )

    def __init__(self, root):
        #: training image path -> label as written in the idx list
        self.labels: dict[str, int] = {}
        super().__init__(root)

    def _read(self) -> list[Record]:
        records = []
        for rel, modality in LLCM_TRAIN_LISTS:
            idx_path = self.root / rel
            for entry in read_idx_file(idx_path, LLCM_IDX_LINE):
                img = resolve_idx_image(self.root, idx_path, entry)
                parts = PurePosixPath(entry.relpath.replace("\\", "/")).parts
                pid = llcm_pid(parts)
                if pid is None:
                    raise DatasetLayoutError(
                        idx_path,
                        f"line {entry.lineno} names {entry.relpath!r}, which has no person id; "
                        "expected a 4-digit person folder (PPPP/) or a file name starting PPPP_",
                    )
                records.append(Record(str(img), pid, llcm_camera(img, parts), modality, self.name, "train"))
                self.labels[str(img)] = entry.label
        for folder, modality in LLCM_TEST_DIRS:
            records += self._read_test_folder(self.root / folder, modality)
        return records_sorted(records)

    def _read_test_folder(self, folder: Path, modality: Modality) -> list[Record]:
        records = []
        if not folder.is_dir():
            raise DatasetLayoutError(folder, "not a directory; expected camera folders cam1..cam9")
        for cam_dir in sorted(folder.iterdir()):
            if not cam_dir.is_dir():
                continue
            m = _CAM_DIR.fullmatch(cam_dir.name)
            if m is None:
                raise DatasetLayoutError(cam_dir, "malformed camera folder; expected cam1..cam9")
            cam = int(m.group(1))
            for id_dir in sorted(cam_dir.iterdir()):
                if not id_dir.is_dir():
                    continue
                if not _ID_DIR.fullmatch(id_dir.name):
                    raise DatasetLayoutError(id_dir, "malformed person folder; expected a 4-digit id such as 0001")
                pid = int(id_dir.name)
                for img in list_images(id_dir):
                    records.append(Record(str(img), pid, cam, modality, self.name, "test"))
        return records
