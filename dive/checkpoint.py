"""The DiVE checkpoint: LoRA + identity embeddings + the token table, in formats other tools load.

A checkpoint folder holds::

    pytorch_lora_weights.safetensors  the UNet LoRA, diffusers' format: `pipe.load_lora_weights(dir)`
    learned_embeds.safetensors        {token: embedding} of every learned token:
                                      `pipe.load_textual_inversion(list(emb.values()), token=list(emb))`
    tokens.json                       the token table (identity token -> dataset, original id, image
                                      count; camera token -> dataset, camera, modality) and the prompt
                                      template: saved with every checkpoint, so a checkpoint is usable
                                      without any side file (the authors' code regenerated its camera
                                      strings at random and lost them)
    dive.json                         how it was trained (base model, config, step)
    infrared_lora_weights.safetensors only with `dive train --infrared-adapter`: a second UNet LoRA
                                      in the same format, on for infrared cameras only. Vanilla
                                      diffusers: `pipe.load_lora_weights(dir, weight_name=
                                      "infrared_lora_weights.safetensors", adapter_name="infrared")`,
                                      then `pipe.set_adapters(["dive", "infrared"])` for infrared
                                      prompts and `pipe.set_adapters(["dive"])` for visible ones
    text_encoder_lora.safetensors     only with `dive train --text-rank R` (an experiment, off by
                                      default): a LoRA on the text encoder's attention as plain
                                      {module.lora_A, module.lora_B} tensors, merged into the text
                                      encoder's weights by `load_into_pipeline`. A separate file
                                      because diffusers reads text-encoder LoRA keys through
                                      transformers' `load_adapter`, which needs peft >= 0.22 (the
                                      registry here has 0.21.2): vanilla diffusers ignores this file

Training, generation, export and the studio import this module; none of them imports the trainer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import re
import string
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

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
DEFAULT_TEMPLATE = "a {camera} photo of {identity} person"
CAMERA_MODES = ("string", "embedding", "both")


class CheckpointError(ValueError):
    """A folder is not a usable DiVE checkpoint; the message names the file and what was expected."""


@dataclass(frozen=True)
class IdentityToken:
    token: str
    dataset: str
    pid: int
    images: int
    split: str = "train"
    #: words the prompt adds after the template ("wearing a red shirt ..."; `dive train --captions`); "" none
    caption: str = ""


@dataclass(frozen=True)
class CameraToken:
    token: str
    dataset: str
    camid: int
    modality: str  # visible / infrared
    learned: bool = False  # True: a learned embedding row; False: a plain string read by the LoRA

    @property
    def label(self) -> str:
        return f"{self.dataset} cam{self.camid} ({self.modality})"


@dataclass
class TokenTable:
    identities: list[IdentityToken] = field(default_factory=list)
    cameras: list[CameraToken] = field(default_factory=list)
    template: str = DEFAULT_TEMPLATE
    camera_mode: str = "string"
    #: datasets trained with infrared images (the VI sets); the others are the external, visible-only
    #: ones to expand. Needed with one camera token per modality (dataset "all"); [] in older tables
    infrared_datasets: list[str] = field(default_factory=list)
    #: caption colour word -> the grey word an infrared camera shows it as (`dive infrared-words`);
    #: applied to captions in infrared prompts only. {}: captions are the same for every camera
    infrared_words: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._by_token = {t.token: t for t in [*self.identities, *self.cameras]}
        if len(self._by_token) != len(self.identities) + len(self.cameras):
            raise CheckpointError("token table: duplicate tokens")

    # -- lookups --------------------------------------------------------------------------------
    def identity(self, dataset: str, pid: int) -> IdentityToken:
        for t in self.identities:
            if t.dataset == dataset and t.pid == pid:
                return t
        raise KeyError(f"no identity token for {dataset} id {pid}")

    def camera(self, dataset: str, camid: int) -> CameraToken:
        for t in self.cameras:
            if t.dataset == dataset and t.camid == camid:
                return t
        raise KeyError(f"no camera token for {dataset} camera {camid}")

    def get(self, token: str) -> IdentityToken | CameraToken:
        try:
            return self._by_token[token]
        except KeyError:
            raise KeyError(f"unknown token {token!r}") from None

    def is_external(self, dataset: str) -> bool:
        """True for a visible-only dataset (the one to expand), False for a VI set. Tables without
        `infrared_datasets` tell by the camera tokens; with one token per modality they cannot, and say so."""
        if self.infrared_datasets:
            return dataset not in self.infrared_datasets
        if any(c.dataset == dataset and c.modality == "infrared" for c in self.cameras):
            return False
        if any(c.dataset == "all" for c in self.cameras):
            raise CheckpointError(f"{TOKENS_FILE}: one camera token per modality and no 'infrared_datasets', so VI and "
                                  "external identities cannot be told apart; add \"infrared_datasets\": [\"<VI dataset "
                                  "name>\"] to it (the trainer writes it since session 12)")
        return True

    def describes_same_tokens(self, other: "TokenTable") -> bool:
        """Same identities, cameras, template and camera mode. `infrared_datasets` is derived from
        the same data, so a table written before it existed (empty) still matches one that has it:
        older runs resume, serve as --init-from and package."""
        mine, theirs = self.to_dict(), other.to_dict()
        if not (self.infrared_datasets and other.infrared_datasets):
            mine.pop("infrared_datasets", None)
            theirs.pop("infrared_datasets", None)
        return mine == theirs

    def infrared_cameras(self) -> list[CameraToken]:
        return [c for c in self.cameras if c.modality == "infrared"]

    def prompt(self, identity: str | IdentityToken, camera: str | CameraToken) -> str:
        """The template filled in, followed by ", " + the identity's caption when it has one; for
        an infrared camera the caption's colour words become their `infrared_words`."""
        if not isinstance(identity, IdentityToken):
            identity = self._by_token.get(identity, identity)
        if not isinstance(camera, CameraToken):
            camera = self._by_token.get(camera, camera)
        idt = identity.token if isinstance(identity, IdentityToken) else identity
        cam = camera.token if isinstance(camera, CameraToken) else camera
        text = self.template.format(identity=idt, camera=cam)
        caption = identity.caption if isinstance(identity, IdentityToken) else ""
        if caption and self.infrared_words and isinstance(camera, CameraToken) and camera.modality == "infrared":
            caption = self.infrared_caption(caption)
        return f"{text}, {caption}" if caption else text

    def infrared_caption(self, caption: str) -> str:
        """`caption` with every colour word replaced by its infrared grey word (all at once)."""
        if not self.infrared_words:
            return caption
        pattern = r"\b(" + "|".join(map(re.escape, sorted(self.infrared_words, key=len, reverse=True))) + r")\b"
        return re.sub(pattern, lambda m: self.infrared_words[m.group(1)], caption)

    @property
    def learned_tokens(self) -> list[str]:
        return [t.token for t in self.identities] + [c.token for c in self.cameras if c.learned]

    # -- I/O --------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "template": self.template,
            "camera_mode": self.camera_mode,
            # no "caption" key without a caption: token tables of caption-free runs stay as they were
            "identities": [{k: v for k, v in asdict(t).items() if k != "caption" or v} for t in self.identities],
            "cameras": [asdict(c) for c in self.cameras],
        } | ({"infrared_datasets": list(self.infrared_datasets)} if self.infrared_datasets else {}) | (
            {"infrared_words": dict(sorted(self.infrared_words.items()))} if self.infrared_words else {})

    @classmethod
    def from_dict(cls, d: dict, source: str = TOKENS_FILE) -> "TokenTable":
        try:
            return cls(
                identities=[IdentityToken(**t) for t in d["identities"]],
                cameras=[CameraToken(**c) for c in d["cameras"]],
                template=d.get("template", DEFAULT_TEMPLATE),
                camera_mode=d.get("camera_mode", "string"),
                infrared_datasets=list(d.get("infrared_datasets", [])),
                infrared_words=dict(d.get("infrared_words", {})),
            )
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{source}: malformed token table ({err}); expected 'identities' and 'cameras' lists") from None

    def save(self, path: str | Path) -> None:
        from dive.utils.io import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "TokenTable":
        from dive.utils.io import read_json

        d = read_json(path, missing="a DiVE checkpoint needs its token table", error=CheckpointError,
                      missing_error=CheckpointError)
        return cls.from_dict(d, source=str(path))


def identity_token_name(dataset: str, pid: int) -> str:
    """`<dataset-pid>`, lower case (CLIP's tokenizer lower-cases text before matching tokens)."""
    return f"<{dataset.lower()}-{pid:04d}>"


def random_camera_strings(n: int, seed: int, length: int = 8) -> list[str]:
    """`n` distinct rare strings (e.g. 'b8zbxkoh'), fixed by the seed, as the paper's identifiers."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 8675309]))
    alphabet = np.array(list(string.ascii_lowercase + string.digits))
    out: list[str] = []
    while len(out) < n:
        s = "".join(rng.choice(alphabet, size=length))
        if s not in out and not s.isdigit():
            out.append(s)
    return out


# -------------------------------------------------------------------------------------------------
# Reading and writing checkpoints
# -------------------------------------------------------------------------------------------------


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
    differ in their first bytes (and did: session 20)."""
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
    from safetensors.torch import save_file

    from dive.utils.io import atomic_path, write_json

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
        (tmp_dir / name).replace(directory / name)
        tmp_dir.rmdir()
    with atomic_path(directory / EMBEDS_FILE) as tmp:
        save_file({t: embeddings[t].detach().float().contiguous().clone() for t in table.learned_tokens}, str(tmp),
                  metadata={"format": "dive-learned-embeds", "tokens": str(len(table.learned_tokens))})
    if text_lora:
        with atomic_path(directory / TEXT_LORA_FILE) as tmp:
            save_file({k: v.detach().float().contiguous().clone() for k, v in text_lora.items()}, str(tmp),
                      metadata={"format": "dive-text-lora", "lora_alpha": str(text_lora_alpha)})
    else:
        (directory / TEXT_LORA_FILE).unlink(missing_ok=True)
    write_json(directory / META_FILE, meta)
    table.save(directory / TOKENS_FILE)  # last: its presence marks the checkpoint complete
    return directory


def has_infrared_adapter(directory: str | Path) -> bool:
    return (Path(directory) / INFRARED_LORA_FILE).exists()


_REPO_ROOT = Path(__file__).resolve().parents[1]


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


_LORA_SUFFIXES = {".lora.down.weight": "in", ".lora_A.weight": "in", ".lora.up.weight": "out", ".lora_B.weight": "out"}


def check_lora_fits(unet, path: str | Path, *, trained_on: str = "") -> None:
    """Refuse, with the layer and both shapes named, a UNet LoRA file made for another base (e.g. a
    checkpoint of the 32/64/128 base loaded onto a wider one); diffusers would fail deep inside peft.
    Only the file's header is read."""
    from safetensors import safe_open

    modules = dict(unet.named_modules())
    hint = f"; it was trained on {trained_on}: pass that base" if trained_on else "; pass the base it was trained on"
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            if not key.startswith("unet."):
                continue
            suffix = next((k for k in _LORA_SUFFIXES if key.endswith(k)), None)
            if suffix is None:
                continue
            name, side = key[len("unet."):-len(suffix)], _LORA_SUFFIXES[suffix]
            module = modules.get(name)
            if module is None:
                raise CheckpointError(f"{path}: LoRA layer {name!r} is not in this base's UNet{hint}")
            shape = f.get_slice(key).get_shape()
            if side == "in":
                want, got = getattr(module, "in_features", getattr(module, "in_channels", None)), shape[1]
            else:
                want, got = getattr(module, "out_features", getattr(module, "out_channels", None)), shape[0]
            if want is not None and want != got:
                raise CheckpointError(f"{path}: LoRA layer {name!r} expects {got} {side}put features, this base's UNet "
                                      f"has {want}{hint}")


def load_into_pipeline(pipe, directory: str | Path, *, adapter_name: str = SHARED_ADAPTER) -> TokenTable:
    """Load a DiVE checkpoint into a diffusers SD pipeline with diffusers' own loaders. A checkpoint
    with an infrared adapter loads it as adapter "infrared", inactive: the caller switches it on for
    infrared cameras (see `dive.generate.pipeline.Generator`)."""
    from safetensors.torch import load_file

    directory = check_checkpoint_dir(directory)
    table = TokenTable.load(directory / TOKENS_FILE)
    emb = load_file(str(directory / EMBEDS_FILE))
    if set(emb) != set(table.learned_tokens):
        raise CheckpointError(f"{directory / EMBEDS_FILE}: holds {len(emb)} tokens, {TOKENS_FILE} lists "
                              f"{len(table.learned_tokens)} learned tokens; the files do not belong together")
    trained_on = _named_base(directory)
    for name in (LORA_FILE, INFRARED_LORA_FILE):
        if (directory / name).exists():
            check_lora_fits(pipe.unet, directory / name, trained_on=trained_on)
    width = pipe.text_encoder.get_input_embeddings().weight.shape[1]
    got = {v.shape[-1] for v in emb.values()}
    if got and got != {width}:
        raise CheckpointError(f"{directory / EMBEDS_FILE}: token embeddings of width {sorted(got)}, this base's text "
                              f"encoder has width {width}; it was trained on {trained_on or 'another base'}")
    tokens = table.learned_tokens
    pipe.load_textual_inversion([emb[t] for t in tokens], token=tokens)
    with _quiet_expected_lora_notices(pipe):
        pipe.load_lora_weights(str(directory), weight_name=LORA_FILE, adapter_name=adapter_name)
        if has_infrared_adapter(directory):
            pipe.load_lora_weights(str(directory), weight_name=INFRARED_LORA_FILE, adapter_name=INFRARED_ADAPTER)
            pipe.set_adapters([adapter_name])
    if (directory / TEXT_LORA_FILE).exists():
        merge_text_lora(pipe.text_encoder, directory / TEXT_LORA_FILE)
    return table


# the diffusers modules that log "No LoRA keys associated to <text encoder>" while loading a UNet-only LoRA
_LORA_LOGGERS = ("diffusers.loaders.lora_base", "diffusers.loaders.lora_pipeline", "diffusers.loaders.peft")


@contextlib.contextmanager
def _quiet_expected_lora_notices(pipe):
    """Drop the two notices every DiVE checkpoint load used to print, and only those: diffusers'
    "No LoRA keys associated to <text encoder>" (DiVE's LoRA files are UNet-only by design; a text
    LoRA has its own file) and peft's "Already found a `peft_config`" (the infrared adapter is a
    second adapter on purpose). Anything else, such as a UNet with no matching keys, still shows."""
    text_notice = f"No LoRA keys associated to {type(pipe.text_encoder).__name__} "

    def keep(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(text_notice)

    loggers = [logging.getLogger(name) for name in _LORA_LOGGERS]
    for lg in loggers:
        lg.addFilter(keep)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Already found a `peft_config` attribute", category=UserWarning)
            yield
    finally:
        for lg in loggers:
            lg.removeFilter(keep)


def merge_text_lora(text_encoder, path: str | Path) -> None:
    """Add a `text_encoder_lora.safetensors` into the text encoder's linear weights in place:
    W += (alpha / r) * B @ A for each listed module (what a fused LoRA computes)."""
    import torch
    from safetensors import safe_open

    path = Path(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    if meta.get("format") != "dive-text-lora":
        raise CheckpointError(f"{path}: not a DiVE text-encoder LoRA (format {meta.get('format')!r})")
    alpha = float(meta.get("lora_alpha", 0))
    modules = dict(text_encoder.named_modules())
    names = sorted({k.rsplit(".", 1)[0] for k in tensors})
    for name in names:
        a, b = tensors.get(f"{name}.lora_A"), tensors.get(f"{name}.lora_B")
        mod = modules.get(name)
        if a is None or b is None or mod is None or not isinstance(mod, torch.nn.Linear):
            raise CheckpointError(f"{path}: {name} is not a linear layer of this text encoder with lora_A and lora_B")
        if tuple(b.shape) != (mod.out_features, a.shape[0]) or a.shape[1] != mod.in_features:
            raise CheckpointError(f"{path}: {name}: LoRA shapes {tuple(a.shape)}, {tuple(b.shape)} do not fit "
                                  f"a {mod.in_features}->{mod.out_features} layer")
        with torch.no_grad():
            mod.weight += (alpha / a.shape[0]) * (b @ a).to(device=mod.weight.device, dtype=mod.weight.dtype)
