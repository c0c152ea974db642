from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dive.data.readers.market1501 import Market1501
from dive.data.readers.sysu_mm01 import SYSUMM01
from dive.data.records import Record
from dive.data.registry import Dataset, DatasetLayoutError, register_dataset


@register_dataset
class SynthVI(Dataset):
    """A SynthVI world written by `dive data synth` (see `dive.data.synthvi`).

    Layout::

        root/synthvi.json        config, camera specs, counts (written last: marks completeness)
        root/identities.json     attributes of every VI and external identity
        root/vi/                 the VI dataset in SYSU-MM01 layout  -> records with dataset "synthvi_vi"
        root/external/           visible-only dataset, Market-1501 layout -> dataset "synthvi_ext"
        root/web/captions.jsonl  captioned visible pool: {"file": "images/000000.jpg", "caption": ...}

    Default statistics (seed 0): VI 400 ids (240 train / 60 val / 100 test), 4 visible + 2 infrared
    cameras, 4-8 images per (id, camera); external 600 training ids (long-tailed, median 10 images)
    + 50 test ids; web pool 16,000 images. `records` holds the VI and external records; the web pool
    has no identities and is read with `web_pool()`.
    """

    name = "synthvi"
    required_paths = (
        ("synthvi.json", "the world summary (its absence means `dive data synth` did not finish)"),
        ("identities.json", "the identity attribute table"),
        ("vi", "the VI dataset in SYSU-MM01 layout"),
        ("external", "the external dataset in Market-1501 layout"),
        ("web/captions.jsonl", "the web pool's captions"),
    )

    def _read(self) -> list[Record]:
        self.meta = json.loads((self.root / "synthvi.json").read_text())
        self.vi = SYSUMM01(self.root / "vi")
        self.external = Market1501(self.root / "external")
        vi = [dataclasses.replace(r, dataset="synthvi_vi") for r in self.vi.records]
        ext = [dataclasses.replace(r, dataset="synthvi_ext") for r in self.external.records]
        return vi + ext

    def web_pool(self) -> list[tuple[Path, str]]:
        """(image path, caption) pairs of the captioned visible pool."""
        path = self.root / "web" / "captions.jsonl"
        out = []
        for i, line in enumerate(path.read_text().splitlines(), 1):
            try:
                item = json.loads(line)
                out.append((self.root / "web" / item["file"], item["caption"]))
            except (json.JSONDecodeError, KeyError):
                raise DatasetLayoutError(path, f"line {i} is malformed; expected JSON with 'file' and 'caption'") from None
        return out

    def identities(self) -> dict[str, dict]:
        return json.loads((self.root / "identities.json").read_text())
