"""What ships under checkpoints/: every base loads in plain diffusers and keeps to its size limit;
every DiVE checkpoint names a shipped base it fits. Guards bases of several widths living side by side."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dive.checkpoint import LORA_FILE, check_checkpoint_dir, check_lora_fits, is_checkpoint_dir, trained_base

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints"
BASES = sorted(d for d in SHIPPED.iterdir() if (d / "model_index.json").exists())
DIVE = sorted(d for d in SHIPPED.iterdir() if is_checkpoint_dir(d))


def _size_mb(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6


def test_something_is_shipped():
    from dive import defaults

    assert [d.name for d in BASES] == [defaults.BASE_NAME]
    assert {d.name for d in DIVE} == {defaults.DEMO_NAME, defaults.ABLATION_MODALITY_NAME, defaults.ABLATION_IR_ONLY_NAME}
    assert all((SHIPPED / name).is_dir() for name in defaults.SHIPPED.values())


@pytest.mark.parametrize("base", BASES, ids=lambda d: d.name)
def test_shipped_base_loads_in_plain_diffusers(base):
    from diffusers import StableDiffusionPipeline

    assert _size_mb(base) <= 30
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    assert pipe.unet.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    image = pipe("a photo of a person", height=128, width=64, num_inference_steps=2, guidance_scale=1.0,
                 generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    assert image.shape == (128, 64, 3) and image.std() > 0


@pytest.mark.parametrize("ckpt", DIVE, ids=lambda d: d.name)
def test_shipped_dive_checkpoint_fits_the_base_it_names(ckpt):
    from diffusers import UNet2DConditionModel

    check_checkpoint_dir(ckpt)
    assert _size_mb(ckpt) <= 20
    base = trained_base(ckpt)
    assert base is not None and base.parent == SHIPPED.resolve(), f"{ckpt}: its base is not shipped"
    check_lora_fits(UNet2DConditionModel.from_pretrained(str(base / "unet")), ckpt / LORA_FILE)


def test_shipped_demo_names_infrared_colours_by_their_grey():
    """The demo was trained with `--infrared-words`: its infrared prompts carry the fitted grey
    words (tokens.json), its visible prompts the reader's colours."""
    from dive import defaults
    from dive.checkpoint import TOKENS_FILE, TokenTable

    table = TokenTable.load(SHIPPED / defaults.DEMO_NAME / TOKENS_FILE)
    assert set(table.infrared_words.values()) == {"black", "gray", "white"}
    ir = table.infrared_cameras()[0]
    vis = next(c for c in table.cameras if c.modality == "visible" and c.dataset == ir.dataset)
    renamed = [t for t in table.identities if table.infrared_caption(t.caption) != t.caption]
    assert len(renamed) > len(table.identities) // 2
    t = renamed[0]
    assert table.prompt(t, vis).endswith(t.caption)
    assert table.prompt(t, ir).endswith(table.infrared_caption(t.caption))


def test_bench_defaults_are_shipped_on_one_base_and_recipe(tmp_path):
    """`dive bench` from a clean clone must find its three DiVE checkpoints shipped (nothing to
    train) and accept them as one Table 3 set: the same base, the same recipe but for each variant's
    own change."""
    from dive.bench.config import BenchConfig
    from dive.bench.run import ensure_checkpoints
    from dive import defaults
    from dive.checkpoint import trained_base

    d = BenchConfig()
    repo = SHIPPED.parent
    cfg = BenchConfig(out=tmp_path, base=repo / d.base, checkpoint=repo / d.checkpoint,
                      modality_checkpoint=repo / d.modality_checkpoint,
                      ir_only_checkpoint=repo / d.ir_only_checkpoint)
    found = ensure_checkpoints(cfg)
    assert set(found) == {"camera", "modality", "ir-only"} and not (tmp_path / "dive").exists()
    assert found["camera"].resolve() == (SHIPPED / defaults.DEMO_NAME).resolve()
    assert {trained_base(p).resolve() for p in found.values()} == {cfg.base.resolve()}


#: the Hugging Face Hub refuses files over 10 MB pushed without Git LFS
HUB_FILE_LIMIT = 10_000_000


def test_every_committed_file_fits_a_space_without_lfs():
    """A Space can be pushed from the repository as it is: no tracked file over the Hub's limit
    (the base's UNet is sharded, which plain `from_pretrained` loads: the test above)."""
    import subprocess

    root = SHIPPED.parent
    files = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True).stdout.split(b"\0")
    sizes = {f.decode(): (root / f.decode()).stat().st_size for f in files if f and (root / f.decode()).is_file()}
    assert len(sizes) > 100
    assert {f: s for f, s in sizes.items() if s > HUB_FILE_LIMIT} == {}


def test_new_bases_are_saved_in_shards_under_the_hub_limit(tmp_path):
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel

    from dive.base.models import save_base

    base = BASES[0]
    pipe = StableDiffusionPipeline.from_pretrained(str(base), safety_checker=None, requires_safety_checker=False)
    pipe_parts = dict(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae, unet=pipe.unet)
    out = save_base(tmp_path / "base", **pipe_parts)
    shards = sorted((out / "unet").glob("*.safetensors"))
    assert len(shards) >= 2 and all(s.stat().st_size <= HUB_FILE_LIMIT for s in shards)
    assert pipe.unet.dtype == torch.float32  # the caller's module is not cast
    unet = UNet2DConditionModel.from_pretrained(str(out / "unet"), torch_dtype=torch.float16)
    ref = UNet2DConditionModel.from_pretrained(str(base / "unet"), torch_dtype=torch.float16)
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), ref.state_dict().values()))
