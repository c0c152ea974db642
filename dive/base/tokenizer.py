"""A small CLIP-BPE vocabulary built by the project itself, loadable by transformers' `CLIPTokenizer`.

CLIP's real 49k-token vocabulary would make the text encoder's embedding alone bigger than the
whole tiny base model, so the project trains its own byte-level BPE over the words its captions
and prompts use. The format is CLIP's exactly (byte-to-unicode alphabet, `</w>` word ends,
`vocab.json` + `merges.txt`, `<|startoftext|>` / `<|endoftext|>`), so the same code path loads
SD 1.5's tokenizer on a user's machine. Every byte and byte+`</w>` is in the vocabulary: any text
tokenizes (unknown words split into known pieces), including DiVE's random 8-character camera
strings.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# CLIP's pre-tokenizer: runs of letters, single digits, runs of other non-space characters
_PRETOKEN = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")

#: words any prompt in this project may use beyond the world's captions
EXTRA_WORDS = (
    "a an the of in on at with and or by from to for is are photo picture image person people man woman "
    "camera visible infrared thermal night day light dark grey gray color colour black white indoor outdoor "
    "walking standing front back side view left right wearing carrying holding bag backpack hat cap shirt "
    "sweater jacket coat pants jeans shorts skirt dress shoes hair short long bald ponytail striped stripes "
    "checks logo plain two tone high quality low blurry sharp close up full body street park hall corridor"
).split()


def bytes_to_unicode() -> dict[int, str]:
    """CLIP / GPT-2's reversible map of bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def pretokenize(text: str) -> list[str]:
    return _PRETOKEN.findall(text.lower())


def caption_corpus(n_identities: int = 4000, seed: int = 0) -> Counter:
    """Word counts of the captions the world produces (every attribute value appears)."""
    from dive.data.synthvi.world import VIEWS, sample_identity

    rng = np.random.default_rng(seed)
    words: Counter = Counter()
    for i in range(n_identities):
        words.update(pretokenize(sample_identity(rng).caption(VIEWS[i % len(VIEWS)])))
    words.update({w: 1 for w in EXTRA_WORDS})
    return words


def train_bpe(word_counts: Counter) -> list[tuple[str, str]]:
    """Learn merges until every word is a single token (ties broken lexicographically: deterministic)."""
    b2u = bytes_to_unicode()
    words: dict[tuple[str, ...], int] = {}
    for w, n in word_counts.items():
        chars = [b2u[b] for b in w.encode("utf-8")]
        chars[-1] += "</w>"
        words[tuple(chars)] = words.get(tuple(chars), 0) + n
    merges: list[tuple[str, str]] = []
    while True:
        pairs: Counter = Counter()
        for sym, n in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] += n
        if not pairs:
            return merges
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        merged = best[0] + best[1]
        new_words: dict[tuple[str, ...], int] = {}
        for sym, n in words.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == best:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            new_words[tuple(out)] = new_words.get(tuple(out), 0) + n
        words = new_words


def build_vocab(merges: Iterable[tuple[str, str]]) -> dict[str, int]:
    """CLIP's order: bytes, bytes+</w>, one token per merge, then the two special tokens."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet]
    seen = set(tokens)
    for a, b in merges:
        if a + b not in seen:
            tokens.append(a + b)
            seen.add(a + b)
    tokens += [BOS, EOS]
    return {t: i for i, t in enumerate(tokens)}


def write_tokenizer_files(directory: str | Path, *, model_max_length: int = 77, seed: int = 0) -> Path:
    """Write vocab.json + merges.txt + tokenizer_config.json for `CLIPTokenizer.from_pretrained`."""
    from dive.utils.io import write_json, write_text

    directory = Path(directory)
    merges = train_bpe(caption_corpus(seed=seed))
    vocab = build_vocab(merges)
    write_json(directory / "vocab.json", vocab)
    write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": model_max_length,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
        "do_lower_case": True,
    })
    return directory


def load_tokenizer(directory: str | Path):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(directory))
