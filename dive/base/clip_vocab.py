"""CLIP's own 49,408-token BPE tokenizer (SD 1.x's), built offline from a file a PyPI package ships.

OpenAI's CLIP defines its vocabulary from one merges file, `bpe_simple_vocab_16e6.txt.gz`: the 256
byte symbols (GPT-2's byte-to-unicode alphabet), the same 256 with `</w>` (end of word), one token
per merge for the first 49152 - 256 - 2 = 48,894 merges of the file, then `<|startoftext|>` and
`<|endoftext|>`: 49,408 tokens, the tokenizer Stable Diffusion 1.x's text encoder reads. The
`open_clip_torch` package ships that file as package data. It is installed without its
dependencies (`pip install --no-deps open_clip_torch`), only for that file, and is never imported:
importing it would import torchvision. `find_vocab_file` finds the file through the import system's
module spec alone, which locates a package without running it.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

from dive.base.tokenizer import BOS, EOS, bytes_to_unicode

VOCAB_PACKAGE = "open_clip"
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
#: CLIP's vocabulary size: 512 byte tokens + 48,894 merges + 2 special tokens
CLIP_VOCAB_SIZE = 49408
N_MERGES = 49152 - 256 - 2


def find_vocab_file() -> Path:
    """The path of `bpe_simple_vocab_16e6.txt.gz` inside the installed `open_clip` package,
    found without importing the package."""
    spec = importlib.util.find_spec(VOCAB_PACKAGE)  # a top-level name: locates, runs nothing
    hint = ("install it with `pip install --no-deps open_clip_torch==3.3.0` (scripts/install.sh does): "
            "only its CLIP vocabulary file is used")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the {VOCAB_PACKAGE!r} package (open_clip_torch) is not installed; {hint}")
    for folder in spec.submodule_search_locations:
        path = Path(folder) / VOCAB_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{Path(list(spec.submodule_search_locations)[0]) / VOCAB_FILE}: missing from the "
                            f"installed {VOCAB_PACKAGE!r} package; expected CLIP's gzipped BPE merges file; {hint}")


def read_merges(path: str | Path | None = None) -> list[tuple[str, str]]:
    """The merges CLIP uses: lines 1 .. 48,894 of the file (line 0 is its version header)."""
    path = Path(path) if path is not None else find_vocab_file()
    try:
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").rstrip("\n").split("\n")
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not a gzipped UTF-8 BPE merges file ({err})") from None
    merges = []
    for i, line in enumerate(lines[1 : N_MERGES + 1], 1):
        pair = line.split()
        if len(pair) != 2:
            raise ValueError(f"{path}: line {i + 1} is {line!r}; expected two symbols separated by a space")
        merges.append((pair[0], pair[1]))
    if len(merges) != N_MERGES:
        raise ValueError(f"{path}: holds {len(merges)} merges; CLIP's vocabulary needs {N_MERGES}")
    return merges


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """token -> id in CLIP's order (bytes, bytes + `</w>`, merged pairs, start, end)."""
    alphabet = list(bytes_to_unicode().values())
    tokens = alphabet + [c + "</w>" for c in alphabet] + [a + b for a, b in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError(f"the merges give {len(tokens) - len(vocab)} duplicate tokens; not CLIP's merges file")
    return vocab


def write_clip_tokenizer(directory: str | Path, vocab_file: str | Path | None = None, *,
                         model_max_length: int = 77) -> Path:
    """Write vocab.json + merges.txt + tokenizer_config.json (SD 1.x's tokenizer settings) for
    `transformers.CLIPTokenizer.from_pretrained(directory)`."""
    from dive.utils.io import write_json, write_text

    directory = Path(directory)
    merges = read_merges(vocab_file)
    write_json(directory / "vocab.json", clip_vocab(merges))
    write_text(directory / "merges.txt", "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    write_json(directory / "tokenizer_config.json", {
        "tokenizer_class": "CLIPTokenizer", "model_max_length": model_max_length, "do_lower_case": True,
        "bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS,
    })
    return directory
