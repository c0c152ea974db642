"""--device and --dtype: how they resolve, the options of every generation command, dive train and
the studio, bf16 generation on the CPU (same seeds and files, images close to fp32), and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from dive.cli import build_parser, main
from dive.utils.device import accelerate_options, dtype_name, resolve, resolve_device, resolve_dtype


@pytest.fixture
def no_gpu(monkeypatch):
    """As on a machine without a GPU, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


def test_device_and_dtype_resolve(no_gpu):
    assert resolve_device("auto") == torch.device("cpu") and resolve_device("cpu") == torch.device("cpu")
    assert resolve("auto", "bf16") == (torch.device("cpu"), torch.bfloat16)
    assert resolve_dtype("fp32") is torch.float32 and resolve_dtype("fp16", "cuda") is torch.float16
    assert [dtype_name(d) for d in (torch.float32, torch.float16, torch.bfloat16)] == ["fp32", "fp16", "bf16"]


def test_auto_picks_a_present_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")


@pytest.mark.parametrize("device, dtype, message", [
    ("cuda", "fp32", "--device cuda: torch sees no CUDA GPU here"),
    ("cuda:1", "fp32", "--device cuda:1: torch sees no CUDA GPU here"),
    ("gpu", "fp32", "--device 'gpu': expected one of auto, cpu, cuda, mps or cuda:N"),
    ("cpu", "fp64", "--dtype 'fp64': expected one of fp32, fp16, bf16"),
    ("cpu", "fp16", "--dtype fp16: half precision needs a GPU"),
])
def test_bad_values_are_one_line_naming_the_option(no_gpu, device, dtype, message):
    with pytest.raises(ValueError) as err:
        resolve(device, dtype)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_train_maps_dtype_onto_accelerate(no_gpu):
    assert accelerate_options("cpu", "fp32") == (True, "no")
    assert accelerate_options("cpu", "bf16") == (True, "bf16")
    assert accelerate_options("auto", None) == (False, "no")  # auto: accelerate's own choice, as before
    assert accelerate_options("auto", None, cpu=True, mixed_precision="fp16") == (True, "fp16")  # old spelling kept
    assert accelerate_options("auto", "bf16", mixed_precision="bf16") == (False, "bf16")
    for kwargs, message in [(dict(device="cuda"), "--device cuda: torch sees no CUDA GPU"),
                            (dict(device="cpu", dtype="fp16"), "--dtype fp16: half precision needs a GPU"),
                            (dict(device="cuda", cpu=True), "--cpu with --device cuda"),
                            (dict(dtype="bf16", mixed_precision="fp16"), "--dtype bf16 with --mixed-precision fp16"),
                            (dict(device="cuda:1"), "--device cuda:1: training takes cuda")]:
        with pytest.raises(ValueError, match=message):
            accelerate_options(**kwargs)


@pytest.mark.parametrize("command", [
    ["generate", "--checkpoint", "c", "--out", "o"],
    ["translate", "--data", "d", "--out", "o"],
    ["attention", "--checkpoint", "c", "--out", "o.png"],
    ["grid", "--checkpoint", "c"],
    ["train", "--base", "b", "--data", "d", "--out", "o"],
])
def test_every_command_takes_device_and_dtype(command, capsys):
    parser = build_parser()
    args = parser.parse_args([*command, "--device", "cuda:0", "--dtype", "bf16"])
    assert (args.device, args.dtype) == ("cuda:0", "bf16")
    defaults = parser.parse_args(command)
    assert defaults.device == "auto" and defaults.dtype == (None if command[0] == "train" else "fp32")
    with pytest.raises(SystemExit) as exit_:
        parser.parse_args([*command, "--dtype", "fp64"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "argument --dtype: invalid choice: 'fp64'" in err


@pytest.mark.parametrize("command", [
    ["generate", "--checkpoint", "nowhere", "--out", "o"],
    ["translate", "--checkpoint", "nowhere", "--data", "nowhere", "--out", "o"],
    ["attention", "--checkpoint", "nowhere", "--out", "o.png"],
    ["grid", "--checkpoint", "nowhere"],
    ["train", "--base", "nowhere", "--data", "nowhere", "--out", "o"],
])
def test_absent_gpu_is_one_clear_line_before_any_work(no_gpu, command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "dive: error: --device cuda: torch sees no CUDA GPU here; use --device cpu or auto"
    assert main([*command, "--device", "cpu", "--dtype", "fp16"]) == 2
    assert capsys.readouterr().err.startswith("dive: error: --dtype fp16: half precision needs a GPU")
    assert not (tmp_path / "o").exists()


def _generate(micro_base, micro_dive_run, out, dtype, tokens):
    identity, camera = tokens
    return main(["generate", "--checkpoint", str(micro_dive_run / "final"), "--base", str(micro_base), "--out",
                 str(out), "--ids", identity, "--cameras", camera, "--n", "2", "--steps", "4", "--device", "cpu",
                 "--dtype", dtype])


def test_bf16_generation_on_cpu_matches_fp32(micro_base, micro_dive_run, tmp_path, capsys):
    from dive.checkpoint import TokenTable

    table = TokenTable.load(micro_dive_run / "final" / "tokens.json")
    tokens = (table.identities[0].token, table.infrared_cameras()[0].token)
    assert _generate(micro_base, micro_dive_run, tmp_path / "fp32", "fp32", tokens) == 0
    assert _generate(micro_base, micro_dive_run, tmp_path / "bf16", "bf16", tokens) == 0
    rows = {d: [json.loads(r) for r in (tmp_path / d / "manifest.jsonl").read_text().splitlines()]
            for d in ("fp32", "bf16")}
    assert [(r["path"], r["seed"]) for r in rows["fp32"]] == [(r["path"], r["seed"]) for r in rows["bf16"]]
    assert len(rows["fp32"]) == 2
    a, b = ([np.asarray(Image.open(tmp_path / d / r["path"])).astype(int) for r in rows[d]] for d in ("fp32", "bf16"))
    # measured: bf16 differs from fp32 by ~1.2 grey levels on average (two seeds differ by ~33)
    for x, y in zip(a, b):
        assert np.abs(x - y).mean() < 4
    assert np.abs(a[0] - a[1]).mean() > 4 * np.abs(a[0] - b[0]).mean()
    settings = {d: json.loads((tmp_path / d / "generate.json").read_text()) for d in ("fp32", "bf16")}
    assert "dtype" not in settings["fp32"] and settings["bf16"]["dtype"] == "bf16"
    capsys.readouterr()
    # resuming the fp32 folder in bf16 is refused, saying why
    assert _generate(micro_base, micro_dive_run, tmp_path / "fp32", "bf16", tokens) == 2
    assert "other settings (dtype fp32 -> bf16); use a new --out" in capsys.readouterr().err
    # ... and the same dtype resumes (nothing left to make)
    assert _generate(micro_base, micro_dive_run, tmp_path / "bf16", "bf16", tokens) == 0


def test_studio_loads_its_generators_in_the_launch_dtype(studio_dirs, tmp_path, no_gpu):
    from dive.generate.attention import attention_maps
    from dive.studio.service import Studio

    data, shipped = studio_dirs
    studio = Studio(data, shipped_dir=shipped, default_base=data / "bases" / "micro", device="auto", dtype="bf16")
    assert (studio.device, studio.dtype) == (torch.device("cpu"), torch.bfloat16)
    gen, _ = studio.generator(Studio.default_choice([c.label for c in studio.checkpoints()]))
    assert gen.dtype is torch.bfloat16 and gen.pipe.unet.dtype == torch.bfloat16
    res = attention_maps(gen, None, None, seed=0, steps=2)  # attention recording works in bf16 too
    assert all(np.isfinite(np.asarray(m)).all() for m in res.maps.values())
    # its images say which dtype drew them (the A1111 text names it when it is not fp32)
    from dive.studio import pngmeta

    choice = Studio.default_choice([c.label for c in studio.checkpoints()])
    ids, cams = Studio.identity_choices(gen.table), Studio.camera_choices(gen.table)
    img = studio.generate(choice, [ids[0][1]], [cams[0][1]], n=1, seed=0, steps=2, guidance=2.0)[0]
    assert img.settings["dtype"] == "bf16" and "Dtype: bf16" in pngmeta.a1111_parameters(img.settings)
    for device, dtype in (("cuda", "fp32"), ("cpu", "fp16")):
        with pytest.raises(ValueError, match=f"--{'device' if device == 'cuda' else 'dtype'}"):
            Studio(tmp_path / "s", shipped_dir=shipped, device=device, dtype=dtype)
    assert not (tmp_path / "s").exists()


@pytest.mark.slow  # importing gradio takes seconds
def test_studio_launch_options(tmp_path, no_gpu, capsys):
    import sys

    from dive.studio.service import REPO_ROOT

    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    import app

    for argv, message in ((["--device", "cuda"], "--device cuda: torch sees no CUDA GPU"),
                          (["--device", "cpu", "--dtype", "fp16"], "--dtype fp16: half precision needs a GPU"),
                          (["--dtype", "fp64"], "argument --dtype: invalid choice")):
        with pytest.raises(SystemExit) as exit_:
            app.main(["--data", str(tmp_path / "d"), *argv])
        assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.slow  # a short training run
def test_train_in_bf16_keeps_trainable_weights_float32(micro_base, tiny_world_dir, tmp_path, request):
    from accelerate.state import AcceleratorState

    from dive.train.trainer import DiVETrainConfig, DiVETrainer

    # accelerate fixes the mixed precision once per process; this test process's other trainings ran in fp32
    AcceleratorState._reset_state(reset_partial_state=True)
    request.addfinalizer(lambda: AcceleratorState._reset_state(reset_partial_state=True))
    cfg = DiVETrainConfig(base=micro_base, data=tiny_world_dir, out=tmp_path / "run", steps=2, batch_size=4,
                          min_images=3, rank=4, save_every=2, preview_every=0, device="cpu", dtype="bf16")
    trainer = DiVETrainer(cfg, progress=False)
    assert trainer.accelerator.mixed_precision == "bf16" and trainer.accelerator.device.type == "cpu"
    final = trainer.train()
    assert (final / "pytorch_lora_weights.safetensors").exists()
    trainable = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert trainable and all(p.dtype == torch.float32 for p in trainable)
    losses = [json.loads(r)["loss"] for r in (tmp_path / "run" / "loss.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(np.isfinite(losses))
