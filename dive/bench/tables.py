"""The bench's paper-style tables (Markdown + JSON) and plots, from the ReID reports and metrics."""

from __future__ import annotations

from pathlib import Path

from dive.bench.jobs import CONVERGED
from dive.reid.baselines import METRICS, aggregate
from dive.utils.config import config_to_dict
from dive.utils.io import atomic_path, write_json, write_text

#: Tables 1/2 rows: (train set, label)
MAIN_ROWS = (
    ("baseline", "baseline (VI only)"),
    ("external-rgb", "+ external RGB only"),
    ("grayscale", "+ grayscale \"IR\""),
    ("cyclegan", "+ CycleGAN IR"),
    ("dive-camera", "+ DiVE IR"),
    ("dive-translate", "+ DiVE img2img IR (`dive translate`, not the paper's method)"),
)
ABLATION_ROWS = (
    ("dive-ir-only", "DiVE trained on VI infrared only"),
    ("dive-modality", "DiVE, one token per modality"),
    ("dive-camera", "DiVE, one token per camera"),
)
#: diagnostic rows (AGW, ablation seeds): optimisation length and a perfect generator
DIAGNOSTIC_ROWS = (
    ("baseline", "baseline (VI only)"),
    ("baseline-long", "baseline, trained for as many batches as + DiVE"),
    ("dive-camera", "+ DiVE IR"),
    ("oracle", "+ true IR renders of the external ids (oracle: a ceiling, not a method)"),
    ("oracle-vae", "+ the same through the base's VAE (a perfect UNet on this base)"),
)
GENERATORS = (("dive-camera", "DiVE"), ("dive-translate", "DiVE img2img"), ("cyclegan", "CycleGAN"),
              ("grayscale", "grayscale"), ("dive-modality", "DiVE (token per modality)"),
              ("dive-ir-only", "DiVE (IR-only training)"),
              ("oracle", "oracle: true IR renders (ceiling, not a method)"),
              ("oracle-vae", "oracle through the base's VAE (a perfect UNet on this base)"))
_HEAD = "| {} | All-search R1 | All-search mAP | Indoor R1 | Indoor mAP |\n|---|---|---|---|---|"


def _cell(agg: dict, proto: str, key: str) -> str:
    m = agg[f"{proto}/{key}"]
    return f"{m['mean']:.2f} ± {m['std']:.2f}" if len(m["values"]) > 1 else f"{m['mean']:.2f}"


def _rows(reports: dict, train_sets, method: str, seeds) -> dict[str, dict]:
    out = {}
    for train_set in train_sets:
        reps = [reports[k] for k in (f"{train_set}|{method}|{s}" for s in seeds) if k in reports]
        if reps:
            out[train_set] = aggregate(reps)
    return out


#: the baseline rows a claim is checked against: the strongest of those present
BASELINE_ROWS = ("baseline", "baseline-long")


def claim_check(rows: dict[str, dict]) -> dict:
    """The paper's claim: + DiVE beats the strongest baseline row present (the VI-only baseline, or
    the one trained for as many batches as + DiVE) by more than the seed spread (all-search R1 and
    mAP), and beats every comparison baseline."""
    if "dive-camera" not in rows or "baseline" not in rows:
        return {"holds": False, "why": "missing runs"}
    checks = {}
    dive = rows["dive-camera"]
    for key in ("rank1", "mAP"):
        metric = f"sysu-all/{key}"
        strongest = max((b for b in BASELINE_ROWS if b in rows), key=lambda b: rows[b][metric]["mean"])
        d, b = dive[metric], rows[strongest][metric]
        spread = max(d["std"], b["std"])
        checks[f"beats the strongest baseline ({strongest}) {key} by > spread"] = bool(d["mean"] - b["mean"] > spread)
        for other in ("external-rgb", "grayscale", "cyclegan"):
            if other in rows:
                checks[f"beats {other} {key}"] = bool(d["mean"] > rows[other][metric]["mean"])
    return {"holds": all(checks.values()), "checks": checks}


def _batches(reports: dict, train_set: str, method: str, seeds) -> str:
    """The batches the row's runs trained (one number when the seeds agree)."""
    n = sorted({reports[k]["train"]["timing"]["iterations"] for k in (f"{train_set}|{method}|{s}" for s in seeds)
                if k in reports and "timing" in reports[k].get("train", {})})
    return " / ".join(f"{x:,}" for x in n) or "?"


def _chosen_epochs(reports: dict, train_set: str, method: str, seeds) -> list[int]:
    return [reports[k]["train"]["epoch"] for k in (f"{train_set}|{method}|{s}" for s in seeds)
            if k in reports and "epoch" in reports[k].get("train", {})]


def val_curves(run_dirs: dict[str, list[Path]]) -> dict[str, dict[int, float]]:
    """Mean val Rank-1 per epoch of each row's runs (their log.jsonl epoch rows)."""
    import json

    curves = {}
    for row, runs in run_dirs.items():
        per_epoch: dict[int, list[float]] = {}
        for run in runs:
            log = run / "log.jsonl"
            if not log.exists():
                continue
            for line in log.read_text().splitlines():
                r = json.loads(line) if line.strip() else {}
                if r.get("type") == "epoch" and "val" in r:
                    per_epoch.setdefault(int(r["epoch"]) + 1, []).append(float(r["val"]["rank1"]))  # percent; epochs from 1
        if per_epoch:
            curves[row] = {e: sum(v) / len(v) for e, v in sorted(per_epoch.items())}
    return curves


def _figure(figsize):
    """A headless matplotlib figure and axes (the bench runs without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=figsize, dpi=120)


def _save(fig, path: Path) -> None:
    """Written whole or not at all, then closed."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def _plot(path: Path, xs, series: dict[str, list], xlabel: str, title: str) -> None:
    fig, ax = _figure((5, 3.4))
    for label, ys in series.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("percent")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_curves(path: Path, curves: dict[str, dict[int, float]], title: str) -> None:
    fig, ax = _figure((6, 3.6))
    for label, c in curves.items():
        ax.plot(list(c), list(c.values()), marker=".", label=label)
        best = max(c, key=c.get)
        ax.scatter([best], [c[best]], s=40, zorder=3)
    ax.set_xlabel("epoch")
    ax.set_ylabel("val Rank-1 (percent)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, path)


def identity_payoff(reports: dict, quality: dict, seeds) -> dict:
    """Does identity in the generated infrared pay off in ReID? Per generator: Table 6's identity
    Rank-1 against AGW all-search R1 when its images are added, both at the same ReID seeds (the
    ablation seeds, which every generator's row has), with the baseline at those seeds and the rank
    correlation across generators. It makes the claim's cause visible: if the ReID gain tracks the
    identity a generator keeps, a generator that keeps too little cannot win."""
    rows = _rows(reports, ["baseline", "baseline-long", *quality], "agw", seeds)
    points = {k: {"identity_rank1": quality[k]["rank1"], "reid_rank1": rows[k]["sysu-all/rank1"]["mean"],
                  "reid_mAP": rows[k]["sysu-all/mAP"]["mean"]} for k in quality if k in rows}
    out: dict = {"seeds": list(seeds), "points": points,
                 "baseline_rank1": rows["baseline"]["sysu-all/rank1"]["mean"] if "baseline" in rows else None,
                 # the diagnostics' baseline given as many batches as an expanded set: the fair line
                 "baseline_long_rank1": rows["baseline-long"]["sysu-all/rank1"]["mean"] if "baseline-long" in rows
                 else None}
    if len(points) >= 3:
        from scipy.stats import spearmanr

        out["spearman"] = float(spearmanr([p["identity_rank1"] for p in points.values()],
                                          [p["reid_rank1"] for p in points.values()]).statistic)
    return out


def _plot_payoff(path: Path, payoff: dict, labels: dict[str, str]) -> None:
    import textwrap

    fig, ax = _figure((5.4, 3.8))
    right = max((p["identity_rank1"] for p in payoff["points"].values()), default=0.0)
    for key, p in payoff["points"].items():
        ax.scatter(p["identity_rank1"], p["reid_rank1"], s=28)
        # long labels wrapped, and written leftwards in the right part of the plot so none is cut off
        left = p["identity_rank1"] > 0.85 * right
        ax.annotate(textwrap.fill(labels.get(key, key).split(":")[0], 18), (p["identity_rank1"], p["reid_rank1"]),
                    fontsize=7, xytext=(-4 if left else 4, 3), textcoords="offset points", ha="right" if left else "left")
    if payoff["baseline_rank1"] is not None:
        ax.axhline(payoff["baseline_rank1"], color="grey", ls="--", lw=1, label="baseline (VI only)")
    if payoff["baseline_long_rank1"] is not None:
        ax.axhline(payoff["baseline_long_rank1"], color="grey", ls=":", lw=1.2,
                   label="baseline, as many batches as + DiVE")
    if payoff["baseline_rank1"] is not None or payoff["baseline_long_rank1"] is not None:
        ax.legend(fontsize=7, loc="upper left")
    ax.set_xlabel("identity Rank-1 of the generated IR (Table 6)")
    ax.set_ylabel("AGW all-search R1 with it added")
    rho = payoff.get("spearman")
    ax.set_title(f"Identity kept vs ReID gain (seeds {payoff['seeds']}"
                 + (f", Spearman {rho:+.2f})" if rho is not None else ")"), fontsize=9)
    ax.grid(alpha=0.3)
    _save(fig, path)


def write_tables(cfg, reports: dict[str, dict], metrics: dict, id_counts: dict[str, int], timings: dict,
                 projection: dict | None = None, protocols: dict | None = None) -> dict:
    out = Path(cfg.out)
    lines = [f"# DiVE bench on SynthVI{' (--quick: toy size)' if cfg.quick else ''}", ""]
    lines.append(f"Settings: {cfg.n_per_camera} generated images per external id and infrared camera "
                 f"(paper: 18), DPM-Solver++ {cfg.gen_steps} steps, guidance {cfg.guidance}; external ids with "
                 f">= {cfg.min_images} images; ReID seeds {list(cfg.seeds)} (Tables 1/2), "
                 f"{list(cfg.ablation_seeds)} (Tables 3, 5). Percent, SYSU-MM01 protocols, 10 trials; "
                 "mean ± sample standard deviation over seeds.")
    if cfg.dive_images is not None:
        lines[-1] += f" + DiVE images: {cfg.dive_images} (given, not generated by the bench)."
    if cfg.synthetic_overrides or cfg.from_sweep is not None:
        chosen = f" (the val-chosen setting of the sweep {cfg.from_sweep})" if cfg.from_sweep is not None else ""
        share = "ids drawn alike" if cfg.synthetic_share is None else f"synthetic share {cfg.synthetic_share:g}"
        lines[-1] += (f" ReID runs of rows with synthetic images: {share}, synthetic loss weight "
                      f"{cfg.synthetic_weight:g}; "
                      f"generation as above{chosen}.")
    result: dict = {"tables": {}, "config": config_to_dict(cfg), "timings_s": timings}

    rowsd = _rows(reports, [t for t, _ in DIAGNOSTIC_ROWS], "agw", cfg.ablation_seeds)
    budget = ("every run trains the same number of batches (the largest training set's AGW epochs: "
              "--reid-budget equal)" if cfg.reid_budget == "equal" else
              "each set trains its own AGW epochs, so an expanded set trains longer than the baseline "
              "(--reid-budget own)")
    head = _HEAD.format("training data").split("\n")
    head = [head[0] + " batches |", head[1] + "---|"]
    for method in cfg.methods:
        rows = _rows(reports, [t for t, _ in MAIN_ROWS], method, cfg.seeds)
        name = {"agw": "AGW", "caj": "AGW+CAJ", "deen": "DEEN"}.get(method, method)
        lines += ["", f"## Table {'1' if method == 'agw' else '2'}: {name}", "", f"Budget: {budget}.", "", *head]
        for t, label in MAIN_ROWS:
            if t in rows:
                lines.append(f"| {label} | " + " | ".join(_cell(rows[t], p, k) for p, k in METRICS)
                             + f" | {_batches(reports, t, method, cfg.seeds)} |")
        check = claim_check(rows | ({"baseline-long": rowsd["baseline-long"]} if "baseline-long" in rowsd else {}))
        entry = {"rows": rows, "claim": check}
        conv = _rows(reports, [t + CONVERGED for t, _ in MAIN_ROWS], method, cfg.seeds)
        if conv:
            conv = {t[:-len(CONVERGED)]: v for t, v in conv.items()}
            lines += ["", f"Trained to convergence (up to {cfg.reid_converge_epochs} epochs of the same length; the "
                          "weights of the epoch with the best val Rank-1, never the test ids):", "",
                      head[0].replace(" batches |", " val-chosen epoch per seed |"), head[1]]
            for t, label in MAIN_ROWS:
                if t in conv:
                    ep = _chosen_epochs(reports, t + CONVERGED, method, cfg.seeds)
                    lines.append(f"| {label} (converged) | " + " | ".join(_cell(conv[t], p, k) for p, k in METRICS)
                                 + f" | {' / '.join(map(str, ep))} |")
            curves = val_curves({label: [Path(cfg.out) / "reid" / f"{t}{CONVERGED}-{method}-seed{s}" for s in cfg.seeds]
                                 for t, label in MAIN_ROWS if t in conv})
            if curves:
                _plot_curves(out / f"convergence-{method}.png", curves, f"{name}: val Rank-1 per epoch (mean over seeds)")
                lines += ["", f"![convergence {name}](convergence-{method}.png)"]
            late = [label for label, c in curves.items() if max(c, key=c.get) == max(c)]
            if late:
                lines.append(f"Still rising at the last epoch (a longer budget may help): {', '.join(late)}.")
            entry["converged"] = {"rows": conv, "claim": claim_check(conv), "curves": curves}
            check = {"holds": check["holds"] and entry["converged"]["claim"]["holds"],
                     "checks": check["checks"] | {f"{k} (converged)": v for k, v in entry["converged"]["claim"]
                                                  .get("checks", {}).items()}} if "checks" in check else check
            entry["claim"] = check
        lines += ["", "Claim (+ DiVE beats the strongest baseline by more than the seed spread, and every "
                      "comparison, at this budget" + (" and trained to convergence" if conv else "") + "): "
                      f"**{'holds' if check['holds'] else 'does not hold'}**"]
        for what, ok in check.get("checks", {}).items():
            lines.append(f"- {what}: {'yes' if ok else 'no'}")
        result["tables"][f"main-{method}"] = entry
    if protocols:  # the Tables 1/2 models on the LLCM and RegDB protocols (dive.bench.protocols)
        lines += ["", *protocols["lines"]]
        result["tables"]["protocols"] = protocols["table"]

    if "baseline-long" in rowsd or "oracle" in rowsd:
        lines += ["", f"## Diagnostics (AGW, seed(s) {list(cfg.ablation_seeds)}): longer training, and a perfect "
                      "generator", "", _HEAD.format("training data")]
        for t, label in DIAGNOSTIC_ROWS:
            if t in rowsd:
                lines.append(f"| {label} | " + " | ".join(_cell(rowsd[t], p, k) for p, k in METRICS) + " |")
        result["tables"]["diagnostics"] = rowsd

    if cfg.ablations:
        rows3 = _rows(reports, [t for t, _ in ABLATION_ROWS], "agw", cfg.ablation_seeds)
        lines += ["", "## Table 3: DiVE token and data ablations (AGW)", "", _HEAD.format("DiVE variant")]
        for t, label in ABLATION_ROWS:
            if t in rows3:
                lines.append(f"| {label} | " + " | ".join(_cell(rows3[t], p, k) for p, k in METRICS) + " |")
        if "dive-camera" in rows3 and "dive-modality" in rows3:
            gain = rows3["dive-camera"]["sysu-all/rank1"]["mean"] - rows3["dive-modality"]["sysu-all/rank1"]["mean"]
            lines += ["", f"Per-camera minus per-modality tokens, all-search R1: {gain:+.2f}"]
        result["tables"]["ablations"] = rows3

        keys5 = sorted(id_counts, key=id_counts.get)
        rows5 = _rows(reports, keys5, "agw", cfg.ablation_seeds)
        xs = [id_counts[k] for k in keys5 if k in rows5]
        lines += ["", "## Table 5: expanded identities (AGW)", "", "| expanded ids | All-search R1 | All-search mAP |",
                  "|---|---|---|"]
        for k in keys5:
            if k in rows5:
                lines.append(f"| {id_counts[k]} | {_cell(rows5[k], 'sysu-all', 'rank1')} | {_cell(rows5[k], 'sysu-all', 'mAP')} |")
        if xs:
            _plot(out / "table5-ids.png", xs, {
                "All-search R1": [rows5[k]["sysu-all/rank1"]["mean"] for k in keys5 if k in rows5],
                "All-search mAP": [rows5[k]["sysu-all/mAP"]["mean"] for k in keys5 if k in rows5]},
                "external identities expanded with DiVE", "AGW on SynthVI: expanded ids vs accuracy")
            lines += ["", "![Table 5](table5-ids.png)"]
        result["tables"]["ids"] = {"counts": {k: id_counts[k] for k in keys5}, "rows": rows5}
    else:
        lines += ["", "Tables 3 and 5 (ablations, expanded identities): not made (--no-ablations)."]

    ex = metrics.get("extractors", {}).get("fd", {})
    lines += ["", "## Table 6: generated infrared quality", "",
              f"Features: {ex.get('name', '?')} ({ex.get('run', '')}); Fréchet distance to the real VI training "
              "infrared images; identity Rank-1 / mAP: synthetic IR queries against the real visible images of "
              "the external ids. Split-half FD of real IR (noise floor): "
              f"{(metrics.get('reference', {}).get('fd_real_ir_split_half') or {}).get('fd', float('nan')):.3f}.", "",
              "Without source: each copy / img2img image's own source picture left out of its ranking (a copy "
              "matched to the picture it was made from shows pixels kept, not identity); text-to-image rows have "
              "none.", "",
              "| generator | FD (lower is better) | identity R1 | identity mAP | intra/inter AUC | without source: "
              "R1 / mAP / AUC |", "|---|---|---|---|---|---|"]
    table6 = {}

    def _auc(v):
        return "n/a" if v is None else f"{v:.3f}"

    for key, label in GENERATORS:
        s = metrics.get("sources", {}).get(key)
        if s is None:
            continue
        w = s.get("retrieval_without_source", s["retrieval"])
        row = {"fd": s["fd"]["value"], "rank1": s["retrieval"]["rank1"], "mAP": s["retrieval"]["mAP"],
               "auc": s["distances"].get("auc"), "rank1_without_source": w["rank1"], "mAP_without_source": w["mAP"],
               "auc_without_source": s.get("auc_without_source", s["distances"].get("auc"))}
        table6[key] = row
        lines.append(f"| {label} | {row['fd']:.3f} | {row['rank1']:.2f} | {row['mAP']:.2f} | {_auc(row['auc'])} | "
                     f"{row['rank1_without_source']:.2f} / {row['mAP_without_source']:.2f} / "
                     f"{_auc(row['auc_without_source'])} |")
    result["tables"]["quality"] = table6

    payoff = identity_payoff(reports, table6, cfg.ablation_seeds)
    if payoff["points"]:
        labels = dict(GENERATORS)
        lines += ["", f"## Identity kept vs ReID gain (AGW, seed(s) {payoff['seeds']})", "",
                  "Each generator's Table 6 identity Rank-1 beside the all-search R1 of AGW trained with its "
                  "images added" + (f" (baseline at these seeds: {payoff['baseline_rank1']:.2f})"
                                    if payoff["baseline_rank1"] is not None else "")
                  + (f"; the baseline trained for as many batches as + DiVE: {payoff['baseline_long_rank1']:.2f}"
                     if payoff["baseline_long_rank1"] is not None else "") + ".", "",
                  "| generator | identity R1 | AGW all-search R1 | AGW all-search mAP |", "|---|---|---|---|"]
        for key, p in sorted(payoff["points"].items(), key=lambda kv: kv[1]["identity_rank1"]):
            lines.append(f"| {labels.get(key, key)} | {p['identity_rank1']:.2f} | {p['reid_rank1']:.2f} | "
                         f"{p['reid_mAP']:.2f} |")
        if "spearman" in payoff:
            lines += ["", f"Rank correlation (Spearman) across generators: {payoff['spearman']:+.2f}"]
        _plot_payoff(out / "identity-vs-reid.png", payoff, labels)
        lines += ["", "![identity kept vs ReID gain](identity-vs-reid.png)"]
    result["tables"]["identity_payoff"] = payoff
    lines += ["", "Stage times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items())]
    if projection is not None:
        from dive.bench.plan_text import timing_lines

        lines += ["", *timing_lines(projection, timings)]
        result["projected_s"] = projection["total_seconds"]
    text = "\n".join(lines) + "\n"
    write_text(out / "tables.md", text)
    write_json(out / "tables.json", result)
    print(text)
    return result

