"""SynthVI's world: who the people are, what the cameras see, and how infrared differs from light.

Rules (each one is what makes a later benchmark meaningful):

* Identity = a fixed set of attributes (`Identity`): body height and build, skin tone, hair colour
  and style, upper garment (colour, second colour, pattern, material, sleeve length), lower garment
  (colour, second colour, pattern, material, type: pants / shorts / skirt), shoes, and optional
  backpack, shoulder bag (left or right) and cap. Identities of one world are sampled so that any
  two differ in at least `MIN_ATTRIBUTE_DISTANCE` of the coarse attributes in `Identity.key()`:
  thousands are distinguishable in visible light.
* Infrared is near-infrared reflectance, not luminance: every dye colour has its own NIR value
  (`COLOR_NIR`) that is deliberately uncorrelated with its visible luminance (|r| < 0.3, checked by
  a test), scaled by the material (`MATERIAL_NIR`). Skin and hair have their own NIR brightness.
  So a grayscale copy of a visible image is a poor infrared image, while pattern (two NIR values),
  body shape, bare skin (shorts, short sleeves, which are bright in NIR) and accessories keep the
  identity recognisable across modalities.
* Cameras (`CameraSpec`) differ in scene (background), illumination gain, colour cast, gamma, blur,
  noise, viewpoint bias, occlusion rate and person scale; the two infrared cameras differ too
  (indoor: dark scene with warm lamps, sharper; outdoor: low-contrast gradient, blurrier, noisier).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# ---------------------------------------------------------------------------------------------
# Palette and the infrared "physics"
# ---------------------------------------------------------------------------------------------

COLORS: dict[str, tuple[float, float, float]] = {
    "black": (0.09, 0.09, 0.10),
    "white": (0.92, 0.92, 0.90),
    "gray": (0.50, 0.50, 0.52),
    "red": (0.80, 0.12, 0.12),
    "blue": (0.15, 0.35, 0.85),
    "navy": (0.10, 0.14, 0.38),
    "green": (0.15, 0.60, 0.22),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.95, 0.50, 0.10),
    "purple": (0.50, 0.20, 0.62),
    "pink": (0.96, 0.55, 0.70),
    "brown": (0.45, 0.28, 0.14),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)

#: near-infrared reflectance of each dye: a fixed property of the world, NOT its luminance
COLOR_NIR: dict[str, float] = {
    "black": 0.62,
    "white": 0.80,
    "gray": 0.30,
    "red": 0.86,
    "blue": 0.55,
    "navy": 0.70,
    "green": 0.50,
    "yellow": 0.58,
    "orange": 0.88,
    "purple": 0.74,
    "pink": 0.35,
    "brown": 0.80,
}

#: materials scale the dye's NIR reflectance (synthetic fibres and leather reflect less)
MATERIAL_NIR: dict[str, float] = {"cotton": 1.0, "denim": 0.82, "wool": 0.92, "synthetic": 0.66, "leather": 0.50}
MATERIALS: tuple[str, ...] = tuple(MATERIAL_NIR)

SKIN_TONES: dict[str, tuple[float, float, float]] = {
    "pale": (0.96, 0.80, 0.70),
    "light": (0.90, 0.70, 0.56),
    "tan": (0.76, 0.56, 0.40),
    "brown": (0.55, 0.38, 0.26),
    "dark": (0.34, 0.22, 0.15),
}
#: skin is bright in near-infrared whatever its visible tone (small spread only)
SKIN_NIR: dict[str, float] = {"pale": 0.95, "light": 0.93, "tan": 0.90, "brown": 0.88, "dark": 0.85}

HAIR_COLORS: dict[str, tuple[float, float, float]] = {
    "black": (0.07, 0.06, 0.06),
    "brown": (0.35, 0.22, 0.12),
    "blonde": (0.90, 0.78, 0.45),
    "red": (0.62, 0.22, 0.10),
    "gray": (0.66, 0.66, 0.66),
}
HAIR_NIR: dict[str, float] = {"black": 0.22, "brown": 0.48, "blonde": 0.70, "red": 0.58, "gray": 0.60}
HAIR_STYLES = ("short", "long", "ponytail", "bald")
BUILDS: dict[str, float] = {"slim": 0.85, "medium": 1.0, "broad": 1.18}
HEIGHTS: dict[str, float] = {"short": 0.90, "average": 0.95, "tall": 1.0}
UPPER_PATTERNS = ("plain", "hstripes", "vstripes", "checks", "logo", "twotone")
LOWER_PATTERNS = ("plain", "hstripes", "checks", "twotone")
LOWER_TYPES = ("pants", "shorts", "skirt")
SLEEVES = ("long", "short")
ACCESSORY_COLORS = ("black", "gray", "red", "blue", "navy", "green", "brown", "yellow", "white")
VIEWS = ("front", "back", "left", "right")

#: coarse attributes compared when requiring identities to differ
MIN_ATTRIBUTE_DISTANCE = 2


def visible_luminance(rgb: Sequence[float]) -> float:
    r, g, b = rgb
    return 0.299 * r + 0.587 * g + 0.114 * b


def nir_of(color: str, material: str) -> float:
    """Near-infrared brightness of a garment: dye reflectance scaled by material."""
    return COLOR_NIR[color] * MATERIAL_NIR[material]


# ---------------------------------------------------------------------------------------------
# Identities
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Garment:
    color: str
    color2: str
    pattern: str
    material: str


@dataclass(frozen=True)
class Identity:
    height: str
    build: str
    skin: str
    hair_color: str
    hair_style: str
    upper: Garment
    sleeves: str
    lower: Garment
    lower_type: str
    shoes: str
    backpack: str | None
    bag: str | None
    bag_side: str
    hat: str | None

    def key(self) -> tuple:
        """Coarse attributes a person would name; two identities must differ in several of them."""
        return (
            self.upper.color,
            self.upper.color2 if self.upper.pattern != "plain" else "-",
            self.upper.pattern,
            self.sleeves,
            self.lower.color,
            self.lower.pattern,
            self.lower_type,
            self.hair_style,
            self.hair_color if self.hair_style != "bald" else "-",
            self.backpack or "-",
            self.bag or "-",
            self.hat or "-",
            self.build,
            self.skin,
        )

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Identity":
        d = dict(d)
        d["upper"] = Garment(**d["upper"])
        d["lower"] = Garment(**d["lower"])
        return cls(**d)

    def caption(self, view: str | None = None) -> str:
        """A visible-light description in the small vocabulary the base model's tokenizer knows."""
        up = self.upper
        upper_word = "shirt" if self.sleeves == "short" else "sweater"
        upper = f"{up.color} {upper_word}" if up.pattern == "plain" else f"{up.color} and {up.color2} {up.pattern} {upper_word}"
        lo = self.lower
        lower_word = {"pants": "pants", "shorts": "shorts", "skirt": "skirt"}[self.lower_type]
        lower = f"{lo.color} {lower_word}" if lo.pattern == "plain" else f"{lo.color} and {lo.color2} {lo.pattern} {lower_word}"
        parts = [f"a photo of a {self.height} {self.build} person"]
        if view is not None:
            parts.append(f"seen from the {'side' if view in ('left', 'right') else view}")
        parts.append(f"wearing a {upper} and {lower} and {self.shoes} shoes")
        if self.hair_style == "bald":
            parts.append("bald")
        else:
            parts.append(f"with {self.hair_style} {self.hair_color} hair")
        extras = []
        if self.backpack:
            extras.append(f"a {self.backpack} backpack")
        if self.bag:
            extras.append(f"a {self.bag} bag")
        if extras:
            parts.append("carrying " + " and ".join(extras))
        if self.hat:
            parts.append(f"wearing a {self.hat} cap")
        return ", ".join(parts)


#: what a captioner can read off a visible image, as slots of `Identity.caption` ("-": none / not shown)
CAPTION_SLOTS: dict[str, tuple[str, ...]] = {
    "height": tuple(HEIGHTS),
    "build": tuple(BUILDS),
    "upper_color": COLOR_NAMES,
    "upper_color2": ("-", *COLOR_NAMES),
    "upper_pattern": UPPER_PATTERNS,
    "sleeves": SLEEVES,
    "lower_color": COLOR_NAMES,
    "lower_color2": ("-", *COLOR_NAMES),
    "lower_pattern": LOWER_PATTERNS,
    "lower_type": LOWER_TYPES,
    "shoes": ("black", "white", "brown", "gray", "red", "blue"),
    "hair_style": HAIR_STYLES,
    "hair_color": ("-", *HAIR_COLORS),
    "backpack": ("-", *ACCESSORY_COLORS),
    "bag": ("-", *ACCESSORY_COLORS),
    "hat": ("-", *ACCESSORY_COLORS),
}

_GARMENT = r"(?P<{g}_color>\w+)(?: and (?P<{g}_color2>\w+) (?P<{g}_pattern>\w+))?"
_CAPTION_RE = re.compile(
    r"a photo of a (?P<height>\w+) (?P<build>\w+) person(?:, seen from the \w+)?"
    r", wearing a " + _GARMENT.format(g="upper") + r" (?P<upper_word>shirt|sweater)"
    r" and " + _GARMENT.format(g="lower") + r" (?P<lower_type>pants|shorts|skirt) and (?P<shoes>\w+) shoes"
    r", (?:(?P<bald>bald)|with (?P<hair_style>\w+) (?P<hair_color>\w+) hair)"
    r"(?:, carrying (?:a (?P<backpack>\w+) backpack)?(?: and )?(?:a (?P<bag>\w+) bag)?)?"
    r"(?:, wearing a (?P<hat>\w+) cap)?")


def parse_caption(caption: str) -> dict[str, str]:
    """The slots (`CAPTION_SLOTS`) of a caption written by `Identity.caption`: the labels a
    captioner learns from the web pool. Raises ValueError for text of any other form."""
    m = _CAPTION_RE.fullmatch(caption.strip())
    if m is None:
        raise ValueError(f"not a SynthVI caption: {caption!r}")
    g = m.groupdict()
    slots = {
        "height": g["height"], "build": g["build"],
        "upper_color": g["upper_color"], "upper_color2": g["upper_color2"] or "-", "upper_pattern": g["upper_pattern"] or "plain",
        "sleeves": "short" if g["upper_word"] == "shirt" else "long",
        "lower_color": g["lower_color"], "lower_color2": g["lower_color2"] or "-", "lower_pattern": g["lower_pattern"] or "plain",
        "lower_type": g["lower_type"], "shoes": g["shoes"],
        "hair_style": "bald" if g["bald"] else g["hair_style"], "hair_color": "-" if g["bald"] else g["hair_color"],
        "backpack": g["backpack"] or "-", "bag": g["bag"] or "-", "hat": g["hat"] or "-",
    }
    for slot, value in slots.items():
        if value not in CAPTION_SLOTS[slot]:
            raise ValueError(f"caption {caption!r}: {slot} {value!r} is not one of {CAPTION_SLOTS[slot]}")
    return slots


def caption_slots(identity: Identity) -> dict[str, str]:
    """An identity's caption slots (what its visible images show; materials, skin and bag side are not named)."""
    return parse_caption(identity.caption())


def describe(slots: dict[str, str]) -> str:
    """The words after "person" in `Identity.caption` for these slots ("wearing a red shirt and ..."):
    how a DiVE prompt names what an identity looks like. A second colour of a plain garment, the hair
    colour of a bald person and a second colour equal to the first are ignored, as in the world."""
    def garment(part: str) -> Garment:
        color, color2 = slots[f"{part}_color"], slots[f"{part}_color2"]
        pattern = slots[f"{part}_pattern"]
        if pattern != "plain" and color2 in ("-", color):
            pattern = "plain"  # a two-colour pattern needs two colours
        return Garment(color, color2 if pattern != "plain" else color, pattern, "cotton")

    ident = Identity(
        height=slots["height"], build=slots["build"], skin="light",
        hair_color=slots["hair_color"] if slots["hair_color"] != "-" else "black", hair_style=slots["hair_style"],
        upper=garment("upper"), sleeves=slots["sleeves"], lower=garment("lower"), lower_type=slots["lower_type"],
        shoes=slots["shoes"], backpack=None if slots["backpack"] == "-" else slots["backpack"],
        bag=None if slots["bag"] == "-" else slots["bag"], bag_side="left", hat=None if slots["hat"] == "-" else slots["hat"],
    )
    return ident.caption().split(", ", 1)[1]


def _sample_garment(rng: np.random.Generator, patterns: Sequence[str]) -> Garment:
    color = COLOR_NAMES[rng.integers(len(COLOR_NAMES))]
    others = [c for c in COLOR_NAMES if c != color]
    color2 = others[rng.integers(len(others))]
    pattern = patterns[rng.integers(len(patterns))]
    material = MATERIALS[rng.integers(len(MATERIALS))]
    return Garment(color, color2, pattern, material)


def sample_identity(rng: np.random.Generator) -> Identity:
    def pick(options, p=None):
        return options[rng.choice(len(options), p=p)]

    upper = _sample_garment(rng, UPPER_PATTERNS)
    lower = _sample_garment(rng, LOWER_PATTERNS)
    return Identity(
        height=pick(tuple(HEIGHTS)),
        build=pick(tuple(BUILDS)),
        skin=pick(tuple(SKIN_TONES)),
        hair_color=pick(tuple(HAIR_COLORS)),
        hair_style=pick(HAIR_STYLES, p=[0.40, 0.30, 0.18, 0.12]),
        upper=upper,
        sleeves=pick(SLEEVES),
        lower=lower,
        lower_type=pick(LOWER_TYPES, p=[0.6, 0.25, 0.15]),
        shoes=pick(("black", "white", "brown", "gray", "red", "blue")),
        backpack=pick(ACCESSORY_COLORS) if rng.random() < 0.35 else None,
        bag=pick(ACCESSORY_COLORS) if rng.random() < 0.25 else None,
        bag_side=pick(("left", "right")),
        hat=pick(ACCESSORY_COLORS) if rng.random() < 0.2 else None,
    )


def sample_identities(
    n: int, rng: np.random.Generator, *, existing: Sequence[Identity] = (), min_distance: int = MIN_ATTRIBUTE_DISTANCE
) -> list[Identity]:
    """`n` identities that differ from each other and from `existing` in >= `min_distance` coarse attributes."""
    keys = [ident.key() for ident in existing]
    # encode keys as small integers so the distance check is one vectorised comparison
    vocab: dict = {}

    def encode(key: tuple) -> np.ndarray:
        return np.array([vocab.setdefault((i, v), len(vocab)) for i, v in enumerate(key)], dtype=np.int32)

    mat = np.zeros((n + len(keys), len(Identity.__dataclass_fields__)), dtype=np.int32)
    width = None
    count = 0
    for key in keys:
        row = encode(key)
        width = len(row)
        mat[count, :width] = row
        count += 1
    out: list[Identity] = []
    attempts = 0
    while len(out) < n:
        attempts += 1
        if attempts > 200 * n + 1000:
            raise RuntimeError(f"could not sample {n} identities {min_distance} attributes apart; lower min_distance")
        cand = sample_identity(rng)
        row = encode(cand.key())
        width = len(row)
        if count and (np.count_nonzero(mat[:count, :width] != row, axis=1) < min_distance).any():
            continue
        mat[count, :width] = row
        count += 1
        out.append(cand)
    return out


# ---------------------------------------------------------------------------------------------
# Cameras
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CameraSpec:
    """What one camera does to every image it takes."""

    cam: int
    infrared: bool
    scene: str  # background family, see render.SCENES
    gain: float = 1.0  # illumination
    cast: tuple[float, float, float] = (1.0, 1.0, 1.0)  # colour cast (visible only)
    gamma: float = 1.0
    blur: float = 0.0  # gaussian sigma, pixels at 128x64
    noise: float = 0.01  # gaussian noise sigma (0..1 scale)
    view_probs: tuple[float, float, float, float] = (0.3, 0.3, 0.2, 0.2)  # front, back, left, right
    occlusion: float = 0.1  # probability of an occluder in front of the person
    scale: tuple[float, float] = (0.80, 0.94)  # person height / image height
    contrast: float = 1.0  # infrared: thermal contrast of the person against the scene
    offset: float = 0.0  # infrared: sensor offset (added after gain)

    @property
    def modality(self) -> str:
        return "infrared" if self.infrared else "visible"


#: the VI dataset's cameras, numbered as in SYSU-MM01 (1, 2, 4, 5 visible; 3, 6 infrared)
VI_CAMERAS: dict[int, CameraSpec] = {
    1: CameraSpec(1, False, "hall", gain=1.05, cast=(1.0, 1.0, 1.02), blur=0.3, noise=0.015,
                  view_probs=(0.45, 0.25, 0.15, 0.15), occlusion=0.05),
    2: CameraSpec(2, False, "corridor", gain=0.95, cast=(1.12, 1.0, 0.82), gamma=1.1, blur=0.6, noise=0.02,
                  view_probs=(0.2, 0.45, 0.175, 0.175), occlusion=0.12, scale=(0.74, 0.88)),
    3: CameraSpec(3, True, "ir_indoor", gain=1.0, blur=0.5, noise=0.03,
                  view_probs=(0.35, 0.35, 0.15, 0.15), occlusion=0.08, contrast=1.1, offset=0.0),
    4: CameraSpec(4, False, "street", gain=1.15, cast=(0.92, 1.0, 1.12), gamma=0.9, blur=0.4, noise=0.015,
                  view_probs=(0.15, 0.15, 0.35, 0.35), occlusion=0.15, scale=(0.78, 0.92)),
    5: CameraSpec(5, False, "park", gain=0.75, cast=(0.95, 1.08, 0.92), gamma=1.2, blur=0.8, noise=0.035,
                  view_probs=(0.3, 0.3, 0.2, 0.2), occlusion=0.12),
    6: CameraSpec(6, True, "ir_outdoor", gain=0.85, gamma=1.25, blur=1.1, noise=0.05,
                  view_probs=(0.2, 0.2, 0.3, 0.3), occlusion=0.12, contrast=0.8, offset=0.06, scale=(0.72, 0.88)),
}

#: the external visible-only dataset's cameras (a different campus, Market-1501 style)
EXTERNAL_CAMERAS: dict[int, CameraSpec] = {
    1: CameraSpec(1, False, "plaza", gain=1.1, cast=(1.0, 1.0, 0.95), blur=0.4, noise=0.02, view_probs=(0.4, 0.3, 0.15, 0.15)),
    2: CameraSpec(2, False, "street", gain=1.0, cast=(0.95, 1.0, 1.1), blur=0.5, noise=0.02, view_probs=(0.2, 0.4, 0.2, 0.2)),
    3: CameraSpec(3, False, "shop", gain=0.9, cast=(1.1, 1.0, 0.88), gamma=1.1, blur=0.5, noise=0.025, view_probs=(0.3, 0.3, 0.2, 0.2)),
    4: CameraSpec(4, False, "park", gain=1.2, cast=(1.0, 1.05, 0.95), gamma=0.9, blur=0.3, noise=0.015, view_probs=(0.25, 0.25, 0.25, 0.25)),
    5: CameraSpec(5, False, "plaza", gain=0.8, cast=(0.92, 0.98, 1.1), gamma=1.15, blur=0.7, noise=0.03, view_probs=(0.15, 0.15, 0.35, 0.35)),
    6: CameraSpec(6, False, "hall", gain=1.0, cast=(1.05, 1.02, 1.0), blur=0.6, noise=0.02, view_probs=(0.35, 0.35, 0.15, 0.15), scale=(0.72, 0.9)),
}

#: scene families the captioned web pool draws from (visible only, no infrared ever)
WEB_SCENES = ("hall", "corridor", "street", "park", "plaza", "shop")


def web_camera(rng: np.random.Generator) -> CameraSpec:
    """A random visible camera for one web image: any scene, any light."""
    cast = tuple(float(c) for c in rng.uniform(0.85, 1.15, size=3))
    return CameraSpec(
        cam=0,
        infrared=False,
        scene=WEB_SCENES[rng.integers(len(WEB_SCENES))],
        gain=float(rng.uniform(0.75, 1.2)),
        cast=cast,  # type: ignore[arg-type]
        gamma=float(rng.uniform(0.85, 1.2)),
        blur=float(rng.uniform(0.0, 0.8)),
        noise=float(rng.uniform(0.01, 0.03)),
        view_probs=(0.25, 0.25, 0.25, 0.25),
        occlusion=0.05,
        scale=(0.78, 0.94),
    )
