"""Does a folder of infrared images give each garment its dye's infrared tone, or its visible luminance?

SynthVI's infrared is near-infrared reflectance (`COLOR_NIR` x `MATERIAL_NIR`), deliberately
uncorrelated with visible luminance. For every image of a manifest folder (generated IR, grayscale
copies, the oracle's true renders), the mean grey level of a fixed upper-body box and of a fixed
lower-body box is compared, over identities, with the garment's true NIR value and with its visible
luminance (Pearson r, per-id means; patterned garments average their two colours). A folder that
draws infrared physics has r(NIR) high; grayscale copies have r(luminance) high by construction.
"id's share" is the between-identity share of the box's grey-level variance (an ICC): how much of a
garment's drawn tone belongs to the person rather than to the seed or the camera.
The boxes are fixed fractions of the 128x64 frame (persons are centred; scale varies by camera), so
the oracle's r(NIR) is the probe's own ceiling.

    python research/ir_tone_probe.py DIR [DIR ...]      (folders with manifest.jsonl; data/synthvi)
    MODALITY=visible python research/ir_tone_probe.py DIR   (the folder's visible images instead: a
                                                            generator that draws the person has r(luminance) high)
"""
from __future__ import annotations

import json
import os
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

from dive.caption.infrared import InfraredWordsConfig, box_mean
from dive.data.synthvi.world import COLORS, MATERIAL_NIR, nir_of, visible_luminance

DATA = Path("data/synthvi")
# the boxes `dive infrared-words` measures garments in (top, bottom, left, right as fractions)
UPPER_BOX = InfraredWordsConfig.__dataclass_fields__["upper_box"].default
LOWER_BOX = InfraredWordsConfig.__dataclass_fields__["lower_box"].default


def garment_targets(g: dict) -> tuple[float, float]:
    """(true NIR, visible luminance) of a garment, its two colours averaged when patterned."""
    cols = [g["color"]] if g["pattern"] == "plain" else [g["color"], g["color2"]]
    nir = float(np.mean([nir_of(c, g["material"]) for c in cols]))
    lum = float(np.mean([visible_luminance(COLORS[c]) for c in cols]))
    return nir, lum


def probe(folder: Path, people: dict, modality: str = "infrared") -> dict:
    per_id: dict[tuple[str, int], list[tuple[float, float]]] = defaultdict(list)
    for line in (folder / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        if row.get("modality") != modality:
            continue
        gray = np.asarray(Image.open(folder / row["path"]).convert("L"), np.float32) / 255.0
        per_id[(row["dataset"], int(row["pid"]))].append((box_mean(gray, UPPER_BOX), box_mean(gray, LOWER_BOX)))
    out = {"ids": len(per_id)}
    for part, k in (("upper", 0), ("lower", 1)):
        # how much of the tone is the person's (vs the seed's / camera's): between-id share of variance
        every = np.array([v[k] for vals in per_id.values() for v in vals])
        means = np.array([np.mean([v[k] for v in vals]) for vals in per_id.values()])
        within = np.mean([np.var([v[k] for v in vals]) for vals in per_id.values()])
        between = float(np.var(means) - within / np.mean([len(v) for v in per_id.values()]))
        out[f"{part}_id_share"] = max(0.0, between) / float(np.var(every))
        got, nir, lum = [], [], []
        for (ds, pid), vals in per_id.items():
            who = people["external" if ds.endswith("_ext") else "vi"][str(pid)]
            n, lu = garment_targets(who[part])
            got.append(np.mean([v[k] for v in vals]))
            nir.append(n)
            lum.append(lu)
        out[part] = {"r_nir": float(np.corrcoef(got, nir)[0, 1]), "r_luminance": float(np.corrcoef(got, lum)[0, 1])}
    return out


def main(folders: list[str]) -> None:
    people = json.loads((DATA / "identities.json").read_text())
    print(f"materials scale NIR by {min(MATERIAL_NIR.values())}-{max(MATERIAL_NIR.values())}; boxes: upper "
          f"{UPPER_BOX}, lower {LOWER_BOX} (top, bottom, left, right)")
    print("| folder | ids | upper r(NIR) | upper r(luminance) | upper: id's share of variance | lower r(NIR) | "
          "lower r(luminance) | lower: id's share |")
    print("|---|---|---|---|---|---|---|---|")
    for f in folders:
        res = probe(Path(f), people, os.environ.get("MODALITY", "infrared"))
        u, lo = res["upper"], res["lower"]
        print(f"| {f} | {res['ids']} | {u['r_nir']:.2f} | {u['r_luminance']:.2f} | {res['upper_id_share']:.2f} | "
              f"{lo['r_nir']:.2f} | {lo['r_luminance']:.2f} | {res['lower_id_share']:.2f} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
