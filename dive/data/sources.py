"""The records a training stage reads from its inputs: the VI set's train + val records and an
external visible set's training records (a SynthVI world holds both). DiVE training, captioning
and the infrared words all start from these."""

from __future__ import annotations

from pathlib import Path

from dive.data.records import Record
from dive.data.registry import detect_format, load_dataset


def load_sources(vi: Path, vi_format: str | None = None, external: Path | None = None,
                 external_format: str | None = None) -> tuple[list[Record], list[Record]]:
    """VI train(+val) records and external training records; a SynthVI root gives both."""
    vi = Path(vi)
    fmt = vi_format or detect_format(vi)
    if fmt == "synthvi":
        ds = load_dataset("synthvi", vi)
        vi_recs = [r for r in ds.records if r.dataset == "synthvi_vi" and r.split in ("train", "val")]
        ext_recs = [r for r in ds.records if r.dataset == "synthvi_ext" and r.split == "train"]
        if external is not None:
            raise ValueError(f"{vi} is a SynthVI world that already holds its external set; drop --external")
        return vi_recs, ext_recs
    vi_ds = load_dataset(fmt, vi)
    vi_recs = [r for r in vi_ds.records if r.split in ("train", "val")]
    ext_recs: list[Record] = []
    if external is not None:
        ext_ds = load_dataset(external_format or detect_format(external), external)
        ext_recs = [r for r in ext_ds.records if r.split == "train" and r.pid > 0]
    return vi_recs, ext_recs
