"""The checkpoint's files: their names, writing a checkpoint, its content hash, and finding the
base model it was trained on."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from dive.utils.errors import InputError

if TYPE_CHECKING:
    from dive.checkpoint.tokens import TokenTable

TOKENS_FILE = "tokens.json"
LORA_FILE = "pytorch_lora_weights.safetensors"
EMBEDS_FILE = "learned_embeds.safetensors"
META_FILE = "dive.json"
TEXT_LORA_FILE = "text_encoder_lora.safetensors"
INFRARED_LORA_FILE = "infrared_lora_weights.safetensors"
#: adapter names of the shared LoRA and the infrared adapter once loaded into a pipeline
SHARED_ADAPTER = "dive"
INFRARED_ADAPTER = "infrared"
REFERENCES_DIR = "references"  # optional: a strip of real images per identity (the studio shows it)


class CheckpointError(InputError):
    """A folder is not a usable DiVE checkpoint; the message names the file and what was expected."""


def read_safetensors(path: str | Path, *, finite: bool = True) -> tuple[dict, dict]:
    """(tensors, metadata) of a safetensors file, never unpickling anything. Every failure is a
    CheckpointError naming the file: not safetensors (a pickle or zip offered under the name, a
    damaged header, a truncated body), or, with `finite`, a floating tensor holding NaN or Inf."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    expected = "expected a safetensors file"
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; {expected}")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    n = int.from_bytes(head[:8], "little") if len(head) >= 8 else -1
    header_ok = n >= 2 and 8 + n <= size and head[8:9] == b"{"
    # a safetensors header length may itself start with 0x80: judge the magic bytes only without one
    if not header_ok and (head[:1] == b"\x80" or head[:2] == b"PK"):
        kind = "a pickle" if head[:1] == b"\x80" else "a zip archive (torch.save)"
        raise CheckpointError(f"{path}: {kind}, not safetensors; {expected} (pickled weights are never loaded)")
    if not header_ok:
        raise CheckpointError(f"{path}: damaged or not safetensors (header of {n} bytes in a file of {size}); {expected}")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        reason = " ".join(str(err).split())[:160]
        raise CheckpointError(f"{path}: damaged safetensors file ({reason}); {expected}") from None
    if finite:
        for key, t in tensors.items():
            if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                raise CheckpointError(f"{path}: tensor {key!r} holds NaN or Inf values; expected finite weights "
                                      "(did the training diverge?)")
    return tensors, metadata


def reference_path(directory: str | Path, token: str) -> Path:
    return Path(directory) / REFERENCES_DIR / (token.strip("<>").replace("/", "_") + ".jpg")


def check_checkpoint_dir(directory: str | Path) -> Path:
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory; expected a DiVE checkpoint folder")
    for name, what in ((TOKENS_FILE, "the token table"), (LORA_FILE, "the UNet LoRA weights"),
                       (EMBEDS_FILE, "the learned token embeddings")):
        if not (directory / name).exists():
            raise CheckpointError(f"{directory / name}: missing; a DiVE checkpoint needs {what}")
    return directory


def is_checkpoint_dir(directory: str | Path) -> bool:
    try:
        check_checkpoint_dir(directory)
        return True
    except CheckpointError:
        return False


def _hashed_bytes(path: Path) -> bytes:
    """A file's bytes as `checkpoint_hash` reads them: a safetensors header with its keys sorted.
    The library writes its metadata map in no fixed order, so the same tensors packaged twice could
    differ in their first bytes."""
    raw = path.read_bytes()
    if path.suffix != ".safetensors" or len(raw) < 8:
        return raw
    n = int.from_bytes(raw[:8], "little")
    try:
        header = json.loads(raw[8 : 8 + n])
    except ValueError:
        return raw
    return json.dumps(header, sort_keys=True).encode() + raw[8 + n :]


def checkpoint_hash(directory: str | Path) -> str:
    """Short content hash of the weights and token table: recorded in every exported manifest; the
    same tensors and tokens give the same hash however their files' headers were ordered."""
    h = hashlib.sha256()
    for name in (LORA_FILE, EMBEDS_FILE, TOKENS_FILE, TEXT_LORA_FILE, INFRARED_LORA_FILE):
        if name not in (TEXT_LORA_FILE, INFRARED_LORA_FILE) or (Path(directory) / name).exists():
            h.update(_hashed_bytes(Path(directory) / name))
    return h.hexdigest()[:16]


def save_checkpoint(directory: str | Path, *, lora_state: dict, embeddings: dict, table: TokenTable, meta: dict,
                    lora_rank: int, lora_alpha: int, target_modules: Iterable[str],
                    text_lora: dict | None = None, text_lora_alpha: int = 0,
                    infrared_lora_state: dict | None = None) -> Path:
    """Write a DiVE checkpoint. `lora_state`: peft UNet LoRA state dict (saved with peft's key names,
    under diffusers' "unet." prefix); `embeddings`: {token: 1-D tensor}; `text_lora`: {"<module>.lora_A": (r, in), "<module>.lora_B":
    (out, r)} of the text encoder, or None; `infrared_lora_state`: the infrared adapter's state
    dict, like `lora_state`, or None."""
    from diffusers import StableDiffusionPipeline
    from dive.utils.io import canonicalize_safetensors, save_safetensors, write_json

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    missing = [t for t in table.learned_tokens if t not in embeddings]
    if missing:
        raise CheckpointError(f"{directory}: embeddings missing for learned tokens {missing[:3]}")
    tmp_dir = directory / ".lora_tmp"
    for name, state in ((LORA_FILE, lora_state), (INFRARED_LORA_FILE, infrared_lora_state)):
        if not state:
            (directory / name).unlink(missing_ok=True)
            continue
        StableDiffusionPipeline.save_lora_weights(
            tmp_dir,
            # peft's own key names (lora_A / lora_B), which diffusers loads as they are: its older
            # "lora.down / lora.up" names cover attention layers only, so a LoRA that also holds convolutions
            # would be saved half in each format and lose its attention layers on loading
            unet_lora_layers={k: v.detach().contiguous() for k, v in state.items()},
            safe_serialization=True,
            weight_name=name,
            unet_lora_adapter_metadata={"r": lora_rank, "lora_alpha": lora_alpha, "target_modules": sorted(target_modules)},
        )
        canonicalize_safetensors(tmp_dir / name)  # diffusers writes its metadata in hash order
        (tmp_dir / name).replace(directory / name)
        tmp_dir.rmdir()
    save_safetensors({t: embeddings[t].detach().float().contiguous().clone() for t in table.learned_tokens},
                     directory / EMBEDS_FILE, {"format": "dive-learned-embeds", "tokens": str(len(table.learned_tokens))})
    if text_lora:
        save_safetensors({k: v.detach().float().contiguous().clone() for k, v in text_lora.items()},
                         directory / TEXT_LORA_FILE, {"format": "dive-text-lora", "lora_alpha": str(text_lora_alpha)})
    else:
        (directory / TEXT_LORA_FILE).unlink(missing_ok=True)
    write_json(directory / META_FILE, meta)
    table.save(directory / TOKENS_FILE)  # last: its presence marks the checkpoint complete
    return directory


def has_infrared_adapter(directory: str | Path) -> bool:
    return (Path(directory) / INFRARED_LORA_FILE).exists()


_REPO_ROOT = Path(__file__).resolve().parents[2]


def training_config(checkpoint: str | Path) -> dict:
    """The DiVETrainConfig a checkpoint was trained with, as its dive.json stores it."""
    path = Path(checkpoint) / META_FILE
    try:
        return json.loads(path.read_text())["config"]
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot read the training config ({err.__class__.__name__}: {err}); "
                              "expected the dive.json a DiVE run writes") from None


def _named_base(checkpoint: str | Path) -> str:
    """The base folder as a checkpoint's dive.json writes it ("" when it names none)."""
    try:
        return json.loads((Path(checkpoint) / META_FILE).read_text()).get("base", "")
    except (OSError, json.JSONDecodeError):
        return ""


def trained_base(checkpoint: str | Path, *, search: Iterable[str | Path] = ()) -> Path | None:
    """The base folder a checkpoint's dive.json names, if it is at hand: as written, relative to
    one of `search`, or relative to the repository (shipped checkpoints name shipped bases)."""
    named = _named_base(checkpoint)
    return find_base(named, search=search) if named else None


def find_base(name: str | Path, *, search: Iterable[str | Path] = ()) -> Path | None:
    """A base folder named as a dive.json names it: as written, relative to one of `search`, or
    relative to the repository; None when none of these is a diffusers folder."""
    for root in (Path(), *map(Path, search), _REPO_ROOT):
        cand = root / name
        if (cand / "model_index.json").exists():
            return cand.resolve()
    return None


def resolve_base(checkpoint: str | Path, base: str | Path | None = None) -> Path:
    """`base` if given, else the base the checkpoint was trained on (its dive.json), so a checkpoint
    finds its own base without the user naming it; a clear error when neither is at hand."""
    if base is not None:
        return Path(base)
    found = trained_base(checkpoint)
    if found is None:
        raise CheckpointError(f"{Path(checkpoint) / META_FILE}: names no base folder that is at hand; "
                              "pass --base (the diffusers SD-1.x folder it was trained on)")
    return found
