"""A browser of the datasets the studio exported: the complete export folders in this visitor's
exports area (`exports/<job>/export`, the visitor's own in public mode), each one's identities
with their real and synthetic image counts, and the images of one identity (real, synthetic or
both) with captions in words, read from the export's manifest."""

from __future__ import annotations

import csv
import json
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass
from pathlib import Path

from dive.studio.sandbox import StudioError

DONE_FILE = "export.json"  # `dive export` writes it last: a complete export
SHOW = ("both", "real", "synthetic")


@dataclass(frozen=True)
class Identity:
    pid: int
    split: str
    source: str  # "synthvi_ext #0003": the identity in the dataset it came from
    real: int
    synthetic: int

    @property
    def label(self) -> str:
        return f"#{self.pid:04d} · {self.source} · {self.split} · {self.real} real · {self.synthetic} synthetic"


class ExportBrowser:
    """The exported datasets a visitor may browse (`Studio.exports`)."""

    def __init__(self, studio, max_cached: int = 4):
        self.studio = studio
        self._rows: OrderedDict[tuple, list[dict]] = OrderedDict()
        self._lock = threading.Lock()
        self.max_cached = max_cached

    def area(self, owner: str | None = None) -> Path:
        """This visitor's exports area (the data folder's exports/ for the local user)."""
        return self.studio.sandbox.owner_root(owner) / "exports"

    def folders(self, owner: str | None = None) -> list[tuple[str, str]]:
        """(label, folder relative to the data folder) of every complete export, newest first."""
        area = self.area(owner)
        out = []
        for done in sorted(area.glob(f"*/export/{DONE_FILE}"), reverse=True) if area.is_dir() else []:
            try:
                counts = json.loads(done.read_text()).get("counts", {})
            except (OSError, ValueError):
                continue
            origin = counts.get("per_origin", {})
            rel = self.studio.sandbox.relative(done.parent)
            out.append((f"{done.parent.parent.name} · {counts.get('images', '?')} images ({origin.get('real', 0)} "
                        f"real, {origin.get('synthetic', 0)} synthetic)", rel))
        return out

    def folder(self, text: str, owner: str | None = None) -> Path:
        """An export folder named by the visitor: inside their exports area, with a manifest."""
        if not text:
            raise StudioError("choose an exported dataset (run a batch export first)")
        path = self.studio.resolve(text, owner, must_exist=True)
        area = self.area(owner).resolve()
        if area not in path.parents:
            raise StudioError(f"{text}: not in your exports area ({self.studio.sandbox.relative(area)})")
        if not (path / DONE_FILE).exists():
            raise StudioError(f"{text}: not a complete export (it has no {DONE_FILE}; resume or rerun the export)")
        return path

    def rows(self, folder: Path) -> list[dict]:
        """The export's manifest rows (manifest.jsonl, else manifest.csv), read once per version of the file."""
        for name in ("manifest.jsonl", "manifest.csv"):
            path = folder / name
            if path.exists():
                break
        else:
            raise StudioError(f"{self.studio.sandbox.relative(folder)}: has no manifest.jsonl or manifest.csv")
        st = path.stat()
        key = (str(path), st.st_mtime_ns, st.st_size)
        with self._lock:
            if key in self._rows:
                self._rows.move_to_end(key)
                return self._rows[key]
        rows = _read_manifest(path, self.studio.sandbox)
        with self._lock:
            self._rows[key] = rows
            while len(self._rows) > self.max_cached:
                self._rows.popitem(last=False)
        return rows

    def identities(self, text: str, owner: str | None = None) -> list[Identity]:
        """Every identity of an export: the ones with synthetic images first, then by id."""
        rows = self.rows(self.folder(text, owner))
        count = Counter((r["pid"], r["origin"]) for r in rows)
        first = {}
        for r in rows:
            first.setdefault(r["pid"], r)
        ids = [Identity(pid, r["split"], f"{r['source_dataset']} #{r['source_pid']:04d}", count[(pid, "real")],
                        count[(pid, "synthetic")]) for pid, r in first.items()]
        return sorted(ids, key=lambda i: (i.synthetic == 0, i.pid))

    def images(self, text: str, pid, show: str = "both", owner: str | None = None,
               limit: int = 60) -> tuple[list[tuple[Path, str]], str]:
        """(image, caption in words) of one identity, `show` = both / real / synthetic: infrared
        images first (real and synthetic side by side), then visible ones, by camera, real before
        synthetic; at most `limit` of them; and one line saying what is shown."""
        if show not in SHOW:
            raise StudioError(f"show must be one of {', '.join(SHOW)}, got {show!r}")
        try:
            pid = int(str(pid).split(" · ")[0].lstrip("#"))
        except ValueError:
            raise StudioError(f"{pid!r}: not an identity of this export; pick one from the list") from None
        folder = self.folder(text, owner)
        mine = [r for r in self.rows(folder) if r["pid"] == pid]
        if not mine:
            raise StudioError(f"#{pid:04d}: not an identity of {self.studio.sandbox.relative(folder)}")
        picked = sorted((r for r in mine if show in ("both", r["origin"])),
                        key=lambda r: (r["modality"] != "infrared", r["camera"], r["origin"] != "real", r["path"]))
        items = [(folder / r["path"], caption(r)) for r in picked[:limit]]
        what = {"both": "images", "real": "real images", "synthetic": "synthetic images"}[show]
        more = f" (the first {limit} shown)" if len(picked) > limit else ""
        r0 = mine[0]
        return items, (f"#{pid:04d} ({r0['source_dataset']} #{r0['source_pid']:04d}): {len(picked)} {what}{more} · "
                       f"{sum(r['origin'] == 'real' for r in mine)} real, "
                       f"{sum(r['origin'] == 'synthetic' for r in mine)} synthetic in all")


def caption(row: dict) -> str:
    """ "cam3 · infrared · synthetic · seed 12" / "cam1 · visible · real"."""
    seed = f" · seed {row['seed']}" if row["origin"] == "synthetic" and row.get("seed") not in (None, "") else ""
    return f"cam{row['camera']} · {row['modality']} · {row['origin']}{seed}"


def _read_manifest(path: Path, sandbox) -> list[dict]:
    where = sandbox.relative(path)
    try:
        if path.suffix == ".jsonl":
            raw = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        else:
            with path.open(newline="") as f:
                raw = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise StudioError(f"{where}: unreadable manifest ({e.__class__.__name__}: {e})") from None
    rows = []
    folder = path.parent.resolve()
    for i, r in enumerate(raw, 1):
        try:
            row = {"path": str(r["path"]), "pid": int(r["pid"]), "camera": int(r["camera"]),
                   "modality": str(r["modality"]), "origin": str(r["origin"]), "split": str(r.get("split") or ""),
                   "source_dataset": str(r.get("source_dataset") or "?"), "source_pid": int(r.get("source_pid") or 0),
                   "seed": r.get("seed")}
        except (KeyError, TypeError, ValueError):
            raise StudioError(f"{where}: row {i} lacks path, pid, camera, modality or origin") from None
        if folder not in (folder / row["path"]).resolve().parents:
            raise StudioError(f"{where}: row {i} names {row['path']!r}, outside the export folder")
        rows.append(row)
    return rows
