"""`dive baseline oracle`: the external identities' TRUE infrared images, drawn by the SynthVI
world's own renderer in the VI set's infrared cameras.

Only a SynthVI world can give them: it keeps every identity's attributes (`identities.json`) and
its generator config (`synthvi.json`), so the renderer can put an external person, never filmed in
infrared, in front of infrared camera 3 or 6 (that camera's background strip, gain, blur, noise;
garments at their NIR brightness = dye reflectance x material, which a visible image cannot show).
This is a ceiling, not a method: the identity Rank-1 and Fréchet distance a perfect generator would
reach with the same ReID features. It tells how far a generator is from what the metric can give,
and it is never one of the comparison training sets.

Same selection and folder as the other baselines (`dive.generate.sources`); each image's pose,
crop and noise come from (world seed, --seed, pid, camera, index), so the output is reproducible.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from dive.generate.sources import BaselineSelection, base_settings, finish_out, load_baseline_inputs, plan_jobs, prepare_out
from dive.utils.io import save_image


@dataclass
class OracleConfig(BaselineSelection):
    """True infrared renders of the external identities (SynthVI worlds only)."""

    material: str = field(default="", metadata={
        "help": "render every garment in this material instead of its own (e.g. denim): the ceiling of a generator "
                "that knows all a visible image shows (colours, patterns, shape) but not the materials, which only "
                "infrared reveals (empty: the true materials)"})
    nir_words: Path | None = field(default=None, metadata={
        "help": "a colour -> infrared word table (`dive infrared-words` output): every garment, shoe and accessory "
                "drawn at the mean NIR of the dyes that share its word, whatever its material: the ceiling of a "
                "generator that follows its infrared words perfectly and knows nothing finer"})


def word_nir_table(path: Path) -> dict[str, float]:
    """Dye -> the mean true NIR (`COLOR_NIR`, cotton) of every dye given the same infrared word."""
    from dive.data.synthvi.world import COLOR_NIR

    try:
        words = json.loads(Path(path).read_text())["words"]
    except (OSError, json.JSONDecodeError, KeyError) as err:
        raise ValueError(f"{path}: not a `dive infrared-words` table with a 'words' map ({err})") from None
    missing = sorted(set(COLOR_NIR) - set(words))
    if missing:
        raise ValueError(f"{path}: no infrared word for the colours {missing}")
    return {c: float(np.mean([COLOR_NIR[d] for d in COLOR_NIR if words[d] == words[c]])) for c in COLOR_NIR}


def _load_world(data: Path) -> tuple[dict, dict]:
    summary_path, ids_path = data / "synthvi.json", data / "identities.json"
    for p in (summary_path, ids_path):
        if not p.exists():
            raise FileNotFoundError(f"{p}: missing; the oracle needs a SynthVI world built by `dive data synth` "
                                    "(a real dataset has no renderer to ask)")
    return json.loads(summary_path.read_text())["config"], json.loads(ids_path.read_text())["external"]


def run_oracle(cfg: OracleConfig, *, progress: bool = True) -> Path:
    from dive.data.synthvi.build import background_strip
    from dive.data.synthvi.render import render_image
    from dive.data.synthvi.world import VI_CAMERAS, Identity

    inputs = load_baseline_inputs(cfg.data, cfg.format, cfg.external, cfg.external_format)
    if inputs.data_format != "synthvi":
        raise ValueError(f"{cfg.data}: a {inputs.data_format} dataset; the oracle renders SynthVI identities only")
    world, people = _load_world(cfg.data)
    if cfg.material:
        from dive.data.synthvi.world import MATERIALS

        if cfg.material not in MATERIALS:
            raise ValueError(f"material {cfg.material!r}: not a SynthVI material (one of {', '.join(MATERIALS)})")
        people = {k: {**p, "upper": {**p["upper"], "material": cfg.material},
                      "lower": {**p["lower"], "material": cfg.material}} for k, p in people.items()}
    garment_nir = word_nir_table(cfg.nir_words) if cfg.nir_words else None
    H, W, world_seed = int(world["height"]), int(world["width"]), int(world["seed"])
    jobs, keys, cams = plan_jobs(inputs, min_images=cfg.min_images, top_k=cfg.top_k, cameras=cfg.cameras, n=cfg.n,
                                 seed=cfg.seed, baseline="oracle")
    bad = [c for c in cams if c not in VI_CAMERAS or not VI_CAMERAS[c].infrared]
    if bad:
        raise ValueError(f"cameras {bad}: not infrared cameras of the SynthVI world "
                         f"(infrared: {sorted(c for c, s in VI_CAMERAS.items() if s.infrared)})")
    settings = base_settings("oracle", inputs, cams, keys, min_images=cfg.min_images, top_k=cfg.top_k, n=cfg.n,
                             seed=cfg.seed, height=H, width=W, world_seed=world_seed,
                             transform="SynthVI renderer: the identity's attributes in the infrared camera "
                                       "(a ceiling, not a method)"
                                       + (f"; every garment rendered as {cfg.material}" if cfg.material else "")
                                       + (f"; garments at their infrared word's mean NIR ({cfg.nir_words})"
                                          if cfg.nir_words else ""))
    prepare_out(cfg.out, settings, inputs.protected, cfg.force)
    strips = {c: background_strip(world_seed, "vi", VI_CAMERAS[c].scene, c, H, W) for c in cams}
    for job in tqdm(jobs, desc="oracle", unit="img", disable=not progress):
        r = job.row
        key = str(r["pid"])
        if key not in people:
            raise KeyError(f"{cfg.data / 'identities.json'}: no external identity {key}")
        rng = np.random.default_rng(np.random.SeedSequence([world_seed, cfg.seed, 4242, r["pid"], r["camid"], r["index"]]))
        img = render_image(Identity.from_dict(people[key]), VI_CAMERAS[r["camid"]], strips[r["camid"]], rng,
                           height=H, width=W, garment_nir=garment_nir)
        save_image(cfg.out / job.rel, Image.fromarray(img))
        r |= {"height": H, "width": W}
    return finish_out(cfg.out, jobs)
