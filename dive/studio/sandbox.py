"""The studio's data folder: every path a user types is resolved inside it, or refused."""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from pathlib import Path


class StudioError(ValueError):
    """A user-facing error: shown in the UI as a message, never as a traceback."""


class Sandbox:
    """All files the studio reads from user input or writes live under `root`."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def resolve(self, user_path: str | os.PathLike, *, must_exist: bool = False) -> Path:
        """`user_path` relative to the data folder (absolute paths must point inside it too)."""
        text = str(user_path).strip()
        if not text:
            raise StudioError("empty path")
        if "\x00" in text:
            raise StudioError(f"{text!r}: invalid path")
        p = Path(text)
        candidate = (p if p.is_absolute() else self.root / p).resolve()
        if candidate != self.root and self.root not in candidate.parents:
            raise StudioError(f"{text}: outside the studio's data folder; paths must stay inside it")
        if must_exist and not candidate.exists():
            raise StudioError(f"{text}: does not exist in the studio's data folder")
        return candidate

    def owner_root(self, owner: str | None) -> Path:
        """Where a visitor's files live (public mode); the data folder itself for the local user."""
        return self.root / "visitors" / owner if owner else self.root

    def new_job_dir(self, kind: str, owner: str | None = None) -> Path:
        """A fresh per-job folder (exports, generations), unique across users and restarts; under
        the visitor's own folder when `owner` is given."""
        name = time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]
        d = self.owner_root(owner) / kind / name
        d.mkdir(parents=True, exist_ok=False)
        return d

    def relative(self, path: Path) -> str:
        return str(Path(path).resolve().relative_to(self.root))

    def scrub(self, text: str) -> str:
        """A message with the data folder's absolute path cut out: paths read relative to it."""
        text = text.replace(str(self.root) + os.sep, "")
        return text.replace(str(self.root), "the data folder")


def visitor_id(key: str) -> str:
    """A file-safe, unguessable-from-outside id for a browser visitor's key (public mode)."""
    return hashlib.sha256(f"dive-visitor:{key}".encode()).hexdigest()[:20]
