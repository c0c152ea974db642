"""`dive caption`: describe every identity in words the base model composes, for `dive train --captions`.

Why: an identity token learnt from visible images holds that identity's visible look, but a LoRA
cannot read a dye's infrared grey out of 300 entangled token vectors (docs/infrared-identity.md).
Named in words ("wearing a red and black checks sweater ..."), the same colour words recur across
hundreds of identities, so the infrared camera's LoRA could learn colour word -> infrared grey once
for all of them, and external ids never seen in infrared share it. (At this scale it does not,
docs/infrared-words.md; `dive infrared-words` names each colour's infrared grey instead.)

Steps:
1. train an `AttributeReader` on the captioned web pool (`<web>/captions.jsonl` + images; the
   SynthVI grammar, parsed by `dive.data.synthvi.world.parse_caption`), the last `--holdout` images
   held out to measure it;
2. read every visible image of every identity of the training data (VI train/val ids and the
   external ids, as `dive train` loads them) and combine an identity's images by summing their
   log-probabilities per slot;
3. write `captions.json` (format below), `report.json` / `report.md` (held-out per-slot accuracy; on
   a SynthVI world also the identities' captions against the world's truth) and the reader.

`--oracle` writes the world's true captions instead (SynthVI only): the ceiling of a captioner.
On real data, bring captions from any captioner (BLIP, attribute annotations) in the same file
format; `dive train` only reads the file.

captions.json: {"format": "dive-captions/1", "source": "reader" | "oracle" | ..., "captions":
{"<dataset>/<pid>": "wearing a ...", ...}}.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from dive.caption.reader import INPUT_SIZE, READER_CONFIG, AttributeReader
from dive.data.records import Modality, Record
from dive.utils.config import config_to_dict
from dive.utils.io import load_rgb_tensor, read_json, write_json, write_text
from dive.utils.state import step_generator, warmup_cosine
from dive.utils.threads import torch_threads

CAPTIONS_FILE = "captions.json"
CAPTIONS_FORMAT = "dive-captions/1"


@dataclass
class CaptionConfig:
    """Attribute captions for every training identity (reader trained on the web pool, or the oracle)."""

    data: Path = field(metadata={"help": "the VI dataset (or a SynthVI world, which includes the external set), as for dive train"})
    out: Path = field(metadata={"help": "folder: captions.json, report.json/.md and the reader"})
    data_format: str | None = field(default=None, metadata={"help": "layout of --data (auto-detected)"})
    external: Path | None = field(default=None, metadata={"help": "external visible dataset (not with a SynthVI world)"})
    external_format: str | None = field(default=None, metadata={"help": "layout of --external (auto-detected)"})
    web: Path | None = field(default=None, metadata={"help": "captioned web pool (captions.jsonl + images; default: DATA/web)"})
    oracle: bool = field(default=False, metadata={"help": "write the SynthVI world's true captions instead (a ceiling)"})
    reader: Path | None = field(default=None, metadata={"help": "reuse a reader saved by an earlier run (its reader/ folder) instead of training one"})
    steps: int = field(default=5000, metadata={"help": "reader training steps (1,500: upper colour 74% right per identity; 5,000: 79%)"})
    batch_size: int = field(default=64, metadata={"help": "web images per step"})
    lr: float = field(default=2e-3, metadata={"help": "AdamW learning rate (warm-up, cosine decay)"})
    width: int = field(default=32, metadata={"help": "reader width (channels of its first conv)"})
    holdout: int = field(default=1000, metadata={"help": "web images held out to measure the reader"})
    seed: int = field(default=0, metadata={"help": "seed of every random step"})
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0: leave as is)"})


def caption_key(dataset: str, pid: int) -> str:
    return f"{dataset}/{pid}"


def load_captions(path: str | Path) -> dict[str, str]:
    """{"<dataset>/<pid>": text} from a captions file; clear errors naming the file."""
    path = Path(path)
    if path.is_dir():
        path = path / CAPTIONS_FILE
    d = read_json(path, missing="expected a captions file written by `dive caption`")
    if not isinstance(d, dict) or d.get("format") != CAPTIONS_FORMAT or not isinstance(d.get("captions"), dict):
        raise ValueError(f"{path}: expected {{'format': '{CAPTIONS_FORMAT}', 'captions': {{'<dataset>/<pid>': text}}}}")
    bad = [k for k, v in d["captions"].items() if not isinstance(v, str) or "/" not in k or not v.strip()]
    if bad:
        raise ValueError(f"{path}: {len(bad)} malformed entries, e.g. {bad[0]!r} (keys '<dataset>/<pid>', non-empty text)")
    return {k: v.strip() for k, v in d["captions"].items()}


def _write_captions(out: Path, captions: dict[str, str], source: str) -> Path:
    path = out / CAPTIONS_FILE
    write_json(path, {"format": CAPTIONS_FORMAT, "source": source, "captions": dict(sorted(captions.items()))})
    return path


def _identity_records(cfg: CaptionConfig) -> tuple[str, dict[str, list[Record]]]:
    from dive.data.registry import detect_format
    from dive.data.sources import load_sources

    vi, ext = load_sources(cfg.data, cfg.data_format, cfg.external, cfg.external_format)
    per_id: dict[str, list[Record]] = {}
    for r in vi + ext:
        per_id.setdefault(caption_key(r.dataset, r.pid), []).append(r)
    return cfg.data_format or detect_format(Path(cfg.data)), per_id


def _world_truth(data: Path, keys) -> dict[str, dict[str, str]]:
    """SynthVI: each identity's true caption slots, from identities.json."""
    from dive.data.synthvi.world import Identity, caption_slots

    path = Path(data) / "identities.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: missing; the true captions need a SynthVI world built by `dive data synth`")
    people = json.loads(path.read_text())
    part = {"synthvi_vi": "vi", "synthvi_ext": "external"}
    truth = {}
    for key in keys:
        dataset, pid = key.split("/")
        truth[key] = caption_slots(Identity.from_dict(people[part[dataset]][pid]))
    return truth


def _web_pool(web: Path) -> tuple[list[Path], list[dict[str, str]]]:
    from dive.data.synthvi.world import parse_caption

    index = web / "captions.jsonl"
    if not index.exists():
        raise FileNotFoundError(f"{index}: missing; the web pool is a folder with captions.jsonl (file, caption) and the images")
    paths, slots = [], []
    for n, line in enumerate(index.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        try:
            slots.append(parse_caption(row["caption"]))
        except (KeyError, ValueError) as err:
            raise ValueError(f"{index}, line {n}: {err}") from None
        paths.append(web / row["file"])
    return paths, slots


def _to_input(images: torch.Tensor) -> torch.Tensor:
    return images.float().div(127.5).sub(1.0)


def train_reader(cfg: CaptionConfig, web: Path, *, progress: bool = True) -> tuple[AttributeReader, dict]:
    """Train the reader on the web pool; returns it and its held-out accuracy per slot."""
    from dive.data.synthvi.world import CAPTION_SLOTS

    paths, slots = _web_pool(web)
    if len(paths) <= cfg.holdout:
        raise ValueError(f"{web}: {len(paths)} captioned images, need more than --holdout {cfg.holdout}")
    images = load_rgb_tensor(paths, *INPUT_SIZE, resize=True, desc="web pool")
    labels = {k: torch.tensor([v.index(s[k]) for s in slots]) for k, v in CAPTION_SLOTS.items()}
    n_train = len(paths) - cfg.holdout
    torch.manual_seed(cfg.seed)
    model = AttributeReader(CAPTION_SLOTS, width=cfg.width)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=1e-2)
    warmup = min(100, cfg.steps // 10)
    bar = tqdm(range(cfg.steps), desc="reader", unit="step", disable=not progress)
    model.train()
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * warmup_cosine(step, warmup, cfg.steps, floor=0.02)
        gen = step_generator(cfg.seed, 0, step)
        idx = torch.randint(n_train, (cfg.batch_size,), generator=gen)
        x = _to_input(images[idx])
        flip = torch.rand(len(idx), generator=gen) < 0.5
        x[flip] = x[flip].flip(-1)
        # camera light: a gain and a colour cast per image (web cameras vary; the ReID cameras too)
        gain = 1.0 + 0.15 * (torch.rand(len(idx), 3, 1, 1, generator=gen) * 2 - 1)
        x = ((x + 1) * gain - 1).clamp(-1, 1)
        logits = model(x)
        loss = sum(F.cross_entropy(logits[k], labels[k][idx]) for k in logits) / len(logits)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    held = torch.arange(n_train, len(paths))
    probs = read_images(model, images[held])
    accuracy = {k: float((probs[k].argmax(1) == labels[k][held]).float().mean()) for k in probs}
    return model, accuracy


@torch.no_grad()
def read_images(model: AttributeReader, images: torch.Tensor, batch: int = 256) -> dict[str, torch.Tensor]:
    """uint8 (N, 3, *INPUT_SIZE) -> {slot: log-probabilities (N, n_values)}."""
    out: dict[str, list[torch.Tensor]] = {k: [] for k in model.slots}
    for i in range(0, len(images), batch):
        for k, v in model(_to_input(images[i:i + batch])).items():
            out[k].append(F.log_softmax(v, dim=1))
    return {k: torch.cat(v) for k, v in out.items()}


def read_identities(model: AttributeReader, per_id: dict[str, list[Record]], *, progress: bool = True) -> dict[str, dict[str, str]]:
    """Each identity's slots: the value with the highest summed log-probability over its visible images."""
    keys = sorted(k for k, recs in per_id.items() if any(r.modality is Modality.VISIBLE for r in recs))
    result = {}
    for key in tqdm(keys, desc="reading identities", unit="id", disable=not progress):
        recs = [r for r in per_id[key] if r.modality is Modality.VISIBLE]
        logp = read_images(model, load_rgb_tensor([r.path for r in recs], *INPUT_SIZE, resize=True, desc=key))
        result[key] = decode_slots({k: v.sum(0) for k, v in logp.items()}, model.slots)
    return result


def decode_slots(scores: dict[str, torch.Tensor], values: dict[str, list[str]]) -> dict[str, str]:
    """The best value per slot, except that a patterned garment gets the best *real* second colour.

    Why: slots chosen one by one often pair a pattern with second colour "-" (or the first colour),
    and a caption cannot write such a garment: it came out plain, so the written captions were right
    about patterns for 53-57% of identities though the reader's pattern slots were right for 91-92%.
    """
    chosen = {k: values[k][int(v.argmax())] for k, v in scores.items()}
    for part in ("upper", "lower"):
        pattern, color, second = f"{part}_pattern", f"{part}_color", f"{part}_color2"
        if not {pattern, color, second} <= chosen.keys() or chosen[pattern] == "plain":
            continue
        allowed = [i for i, v in enumerate(values[second]) if v not in ("-", chosen[color])]
        if allowed:
            best = max(allowed, key=lambda i: float(scores[second][i]))
            chosen[second] = values[second][best]
    return chosen


def slot_accuracy(predicted: dict[str, dict[str, str]], truth: dict[str, dict[str, str]]) -> dict[str, float]:
    """Per slot: share of identities read right ("-" counts as a value; a plain garment's second colour is not scored)."""
    acc = {}
    for slot in next(iter(truth.values())):
        scored = [k for k, t in truth.items() if k in predicted
                  and not (slot.endswith("_color2") and t[slot.replace("_color2", "_pattern")] == "plain")]
        acc[slot] = float(np.mean([predicted[k][slot] == truth[k][slot] for k in scored])) if scored else math.nan
    return acc


def run_caption(cfg: CaptionConfig, *, progress: bool = True) -> Path:
    from dive.data.synthvi.world import describe

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    fmt, per_id = _identity_records(cfg)
    report: dict = {"config": config_to_dict(cfg), "identities": len(per_id)}
    t0 = time.time()
    with torch_threads(cfg.threads):
        if cfg.oracle:
            if fmt != "synthvi":
                raise ValueError(f"{cfg.data}: a {fmt} dataset; --oracle reads a SynthVI world's true attributes")
            slots = _world_truth(cfg.data, per_id)
            source = "oracle"
        else:
            if cfg.reader is not None:
                model = AttributeReader.load(cfg.reader)
                held = json.loads((Path(cfg.reader) / READER_CONFIG).read_text()).get("heldout_accuracy")
                if Path(cfg.reader).resolve() != (out / "reader").resolve():
                    model.save(out / "reader", reused_from=str(cfg.reader), heldout_accuracy=held)
            else:
                web = Path(cfg.web) if cfg.web is not None else Path(cfg.data) / "web"
                model, held = train_reader(cfg, web, progress=progress)
                model.save(out / "reader", web=str(web), steps=cfg.steps, seed=cfg.seed, heldout_accuracy=held)
            if held:
                report["reader_heldout_accuracy"] = held
            slots = read_identities(model, per_id, progress=progress)
            source = "reader"
            if fmt == "synthvi":
                from dive.data.synthvi.world import parse_caption

                truth = _world_truth(cfg.data, slots)
                report["identity_accuracy"] = slot_accuracy(slots, truth)
                # what the captions say, read back: the slots a garment's wording cannot carry are lost
                # (height and build are not written: the prompt's "person" stands for them)
                written = {k: parse_caption(f"a photo of a {s['height']} {s['build']} person, {describe(s)}") for k, s in slots.items()}
                report["written_accuracy"] = {k: v for k, v in slot_accuracy(written, truth).items() if k not in ("height", "build")}
    report["seconds"] = round(time.time() - t0, 1)
    report["source"] = source
    path = _write_captions(out, {k: describe(s) for k, s in slots.items()}, source)
    write_json(out / "report.json", report)
    write_text(out / "report.md", "\n".join(report_lines(report)) + "\n")
    return path


def report_lines(report: dict) -> list[str]:
    lines = [f"# Captions ({report['source']}): {report['identities']} identities, {report['seconds']} s", ""]
    cols = [c for c in ("reader_heldout_accuracy", "identity_accuracy", "written_accuracy") if c in report]
    if cols:
        names = {"reader_heldout_accuracy": "web images (held out)", "identity_accuracy": "identities vs the world's truth",
                 "written_accuracy": "written captions vs the world's truth"}
        lines += ["| slot | " + " | ".join(names[c] for c in cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for slot in report[cols[0]]:
            lines.append(f"| {slot} | " + " | ".join(f"{100 * report[c][slot]:.1f}%" if slot in report[c] else "-" for c in cols) + " |")
    return lines
