"""Atomic writes and the one image reader.

Every writer in the project goes through here, so a crash never leaves a half-written file under
its final name (a reader sees the old file or the new one, nothing else). Every image the package
reads goes through `load_rgb`, so a damaged or unusual file is either converted correctly or
refused with one line naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Any, Iterator

from dive.utils.errors import InputError

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


def canonical_safetensors(data: bytes) -> bytes:
    """The bytes of a safetensors file with its header written in one fixed order.

    safetensors' writer keeps the metadata in a hash map whose order changes from process to process,
    so one seed's weights would be saved as different bytes (same tensors, keys swapped in the
    header). The metadata keys are sorted here; the tensor entries and the data stay as written.
    """
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    ordered = {}
    if "__metadata__" in header:
        ordered["__metadata__"] = dict(sorted(header.pop("__metadata__").items()))
    ordered.update(header)
    text = json.dumps(ordered, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    return len(text).to_bytes(8, "little") + text + data[8 + n:]


def save_safetensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> Path:
    """Write `tensors` to `path` atomically, as the same bytes for the same tensors and metadata."""
    from safetensors.torch import save

    write_bytes(path, canonical_safetensors(save(tensors, metadata=metadata)))
    return Path(path)


def canonicalize_safetensors(path: str | os.PathLike) -> Path:
    """Rewrite a safetensors file another library wrote (e.g. diffusers' LoRA files) in canonical
    header order; a no-op where it already is."""
    path = Path(path)
    data = path.read_bytes()
    fixed = canonical_safetensors(data)
    if fixed != data:
        write_bytes(path, fixed)
    return path


def cast_safetensors(path: str | os.PathLike, dtype) -> Path:
    """Rewrite a safetensors file with its floating-point tensors stored as `dtype` (e.g. float16:
    half the size on disk), keeping its metadata header; loaders cast back to the model's dtype."""
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    tensors = {k: v.to(dtype) if v.is_floating_point() else v for k, v in tensors.items()}
    return save_safetensors(tensors, path, metadata)


#: the largest image `load_rgb` decodes, in pixels (width x height): 50 megapixels, far above any
#: person crop and below PIL's own decompression-bomb warning (about 89 MP)
MAX_PIXELS = 50_000_000

_EXPECTED = "expected a JPEG, PNG or BMP image"
_OPEN_LOCK = threading.Lock()


def _open_header(path: Path, data: bytes | None):
    """PIL's lazy open (header only). PIL's decompression-bomb warning is silenced for this call
    only: the pixel limit is checked by the caller, which refuses the image with a clear line."""
    from PIL import Image

    with _OPEN_LOCK, warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        return Image.open(io.BytesIO(data) if data is not None else path)


def _to_rgb(im):
    """An RGB copy of a fully loaded image, whatever its mode.

    16-bit greyscale ("I;16*") and 32-bit integer ("I", read as 0..65535, the way PNG and TIFF
    store 16-bit grey) are scaled to 8 bits by 255/65535; floats ("F") in [0, 1] are scaled by 255,
    larger ones are read as 0..255, or 0..65535 when above 255; anything with transparency (RGBA,
    LA, PA, P or L or RGB with a transparent colour) is composited over white; CMYK, YCbCr, LAB,
    HSV, L and 1 use PIL's conversions."""
    import numpy as np
    from PIL import Image

    mode = im.mode
    if mode.startswith("I") or mode == "F":
        a = np.asarray(im)
        if mode == "F" or a.dtype.kind == "f":
            a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
            top = float(a.max()) if a.size else 0.0
            if top <= 1.0:
                a = np.clip(a, 0.0, 1.0) * 255.0
            elif top <= 255.0:
                a = np.clip(a, 0.0, 255.0)
            else:
                a = np.clip(a, 0.0, 65535.0) * (255.0 / 65535.0)
        else:
            a = np.clip(a.astype(np.float64), 0, 65535) * (255.0 / 65535.0)
        g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.stack([g, g, g], axis=-1), "RGB")
    if "A" in mode or "a" in mode or "transparency" in im.info:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def as_rgb(im):
    """An image already in memory (an upload, a caller's PIL image) as RGB, converted the way
    `load_rgb` converts files (16-bit grey scaled, transparency over white)."""
    im.load()
    return im if im.mode == "RGB" else _to_rgb(im)


def load_rgb(path: str | os.PathLike, *, max_pixels: int | None = MAX_PIXELS, data: bytes | None = None):
    """The image at `path` as a fully decoded PIL image in mode RGB.

    `data` gives the file's bytes when they are already in memory (`path` then only names them in
    messages). Every failure is an `InputError` naming the file and what is wrong: missing, empty,
    not an image, truncated or otherwise undecodable, or larger than `max_pixels` (default
    `MAX_PIXELS`, 50 MP; checked from the header before any pixel is decoded; `None`: no limit of
    ours, PIL's decompression-bomb error still applies). Modes are converted as `_to_rgb` says;
    8-bit RGB images come back exactly as `Image.open(path).convert("RGB")` gives them.
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if data is None:
        if not path.is_file():
            raise InputError(f"{path}: no such file; {_EXPECTED}")
        size = path.stat().st_size
    else:
        size = len(data)
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes); {_EXPECTED}")
    try:
        im = _open_header(path, data)
    except UnidentifiedImageError:
        raise InputError(f"{path}: not an image PIL can read; {_EXPECTED}") from None
    except Image.DecompressionBombError as err:
        found = re.search(r"\((\d+) pixels\)", str(err))
        count = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "too many pixels"
        limit = min(max_pixels or Image.MAX_IMAGE_PIXELS * 2, Image.MAX_IMAGE_PIXELS * 2)
        raise InputError(f"{path}: {count}, over PIL's decompression-bomb limit; "
                         f"expected an image of at most {limit / 1e6:g} MP") from None
    except Exception as err:
        raise _damaged(path, err) from None
    with im:
        w, h = im.size
        if max_pixels is not None and w * h > max_pixels:
            raise InputError(f"{path}: {w}x{h} is {w * h / 1e6:.1f} MP, over the {max_pixels / 1e6:g} MP limit; "
                             f"expected a smaller image")
        if w * h == 0:
            raise InputError(f"{path}: image is {w}x{h}; {_EXPECTED} with at least one pixel")
        try:
            im.load()
            return _to_rgb(im)
        except Exception as err:
            raise _damaged(path, err) from None


def _damaged(path: Path, err: BaseException) -> InputError:
    reason = " ".join(str(err).split()) or type(err).__name__
    reason = reason if len(reason) <= 160 else reason[:157] + "..."
    what = "truncated image" if "truncat" in reason.lower() else "damaged image"
    return InputError(f"{path}: {what} ({reason}); expected a complete JPEG, PNG or BMP file")


def require_safetensors(base: str | os.PathLike, parts=("unet", "vae", "text_encoder")) -> None:
    """Refuse a diffusers folder whose model weights are not safetensors (e.g. .bin only): models
    load with `use_safetensors=True`, so pickled weights are never read; one line names the folder."""
    for part in parts:
        folder = Path(base) / part
        if not folder.is_dir() or any(folder.glob("*.safetensors")):
            continue
        found = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
        held = f" (it holds {', '.join(found)})" if found else ""
        raise InputError(f"{folder}: no .safetensors weights{held}; expected a diffusers folder saved with "
                         "safetensors (pickled weights are never loaded; convert them with save_pretrained "
                         "on a machine you trust)")


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
        im = load_rgb(path)
        if im.size != (width, height):
            if not resize:
                raise InputError(f"{path}: image is {im.size[1]}x{im.size[0]}, expected {height}x{width}")
            im = im.resize((width, height), Image.Resampling.BICUBIC)
        out[i] = torch.from_numpy(np.array(im)).permute(2, 0, 1)
    return out
