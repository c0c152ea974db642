"""Token location: the prompt positions of the identity token, the camera string's BPE pieces and
each ordinary word (`locate_tokens`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence


@dataclass(frozen=True)
class TokenSpan:
    label: str  # "[identity] <tok>", "[camera] b8zbxkoh" or the word itself (made unique: "a (2)")
    kind: str  # identity / camera / word
    text: str  # the token or word as written in the prompt
    positions: tuple[int, ...]  # indices into the tokenized prompt (0 is BOS)
    pieces: tuple[str, ...]  # the tokenizer's pieces at those positions


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    """The ids the pipeline feeds the text encoder (padded and truncated to the model length)."""
    return list(tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                          truncation=True).input_ids)


def _piece_ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def _find(seq: Sequence[int], sub: Sequence[int], lo: int, hi: int) -> list[int]:
    """Start indices of non-overlapping occurrences of `sub` in seq[lo:hi]."""
    out, i, m = [], lo, len(sub)
    while m and i + m <= hi:
        if list(seq[i : i + m]) == list(sub):
            out.append(i)
            i += m
        else:
            i += 1
    return out


def locate_tokens(tokenizer, prompt: str, identity: str | None = None, camera: str | None = None) -> list[TokenSpan]:
    """Prompt tokens grouped per word, in prompt order, from token ids; BOS, EOS and padding skipped.

    The identity token must be one added id (a loaded textual-inversion token); the camera string
    is the run of its BPE pieces (or one id when it is a learned token). Both are found by
    searching the prompt's ids for their own ids. The other words are matched piece by piece
    (each whitespace-separated word tokenized alone); pieces that cannot be matched that way
    become one entry each. Words cut off by the 77-token limit are left out.
    """
    ids = prompt_ids(tokenizer, prompt)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    lo = 1 if ids and ids[0] == bos else 0
    hi = ids.index(eos, lo) if eos in ids[lo:] else len(ids)
    owner: dict[int, tuple[str, str]] = {}  # position -> (kind, text)
    for kind, text in (("identity", identity), ("camera", camera)):
        if not text:
            continue
        sub = _piece_ids(tokenizer, text)
        if kind == "identity":
            tid = tokenizer.convert_tokens_to_ids(text)
            unk = getattr(tokenizer, "unk_token_id", None)
            if len(sub) != 1 or tid is None or tid == unk or sub != [tid]:
                raise ValueError(f"identity token {text!r} is not one token of the tokenizer "
                                 f"(pieces {tokenizer.convert_ids_to_tokens(sub)}); load the DiVE checkpoint first")
        starts = _find(ids, sub, lo, hi)
        if not starts:
            raise ValueError(f"{kind} token {text!r} does not occur in the tokenized prompt {prompt!r}")
        for s in starts:
            for p in range(s, s + len(sub)):
                owner[p] = (kind, text)
    # ordinary words: walk the prompt word by word
    word_of: dict[int, tuple[int, str]] = {}  # position -> (word number, word)
    cursor = lo
    for k, word in enumerate(prompt.split()):
        if cursor >= hi:
            break
        sub = _piece_ids(tokenizer, word)
        if not sub or list(ids[cursor : cursor + len(sub)]) != sub:
            break  # unexpected tokenization: the rest become one entry per piece
        for p in range(cursor, min(cursor + len(sub), hi)):
            word_of[p] = (k, word)
        cursor += len(sub)
    groups: dict[tuple, list[int]] = {}  # insertion order = prompt order
    for p in range(lo, hi):
        if p in owner:
            key = owner[p]
        elif p in word_of:
            key = ("word", word_of[p][1], word_of[p][0])
        else:
            key = ("word", tokenizer.convert_ids_to_tokens(ids[p]), -p - 1)
        groups.setdefault(key, []).append(p)
    spans, seen = [], {}
    for (kind, text, *_), positions in groups.items():
        base = {"identity": f"[identity] {text}", "camera": f"[camera] {text}"}.get(kind, text)
        seen[base] = seen.get(base, 0) + 1
        label = base if seen[base] == 1 else f"{base} ({seen[base]})"
        spans.append(TokenSpan(label, kind, text, tuple(positions),
                               tuple(tokenizer.convert_ids_to_tokens([ids[p] for p in positions]))))
    return spans
