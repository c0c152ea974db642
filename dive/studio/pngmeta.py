"""Images that carry their settings: every PNG the studio serves or zips holds

* a text chunk "parameters" in AUTOMATIC1111's convention (the prompt, an optional
  "Negative prompt:" line, then `Steps: N, Sampler: DPM++ 2M, CFG scale: G, Seed: S, Size: WxH,
  Model: NAME, Model hash: H, ...`), which A1111's PNG Info, ComfyUI and image viewers read;
* a text chunk "dive" with the same settings as JSON (seeds as strings: 63-bit seeds do not survive
  a float), which `read_settings` returns and the studio's "reuse settings" loads into its form.

The "Seed" of an image is its own seed (derived from the request seed, identity, camera and its
position, see `dive.generate.pipeline.image_seed`); "Request seed", "Batch size" and "Batch pos"
say which request drew it, so the same request redraws the same pixels.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin

import dive

SAMPLER = "DPM++ 2M"  # diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++"), A1111's name
PARAMETERS_KEY = "parameters"
DIVE_KEY = "dive"
#: settings the studio's form takes back from an image
FORM_KEYS = ("checkpoint", "identity", "camera", "request_seed", "steps", "guidance", "n", "action")


def a1111_parameters(s: dict) -> str:
    """The "parameters" text of one image's settings (AUTOMATIC1111's layout)."""
    fields = [("Steps", s["steps"]), ("Sampler", s["sampler"]), ("CFG scale", s["guidance"]), ("Seed", s["seed"]),
              ("Size", s["size"]), ("Model", s["checkpoint"]), ("Model hash", s["checkpoint_hash"]),
              ("Base", s.get("base", "")), ("Base hash", s.get("base_hash", "")),
              ("Request seed", s.get("request_seed", "")), ("Batch size", s.get("n", "")),
              ("Batch pos", s.get("index", "")), ("Identity token", s.get("identity", "")),
              ("Camera token", s.get("camera", ""))]
    if s.get("dtype", "fp32") != "fp32":  # weights in bf16 / fp16 draw slightly different pixels
        fields.append(("Dtype", s["dtype"]))
    if s.get("strength") is not None:
        fields.append(("Denoising strength", s["strength"]))
    fields.append(("Version", f"dive {s['version']}"))
    text = ", ".join(f"{k}: {_quote(v)}" for k, v in fields if v not in ("", None))
    neg = f"\nNegative prompt: {s['negative_prompt']}" if s.get("negative_prompt") else ""
    return f"{s['prompt']}{neg}\n{text}"


def _quote(v) -> str:
    t = str(v)
    return json.dumps(t) if ("," in t or ":" in t or "\n" in t) else t


def save_png(path: str | Path, image: np.ndarray | Image.Image, settings: dict) -> Path:
    """Write `image` as a PNG carrying `settings` (both chunks)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(PARAMETERS_KEY, a1111_parameters(settings))
    info.add_text(DIVE_KEY, json.dumps(settings, sort_keys=True))
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
    img.save(path, format="PNG", pnginfo=info)
    return Path(path)


def read_settings(path: str | Path) -> dict:
    """The settings a studio PNG carries; one clear error for any other file."""
    path = Path(path)
    try:
        with Image.open(path) as im:
            text = dict(getattr(im, "text", {}) or {}).get(DIVE_KEY)
    except (OSError, ValueError):
        raise ValueError(f"{path.name}: not an image; expected a PNG saved by DiVE Studio") from None
    if not text:
        raise ValueError(f"{path.name}: has no DiVE settings; expected a PNG saved by DiVE Studio (text chunk 'dive')")
    try:
        settings = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"{path.name}: its 'dive' text chunk is not JSON") from None
    missing = [k for k in ("prompt", "seed", "steps", "guidance", "checkpoint") if k not in settings]
    if missing:
        raise ValueError(f"{path.name}: its 'dive' settings lack {', '.join(missing)}")
    return settings


def parse_seed(text, *, what: str = "seed") -> int:
    """A seed typed or pasted as text: a whole number 0 <= s < 2**63 (no float rounding)."""
    t = str(text if text is not None else "").strip().replace("_", "")
    if t == "":
        return 0
    if isinstance(text, float) and not text.is_integer():
        raise ValueError(f"{what} must be a whole number, got {text!r}")
    if isinstance(text, float):
        t = str(int(text))
    if not t.isdigit():
        raise ValueError(f"{what} must be a whole number 0 .. 2^63-1, got {str(text)!r}")
    v = int(t)
    if v >= 2**63:
        raise ValueError(f"{what} must be below 2^63, got {t}")
    return v


def folder_hash(directory: str | Path) -> str:
    """Short content hash of a model folder (every file's relative path and bytes, sorted)."""
    h = hashlib.sha256()
    root = Path(directory)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(root)).encode() + b"\0")
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def version() -> str:
    return dive.__version__
