"""The bench's world and the models that belong to it.

The shipped models (`dive.defaults`: the demo DiVE checkpoint, its Table 3 ablations, the CycleGAN
baseline, the caption reader's captions and infrared words) were all made from the default SynthVI
world (`dive data synth --seed 0` at the default sizes). On any other world, e.g. `dive bench
--world-seed 7 --out DIR`, none of them describes its people, so the bench makes that world's own:
its captions and infrared words (`dive caption`, `dive infrared-words`), the three DiVE
checkpoints with the demo's training recipe, and the CycleGAN baseline. Nothing is done by hand.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from dive import defaults
from dive.bench.config import QUICK_WORLD, BenchConfig

#: the seed of the world the shipped models were made from
SHIPPED_WORLD_SEED = 0
#: BenchConfig fields that default to a shipped model of the default world
SHIPPED_MODEL_FIELDS = ("checkpoint", "modality_checkpoint", "ir_only_checkpoint", "cyclegan")


def world_ready(data: Path) -> bool:
    """A finished SynthVI world is there (its synthvi.json is written last)."""
    return data.exists() and (data / "synthvi.json").exists()


def world_seed_of(cfg: BenchConfig) -> int:
    """The seed of the world the bench builds when `data` holds none (the shipped world's by default)."""
    return SHIPPED_WORLD_SEED if cfg.world_seed is None else cfg.world_seed


def world_config(cfg: BenchConfig):
    """The SynthConfig of the world the bench builds when `data` holds none."""
    from dive.data.synthvi.build import SynthConfig

    return SynthConfig(out=cfg.data, seed=world_seed_of(cfg), force=True, **(QUICK_WORLD if cfg.quick else {}))


def _world_settings(synth) -> dict:
    from dive.utils.config import config_to_dict

    return {k: v for k, v in config_to_dict(synth).items() if k not in ("out", "workers", "force")}


def is_shipped_world(cfg: BenchConfig) -> bool:
    """Whether the bench's world (built, or to be built) is the one the shipped models were made from:
    the default sizes at seed 0, as its synthvi.json records them."""
    from dive.data.synthvi.build import SynthConfig

    shipped = _world_settings(SynthConfig(out=Path("unused"), seed=SHIPPED_WORLD_SEED))
    if world_ready(cfg.data):
        recorded = json.loads((cfg.data / "synthvi.json").read_text()).get("config", {})
        return all(json.dumps(recorded.get(k)) == json.dumps(v) for k, v in shipped.items())
    return json.dumps(_world_settings(world_config(cfg))) == json.dumps(shipped)


def _is_shipped(path: Path | None) -> bool:
    if path is None:
        return False
    shipped = {(defaults.CHECKPOINTS / name).resolve() for name in defaults.SHIPPED.values()}
    shipped |= {defaults.shipped(name).resolve() for name in defaults.SHIPPED.values()}
    return Path(path).resolve() in shipped


def resolve_world(cfg: BenchConfig) -> BenchConfig:
    """`cfg` for its world: a --world-seed other than the shipped world's builds OUT/world (unless
    --data names a folder), and on a world that is not the shipped one every model field still
    pointing at a shipped model is cleared, so the bench trains that world's own."""
    if cfg.world_seed not in (None, SHIPPED_WORLD_SEED) and Path(cfg.data) == defaults.DATA:
        cfg = dataclasses.replace(cfg, data=cfg.out / "world")
    if world_ready(cfg.data) and cfg.world_seed is not None:
        recorded = json.loads((cfg.data / "synthvi.json").read_text()).get("config", {}).get("seed")
        if recorded != cfg.world_seed:
            raise ValueError(f"{cfg.data}: holds the SynthVI world of seed {recorded}, but --world-seed is "
                             f"{cfg.world_seed}; give --data a new folder (or leave --data out: OUT/world)")
    if is_shipped_world(cfg):
        return cfg
    cleared = {name: None for name in SHIPPED_MODEL_FIELDS if _is_shipped(getattr(cfg, name))}
    return dataclasses.replace(cfg, **cleared) if cleared else cfg


def ensure_world(cfg: BenchConfig) -> Path:
    from dive.bench.stages import log
    from dive.data.registry import detect_format
    from dive.data.synthvi.build import build_world

    if world_ready(cfg.data):
        fmt = detect_format(cfg.data)
        if fmt != "synthvi":
            raise ValueError(f"{cfg.data}: the bench needs a SynthVI world; found a {fmt} folder")
        return cfg.data
    if cfg.data.exists() and any(cfg.data.iterdir()):
        raise FileExistsError(f"{cfg.data}: not a SynthVI world (no synthvi.json) and not empty; "
                              "give --data a world or a new folder")
    log(f"building the SynthVI world (seed {world_seed_of(cfg)}) in {cfg.data}")
    build_world(world_config(cfg), progress=not cfg.quick)
    return cfg.data


def captions_dir(cfg: BenchConfig) -> Path:
    return cfg.out / "captions"


def captions_done(cfg: BenchConfig) -> bool:
    """This world's captions and infrared words are made (report.json and the words file are written last)."""
    from dive.caption.infrared import INFRARED_WORDS_FILE

    folder = captions_dir(cfg)
    return (folder / "report.json").exists() and (folder / INFRARED_WORDS_FILE).exists()


def ensure_captions(cfg: BenchConfig) -> dict[str, Path]:
    """The captions and infrared words the demo's recipe trains with: the shipped caption reader's on
    the shipped world; otherwise this world's own, made here (`dive caption`: the attribute reader
    trained on the world's web pool reads every identity; `dive infrared-words`: each colour word's
    infrared grey fitted on the VI set), in OUT/captions."""
    from dive.bench.stages import log
    from dive.caption.infrared import INFRARED_WORDS_FILE, InfraredWordsConfig, run_infrared_words
    from dive.caption.run import CAPTIONS_FILE, CaptionConfig, run_caption

    if is_shipped_world(cfg):
        reader = defaults.shipped(defaults.CAPTION_READER_NAME)
        return {"captions": reader / CAPTIONS_FILE, "infrared_words": reader / INFRARED_WORDS_FILE}
    folder = captions_dir(cfg)
    if not captions_done(cfg):
        log(f"captioning this world's identities ({cfg.caption_steps} reader steps) -> {folder}")
        web = json.loads((cfg.data / "synthvi.json").read_text()).get("images", {}).get("web", 0)
        run_caption(CaptionConfig(data=cfg.data, out=folder, steps=cfg.caption_steps, seed=0, threads=cfg.threads,
                                  holdout=min(1000, max(1, web // 4))), progress=not cfg.quick)
        run_infrared_words(InfraredWordsConfig(data=cfg.data, captions=folder / CAPTIONS_FILE,
                                               out=folder / INFRARED_WORDS_FILE), progress=not cfg.quick)
    return {"captions": folder / CAPTIONS_FILE, "infrared_words": folder / INFRARED_WORDS_FILE}


def demo_recipe(cfg: BenchConfig) -> dict:
    """The recipe a per-camera DiVE checkpoint the bench trains follows: the shipped demo's (its
    dive.json, less run settings), with this world's captions and infrared words and --dive-steps
    steps; the DiVETrainConfig defaults when the demo is not there."""
    from dive.bench.stages import variant_recipe

    demo = defaults.shipped(defaults.DEMO_NAME)
    recipe = variant_recipe(demo) if (demo / "dive.json").exists() else {}
    if recipe.get("captions") is not None:
        own = ensure_captions(cfg)
        recipe["captions"] = own["captions"]
        if recipe.get("infrared_words") is not None:
            recipe["infrared_words"] = own["infrared_words"]
    return recipe | {"steps": cfg.dive_steps, "warmup": min(recipe.get("warmup", 100), max(1, cfg.dive_steps // 4))}
