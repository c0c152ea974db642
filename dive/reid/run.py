"""`dive reid train` / `dive reid run`: pick the training data, train, evaluate, report.

Training sets (``train_set``):

* ``vi``: the VI dataset's training split(s) (both modalities);
* ``vi+ext-rgb``: the same plus the external dataset's training images (visible only, their own
  labels): the paper's "+ external RGB only" baseline.

Data sources (``format``): a SynthVI world (``synthvi``: VI set ``vi/`` + external ``external/``),
a SYSU-MM01 tree (``sysu_mm01``), an LLCM tree (``llcm``: trains on the idx lists, tests on
``test_vis`` / ``test_nir``) or a RegDB tree (``regdb``: train and test lists of one of its 10
splits, ``regdb_trial``); ``--external`` names a Market-1501-layout folder for ``vi+ext-rgb``.
``auto`` detects the layout.

Evaluation protocols default to the test data's own pair (``DEFAULT_PROTOCOLS``): SynthVI and
SYSU-MM01 all-search + indoor, LLCM visible->infrared + infrared->visible, RegDB
visible->thermal + thermal->visible on the split's test ids.

``run_reid`` writes into the run folder, beside the training files: ``report.json`` (config,
training summary, each protocol's results with per-trial numbers and CMC), ``report.md``
(the paper's Table 2 columns) and ``cmc.png``. Test identities are used only here, after training.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path


from dive.data.records import Modality, Record, summarize
from dive.data.registry import detect_format, load_dataset
from dive.reid.device import resolve_device
from dive.reid.evaluate import evaluate_model
from dive.reid.protocols import METRIC_KEYS, PROTOCOLS, get_protocol
from dive.reid.synthetic import synthetic_flags
from dive.reid.train import ReIDTrainConfig, load_checkpoint, train_reid
from dive.utils.config import config_to_dict
from dive.utils.io import atomic_path, write_json, write_text
from dive.utils.threads import torch_threads

TRAIN_SETS = ("vi", "vi+ext-rgb")
VI_FORMATS = ("synthvi", "sysu_mm01", "llcm", "regdb")
#: the protocols a format's test ids are scored with when none are named
DEFAULT_PROTOCOLS = {
    "synthvi": ("sysu-all", "sysu-indoor"),
    "sysu_mm01": ("sysu-all", "sysu-indoor"),
    "llcm": ("llcm-v2i", "llcm-i2v"),
    "regdb": ("regdb-v2t", "regdb-t2v"),
}
_PROTOCOL_DATASET = {"synthvi": "sysu-mm01", "sysu_mm01": "sysu-mm01", "llcm": "llcm", "regdb": "regdb"}


@dataclass
class ReIDDataConfig:
    """Where the ReID training / test data comes from."""

    data: Path = field(metadata={"help": "a SynthVI world (dive data synth) or a SYSU-MM01, LLCM or RegDB folder"})
    format: str = field(default="auto", metadata={
        "help": "layout of --data", "choices": ["auto", *VI_FORMATS]})
    train_set: str = field(default="vi", metadata={
        "help": "vi: VI training ids; vi+ext-rgb: plus the external set's visible-only training ids",
        "choices": list(TRAIN_SETS)})
    train_splits: tuple[str, ...] = field(default=("train",), metadata={
        "help": "VI splits trained on (AGW trains on train+val: --train-splits train val)"})
    external: Path | None = field(default=None, metadata={
        "help": "external visible dataset (Market-1501 layout) for vi+ext-rgb; SynthVI: its external/"})
    regdb_trial: int = field(default=1, metadata={
        "help": "RegDB: which of its 10 train/test splits (idx/*_T.txt) is trained and tested"})

    def __post_init__(self) -> None:
        self.data = Path(self.data)
        if self.external is not None:
            self.external = Path(self.external)
        self.train_splits = tuple(self.train_splits)
        if self.train_set not in TRAIN_SETS:
            raise ValueError(f"train_set must be one of {TRAIN_SETS}; got {self.train_set!r}")


@dataclass
class ReIDEvalConfig:
    """How the trained network is scored on the test identities."""

    protocols: tuple[str, ...] = field(default=(), metadata={
        "help": "evaluation protocols; none named: the test data's pair (SYSU-MM01 and SynthVI: sysu-all "
                "sysu-indoor; LLCM: llcm-v2i llcm-i2v; RegDB: regdb-v2t regdb-t2v)", "choices": list(PROTOCOLS)})
    trials: int = field(default=10, metadata={"help": "single-shot gallery trials (RegDB: always 1)"})
    eval_seed: int = field(default=0, metadata={"help": "gallery sampling seed"})
    gallery_sampling: str = field(default="sampled", metadata={
        "help": "single-shot gallery draw: sampled (numpy, per (seed, trial)) or agw (AGW's own draw: "
                "random.seed(seed + trial), ids ascending, one random.choice per id and camera)",
        "choices": ["sampled", "agw"]})
    flip: bool = field(default=False, metadata={"help": "average features of each image and its mirror"})
    eval_batch_size: int = field(default=128, metadata={"help": "feature extraction batch size"})
    eval_threads: int = field(default=1, metadata={"help": "torch CPU threads while evaluating (0: torch's default)"})


@dataclass
class ReIDData:
    train: list[Record]
    val: list[Record]
    test: list[Record]
    format: str
    summary: dict


def load_reid_data(cfg: ReIDDataConfig) -> ReIDData:
    """Training records of the chosen train set, the VI val records and the VI test records."""
    fmt = detect_format(cfg.data) if cfg.format == "auto" else cfg.format
    if fmt not in VI_FORMATS:
        raise ValueError(f"{cfg.data}: format {fmt!r} is not a VI training source; expected one of "
                         f"{', '.join(VI_FORMATS)}")
    ds = load_dataset(fmt, cfg.data, trial=cfg.regdb_trial) if fmt == "regdb" else load_dataset(fmt, cfg.data)
    if fmt == "synthvi":
        vi = [r for r in ds.records if r.dataset == "synthvi_vi"]
        ext_all = [r for r in ds.records if r.dataset == "synthvi_ext"]
    else:
        vi = list(ds.records)
        ext_all = []
    if cfg.external is not None:
        ext_ds = load_dataset(detect_format(cfg.external), cfg.external)
        ext_all = list(ext_ds.records)
    train = [r for r in vi if r.split in cfg.train_splits]
    if not train:
        raise ValueError(f"{cfg.data}: no VI images in splits {list(cfg.train_splits)}")
    if cfg.train_set == "vi+ext-rgb":
        ext = [r for r in ext_all if r.split == "train" and r.modality is Modality.VISIBLE]
        if not ext:
            raise ValueError(f"{cfg.data}: train set vi+ext-rgb needs an external dataset with training "
                             "images (SynthVI's external/ or --external)")
        if {r.dataset for r in ext} & {r.dataset for r in train}:
            raise ValueError("external and VI records share a dataset name; their ids would merge")
        train = train + ext
    val = [r for r in vi if r.split == "val"] if "val" not in cfg.train_splits else []
    test = [r for r in vi if r.split == "test"]
    summary = {"format": fmt, "train": summarize(train), "val_ids": len({r.pid for r in val}),
               "test_ids": len({r.pid for r in test}), "test_images": len(test)}
    if fmt == "regdb":
        summary["regdb_trial"] = cfg.regdb_trial
    return ReIDData(train, val, test, fmt, summary)


def resolve_protocols(fmt: str, names: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The protocols to score data of format `fmt` with: `names`, or the format's default pair;
    a protocol of another dataset (e.g. sysu-all on LLCM) is refused."""
    chosen = list(names) or list(DEFAULT_PROTOCOLS[fmt])
    wrong = [n for n in chosen if get_protocol(n).dataset != _PROTOCOL_DATASET[fmt]]
    if wrong:
        raise ValueError(f"protocols {wrong} do not fit {fmt} test data; use "
                         f"{', '.join(n for n, p in PROTOCOLS.items() if p.dataset == _PROTOCOL_DATASET[fmt])}")
    return chosen


def _data_meta(cfg: ReIDDataConfig, data: ReIDData) -> dict:
    return {"data": config_to_dict(cfg), "data_summary": data.summary}


def train_from_config(data_cfg: ReIDDataConfig, train_cfg: ReIDTrainConfig,
                      data: ReIDData | None = None) -> tuple[Path, ReIDData]:
    data = data or load_reid_data(data_cfg)
    # which images are synthetic: read from the export only when the options need it
    flags = synthetic_flags(data_cfg.data, data.train) if train_cfg.uses_synthetic else None
    run = train_reid(train_cfg, data.train, data.val or None, meta=_data_meta(data_cfg, data), synthetic=flags)
    return run, data


# ------------------------------------------------------------------------------------------------
# report
# ------------------------------------------------------------------------------------------------

_PRETTY = {"sysu-all": "All-search", "sysu-indoor": "Indoor-search", "llcm-v2i": "LLCM VIS->IR",
           "llcm-i2v": "LLCM IR->VIS", "regdb-v2t": "RegDB VIS->T", "regdb-t2v": "RegDB T->VIS"}
_COLS = ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")
_COL_NAMES = ("R1", "R5", "R10", "R20", "mAP", "mINP")


def format_report_md(report: dict) -> str:
    results = report["results"]
    names = list(results)
    label = report.get("label", "model")
    head = "| Method | " + " | ".join(
        f"{_PRETTY.get(n, n)} {c}" for n in names for c in _COL_NAMES) + " |"
    sep = "|---|" + "---:|" * (len(names) * len(_COLS))
    row = f"| {label} | " + " | ".join(f"{results[n][k]:.2f}" for n in names for k in _COLS) + " |"
    tr = report["train"]
    lines = [
        f"# VI-ReID run: {label}",
        "",
        f"Data: `{report['data']['data']}` ({report['data_summary']['format']}), train set "
        f"`{report['data']['train_set']}`: {tr['train_images']} images, {tr['num_classes']} ids "
        f"({tr['visible_only_ids']} visible-only); test: `{report['test_data']['data']}`, "
        f"{report['test_data']['test_ids']} ids, "
        + "; ".join(f"{n}: {_direction(n)}, {results[n]['trials']} trial(s)" for n in names) + " (percent).",
        "",
        head,
        sep,
        row,
        "",
        f"Network: {tr['model_spec']['arch']} width {tr['model_spec']['base_width']}, input "
        f"{tr['model_spec']['height']}x{tr['model_spec']['width']}, {tr['parameters']:,} parameters, "
        f"{_start(report)}. Weights: {tr['selected_by']} (epoch {tr['epoch']}).",
        f"Training: {tr['timing']['iterations']} batches, {tr['timing']['seconds_per_batch']} s/batch, "
        f"{tr['timing']['train_seconds']} s; evaluation {report['eval_seconds']} s.",
        "",
    ]
    if "synthetic_images" in tr:
        cfg = report.get("train_config", {})
        share = cfg.get("synthetic_share")
        lines.insert(-1, f"Synthetic data: {tr['synthetic_images']} synthetic images of {tr['expanded_ids']} expanded "
                         f"ids; batch share {'not set' if share is None else share}, loss weight "
                         f"{cfg.get('synthetic_weight', 1.0)}.")
    return "\n".join(lines)


def _direction(name: str) -> str:
    p = PROTOCOLS.get(name)
    return f"{p.query_modality} queries -> {p.gallery_modality} gallery" if p else "?"


def _start(report: dict) -> str:
    path = report.get("train_config", {}).get("pretrained")
    return f"from ImageNet weights ({path})" if path else "from scratch (no pretrained weights)"


def plot_cmc(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6), dpi=120)
    for name, res in results.items():
        cmc = list(res["cmc"])
        ax.plot(range(1, len(cmc) + 1), cmc, marker="o", ms=3,
                label=f"{_PRETTY.get(name, name)} (R1 {res['rank1']:.1f}, mAP {res['mAP']:.1f})")
    ax.set_xlabel("rank")
    ax.set_ylabel("matching rate (%)")
    ax.set_ylim(0, 100)
    ax.set_xticks([1, 5, 10, 15, 20])
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def evaluate_run(run: Path, data_cfg: ReIDDataConfig, eval_cfg: ReIDEvalConfig,
                 data: ReIDData | None = None, label: str | None = None, device: str = "auto") -> dict:
    """Evaluate a trained run on the VI test ids (on `device`); writes report.json, report.md, cmc.png."""
    data = data or load_reid_data(data_cfg)
    protocols = resolve_protocols(data.format, eval_cfg.protocols)
    model, meta = load_checkpoint(run)
    model.to(resolve_device(device))
    t0 = time.perf_counter()
    with torch_threads(eval_cfg.eval_threads):
        results = evaluate_model(model, data.test, protocols, trials=eval_cfg.trials,
                                 seed=eval_cfg.eval_seed, split="test", flip=eval_cfg.flip,
                                 batch_size=eval_cfg.eval_batch_size, gallery=eval_cfg.gallery_sampling)
    eval_seconds = round(time.perf_counter() - t0, 2)
    train_meta = {k: meta[k] for k in ("model_spec", "num_classes", "train_images", "train_images_infrared",
                                       "visible_only_ids", "parameters", "epoch", "selected_by", "timing",
                                       "batches_per_epoch", "threads", "synthetic_images", "expanded_ids")
                  if k in meta}
    # what the network was trained on comes from its checkpoint; `data_cfg` only locates the test ids
    trained_on = meta.get("meta", {}).get("data") or config_to_dict(data_cfg)
    method = meta["config"]["method"].upper()
    label = label or f"{method} ({trained_on.get('train_set', '?')})"
    report = {
        "label": label,
        "run": str(run),
        "data": trained_on,
        "data_summary": meta.get("meta", {}).get("data_summary") or data.summary,
        "test_data": {"data": str(data_cfg.data), "format": data.format,
                      "test_ids": data.summary["test_ids"], "test_images": data.summary["test_images"]},
        "train_config": meta["config"],
        "train": train_meta,
        "eval": {**config_to_dict(eval_cfg), "protocols": protocols},
        "eval_seconds": eval_seconds,
        "results": {n: {k: r[k] for k in METRIC_KEYS + ("cmc", "per_trial", "trials", "num_queries",
                                                         "num_valid_queries")} for n, r in results.items()},
    }
    if "regdb_trial" in data.summary:  # the split whose test ids were scored
        report["test_data"]["regdb_trial"] = data.summary["regdb_trial"]
    write_json(run / "report.json", report)
    write_text(run / "report.md", format_report_md(report))
    plot_cmc(report["results"], run / "cmc.png", f"{label}: CMC")
    return report


def run_reid(data_cfg: ReIDDataConfig, train_cfg: ReIDTrainConfig, eval_cfg: ReIDEvalConfig) -> dict:
    """Train, then evaluate on the test ids; returns the report (also written into the run folder)."""
    data = load_reid_data(data_cfg)
    resolve_protocols(data.format, eval_cfg.protocols)  # a wrong protocol fails before training
    run, data = train_from_config(data_cfg, train_cfg, data)
    return evaluate_run(run, data_cfg, eval_cfg, data, device=train_cfg.device)


def summary_line(report: dict) -> str:
    parts = []
    for n, r in report["results"].items():
        parts.append(f"{_PRETTY.get(n, n)}: R1 {r['rank1']:.2f}  R10 {r['rank10']:.2f}  mAP {r['mAP']:.2f}  mINP {r['mINP']:.2f}")
    return "\n".join(parts)
