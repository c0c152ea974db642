"""Real images of an identity token, to show beside the generated ones: one visible and (where the
dataset has them) one infrared image per camera, read from the dataset the checkpoint was trained
on when that dataset lies inside the studio's data folder; else the checkpoint's own reference
strip (`references/`, written at training time)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from dive.checkpoint import CheckpointError, reference_path, training_config
from dive.studio.sandbox import StudioError


@dataclass
class RealImages:
    """Real images of one identity: (path, caption in words) pairs and where they come from."""

    items: list[tuple[Path, str]] = field(default_factory=list)
    source: str = ""  # "worlds/tiny" (a dataset, relative to the data folder), "reference strip" or ""
    who: str = ""  # "synthvi_vi #0003"

    def message(self) -> str:
        if not self.items:
            return f"no real images of {self.who or 'this identity'} at hand"
        if self.source == "reference strip":
            return f"real images of {self.who}: the checkpoint's reference strip (its training data is not in the data folder)"
        return f"real images of {self.who}: one per camera, from `{self.source}`, the dataset it was trained on"


def trained_on(ckpt: Path, sandbox) -> tuple[Path | None, dict]:
    """The dataset a checkpoint was trained on (its dive.json's config "data") when it lies inside the
    studio's data folder (an absolute path inside it, or a path relative to it); None otherwise.
    Also returns the training config (its "data_format", "external" ...)."""
    try:
        cfg = training_config(ckpt) or {}
    except CheckpointError:
        return None, {}
    return inside(cfg.get("data"), sandbox), cfg


def inside(path: str | None, sandbox) -> Path | None:
    """`path` (as a training config writes it) when it names an existing folder inside the data folder."""
    if not path:
        return None
    try:
        p = sandbox.resolve(str(path), must_exist=True)
    except StudioError:
        return None
    return p if p.is_dir() else None


class RealIndex:
    """Records of the datasets checkpoints were trained on, read once per dataset (and again when its
    folder changes), grouped by (dataset name, person id)."""

    def __init__(self, max_cached: int = 4):
        self._cache: OrderedDict[tuple, dict] = OrderedDict()
        self._lock = threading.Lock()
        self.max_cached = max_cached

    def by_identity(self, data: Path, cfg: dict, sandbox) -> dict[tuple[str, int], list]:
        from dive.data.sources import load_sources

        external = inside(cfg.get("external"), sandbox)
        key = (str(data), _stamp(data), str(external), _stamp(external) if external else 0)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            vi, ext = load_sources(data, cfg.get("data_format"), external, cfg.get("external_format"))
        except (ValueError, OSError) as e:
            raise StudioError(f"{sandbox.relative(data)}: cannot read its real images "
                              f"({sandbox.scrub(str(e))})") from None
        groups: dict[tuple[str, int], list] = {}
        for r in sorted([*vi, *ext], key=lambda r: r.path):
            groups.setdefault((r.dataset, r.pid), []).append(r)
        with self._lock:
            self._cache[key] = groups
            while len(self._cache) > self.max_cached:
                self._cache.popitem(last=False)
        return groups


def _stamp(folder: Path) -> float:
    """A change marker of a dataset folder: the newest modification time of it and its top files."""
    try:
        return max([folder.stat().st_mtime, *(p.stat().st_mtime for p in folder.iterdir())])
    except OSError:
        return 0.0


def one_per_camera(records) -> list[tuple[Path, str]]:
    """The first image (by path) of each camera: visible cameras first, then infrared; captions in words."""
    first: dict[tuple[bool, int], object] = {}
    for r in records:
        first.setdefault((r.is_infrared, r.camid), r)
    return [(Path(r.path), f"cam{r.camid} · {r.modality.value} · real") for _, r in sorted(first.items())]


def real_images(ckpt: Path, table, token: str, sandbox, index: RealIndex) -> RealImages:
    """One real image per camera of `token`'s identity (see the module's docstring)."""
    try:
        t = table.get(token)
    except KeyError:
        raise StudioError(f"{token!r} is not a token of this checkpoint") from None
    if not hasattr(t, "pid"):
        raise StudioError(f"{token!r} is a camera token; pick an identity token")
    who = f"{t.dataset} #{t.pid:04d}"
    data, cfg = trained_on(ckpt, sandbox)
    if data is not None:
        items = one_per_camera(index.by_identity(data, cfg, sandbox).get((t.dataset, t.pid), []))
        if items:
            return RealImages(items, sandbox.relative(data), who)
    ref = reference_path(ckpt, token)
    if ref.exists():
        return RealImages([(ref, "reference strip · real")], "reference strip", who)
    return RealImages([], "", who)
