"""The token table: which learned token stands for which identity and camera, and the prompt
template that puts them into a sentence. Saved as `tokens.json` in every checkpoint."""

from __future__ import annotations

import re
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from dive.checkpoint.format import TOKENS_FILE, CheckpointError
from dive.data.records import Modality, whole_number

DEFAULT_TEMPLATE = "a {camera} photo of {identity} person"
CAMERA_MODES = ("string", "embedding", "both")
TEMPLATE_FIELDS = ("identity", "camera")


def check_template(template: str, source: str = TOKENS_FILE) -> str:
    """The prompt template if its placeholders are {identity} and {camera} only; else a
    CheckpointError naming `source` and the placeholder."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except (ValueError, TypeError) as err:
        raise CheckpointError(f"{source}: prompt template {template!r} is malformed ({err}); "
                              "expected text with {identity} and {camera}") from None
    unknown = [f for f in fields if f not in TEMPLATE_FIELDS]
    if unknown:
        raise CheckpointError(f"{source}: prompt template {template!r} has unknown placeholder {{{unknown[0]}}}; "
                              "expected only {identity} and {camera}")
    return template


@dataclass(frozen=True)
class IdentityToken:
    token: str
    dataset: str
    pid: int
    images: int
    split: str = "train"
    #: words the prompt adds after the template ("wearing a red shirt ..."; `dive train --captions`); "" none
    caption: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "pid", whole_number(self.pid, f"identity {self.token}: person id"))
        object.__setattr__(self, "images", whole_number(self.images, f"identity {self.token}: image count"))


@dataclass(frozen=True)
class CameraToken:
    token: str
    dataset: str
    camid: int
    modality: str  # visible / infrared
    learned: bool = False  # True: a learned embedding row; False: a plain string read by the LoRA

    def __post_init__(self) -> None:
        object.__setattr__(self, "camid", whole_number(self.camid, f"camera {self.token}: camera id"))
        try:
            Modality.parse(self.modality)
        except ValueError as err:
            raise ValueError(f"camera {self.token}: {err}") from None

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
        check_template(self.template, "token table")
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
                                  "name>\"] to it (the trainer writes it)")
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
        if isinstance(d, dict):
            check_template(d.get("template", DEFAULT_TEMPLATE), source)
        try:
            return cls(
                identities=[IdentityToken(**t) for t in d["identities"]],
                cameras=[CameraToken(**c) for c in d["cameras"]],
                template=d.get("template", DEFAULT_TEMPLATE),
                camera_mode=d.get("camera_mode", "string"),
                infrared_datasets=list(d.get("infrared_datasets", [])),
                infrared_words=dict(d.get("infrared_words", {})),
            )
        except CheckpointError:
            raise
        except (KeyError, TypeError) as err:
            raise CheckpointError(f"{source}: malformed token table ({err}); expected 'identities' and 'cameras' lists") from None
        except ValueError as err:
            raise CheckpointError(f"{source}: {err}") from None

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
