"""CLIP's 49,408-token tokenizer, built from the merges file open_clip_torch ships (never imported)."""

import gzip
import subprocess
import sys

import pytest

from dive.base.clip_vocab import CLIP_VOCAB_SIZE, N_MERGES, find_vocab_file, read_merges, write_clip_tokenizer


@pytest.fixture(scope="module")
def clip_tokenizer(tmp_path_factory):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(write_clip_tokenizer(tmp_path_factory.mktemp("clip") / "tokenizer")))


def test_tokenizer_has_clips_49408_tokens_in_clips_order(clip_tokenizer):
    tok = clip_tokenizer
    assert len(tok) == CLIP_VOCAB_SIZE == 49408
    assert tok.bos_token_id == 49406 and tok.eos_token_id == 49407 and tok.pad_token_id == 49407
    assert tok.convert_ids_to_tokens([0, 255, 256, 511, 512]) == ["!", "Ń", "!</w>", "Ń</w>", "in"]
    assert tok.model_max_length == 77


@pytest.mark.parametrize("text, ids", [
    # CLIP's published encodings (OpenAI's tokenizer, the one SD 1.x's text encoder reads)
    ("a photo of a person", [49406, 320, 1125, 539, 320, 2533, 49407]),
    ("a photo of a cat", [49406, 320, 1125, 539, 320, 2368, 49407]),
    ("person working at a computer", [49406, 2533, 1699, 536, 320, 11639, 652, 49407]),
    ("dog on a beach", [49406, 1929, 525, 320, 2117, 49407]),
    ("A Photo of a TREE!", [49406, 320, 1125, 539, 320, 2677, 256, 49407]),
])
def test_sentences_tokenize_to_clips_known_ids(clip_tokenizer, text, ids):
    assert clip_tokenizer(text).input_ids == ids


def test_unknown_words_split_into_known_pieces(clip_tokenizer):
    ids = clip_tokenizer("a xqzvbyt photo").input_ids
    assert len(ids) > 5 and clip_tokenizer.unk_token_id not in ids[1:-1]
    assert clip_tokenizer.decode(ids, skip_special_tokens=True).replace(" ", "") == "axqzvbytphoto"


def test_the_vocabulary_file_is_found_without_importing_open_clip(tmp_path):
    code = ("import sys; from dive.base.clip_vocab import write_clip_tokenizer; "
            f"write_clip_tokenizer({str(tmp_path / 'tok')!r}); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('open_clip', 'torchvision', 'timm')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert len((tmp_path / "tok" / "merges.txt").read_text().splitlines()) == N_MERGES + 1
    assert find_vocab_file().name == "bpe_simple_vocab_16e6.txt.gz"


def test_missing_package_and_bad_file_are_named(tmp_path, monkeypatch):
    import importlib.util

    bad = tmp_path / "vocab.txt.gz"
    bad.write_bytes(gzip.compress(b"#version\nab c d\n"))
    with pytest.raises(ValueError, match=r"vocab\.txt\.gz: line 2 .*two symbols"):
        read_merges(bad)
    short = tmp_path / "short.txt.gz"
    short.write_bytes(gzip.compress(b"#version\na b\n"))
    with pytest.raises(ValueError, match=f"short.txt.gz: holds 1 merges; .* {N_MERGES}"):
        read_merges(short)
    plain = tmp_path / "plain.txt.gz"
    plain.write_text("not gzip")
    with pytest.raises(ValueError, match="plain.txt.gz: not a gzipped"):
        read_merges(plain)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps open_clip_torch"):
        find_vocab_file()
