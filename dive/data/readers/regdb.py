from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from dive.data.records import Modality, Record
from dive.data.registry import Dataset, DatasetLayoutError, records_sorted, register_dataset

REGDB_TRIALS = tuple(range(1, 11))
#: RegDB has no camera ids; each modality is one fixed camera
REGDB_CAMERAS = {Modality.VISIBLE: 1, Modality.INFRARED: 2}
REGDB_MODALITIES = (("visible", Modality.VISIBLE), ("thermal", Modality.INFRARED))
REGDB_SPLITS = ("train", "test")
IDX_LINE = "'<relative/path/to/image> <integer label>' such as 'Visible/Female/20/female_front_v_00001_20.bmp 0'"


class IdxLine(NamedTuple):
    """One `relpath label` line of an AGW-style index file, with its line number for errors."""

    lineno: int
    relpath: str
    label: int


def read_idx_file(path: Path, expected: str = IDX_LINE) -> list[IdxLine]:
    """Parse an index file of `relpath label` lines; a bad line raises naming file and line.

    Kept here (RegDB's lists are where this format comes from) and shared with LLCM.
    """
    out = []
    for i, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError
            out.append(IdxLine(i, parts[0], int(parts[1])))
        except ValueError:
            raise DatasetLayoutError(path, f"line {i} is malformed ({line!r}); expected {expected}") from None
    return out


def resolve_idx_image(root: Path, idx_path: Path, entry: IdxLine) -> Path:
    """The image an index line names, which must exist: a dangling line is a broken copy, not data."""
    img = root / entry.relpath
    if not img.is_file():
        raise DatasetLayoutError(
            idx_path,
            f"line {entry.lineno} names {entry.relpath!r}, but {img} does not exist; "
            f"expected an image path relative to {root}",
        )
    return img


def regdb_idx_paths(trial: int) -> list[tuple[str, str, Modality]]:
    """(relative idx path, split, modality) for every list file of one trial."""
    return [
        (f"idx/{split}_{word}_{trial}.txt", split, modality)
        for split in REGDB_SPLITS
        for word, modality in REGDB_MODALITIES
    ]


@register_dataset
class RegDB(Dataset):
    """RegDB (Nguyen et al., Sensors 2017): one visible and one thermal camera, 10 random trials.

    Layout::

        root/Visible/<Female|Male>/<id>/*.bmp      visible images
        root/Thermal/<Female|Male>/<id>/*.bmp      thermal images
        root/idx/train_visible_{T}.txt, train_thermal_{T}.txt,
                 test_visible_{T}.txt,  test_thermal_{T}.txt    for trial T = 1..10

    Each idx line is `relpath label` with `relpath` relative to root. RegDB carries no camera
    ids, so visible images get camera 1 and thermal images camera 2. The person id of a record
    is the label written in the idx file, as the standard evaluation code uses it; the train and
    test lists may be labelled independently (both starting at 0), so compare ids only within a
    split. Real statistics: 412 ids, 10 visible + 10 thermal images each (8,240 images);
    every trial splits the ids 206 train / 206 test at random.
    """

    name = "regdb"
    required_paths = tuple(
        (rel, f"the {split} {modality.value} list of trial 1 ('relpath label' lines)")
        for rel, split, modality in regdb_idx_paths(1)
    ) + (("Visible", "the visible images folder"), ("Thermal", "the thermal images folder"))

    def __init__(self, root, trial: int = 1):
        if trial not in REGDB_TRIALS:
            raise ValueError(f"RegDB trial must be one of 1..10, got {trial!r}")
        self.trial = trial
        super().__init__(root)

    def check_layout(self) -> None:
        # the lists to check depend on the trial, so the class-level (trial 1) paths are not enough
        if not self.root.is_dir():
            raise DatasetLayoutError(self.root, f"dataset root for {self.name!r} does not exist or is not a directory")
        for rel, split, modality in regdb_idx_paths(self.trial):
            p = self.root / rel
            if not p.is_file():
                raise DatasetLayoutError(
                    p, f"missing; RegDB trial {self.trial} needs its {split} {modality.value} list ('relpath label' lines)"
                )
        for rel in ("Visible", "Thermal"):
            p = self.root / rel
            if not p.is_dir():
                raise DatasetLayoutError(p, f"missing; the RegDB layout needs the {rel} images folder")

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        """Any trial's training lists plus both image folders (a copy may hold only some trials)."""
        root = Path(root)
        idx = root / "idx"
        return (
            (root / "Visible").is_dir()
            and (root / "Thermal").is_dir()
            and idx.is_dir()
            and any(idx.glob("train_visible_*.txt"))
            and any(idx.glob("train_thermal_*.txt"))
        )

    def _read(self) -> list[Record]:
        records = []
        for rel, split, modality in regdb_idx_paths(self.trial):
            idx_path = self.root / rel
            for entry in read_idx_file(idx_path):
                img = resolve_idx_image(self.root, idx_path, entry)
                records.append(Record(str(img), entry.label, REGDB_CAMERAS[modality], modality, self.name, split))
        return records_sorted(records)
