"""`dive bench` settings: one dataclass, the `--quick` toy preset, and `--from-sweep`'s reading of
a `dive bench-sweep` folder (its chosen setting, images and runs)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from dive import defaults
from dive.generate import DEFAULT_GUIDANCE
from dive.reid.config import METHODS

#: a toy world for `dive bench --quick` (a few identities, a few images each)
QUICK_WORLD = dict(vi_train_ids=8, vi_val_ids=2, vi_test_ids=6, vi_images_per_camera=(2, 3), ext_ids=10,
                   ext_median_images=6.0, ext_image_range=(4, 10), ext_test_ids=2, web_images=16)


#: the ReID recipes of Tables 1/2 unless --methods names others
DEFAULT_METHODS = ("agw", "caj")


@dataclass
class BenchConfig:
    """The paper's tables in miniature. CPU defaults (stated in every report): 6 generated images per
    infrared camera (paper 18), ReID as `dive reid run`'s defaults but with 6 epochs of the largest
    training set's AGW epoch for every run (equal budget: the baseline trains as many batches as
    + DiVE), 3 ReID seeds for Tables 1/2 and 1 for the ablations, comparison baselines with AGW only
    (Table 2: baseline vs + DiVE, as in the paper), the diagnostic rows off (--diagnostics adds
    them); the DiVE ablation checkpoints are trained by the bench when not shipped."""

    out: Path = field(default=defaults.RUNS / "bench", metadata={"help": "bench folder (resumable: finished stages are reused)"})
    data: Path = field(default=defaults.DATA, metadata={"help": "SynthVI world (built with --world-seed when missing)"})
    world_seed: int | None = field(default=None, metadata={
        "help": "seed of the world the bench builds when --data holds none (default 0: the world the shipped "
                "models were made from). Another seed builds OUT/world (unless --data names a folder), and on a "
                "world other than the shipped one the bench makes that world's own captions, infrared words, "
                "DiVE checkpoints and CycleGAN: no hand step"})
    base: Path = field(default=defaults.BASE, metadata={
        "help": "diffusers base folder the bench trains missing DiVE checkpoints on (a given checkpoint renders on its own base)"})
    checkpoint: Path | None = field(default=defaults.DEMO, metadata={
        "help": "DiVE checkpoint: per-camera tokens, both modalities (trained by the bench when missing). "
                "Default: the shipped demo (its Table 3 ablations below share its base and recipe)"})
    modality_checkpoint: Path | None = field(default=defaults.ABLATION_MODALITY, metadata={
        "help": "Table 3: one token per modality (trained by the bench when missing)"})
    ir_only_checkpoint: Path | None = field(default=defaults.ABLATION_IR_ONLY, metadata={
        "help": "Table 3: VI images of the infrared modality only (trained by the bench when missing)"})
    dive_steps: int = field(default=2000, metadata={
        "help": "steps of a per-camera DiVE checkpoint the bench has to train (with the shipped demo's recipe; "
                "ablations it trains copy the per-camera checkpoint's own recipe, steps included, from its dive.json)"})
    caption_steps: int = field(default=5000, metadata={
        "help": "caption reader steps when the bench captions a world other than the shipped one (the shipped "
                "reader's)"})
    min_images: int = field(default=12, metadata={"help": "external ids expanded: at least this many images (paper: >11)"})
    n_per_camera: int = field(default=6, metadata={"help": "generated images per id and infrared camera (paper: 18)"})
    gen_steps: int = field(default=25, metadata={"help": "DPM-Solver++ steps"})
    guidance: float = field(default=DEFAULT_GUIDANCE, metadata={"help": "classifier-free guidance scale"})
    gen_seed: int = field(default=0, metadata={"help": "generation / baseline seed"})
    gen_deep_cache: int = field(default=0, metadata={
        "help": "generate the + DiVE images with `dive generate --fast --deep-cache N` (faster, other images); 0: off"})
    translate_strength: float = field(default=0.0, metadata={
        "help": "also a '+ DiVE img2img' row (`dive translate` at this strength: the external ids' own visible "
                "images redrawn by the per-camera checkpoint; not the paper's method); 0: off"})
    cyclegan: Path | None = field(default=defaults.CYCLEGAN, metadata={
        "help": "trained CycleGAN baseline (generator.safetensors + generator.json; checked to be trained on --data's "
                "VI images); trained by the bench in OUT/cyclegan when the folder is missing"})
    cyclegan_steps: int = field(default=1300, metadata={"help": "CycleGAN baseline training steps"})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"help": "ReID seeds of Tables 1/2"})
    ablation_seeds: tuple[int, ...] = field(default=(0,), metadata={"help": "ReID seeds of Tables 3 and 5"})
    methods: tuple[str, ...] = field(default=DEFAULT_METHODS, metadata={
        "help": "ReID recipes of Tables 1/2 (agw, caj, deen; the paper's Table 1 has all three)"})
    id_counts: tuple[int, ...] = field(default=(64, 128), metadata={
        "help": "Table 5: expanded-id counts besides 0 and all (nested random subsets)"})
    reid_epochs: int = field(default=6, metadata={
        "help": "ReID epochs (0: dive reid run's default, 18); an epoch is AGW's epoch of the largest training "
                "set (--reid-budget equal) or of each set (own)"})
    reid_batches_per_epoch: int = field(default=0, metadata={
        "help": "ReID batches per epoch (0: AGW's epoch, visible training images // (P*K), so a training set "
                "with twice the images trains twice as long and each identity is seen as often)"})
    reid_budget: str = field(default="equal", metadata={
        "help": "equal: every ReID run trains as many batches as the largest training set's AGW epochs, so "
                "the baseline gets the same training as + DiVE and a gain is the data's, not extra batches; "
                "own: each set trains its own AGW epochs (an expanded set trains longer)",
        "choices": ["equal", "own"]})
    reid_converge_epochs: int = field(default=0, metadata={
        "help": "also train every Tables 1/2 row to convergence: up to N epochs (at the equal budget's epoch "
                "length), Rank-1 on the val ids checked every epoch, the weights of the epoch where it peaked "
                "kept (the budget the learning curve chose; never the test ids); rows '(converged)' and "
                "convergence-*.png; 0: off (about N/reid_epochs times the Tables 1/2 ReID time)"})
    comparisons_for: tuple[str, ...] = field(default=("agw",), metadata={
        "help": "ReID recipes also trained on the comparison baselines' sets; the others train on the "
                "baseline and + DiVE only (the paper's Table 2)"})
    diagnostics: bool = field(default=False, metadata={
        "help": "three extra AGW rows at the ablation seeds: the baseline trained for as many batches as "
                "+ DiVE, + the external ids' true infrared renders (the oracle: what a perfect generator "
                "would add; a ceiling, not a method), and + the same through the DiVE checkpoint's base "
                "VAE (what a perfect UNet on that base would add); off by default to keep the bench within "
                "2 hours (~15 minutes more: the first two took 6, the VAE row 10); the quick bench always has them"})
    synthetic_share: float | None = field(default=None, metadata={
        "help": "`dive reid run --synthetic-share` of the runs of every row with synthetic images (+ DiVE, "
                "grayscale, CycleGAN, ablations, diagnostics; not the baseline nor external RGB, whose added images "
                "are real photos): the share of each batch's ids that carry synthetic images; unset: ids drawn alike"})
    synthetic_weight: float = field(default=1.0, metadata={
        "help": "`dive reid run --synthetic-weight` of the same rows' runs: the loss weight of the synthetic images"})
    ablations: bool = field(default=True, metadata={
        "help": "Tables 3 and 5: the per-modality and infrared-only DiVE variants (their checkpoints, images and "
                "runs) and the id-count subsets; --no-ablations makes Tables 1/2 (and the diagnostics) only, e.g. "
                "to re-measure the claim with --from-sweep"})
    dive_images: Path | None = field(default=None, metadata={
        "help": "a finished folder of + DiVE images used instead of generating them: the per-camera checkpoint's "
                "images at the bench's settings, e.g. a sweep's filtered synthetic/filter-F (--from-sweep sets it "
                "when the sweep chose a filter)"})
    from_sweep: Path | None = field(default=None, metadata={
        "help": "a finished `dive bench-sweep` folder on the same world: its val-chosen setting (batch share, loss "
                "weight, images per id and camera, or guidance) replaces that option here; a chosen filter makes "
                "the sweep's filtered images the + DiVE images (--dive-images)"})
    records: Path | None = field(default=None, metadata={
        "help": "a lasting folder for the finished ReID runs' records (config, report, model.json, their LLCM and "
                "RegDB scores; Table 6's feature model with its weights): each kept as it finishes, taken back by "
                "a rerun in a fresh --out, so a bench can outlive its machine (dive.bench.records)"})
    reid_workers: int = field(default=2, metadata={"help": "ReID runs in parallel (one thread each)"})
    threads: int = field(default=2, metadata={"help": "torch threads of DiVE training and generation"})
    quick: bool = field(default=False, metadata={"help": "toy size: tiny world, few steps, one seed (< 10 minutes)"})
    projection: bool = field(default=True, metadata={
        "help": "before any stage runs, print the work left per stage and its projected time from unit costs "
                "measured by short probes (or read from this folder's runs), and write it to OUT/plan.json; "
                "the final tables.md compares it with the actual time"})

    def __post_init__(self) -> None:
        for name in ("out", "data", "base", "checkpoint", "modality_checkpoint", "ir_only_checkpoint", "cyclegan",
                     "dive_images", "from_sweep", "records"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        self.seeds, self.ablation_seeds = tuple(self.seeds), tuple(self.ablation_seeds)
        self.methods, self.id_counts = tuple(self.methods), tuple(self.id_counts)
        self.comparisons_for = tuple(self.comparisons_for)
        if not self.seeds:
            raise ValueError("seeds: at least one ReID seed is needed")
        bad = set(self.methods) - set(METHODS)
        if bad:
            raise ValueError(f"methods: unknown ReID recipe(s) {sorted(bad)}; expected some of {', '.join(METHODS)}")
        if self.reid_budget not in ("equal", "own"):
            raise ValueError(f"reid_budget must be 'equal' or 'own'; got {self.reid_budget!r}")
        if self.reid_converge_epochs < 0:
            raise ValueError(f"reid_converge_epochs must be >= 0; got {self.reid_converge_epochs}")
        if not 0.0 <= self.translate_strength <= 1.0:
            raise ValueError(f"translate_strength must be in [0, 1] (0: off); got {self.translate_strength}")
        if self.synthetic_share is not None and not 0.0 <= float(self.synthetic_share) <= 1.0:
            raise ValueError(f"synthetic_share must be in [0, 1] (unset: ids drawn alike); got {self.synthetic_share}")
        if not 0.0 <= float(self.synthetic_weight) < float("inf"):
            raise ValueError(f"synthetic_weight must be a finite number >= 0; got {self.synthetic_weight}")

    @property
    def synthetic_overrides(self) -> dict:
        """The ReID options of the runs of rows with synthetic images (empty at the defaults: the recipe is
        unchanged)."""
        out = {} if self.synthetic_share is None else {"synthetic_share": float(self.synthetic_share)}
        return out | ({} if float(self.synthetic_weight) == 1.0 else {"synthetic_weight": float(self.synthetic_weight)})


#: `dive bench-sweep` knob -> the bench option its chosen value sets
SWEEP_OPTIONS = {"share": "synthetic_share", "weight": "synthetic_weight", "n": "n_per_camera", "guidance": "guidance",
                 "deep_cache": "gen_deep_cache"}
#: the knobs that change the generation (each setting a `dive generate` folder of its own), and their types
GENERATION_KNOBS = {"n": int, "guidance": float, "deep_cache": int}
#: the knobs whose rows have images of their own (a generation or a filter)
IMAGE_KNOBS = (*GENERATION_KNOBS, "filter")


def knob_value(knob: str, value):
    """A sweep row's value as the bench option it sets takes it (images per id and deep-cache
    intervals are whole numbers)."""
    return GENERATION_KNOBS.get(knob, float)(value)


def with_sweep_choice(cfg: BenchConfig) -> BenchConfig:
    """`cfg` with `from_sweep`'s val-chosen setting applied (unchanged without one), and the sweep's
    images of that setting as the + DiVE images where the bench's checkpoint made them. Refused,
    naming the file: no finished sweep there, a sweep on another world, a knob the bench cannot
    apply, or a chosen filter of images the bench would not have made."""
    if cfg.from_sweep is None:
        return cfg
    path = Path(cfg.from_sweep) / "sweep.json"
    if not path.is_file():
        raise ValueError(f"{path}: not found; --from-sweep needs a finished `dive bench-sweep` folder")
    sweep = _read_json(path)
    if not _same_world(cfg, sweep):
        raise ValueError(f"{path}: the sweep chose on the world {sweep['world']}, this bench runs on {cfg.data}; "
                         "choose on the bench's own world (dive bench-sweep --bench DIR)")
    if sweep.get("chosen") is None:
        raise ValueError(f"{path}: the sweep chose no setting (it has no + DiVE row)")
    row = sweep["rows"][sweep["chosen"]]
    if row["knob"] == "filter":
        return dataclasses.replace(cfg, dive_images=_filtered_images(cfg, path, sweep, row))
    if row["knob"] != "dive" and row["knob"] not in SWEEP_OPTIONS:
        raise ValueError(f"{path}: the chosen setting is {row['knob']} {row['value']}, which the bench cannot apply "
                         f"(it applies {', '.join(SWEEP_OPTIONS)} and filter)")
    if row["knob"] != "dive":  # "dive": the bench's own settings were the best
        cfg = dataclasses.replace(cfg, **{SWEEP_OPTIONS[row["knob"]]: knob_value(row["knob"], row["value"])})
    # the sweep's images of that setting, when the bench would make the same (checked again on use)
    folder = _chosen_images(path, sweep, row)
    if cfg.dive_images is None and _same_checkpoint(cfg, sweep) and folder and (folder / "generate.json").is_file():
        cfg = dataclasses.replace(cfg, dive_images=folder)
    return cfg


def sweep_runs(cfg: BenchConfig) -> dict[str, Path]:
    """Bench training set -> the run folders of `cfg.from_sweep` (`{method}`, `{seed}` to fill in)
    whose finished runs of the same recipe the bench copies instead of training (`adopt_runs`): the
    baseline (the sweep ran on the bench's world), and + DiVE when the bench's + DiVE images are the
    sweep's images of its chosen row. Empty without --from-sweep or before `with_sweep_choice`."""
    path = None if cfg.from_sweep is None else Path(cfg.from_sweep) / "sweep.json"
    if path is None or not path.is_file():
        return {}
    sweep = _read_json(path)
    if sweep.get("chosen") is None or not _same_world(cfg, sweep):
        return {}
    row = sweep["rows"][sweep["chosen"]]
    runs = Path(cfg.from_sweep) / "reid"
    out = {"baseline": runs / "baseline-{method}-seed{seed}"}
    images = _chosen_images(path, sweep, row)
    if cfg.dive_images is not None and images and images.resolve() == Path(cfg.dive_images).resolve():
        out["dive-camera"] = runs / (row["name"] + "-{method}-seed{seed}")
    return out


def _read_json(path: Path) -> dict:
    import json

    return json.loads(path.read_text())


def _same_world(cfg: BenchConfig, sweep: dict) -> bool:
    return Path(sweep["world"]).resolve() == Path(cfg.data).resolve()


def _same_checkpoint(cfg: BenchConfig, sweep: dict) -> bool:
    return cfg.checkpoint is not None and Path(sweep["checkpoint"]).resolve() == Path(cfg.checkpoint).resolve()


def _chosen_images(path: Path, sweep: dict, row: dict) -> Path | None:
    """The sweep's images of its chosen row: the row's own folder (a generation of another n or
    guidance, or a filter), else the + DiVE images at the sweep's default settings."""
    if row["knob"] in IMAGE_KNOBS:
        return path.parent / "synthetic" / row["set"]
    return Path(sweep["dive_images"]) if sweep.get("dive_images") else None


def _filtered_images(cfg: BenchConfig, path: Path, sweep: dict, row: dict) -> Path:
    """The sweep's filtered + DiVE folder of a chosen filter row, when it filtered the images the
    bench would generate: the same per-camera checkpoint, images per id and camera, and guidance."""
    folder = _chosen_images(path, sweep, row)
    if not _same_checkpoint(cfg, sweep):
        raise ValueError(f"{path}: the sweep filtered the images of {sweep['checkpoint']}, this bench's per-camera "
                         f"checkpoint is {cfg.checkpoint}; give the bench that checkpoint (--checkpoint)")
    made = sweep.get("defaults", {})
    if (made.get("n"), made.get("guidance"), made.get("deep_cache", 0)) != (cfg.n_per_camera, cfg.guidance,
                                                                           cfg.gen_deep_cache):
        raise ValueError(f"{path}: the sweep filtered images made with n {made.get('n')}, guidance "
                         f"{made.get('guidance')}, deep cache {made.get('deep_cache', 0)}; this bench makes n "
                         f"{cfg.n_per_camera}, guidance {cfg.guidance:g}, deep cache {cfg.gen_deep_cache}")
    if not (folder / "manifest.jsonl").is_file():
        raise ValueError(f"{folder / 'manifest.jsonl'}: not found; the sweep's filtered images are missing")
    return folder


def quick_config(cfg: BenchConfig) -> BenchConfig:
    """The toy-size version of `cfg`: its own tiny world and DiVE checkpoints inside `out`, so a
    quick run never reads or writes the full-size ones (only the shipped base is shared). The
    default recipes shrink to AGW; recipes named with --methods are kept."""
    out = cfg.out
    return dataclasses.replace(
        cfg, data=out / "world", checkpoint=None, modality_checkpoint=None, ir_only_checkpoint=None, cyclegan=None,
        dive_steps=12, caption_steps=10, min_images=4, n_per_camera=2, gen_steps=8, cyclegan_steps=12, seeds=(0,),
        ablation_seeds=(0,), methods=("agw",) if cfg.methods == DEFAULT_METHODS else cfg.methods, id_counts=(3,), reid_epochs=2, reid_batches_per_epoch=0,
        reid_converge_epochs=3 if cfg.reid_converge_epochs else 0, diagnostics=True,
    )
