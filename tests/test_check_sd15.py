"""`dive check sd15 --size tiny`: the SD 1.5-shape path end to end on micro widths, through the CLI."""

import json

import numpy as np
import pytest
from PIL import Image

from dive.base.sd15 import IMAGE_SIZE, sd15_configs
from dive.check.sd15 import CheckSD15Config, check_sd15
from dive.checkpoint import EMBEDS_FILE, LORA_FILE, META_FILE, TOKENS_FILE, TokenTable
from dive.cli import main

STAGES = ["imports", "base", "world", "train-string", "train-embedding", "package", "vanilla-load-string",
          "vanilla-load-embedding", "generate", "attention", "export"]


def test_full_size_configs_are_sd15s_published_shapes():
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = sd15_configs("full")
    with torch.device("meta"):  # shapes only, no weights
        parts = {"unet": UNet2DConditionModel(**cfg["unet"]), "vae": AutoencoderKL(**cfg["vae"]),
                 "text": CLIPTextModel(CLIPTextConfig(**cfg["text"]))}
    counts = {k: sum(p.numel() for p in m.parameters()) for k, m in parts.items()}
    assert counts == {"unet": 859_520_964, "vae": 83_653_863, "text": 123_060_480}  # SD 1.5's part sizes
    assert tuple(cfg["unet"]["sample_size"]) == (64, 32) and IMAGE_SIZE["full"] == (512, 256)
    assert cfg["vae"]["scaling_factor"] == 0.18215 and cfg["text"]["vocab_size"] == 49408
    assert cfg["scheduler"]["prediction_type"] == "epsilon" and cfg["scheduler"]["beta_schedule"] == "scaled_linear"


@pytest.mark.slow
def test_tiny_check_runs_every_stage(tmp_path, capsys):
    work = tmp_path / "work"
    assert main(["check", "sd15", "--size", "tiny", "--work", str(work), "--gen-steps", "2", "--train-images", "4",
                 "--threads", "1", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    res = json.loads(next(line for line in out.splitlines() if line.startswith("{")))
    rows = {r["stage"]: r for r in res["stages"]}
    assert [r["stage"] for r in res["stages"]] == STAGES
    assert all(r["seconds"] >= 0 and r["peak_rss_mb"] > 50 for r in res["stages"])
    for name in STAGES:  # the printed table has a row per stage and a total
        assert any(line.startswith(name + " ") for line in out.splitlines())
    assert json.loads((work / "check-sd15.json").read_text())["stages"] == res["stages"]

    # base: SD 1.5's layout, CLIP's 49,408-token tokenizer and a text encoder of that many rows
    assert json.loads((work / "base" / "text_encoder" / "config.json").read_text())["vocab_size"] == 49408
    assert rows["base"]["parameters"]["text_encoder"] > 49408 * 32  # the token rows are in the weights
    assert len(json.loads((work / "base" / "tokenizer" / "vocab.json").read_text())) == 49408
    assert json.loads((work / "base" / "unet" / "config.json").read_text())["sample_size"] == [16, 8]

    # training: the identities (and, in embedding mode, the cameras) in one resize; LoRA on the four projections
    table = TokenTable.load(work / "train-embedding" / "final" / TOKENS_FILE)
    n_ids, n_cams = len(table.identities), len(table.cameras)
    assert n_ids == 6 and n_cams >= 4
    for mode, added in (("string", n_ids), ("embedding", n_ids + n_cams)):
        r = rows[f"train-{mode}"]
        assert r["vocab_before"] == 49408 and r["tokens_added"] == added and r["embedding_rows"] == 49408 + added
        assert r["lora_targets"] == ["to_k", "to_out.0", "to_q", "to_v"] and r["lora_rank"] == [4]
        assert r["images"] == 4 and r["image_size"] == list(IMAGE_SIZE["tiny"]) and len(r["losses"]) == 2
        assert all(np.isfinite(r["losses"]))
        final = work / f"train-{mode}" / "final"
        for f in (LORA_FILE, EMBEDS_FILE, TOKENS_FILE, META_FILE):
            assert (final / f).is_file(), f
        assert TokenTable.load(final / TOKENS_FILE).camera_mode == mode

    # package -> vanilla diffusers: every token row as in the file, the LoRA on the UNet
    for mode, n in (("string", n_ids), ("embedding", n_ids + n_cams)):
        assert (work / f"package-{mode}" / LORA_FILE).is_file()
        r = rows[f"vanilla-load-{mode}"]
        assert r["rows_match"] and r["tokens_loaded"] == n and r["vocab"] == 49408 + n and r["lora_modules"] > 0

    # generation: one image per infrared camera, of the base's size
    manifest = [json.loads(line) for line in (work / "generate" / "manifest.jsonl").read_text().splitlines()]
    assert len(manifest) == len(table.infrared_cameras()) == rows["generate"]["images"]
    for m in manifest:
        assert Image.open(work / "generate" / m["path"]).size == (64, 128) and m["steps"] == 2

    # attention maps over the latent grid, figure and summary written
    summary = json.loads((work / "attention" / "attention.json").read_text())
    assert summary["image_size"] == [128, 64] and rows["attention"]["latent_grid"] == [16, 8]
    assert rows["attention"]["maps"] >= 2 and (work / "attention" / "attention.png").is_file()

    # export: a SYSU-MM01 tree holding the real images and the generated infrared ones
    exported = [json.loads(line) for line in (work / "export" / "manifest.jsonl").read_text().splitlines()]
    synthetic = [e for e in exported if e["origin"] == "synthetic"]
    assert len(synthetic) == len(manifest) and all(e["modality"] == "infrared" for e in synthetic)
    assert all((work / "export" / e["path"]).is_file() for e in exported)
    assert (work / "export" / "exp" / "train_id.txt").is_file()


def test_bad_options_are_refused_before_any_work(tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x.txt").write_text("keep")
    with pytest.raises(FileExistsError, match="busy: exists and is not an empty folder"):
        check_sd15(CheckSD15Config(size="tiny", work=busy))
    with pytest.raises(ValueError, match="--device tpu"):
        check_sd15(CheckSD15Config(size="tiny", work=tmp_path / "new", device="tpu"))
    with pytest.raises(ValueError, match="--size"):
        check_sd15(CheckSD15Config(size="huge", work=tmp_path / "new"))
    assert (busy / "x.txt").read_text() == "keep" and not (tmp_path / "new").exists()
