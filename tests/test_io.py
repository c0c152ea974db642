"""load_rgb: every PIL mode converted correctly, every damaged file refused with one line naming it."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dive.utils.errors import InputError
from dive.utils.io import MAX_PIXELS, load_rgb, load_rgb_tensor


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height and which holds no pixel data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    return path


def test_rgb_jpeg_is_exactly_what_pil_gives(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (32, 16, 3), dtype=np.uint8)).save(tmp_path / "a.jpg", quality=90)
    with Image.open(tmp_path / "a.jpg") as im:
        expected = np.asarray(im.convert("RGB"))
    got = load_rgb(tmp_path / "a.jpg")
    assert got.mode == "RGB" and np.array_equal(np.asarray(got), expected)


def test_16_bit_grey_keeps_its_ramp_scaled(tmp_path):
    ramp = (np.arange(256, dtype=np.uint32)[None, :].repeat(3, 0) * 257).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    with Image.open(tmp_path / "g16.png") as im:
        assert im.mode.startswith("I")
    a = np.asarray(load_rgb(tmp_path / "g16.png"))
    assert a.shape == (3, 256, 3)
    assert np.array_equal(a[0, :, 0], np.arange(256))  # not saturated: 0..65535 -> 0..255
    assert np.array_equal(a[..., 0], a[..., 2])


def test_32_bit_integer_and_float_modes(tmp_path):
    Image.fromarray(np.array([[0, 32896, 65535]], dtype=np.int32), "I").save(tmp_path / "i.tif")
    assert np.asarray(load_rgb(tmp_path / "i.tif"))[0, :, 1].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32), "F").save(tmp_path / "f.tif")
    assert np.asarray(load_rgb(tmp_path / "f.tif"))[0, :, 0].tolist() == [0, 128, 255]
    Image.fromarray(np.array([[0.0, 100.0, 200.0]], dtype=np.float32), "F").save(tmp_path / "f255.tif")
    assert np.asarray(load_rgb(tmp_path / "f255.tif"))[0, :, 0].tolist() == [0, 100, 200]


def test_rgba_and_la_are_composited_over_white(tmp_path):
    rgba = np.zeros((2, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)      # fully transparent red -> white
    rgba[0, 1] = (255, 0, 0, 255)    # opaque red stays red
    rgba[1, 0] = (0, 0, 0, 128)      # half black over white -> mid grey
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    a = np.asarray(load_rgb(tmp_path / "a.png"))
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [255, 0, 0]
    assert 120 <= a[1, 0, 0] <= 135
    Image.fromarray(np.array([[[0, 0], [0, 255]]], np.uint8), "LA").save(tmp_path / "la.png")
    assert np.asarray(load_rgb(tmp_path / "la.png"))[0].tolist() == [[255, 255, 255], [0, 0, 0]]


def test_palette_with_transparency(tmp_path):
    p = Image.new("P", (2, 1), 0)
    p.putpalette([0, 0, 0, 255, 0, 0])
    p.putpixel((1, 0), 1)
    p.save(tmp_path / "p.png", transparency=0)
    assert np.asarray(load_rgb(tmp_path / "p.png"))[0].tolist() == [[255, 255, 255], [255, 0, 0]]


def test_cmyk_l_and_bilevel(tmp_path):
    Image.new("CMYK", (4, 4), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    c = np.asarray(load_rgb(tmp_path / "c.jpg")).astype(int)
    assert c[0, 0, 0] > 240 and c[0, 0, 1] < 15 and c[0, 0, 2] < 15
    Image.new("L", (2, 2), 77).save(tmp_path / "l.png")
    assert np.asarray(load_rgb(tmp_path / "l.png"))[0, 0].tolist() == [77, 77, 77]
    Image.new("1", (2, 2), 1).save(tmp_path / "b.png")
    assert np.asarray(load_rgb(tmp_path / "b.png"))[0, 0].tolist() == [255, 255, 255]


def _truncated(tmp_path, suffix):
    rng = np.random.default_rng(1)
    full = tmp_path / f"full{suffix}"
    Image.fromarray(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)).save(full)
    cut = tmp_path / f"cut{suffix}"
    data = full.read_bytes()
    cut.write_bytes(data[: int(len(data) * 0.7)])
    return cut


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file_is_refused_naming_it(tmp_path, suffix):
    cut = _truncated(tmp_path, suffix)
    with pytest.raises(InputError, match="truncated") as err:
        load_rgb(cut)
    assert str(cut) in str(err.value) and "\n" not in str(err.value)


def test_empty_text_and_missing_files(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image\n")
    for name, what in [("zero.jpg", "empty file"), ("text.jpg", "not an image"), ("gone.jpg", "no such file")]:
        with pytest.raises(InputError, match=what) as err:
            load_rgb(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)


def test_pixel_limit_is_checked_from_the_header(tmp_path):
    assert MAX_PIXELS == 50_000_000
    big = _png_header_only(tmp_path / "big.png", 10000, 6000)  # 60 MP: no pixel data at all
    with pytest.raises(InputError, match="over the 50 MP limit") as err:
        load_rgb(big)
    assert str(big) in str(err.value)
    huge = _png_header_only(tmp_path / "huge.png", 20000, 12000)  # beyond PIL's own bomb limit
    with pytest.raises(InputError, match="decompression-bomb") as err:
        load_rgb(huge)
    assert str(huge) in str(err.value)
    Image.new("RGB", (20, 10)).save(tmp_path / "small.png")
    with pytest.raises(InputError, match="200x|20x10"):
        load_rgb(tmp_path / "small.png", max_pixels=100)
    assert load_rgb(tmp_path / "small.png", max_pixels=200).size == (20, 10)
    assert Image.MAX_IMAGE_PIXELS > MAX_PIXELS  # PIL's global limit is left alone


def test_bytes_in_memory_are_named_by_path(tmp_path):
    with pytest.raises(InputError, match="archive/x.jpg: empty file"):
        load_rgb("archive/x.jpg", data=b"")
    with pytest.raises(InputError, match="archive/x.jpg: not an image"):
        load_rgb("archive/x.jpg", data=b"GIF89a nonsense")


def test_load_rgb_tensor_names_a_broken_file(tmp_path):
    Image.new("RGB", (4, 8), (1, 2, 3)).save(tmp_path / "ok.png")
    t = load_rgb_tensor([tmp_path / "ok.png"], 8, 4)
    assert t.shape == (1, 3, 8, 4) and t[0, :, 0, 0].tolist() == [1, 2, 3]
    cut = _truncated(tmp_path, ".jpg")
    with pytest.raises(InputError, match="cut.jpg"):
        load_rgb_tensor([tmp_path / "ok.png", cut], 8, 4)


def test_safetensors_files_have_one_byte_form(tmp_path):
    """safetensors keeps metadata in a hash map (its order changes between processes and calls):
    the package's writer sorts it, so the same tensors and metadata always give the same bytes."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save

    from dive.utils.io import canonical_safetensors, canonicalize_safetensors, save_safetensors

    tensors = {"b": torch.arange(6, dtype=torch.float32).reshape(2, 3), "a": torch.ones(5, dtype=torch.int64)}
    meta = {f"key{i}": f"value {i} é" for i in range(12)}
    forms = set()
    for i in range(6):
        shuffled = dict(sorted(meta.items(), key=lambda kv: hash((kv[0], i))))
        forms.add(save_safetensors(tensors, tmp_path / f"{i}.safetensors", shuffled).read_bytes())
    assert len(forms) == 1
    data = forms.pop()
    assert int.from_bytes(data[:8], "little") % 8 == 0  # the data starts 8-byte aligned
    loaded = load_file(tmp_path / "0.safetensors")
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    with safe_open(str(tmp_path / "0.safetensors"), framework="pt") as f:
        assert f.metadata() == meta
    raw = tmp_path / "raw.safetensors"
    raw.write_bytes(save(tensors, metadata=meta))
    assert canonicalize_safetensors(raw).read_bytes() == data == canonical_safetensors(data)
