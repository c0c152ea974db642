"""Tables 1/2's models scored with the LLCM and RegDB protocols, both directions each.

After the Tables 1/2 ReID runs, the bench writes the world's VI set in the LLCM and in the RegDB
layout (`dive.data.layouts`, hard links, under out/layouts/{llcm,regdb}) and scores every Tables
1/2 model (each method, each seed) there, without retraining, with the ReID library's evaluation
(`dive.reid.evaluate.evaluate_model`: feature extraction and the protocols of
`dive.reid.protocols`) at the settings of the bench's SYSU-MM01 numbers (`ReIDEvalConfig`'s
defaults):

* LLCM: ``llcm-v2i`` (visible queries, infrared gallery) and ``llcm-i2v``, on the layout's test
  folders (the world's test ids), single-shot gallery re-drawn over 10 trials;
* RegDB: ``regdb-v2t`` (visible -> thermal) and ``regdb-t2v``, each of the layout's 10 trials'
  test lists scored and the 10 results averaged, as RegDB is reported. The bench writes the RegDB
  layout with the world rule (every trial: the world's test ids), so the models meet no id they
  trained on and the 10 trials are one split: it is scored once and that result stands for each
  trial. Every id has 10 images per modality; where the world has fewer in a camera they are
  repeated, and the table says how many of the test images are repeats.

Each model's scores go to out/protocols/<train set>-<method>-seed<s>.json and are reused while the
model's weights (their sha256), the layouts and the evaluation settings are the same. The table
(`protocol_section`): per method and row, R1 and mAP of the four directions, mean ± sample standard
deviation over the seeds. A model that cannot be scored (no weights, or a direction with no valid
query) is listed with its reason, never left out silently.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from dive.bench.config import BenchConfig
from dive.bench.jobs import reid_run_dir, reid_run_name
from dive.bench.stages import log
from dive.bench.tables import MAIN_ROWS

#: (protocol, column title); the layout each needs is the protocol's dataset
DIRECTIONS = (("llcm-v2i", "LLCM VIS→IR"), ("llcm-i2v", "LLCM IR→VIS"), ("regdb-v2t", "RegDB VIS→T"),
              ("regdb-t2v", "RegDB T→VIS"))
KEYS = (("rank1", "R1"), ("mAP", "mAP"))
METHOD_NAMES = {"agw": "AGW", "caj": "AGW+CAJ", "deen": "DEEN"}
RESULT_VERSION = 1


def layout_dirs(cfg: BenchConfig) -> dict[str, Path]:
    return {name: cfg.out / "layouts" / name for name in ("llcm", "regdb")}


def ensure_layouts(cfg: BenchConfig) -> dict[str, dict]:
    """The world in both layouts (reused when written from the same world with the same settings;
    the bench's own folder is rewritten otherwise); {layout: its synthvi_layout.json}."""
    from dive.data.layouts import LayoutConfig, layout_info, world_sha256, write_layout

    digest = world_sha256(cfg.data)
    infos = {}
    for name, folder in layout_dirs(cfg).items():
        want = LayoutConfig(data=cfg.data, to=name, out=folder)
        info = layout_info(folder) if folder.exists() else None
        if info is None or info.get("key") != want.key(digest):
            if folder.exists():
                shutil.rmtree(folder)
            log(f"{name} layout of the world -> {folder}")
            info = write_layout(want)["info"]
        infos[name] = info
    return infos


def _records(folders: dict[str, Path]):
    """The test records of the LLCM layout and of each RegDB trial, read by the real readers."""
    from dive.data.readers.regdb import REGDB_TRIALS
    from dive.data.registry import detect_format, load_dataset

    for name, folder in folders.items():
        if detect_format(folder) != name:  # the layout must read back as what it claims to be
            raise ValueError(f"{folder}: not detected as {name}")
    llcm = load_dataset("llcm", folders["llcm"]).split("test")
    regdb = {t: load_dataset("regdb", folders["regdb"], trial=t).split("test") for t in REGDB_TRIALS}
    return llcm, regdb


def _digest(records) -> str:
    h = hashlib.sha256()
    for r in records:
        h.update(f"{r.path}\0{r.pid}\0{r.camid}\0{r.modality.value}\n".encode())
    return h.hexdigest()


def _metrics(res: dict) -> dict:
    from dive.reid.protocols import METRIC_KEYS

    return {k: float(res[k]) for k in METRIC_KEYS} | {"trials": int(res["trials"]),
                                                       "num_queries": int(res["num_queries"])}


def score_model(run: Path, llcm, regdb: dict, eval_cfg, device: str = "auto", threads: int = 1) -> dict:
    """One model's results on the four directions (RegDB: the mean over its trials)."""
    from dive.reid.checkpoints import load_checkpoint
    from dive.reid.device import resolve_device
    from dive.reid.evaluate import evaluate_model
    from dive.reid.protocols import METRIC_KEYS
    from dive.utils.threads import torch_threads

    model, _ = load_checkpoint(run)
    model.to(resolve_device(device))
    opts = dict(trials=eval_cfg.trials, seed=eval_cfg.eval_seed, split="test", flip=eval_cfg.flip,
                batch_size=eval_cfg.eval_batch_size, gallery=eval_cfg.gallery_sampling)
    out: dict = {}
    with torch_threads(threads):
        res = evaluate_model(model, llcm, ["llcm-v2i", "llcm-i2v"], **opts)
        out |= {n: _metrics(r) for n, r in res.items()}
        by_split: dict[str, dict] = {}  # identical trial lists are scored once
        per_trial: dict[str, list[dict]] = {"regdb-v2t": [], "regdb-t2v": []}
        for t, records in sorted(regdb.items()):
            key = _digest(records)
            if key not in by_split:
                by_split[key] = evaluate_model(model, records, ["regdb-v2t", "regdb-t2v"], **opts)
            for n in per_trial:
                per_trial[n].append(_metrics(by_split[key][n]) | {"trial": t})
    for n, rows in per_trial.items():
        out[n] = {k: float(np.mean([r[k] for r in rows])) for k in METRIC_KEYS}
        out[n] |= {"trials": len(rows), "distinct_splits": len(by_split), "num_queries": rows[0]["num_queries"],
                   "per_trial": [{k: r[k] for k in ("trial", "rank1", "mAP")} for r in rows]}
    return out


def _weights_sha(run: Path) -> str | None:
    meta = run / "model.json"
    return json.loads(meta.read_text()).get("weights_sha256") if meta.is_file() else None


def _models(cfg: BenchConfig, reports: dict) -> list[tuple[str, str, int]]:
    return [(t, m, s) for m in cfg.methods for t, _ in MAIN_ROWS for s in cfg.seeds if f"{t}|{m}|{s}" in reports]


def protocol_results(cfg: BenchConfig, reports: dict) -> dict:
    """Score every Tables 1/2 model present in `reports` (reusing scores already written);
    {"layouts": {layout: info}, "models": {"train_set|method|seed": result or {"skipped": why}}}."""
    models = _models(cfg, reports)
    if not models:
        return {}
    from dive.reid.run import ReIDEvalConfig
    from dive.utils.config import config_to_dict
    from dive.utils.io import write_json

    eval_cfg = ReIDEvalConfig()
    infos = ensure_layouts(cfg)
    want_base = {"version": RESULT_VERSION, "layouts": {n: i["key"] for n, i in infos.items()},
                 "eval": config_to_dict(eval_cfg)}
    folder = cfg.out / "protocols"
    results: dict[str, dict] = {}
    todo = []
    for t, m, s in models:
        run = reid_run_dir(cfg, t, m, s)
        sha = _weights_sha(run)
        if sha is None:
            results[f"{t}|{m}|{s}"] = {"skipped": f"no model in {run} (model.json missing)"}
            continue
        path = folder / f"{reid_run_name(t, m, s)}.json"
        want = want_base | {"weights_sha256": sha}
        saved = json.loads(path.read_text()) if path.is_file() else {}
        if all(saved.get(k) == v for k, v in want.items()) and "results" in saved:
            results[f"{t}|{m}|{s}"] = saved["results"]
        else:
            todo.append((t, m, s, run, path, want))
    if todo:
        reused = sum("skipped" not in r for r in results.values())
        log(f"LLCM and RegDB protocols: {len(todo)} models to score ({reused} reused, "
            f"{len(results) - reused} without a model)")
        llcm, regdb = _records(layout_dirs(cfg))
        for t, m, s, run, path, want in todo:
            try:
                res = score_model(run, llcm, regdb, eval_cfg, threads=cfg.threads)
            except ValueError as err:  # e.g. a direction with no valid query: said, not hidden
                res = {"skipped": str(err)}
            else:
                write_json(path, want | {"run": str(run), "results": res})
            results[f"{t}|{m}|{s}"] = res
    return {"layouts": infos, "models": results}


def _aggregate(results: list[dict]) -> dict:
    out = {}
    for proto, _ in DIRECTIONS:
        for key, _ in KEYS:
            vals = [r[proto][key] for r in results]
            out[f"{proto}/{key}"] = {"mean": float(np.mean(vals)),
                                     "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0, "values": vals}
    return out


def _cell(m: dict) -> str:
    return f"{m['mean']:.2f} ± {m['std']:.2f}" if len(m["values"]) > 1 else f"{m['mean']:.2f}"


def _layout_note(infos: dict) -> str:
    llcm, regdb = infos["llcm"], infos["regdb"]
    pad = regdb["padding"]
    test = set(regdb["splits"]["trials"]["1"]["test"])
    n = pad["images_per_modality"]
    repeats = {m: sum(c for pid, c in pad["repeated_images"][m].items() if int(pid) in test)
               for m in ("visible", "thermal")}
    rule = regdb["splits"]["rule"]
    trials = ("every trial lists the world's test ids, so the 10 trials are one split, scored once"
              if rule == "world" else f"trials drawn by RegDB's half/half rule (seed {regdb['splits']['seed']})")
    return (f"LLCM layout (out/layouts/llcm): {len(llcm['splits']['test'])} test ids; visible cameras "
            f"{llcm['cameras']['visible']} on LLCM's visible side, infrared {llcm['cameras']['infrared']} on its "
            "infrared side (no camera sees both modalities, so the same-id-same-camera exclusion removes nothing); "
            "single-shot gallery, 10 trials. RegDB layout (out/layouts/regdb): per id its visible and its infrared "
            f"camera with the most images, {n} images per id and modality; {trials}; the whole gallery, raw CMC. "
            f"Of the {len(test) * n} visible and {len(test) * n} thermal test images, {repeats['visible']} and "
            f"{repeats['thermal']} are repeats (a camera with fewer than {n} images repeats them in order).")


def protocol_section(cfg: BenchConfig, found: dict) -> dict | None:
    """The tables.md lines and the tables.json entry of `protocol_results`' scores (None: none)."""
    if not found:
        return None
    models = found["models"]
    lines = ["## Table 1 on the LLCM and RegDB protocols", "",
             "The Tables 1/2 models, not retrained, scored on the world's test ids written in the LLCM and in the "
             "RegDB layout (`dive data layout`), both directions each. Percent, R1 and mAP, mean ± sample standard "
             f"deviation over seeds {list(cfg.seeds)}. " + _layout_note(found["layouts"])]
    cols = " | ".join(f"{title} {k}" for _, title in DIRECTIONS for _, k in KEYS)
    table: dict = {"layouts": {n: {"key": i["key"], "splits": i["splits"].get("rule", "world")}
                               for n, i in found["layouts"].items()}, "methods": {}}
    skipped = []
    for method in cfg.methods:
        name = METHOD_NAMES.get(method, method)
        lines += ["", f"### Table {'1' if method == 'agw' else '2'}: {name}", "", f"| training data | {cols} |",
                  "|---|" + "---|" * (len(DIRECTIONS) * len(KEYS))]
        rows = {}
        for t, label in MAIN_ROWS:
            got = [(s, models[f"{t}|{method}|{s}"]) for s in cfg.seeds if f"{t}|{method}|{s}" in models]
            skipped += [f"{label}, {name}, seed {s}: {r['skipped']}" for s, r in got if "skipped" in r]
            ok = [r for _, r in got if "skipped" not in r]
            if ok:
                rows[t] = _aggregate(ok) | {"seeds": [s for s, r in got if "skipped" not in r]}
                lines.append(f"| {label} | " + " | ".join(_cell(rows[t][f"{p}/{k}"]) for p, _ in DIRECTIONS
                                                         for k, _ in KEYS) + " |")
        table["methods"][method] = rows
    if skipped:
        lines += ["", "Not scored:"] + [f"- {s}" for s in skipped]
    table["skipped"] = skipped
    return {"lines": lines, "table": table}


def protocol_tables(cfg: BenchConfig, reports: dict) -> dict | None:
    """The bench's stage: score the Tables 1/2 models and build their table (None: no models)."""
    return protocol_section(cfg, protocol_results(cfg, reports))
