"""Every expected failure at the command line: exit status 2 and one line naming the file and what
was expected, never a traceback (damaged images, damaged or mismatched weights, bad token
tables, bad ids and modalities, a base without safetensors)."""

import json
import pickle
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from dive import defaults
from dive.cli import main

SHIPPED_DEMO = defaults.shipped(defaults.DEMO_NAME)
SHIPPED_BASE = defaults.shipped(defaults.BASE_NAME)


def _cli(argv, capsys) -> tuple[int, list[str], str]:
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, [line for line in err.splitlines() if line.strip()], out


def _one_error_line(rc, lines, name):
    """rc 2, no traceback, and exactly one `dive: error:` line (loading bars may precede it) naming `name`."""
    assert rc == 2
    assert not any("Traceback" in line for line in lines), lines
    errors = [line for line in lines if line.startswith("dive: error: ")]
    assert len(errors) == 1, lines
    assert errors[0] == lines[-1]
    assert str(name) in errors[0], (name, errors[0])
    return errors[0]


# ------------------------------------------------------------------------------------------------
# images: `dive data inspect` opens every one and exits 2 listing the broken ones
# ------------------------------------------------------------------------------------------------


def _market(root: Path) -> Path:
    """A tiny Market-1501 layout: two ids, two cameras, in all three folders."""
    rng = np.random.default_rng(0)
    for folder in ("bounding_box_train", "bounding_box_test", "query"):
        (root / folder).mkdir(parents=True)
        for pid in (2, 7):
            for cam in (1, 2):
                im = Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8))
                im.save(root / folder / f"{pid:04d}_c{cam}s1_000100_01.jpg", quality=90)
    return root


def _png_header_only(path: Path, width: int, height: int) -> None:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def _break(path: Path, how: str) -> None:
    if how == "truncated":
        rng = np.random.default_rng(1)
        Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(path, quality=95)
        data = path.read_bytes()
        path.write_bytes(data[: int(len(data) * 0.6)])
    elif how == "zero-byte":
        path.write_bytes(b"")
    elif how == "text":
        path.write_text("this is not a picture\n")
    elif how == "too large":
        path.unlink()
        path = path.with_suffix(".png")
        _png_header_only(path, 10000, 6000)  # 60 MP claimed by the header, no pixel data
    return path


@pytest.mark.parametrize("how, what", [("truncated", "truncated image"), ("zero-byte", "empty file"),
                                       ("text", "not an image"), ("too large", "over the 50 MP limit")])
def test_inspect_lists_a_broken_image_and_exits_2(tmp_path, capsys, how, what):
    root = _market(tmp_path / "market")
    bad = _break(root / "bounding_box_test" / "0007_c2s1_000100_01.jpg", how)
    rc, err, out = _cli(["data", "inspect", root, "--out", tmp_path / "report"], capsys)
    assert rc == 2
    assert "broken: 1" in out
    listed = [line for line in out.splitlines() if what in line]
    assert len(listed) == 1 and str(bad) in listed[0]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert [b["path"] for b in report["broken"]] == [str(bad)]


def test_inspect_sample_opens_fewer_and_passes_a_clean_set(tmp_path, capsys):
    root = _market(tmp_path / "market")
    rc, _, out = _cli(["data", "inspect", root, "--out", tmp_path / "r", "--sample", "3"], capsys)
    assert rc == 0 and "a sample of 3 of 12; broken: 0" in out
    rc, _, out = _cli(["data", "inspect", root, "--out", tmp_path / "r"], capsys)
    assert rc == 0 and "all 12; broken: 0" in out


@pytest.mark.parametrize("ids", ["1,abc", "1,3.5"])
def test_non_integer_pid_in_an_id_list(tmp_path, capsys, ids):
    root = tmp_path / "sysu"
    for cam in range(1, 7):
        (root / f"cam{cam}").mkdir(parents=True)
    (root / "exp").mkdir()
    for split in ("train", "val", "test"):
        (root / "exp" / f"{split}_id.txt").write_text("1\n" if split != "train" else ids + "\n")
    rc, err, _ = _cli(["data", "inspect", root, "--format", "sysu_mm01", "--out", tmp_path / "r"], capsys)
    line = _one_error_line(rc, err, root / "exp" / "train_id.txt")
    assert "integers" in line


def test_non_integer_pid_and_unknown_modality_in_records():
    from dive.data.records import Record
    from dive.utils.errors import InputError

    for pid in ("abc", "3.5", 3.5):
        with pytest.raises(InputError, match=r"data/x\.jpg: person id .* is not an integer"):
            Record("data/x.jpg", pid, 1, "visible", "d", "train")
    with pytest.raises(InputError, match=r"data/x\.jpg: unknown modality 'banana'; expected 'visible' or 'infrared'"):
        Record.from_dict({"path": "data/x.jpg", "pid": 3, "camid": 1, "modality": "banana", "dataset": "d",
                          "split": "train"})
    assert Record("data/x.jpg", "0012", 1, "visible", "d", "train").pid == 12


# ------------------------------------------------------------------------------------------------
# checkpoints: `dive generate` refuses a damaged or mismatched checkpoint before generating
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def ck(tmp_path) -> Path:
    out = tmp_path / "ck"
    shutil.copytree(SHIPPED_DEMO, out, ignore=shutil.ignore_patterns("references"))
    return out


def _generate(ck, tmp_path, capsys, base=SHIPPED_BASE):
    return _cli(["generate", "--checkpoint", ck, "--base", base, "--out", tmp_path / "gen", "--n", "1",
                 "--steps", "1", "--random-k", "1"], capsys)


def test_pickle_offered_as_safetensors(ck, tmp_path, capsys):
    target = ck / "learned_embeds.safetensors"
    target.write_bytes(pickle.dumps({"<a>": [0.0] * 4}))
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], target)
    assert "a pickle, not safetensors" in line


def test_damaged_safetensors_header(ck, tmp_path, capsys):
    target = ck / "pytorch_lora_weights.safetensors"
    data = target.read_bytes()
    target.write_bytes((10 ** 12).to_bytes(8, "little") + data[8:])
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], target)
    assert "not safetensors" in line or "damaged" in line


def _rewrite(path: Path, change) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    change(tensors)
    save_file(tensors, str(path), metadata=meta)


def test_lora_whose_ranks_disagree(ck, tmp_path, capsys):
    target = ck / "pytorch_lora_weights.safetensors"

    def drop_a_rank(t):
        key = sorted(k for k in t if k.endswith("lora_A.weight"))[0]
        t[key] = t[key][:-1].contiguous()
    _rewrite(target, drop_a_rank)
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], target)
    assert "rank" in line and "expected one rank" in line


def test_nan_in_lora_and_in_embeddings(ck, tmp_path, capsys):
    lora = ck / "infrared_lora_weights.safetensors"

    def poison(t):
        key = sorted(t)[0]
        t[key] = t[key].clone()
        t[key].view(-1)[0] = float("nan")
    _rewrite(lora, poison)
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], lora)
    assert "NaN or Inf" in line
    shutil.copy2(SHIPPED_DEMO / lora.name, lora)
    emb = ck / "learned_embeds.safetensors"

    def infinite(t):
        key = sorted(t)[-1]
        t[key] = torch.full_like(t[key], float("inf"))
    _rewrite(emb, infinite)
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], emb)
    assert "NaN or Inf" in line


def test_embedding_of_the_wrong_width(ck, tmp_path, capsys):
    emb = ck / "learned_embeds.safetensors"
    _rewrite(emb, lambda t: t.update({k: torch.cat([v, v[:1]]) for k, v in t.items()}))
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], emb)
    assert "width" in line


@pytest.mark.parametrize("change, what", [
    (lambda d: d.update(template="a {camera} photo of {oops} person"), "unknown placeholder {oops}"),
    (lambda d: d["identities"][0].update(pid="abc"), "person id 'abc' is not an integer"),
    (lambda d: d["identities"][0].update(pid="3.5"), "person id '3.5' is not an integer"),
    (lambda d: d["cameras"][0].update(modality="banana"), "unknown modality 'banana'"),
])
def test_bad_token_table(ck, tmp_path, capsys, change, what):
    tokens = ck / "tokens.json"
    d = json.loads(tokens.read_text())
    change(d)
    tokens.write_text(json.dumps(d))
    line = _one_error_line(*_generate(ck, tmp_path, capsys)[:2], tokens)
    assert what in line


def test_base_with_only_bin_weights(ck, tmp_path, capsys):
    base = tmp_path / "base"
    shutil.copytree(SHIPPED_BASE, base)
    for st in (base / "unet").glob("*.safetensors"):
        st.unlink()
    (base / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x02}q\x00.")  # never unpickled
    line = _one_error_line(*_generate(ck, tmp_path, capsys, base=base)[:2], base / "unet")
    assert "no .safetensors weights" in line and "diffusion_pytorch_model.bin" in line
