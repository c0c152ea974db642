"""What every export layout shares: the synthetic rows checked against the inputs, the choice of
the external ids to add, manifest rows, the image-writing loop (encode, check by decoding,
compare, write atomically), progress and stopping, and the summary's common parts.

`dive.export.sysu` writes SYSU-MM01 trees with these; `dive.export.layouts` writes LLCM and
RegDB trees."""

from __future__ import annotations

import hashlib
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tqdm import tqdm

from dive.export.files import MANIFEST_FIELDS, encode_image
from dive.export.sources import SyntheticSource, id_list
from dive.utils.config import config_to_dict
from dive.utils.io import load_rgb, write_bytes

#: optional keys of a synthetic row that go into the export's manifest as they are
SYNTHETIC_META = ("camera_token", "prompt", "negative_prompt", "seed", "steps", "guidance", "scheduler",
                  "checkpoint_hash")


@dataclass
class ImageItem:
    """One image file of a layout export (an LLCM or RegDB tree)."""

    src: Path
    rel: str  # path in the export
    row: dict  # its manifest row
    keep_bytes: bool = False  # a file the dataset's own lists name: copied byte for byte


def manifest_row(**values) -> dict:
    """A manifest row: every field of MANIFEST_FIELDS, None unless given."""
    row = dict.fromkeys(MANIFEST_FIELDS)
    row.update(values)
    return row


def export_suffix(src: Path, image_format: str) -> str:
    """The suffix an image is exported under: the format's, or with `keep` the source's own."""
    if image_format != "keep":
        return "." + image_format
    s = src.suffix.lower()
    return ".jpg" if s == ".jpeg" else s


def carry_meta(row: dict, meta: dict) -> dict:
    """Copy a synthetic row's generation settings (prompt, seed, checkpoint hash, ...) into `row`."""
    for k in SYNTHETIC_META:
        if k in meta:
            row[k] = meta[k]
    return row


def check_synthetic_rows(sources: list[SyntheticSource], *, vi_dataset: str, vi_ids: set[int],
                         vi_test_ids: set[int], external_dataset: str | None,
                         external_known: set[tuple[str, int]],
                         hint: str = "") -> tuple[set[tuple[str, int]], dict[tuple[str, int], str]]:
    """Check every synthetic row's identity against the inputs. Returns the external (dataset,
    pid) keys that have synthetic images and the identity token of each key that has one.
    Refused, naming the manifest: an id the VI set lacks, a VI test id, a dataset that is no
    input, external ids the external dataset lacks (all of them listed)."""
    syn_keys: set[tuple[str, int]] = set()
    tokens: dict[tuple[str, int], str] = {}
    unknown: dict[Path, set[int]] = defaultdict(set)  # manifest -> external ids the external dataset lacks
    for src in sources:
        for row in src.rows:
            key = (row.dataset, row.pid)
            where = f"{src.root / 'manifest.jsonl'}: {row.rel}"
            if row.dataset == vi_dataset:
                if row.pid not in vi_ids:
                    raise ValueError(f"{where}: {row.dataset} has no id {row.pid}")
                if row.pid in vi_test_ids:
                    raise ValueError(f"{where}: id {row.pid} is a VI test id; synthetic images would enter the "
                                     "test set")
            elif row.dataset != external_dataset:
                known = [d for d in (vi_dataset, external_dataset) if d]
                raise ValueError(f"{where}: identity dataset {row.dataset!r} is not an input of this export "
                                 f"({', '.join(known)}); pass its external dataset with --external{hint}")
            elif key not in external_known:
                unknown[src.root / "manifest.jsonl"].add(row.pid)
            else:
                syn_keys.add(key)
            if row.meta.get("identity_token") and key not in tokens:
                tokens[key] = str(row.meta["identity_token"])
    if unknown:
        where, pids = next(iter(unknown.items()))
        raise ValueError(f"{where}: synthetic images of {external_dataset} ids that its dataset does not have "
                         f"({id_list(pids)}); they would become labels without a real image"
                         + (f" (and {len(unknown) - 1} more manifest(s))" if len(unknown) > 1 else ""))
    return syn_keys, tokens


def external_by_key(records, splits) -> dict[tuple[str, int], list]:
    """External records of the copied splits (distractors and junk left out), per (dataset, pid),
    each list in path order."""
    out: dict[tuple[str, int], list] = defaultdict(list)
    for r in sorted(records, key=lambda r: r.path):
        if r.split in splits and r.pid > 0:
            out[(r.dataset, r.pid)].append(r)
    return out


def select_external_keys(cfg, syn_keys: set, by_key: dict) -> list[tuple[str, int]]:
    """The external ids an export adds, sorted: those with synthetic images, and with
    `--external-ids all` every id with at least `--min-external-images` real images."""
    selected = set(syn_keys)
    if cfg.external_ids == "all" and cfg.external_images:  # without their images they would be empty ids
        selected |= {k for k, recs in by_key.items() if len(recs) >= cfg.min_external_images}
    return sorted(selected)


def refuse_single_modality(rows: list[dict], new_ids: dict[tuple[str, int], int]) -> None:
    """Refuse added ids whose exported images would all be of one modality (a VI-ReID sampler
    needs both for every training id), naming them by their source ids."""
    modalities: dict[int, set[str]] = defaultdict(set)
    for r in rows:
        modalities[r["pid"]].add(r["modality"])
    one = {m: [key for key, nid in new_ids.items() if modalities[nid] == {m}] for m in ("visible", "infrared")}
    parts = [f"{m} only: {key_list}" for m, keys in one.items() if keys
             for key_list in [f"{keys[0][0]} " + id_list(k[1] for k in keys)]]
    if parts:
        raise ValueError(f"export would add ids with images of one modality only ({'; '.join(parts)}); give them "
                         "synthetic images of the other modality, leave them out (--external-ids synthetic), or pass "
                         "--allow-single-modality")


def export_settings(cfg) -> dict:
    """The settings an export folder is claimed with (a rerun with other settings needs --force)."""
    # allow_single_modality only lets a plan through: the files of an export do not depend on it
    s = {k: v for k, v in config_to_dict(cfg).items() if k not in ("out", "force", "allow_single_modality")}
    s["data"] = str(cfg.data.resolve())
    s["external"] = str(cfg.external.resolve()) if cfg.external is not None else None
    s["synthetic"] = [str(p.resolve()) for p in cfg.synthetic]
    return s


class Progress:
    """The export's progress bar, callback, stop test and write counts."""

    def __init__(self, out: Path, total: int, progress: bool, should_stop: Callable[[], bool] | None,
                 on_progress: Callable[[int, int], None] | None, *, t0: float | None = None):
        self.out, self.total, self.done, self.written, self.skipped = out, total, 0, 0, 0
        self.t0 = time.time() if t0 is None else t0
        self._bar = tqdm(total=total, desc="export", unit="img", disable=not progress)
        self._should_stop, self._on_progress = should_stop, on_progress

    def tick(self) -> None:
        self.done += 1
        self._bar.update(1)
        if self._on_progress is not None:
            self._on_progress(self.done, self.total)

    def stop_now(self) -> bool:
        return self._should_stop is not None and self._should_stop()

    @property
    def should_stop(self) -> Callable[[], bool] | None:
        return self._should_stop

    def close(self) -> None:
        self._bar.close()

    def seconds(self) -> float:
        return round(time.time() - self.t0, 2)

    def stopped(self) -> dict:
        """The summary of an export stopped before its end."""
        self.close()
        return {"out": str(self.out), "complete": False, "done": self.done, "total": self.total,
                "written": self.written, "skipped": self.skipped, "seconds": self.seconds()}


def write_images(out: Path, items, image_format: str, jpeg_quality: int, prog: Progress) -> bool:
    """Write every item's file (`.src`, `.rel`, `.row`, optional `.keep_bytes`), filling its row's
    width, height and sha256; a file already holding the bytes is left alone. False when stopped."""
    for it in items:
        if prog.stop_now():
            return False
        raw = it.src.read_bytes()
        data = raw if getattr(it, "keep_bytes", False) else encode_image(raw, image_format, jpeg_quality, name=it.src)
        it.row["width"], it.row["height"] = load_rgb(it.src, data=data).size  # decoded: no damaged file is exported
        it.row["sha256"] = hashlib.sha256(data).hexdigest()
        dest = out / it.rel
        if dest.is_file() and dest.stat().st_size == len(data) and dest.read_bytes() == data:
            prog.skipped += 1
        else:
            write_bytes(dest, data)
            prog.written += 1
        prog.tick()
    return True


def synthetic_inputs(sources: list[SyntheticSource]) -> list[dict]:
    return [{"root": str(s.root.resolve()), "source": f"synthetic:{i}", "rows": len(s.rows), "generate": s.settings}
            for i, s in enumerate(sources)]


def image_counts(rows: list[dict]) -> dict:
    """Images in all and per modality, origin (real / synthetic) and source."""
    return {
        "images": len(rows),
        "per_modality": dict(sorted(Counter(r["modality"] for r in rows).items())),
        "per_origin": dict(sorted(Counter(r["origin"] for r in rows).items())),
        "per_source": dict(sorted(Counter(r["source"] for r in rows).items())),
    }
