"""Atomic writes: every writer in the project goes through here, so a crash never leaves a
half-written file under its final name (a reader sees the old file or the new one, nothing else)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator

_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`.

    The temporary file lives in the same directory so the final `os.replace` is atomic.
    On an exception the temporary file is removed and `path` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the mode a normal open() would
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    """numpy arrays and scalars (metrics, counts) serialise as plain lists and numbers."""
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"object of type {type(o).__name__} is not JSON serializable")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def read_json(path: str | os.PathLike, *, missing: str, error: type[Exception] = ValueError,
              missing_error: type[Exception] = FileNotFoundError) -> Any:
    """The parsed JSON of `path`. A missing file raises `missing_error` ("{path}: missing; " +
    `missing`), invalid JSON raises `error`; both name the file."""
    path = Path(path)
    if not path.exists():
        raise missing_error(f"{path}: missing; {missing}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None


def save_image(path: str | os.PathLike, image, **save_kwargs) -> None:
    """Save a PIL image atomically; the format is taken from the final suffix."""
    path = Path(path)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".bmp": "BMP"}.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{path}: unsupported image suffix {path.suffix!r} (expected .jpg, .png or .bmp)")
    with atomic_path(path) as tmp:
        image.save(tmp, format=fmt, **save_kwargs)


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cast_safetensors(path: str | os.PathLike, dtype) -> Path:
    """Rewrite a safetensors file with its floating-point tensors stored as `dtype` (e.g. float16:
    half the size on disk), keeping its metadata header; loaders cast back to the model's dtype."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_rgb_tensor(paths, height: int, width: int, *, resize: bool = False, desc: str = "loading images"):
    """Images as one uint8 tensor (N, 3, height, width). A wrong size is resized when `resize`,
    otherwise an error naming the file."""
    import numpy as np
    import torch
    from PIL import Image
    from tqdm import tqdm

    paths = list(paths)
    out = torch.empty((len(paths), 3, height, width), dtype=torch.uint8)
    for i, path in enumerate(tqdm(paths, desc=desc, unit="img", leave=False)):
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (width, height):
                if not resize:
                    raise ValueError(f"{path}: image is {im.size[1]}x{im.size[0]}, expected {height}x{width}")
                im = im.resize((width, height), Image.Resampling.BICUBIC)
            out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out
