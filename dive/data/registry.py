"""A small dataset registry in the torchreid style: each layout is a class registered by name.

A reader checks its required files first (`required_paths`), then reads; a wrong layout raises
`DatasetLayoutError` naming the path that is missing or malformed and what was expected there.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, ClassVar, Iterable

from dive.data.records import Record, summarize

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")


class DatasetLayoutError(ValueError):
    """The directory does not have the layout the reader expects."""

    def __init__(self, path: str | Path, expected: str):
        self.path = Path(path)
        self.expected = expected
        super().__init__(f"{self.path}: {expected}")


class Dataset:
    """Base class: subclasses set `name`, `required_paths` and implement `_read()`."""

    name: ClassVar[str] = ""
    #: paths (relative to root) that must exist, with what each should be
    required_paths: ClassVar[tuple[tuple[str, str], ...]] = ()

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.check_layout()
        self.records: list[Record] = self._read()

    def check_layout(self) -> None:
        if not self.root.is_dir():
            raise DatasetLayoutError(self.root, f"dataset root for {self.name!r} does not exist or is not a directory")
        for rel, what in self.required_paths:
            p = self.root / rel
            if not p.exists():
                raise DatasetLayoutError(p, f"missing; the {self.name} layout needs {what}")

    @classmethod
    def looks_like(cls, root: Path) -> bool:
        """Cheap test used by `detect_format`: do the required paths exist?"""
        return bool(cls.required_paths) and all((Path(root) / rel).exists() for rel, _ in cls.required_paths)

    def _read(self) -> list[Record]:  # pragma: no cover - abstract
        raise NotImplementedError

    def split(self, name: str) -> list[Record]:
        return [r for r in self.records if r.split == name]

    @property
    def splits(self) -> list[str]:
        return sorted({r.split for r in self.records})

    def summary(self) -> dict:
        return summarize(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(root={str(self.root)!r}, images={len(self.records)})"


_REGISTRY: dict[str, type[Dataset]] = {}


def register_dataset(cls: type[Dataset]) -> type[Dataset]:
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no `name`")
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"dataset name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _ensure_builtin_readers() -> None:
    # importing the package registers every built-in reader
    import dive.data.readers  # noqa: F401


def available_datasets() -> list[str]:
    _ensure_builtin_readers()
    return sorted(_REGISTRY)


def get_dataset_class(name: str) -> type[Dataset]:
    _ensure_builtin_readers()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown dataset format {name!r}; available: {', '.join(sorted(_REGISTRY))}") from None


def load_dataset(name: str, root: str | Path, **kwargs) -> Dataset:
    return get_dataset_class(name)(root, **kwargs)


def detect_format(root: str | Path) -> str:
    """Name of the single registered layout that `root` looks like; a clear error otherwise."""
    _ensure_builtin_readers()
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(root, "not a directory")
    matches = [name for name, cls in sorted(_REGISTRY.items()) if cls.looks_like(root)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise DatasetLayoutError(
            root, f"matches no known layout ({', '.join(sorted(_REGISTRY))}); name one with --format"
        )
    raise DatasetLayoutError(root, f"ambiguous layout, matches {matches}; name one with --format")


#: layouts of an external (visible-only) dataset that expansion draws new identities from
EXTERNAL_FORMATS = ("market1501", "cuhk03_np")


def load_external(root: str | Path, fmt: str = "auto") -> tuple[str, Dataset]:
    """An external visible dataset: its format (detected when "auto") and the loaded dataset."""
    root = Path(root)
    fmt = detect_format(root) if fmt == "auto" else fmt
    if fmt not in EXTERNAL_FORMATS:
        raise ValueError(f"{root}: format {fmt!r} is not an external visible dataset; "
                         f"expected one of {', '.join(EXTERNAL_FORMATS)}")
    return fmt, load_dataset(fmt, root)


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name (deterministic order everywhere)."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def parse_or_raise(pattern: re.Pattern, path: Path, expected: str) -> re.Match:
    m = pattern.fullmatch(path.name)
    if m is None:
        raise DatasetLayoutError(path, f"malformed file name; expected {expected}")
    return m


def read_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip()]


def read_list_file(path: Path, parse: Callable[[str], object], expected: str) -> list:
    """Parse each non-empty line of a list file; a bad line raises naming file and line number."""
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(parse(line.strip()))
        except (ValueError, IndexError):
            raise DatasetLayoutError(path, f"line {i} is malformed ({line.strip()!r}); expected {expected}") from None
    return out


def records_sorted(records: Iterable[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.split, r.path))
