"""`dive infrared-words`: each caption colour word's grey level in infrared, measured on the VI set.

Why: with the visible captions in infrared prompts, the infrared camera's LoRA has to learn the
colour -> infrared-grey lookup itself, and at this scale it does not: the upper-garment grey of the
demo's generated infrared is 0-2% the person's and 98% the seed's (`research/ir_tone_probe.py`:
between-id share of variance 0.00 external, 0.02 VI ids, vs 0.43 in real infrared and 0.42 in the
same checkpoint's *visible* renders). A dye's infrared grey is not its visible luminance (SynthVI's
world, and real fabrics), but the VI set shows it: every VI id is captioned from its visible images
and photographed in infrared. Fitting each colour word's grey on those pairs and naming it with the
grey words the base already draws ("black", "gray", "white") turns an infrared prompt into words
the base composes: "red sweater" is written "white sweater" for an infrared camera
(`TokenTable.prompt`), for VI and external ids alike, so the LoRA only learns the camera's look.

Measurement: the mean grey of a fixed upper-body box and lower-body box of every infrared image of
the VI set's captioned ids (fractions of the frame; persons in ReID crops are centred), per id;
then least squares over ids, grey(part) = offset(part) + mean over the garment's named colours of
grey(colour). Colours are binned into the grey words by equal-width bins between the darkest and
the brightest fitted grey. Colour words elsewhere in a caption (hair, shoes, bags) take the same
word: a garment-based estimate, stated.

infrared_words.json: {"format": "dive-infrared-words/1", "words": {"red": "white", ...},
"greys": {"red": 0.61, ...}, "counts": {...}, "ids": N, "images": N, "boxes": {...}}.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dive.data.records import Record
from dive.utils.config import config_to_dict
from dive.utils.io import load_rgb, read_json, write_json

INFRARED_WORDS_FILE = "infrared_words.json"
INFRARED_WORDS_FORMAT = "dive-infrared-words/1"
#: garment slots of the project's caption grammar (`dive.data.synthvi.world.parse_caption`)
PARTS = ("upper", "lower")


@dataclass
class InfraredWordsConfig:
    """Each caption colour word's infrared grey, fitted on the VI set's captioned ids."""

    data: Path = field(metadata={"help": "the VI dataset (or a SynthVI world), as for dive train"})
    captions: Path = field(metadata={"help": "captions file of the same data (`dive caption`)"})
    out: Path = field(metadata={"help": "the infrared words file to write (.json)"})
    data_format: str | None = field(default=None, metadata={"help": "layout of --data (auto-detected)"})
    grey_words: tuple[str, ...] = field(default=("black", "gray", "white"), metadata={
        "help": "words for the grey levels, darkest first (words the base model draws)"})
    upper_box: tuple[float, float, float, float] = field(default=(0.27, 0.45, 0.36, 0.64), metadata={
        "help": "upper-garment box: top, bottom, left, right as fractions of the image"})
    lower_box: tuple[float, float, float, float] = field(default=(0.62, 0.80, 0.36, 0.64), metadata={
        "help": "lower-garment box: top, bottom, left, right as fractions of the image"})
    min_count: int = field(default=5, metadata={"help": "colours named for fewer garments are left unmapped"})


def box_mean(gray: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Mean of a (height, width) grey image in a box given as fractions (top, bottom, left, right)."""
    h, w = gray.shape
    t, b, left, r = box
    return float(gray[int(t * h):max(int(b * h), int(t * h) + 1), int(left * w):max(int(r * w), int(left * w) + 1)].mean())


def garment_colours(caption: str) -> dict[str, list[str]]:
    """The colours a caption names for each garment ({"upper": ["red", "white"], "lower": [...]})."""
    from dive.data.synthvi.world import parse_caption

    # `dive caption` writes the words after "person"; the grammar's parser wants the whole sentence
    slots = parse_caption(f"a photo of a tall medium person, {caption}")
    out = {}
    for part in PARTS:
        colours = [slots[f"{part}_color"]]
        if slots[f"{part}_pattern"] != "plain" and slots[f"{part}_color2"] not in ("-", colours[0]):
            colours.append(slots[f"{part}_color2"])
        out[part] = colours
    return out


def fit_colour_greys(rows: list[tuple[str, list[str], float]], min_count: int = 5) -> tuple[dict[str, float], dict[str, int]]:
    """Least squares grey(colour) from (part, colours, measured grey) rows, one offset per part.

    Colours named fewer than `min_count` times are dropped (their rows too). The greys are reported
    with the mean offset added back, so they read as image grey levels."""
    counts: dict[str, int] = defaultdict(int)
    for _, colours, _ in rows:
        for c in colours:
            counts[c] += 1
    names = sorted(c for c, n in counts.items() if n >= min_count)
    if len(names) < 2:
        raise ValueError(f"only {len(names)} colour(s) named at least {min_count} times; need 2 to tell greys apart")
    col = {c: i for i, c in enumerate(names)}
    parts = sorted({p for p, _, _ in rows})
    kept = [r for r in rows if all(c in col for c in r[1])]
    a = np.zeros((len(kept) + 1, len(names) + len(parts)))
    y = np.zeros(len(kept) + 1)
    for i, (part, colours, grey) in enumerate(kept):
        for c in colours:
            a[i, col[c]] += 1.0 / len(colours)
        a[i, len(names) + parts.index(part)] = 1.0
        y[i] = grey
    a[-1, :len(names)] = 1.0  # the colour greys sum to zero: the offsets carry the level
    coef, *_ = np.linalg.lstsq(a, y, rcond=None)
    level = float(np.mean(coef[len(names):]))
    return {c: float(coef[col[c]] + level) for c in names}, {c: counts[c] for c in names}


def grey_words_for(greys: dict[str, float], words: tuple[str, ...]) -> dict[str, str]:
    """Each colour's grey word: equal-width bins between the darkest and the brightest grey."""
    if len(words) < 2:
        raise ValueError(f"need at least 2 grey words, got {list(words)}")
    lo, hi = min(greys.values()), max(greys.values())
    span = max(hi - lo, 1e-9)
    return {c: words[min(int((g - lo) / span * len(words)), len(words) - 1)] for c, g in sorted(greys.items())}


def measure_rows(records: list[Record], captions: dict[str, str], cfg: InfraredWordsConfig, *,
                 progress: bool = True) -> tuple[list[tuple[str, list[str], float]], int, int]:
    """(part, colours, the id's mean grey in that part's box) for every captioned id with infrared images."""
    from dive.caption.run import caption_key

    per_id: dict[str, list[tuple[float, float]]] = defaultdict(list)
    infrared = [r for r in records if r.is_infrared and caption_key(r.dataset, r.pid) in captions]
    for r in tqdm(infrared, desc="infrared greys", unit="img", disable=not progress):
        gray = np.asarray(load_rgb(r.path).convert("L"), np.float32) / 255.0
        per_id[caption_key(r.dataset, r.pid)].append((box_mean(gray, cfg.upper_box), box_mean(gray, cfg.lower_box)))
    rows = []
    for key, vals in sorted(per_id.items()):
        try:
            named = garment_colours(captions[key])
        except ValueError as err:
            raise ValueError(f"{cfg.captions}: {key}: {err}; `dive infrared-words` reads captions in "
                             "`dive caption`'s grammar") from None
        for k, part in enumerate(PARTS):
            rows.append((part, named[part], float(np.mean([v[k] for v in vals]))))
    return rows, len(per_id), len(infrared)


def run_infrared_words(cfg: InfraredWordsConfig, *, progress: bool = True) -> Path:
    from dive.caption.run import load_captions
    from dive.data.sources import load_sources

    captions = load_captions(cfg.captions)
    vi, _ = load_sources(Path(cfg.data), cfg.data_format, None, None)
    rows, ids, images = measure_rows(vi, captions, cfg, progress=progress)
    if not ids:
        raise ValueError(f"{cfg.data}: no infrared image of a captioned id (captions: {cfg.captions}); the VI set "
                         "and the captions must be the same data's")
    greys, counts = fit_colour_greys(rows, cfg.min_count)
    words = grey_words_for(greys, tuple(cfg.grey_words))
    out = Path(cfg.out)
    write_json(out, {"format": INFRARED_WORDS_FORMAT, "words": words, "greys": {c: round(g, 4) for c, g in greys.items()},
                     "counts": counts, "ids": ids, "images": images,
                     "config": config_to_dict(cfg)})
    return out


def load_infrared_words(path: str | Path) -> dict[str, str]:
    """{colour word: grey word} from an infrared words file; clear errors naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / INFRARED_WORDS_FILE
    d = read_json(path, missing="expected a file written by `dive infrared-words`")
    words = d.get("words") if isinstance(d, dict) else None
    if not isinstance(words, dict) or d.get("format") != INFRARED_WORDS_FORMAT or not all(
            isinstance(k, str) and isinstance(v, str) and re.fullmatch(r"\w+", k) and re.fullmatch(r"\w+", v)
            for k, v in words.items()):
        raise ValueError(f"{path}: expected {{'format': '{INFRARED_WORDS_FORMAT}', 'words': {{colour: grey word}}}} "
                         "with single-word keys and values")
    return dict(words)


def report_lines(path: str | Path) -> list[str]:
    d = json.loads(Path(path).read_text())
    lines = [f"infrared words from {d['ids']} VI ids ({d['images']} infrared images):",
             "| colour | fitted infrared grey | garments named | infrared word |", "|---|---|---|---|"]
    for c, g in sorted(d["greys"].items(), key=lambda kv: kv[1]):
        lines.append(f"| {c} | {g:.3f} | {d['counts'][c]} | {d['words'][c]} |")
    return lines
