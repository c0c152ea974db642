"""`metrics.md` and the command's summary lines, from the report dict of `quality_report`."""

from __future__ import annotations


def _f(v, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


def _describe_line(d: dict) -> str:
    where = f"run `{d['run']}`" if d.get("run") else f"weights `{d['weights']}`"
    return (f"`{d['name']}` ({where}, sha256 `{d['weights_sha256'][:16]}`, feature {d['feature']}, "
            f"{d['feature_dim']}-d; {d['streams']})")


def format_metrics_md(report: dict) -> str:
    ex = report["extractors"]
    data = report["data"]
    ir = data["real_ir"]
    lines = ["# Quality of generated infrared images", ""]
    if ex["fd"] == ex["identity"]:
        lines.append(f"Feature extractor: {_describe_line(ex['fd'])}.")
    else:
        lines += [f"- FD features: {_describe_line(ex['fd'])}", f"- identity features: {_describe_line(ex['identity'])}"]
    lines += [
        "",
        f"Real infrared set: `{ir['path']}` ({ir['format']}, splits {', '.join(ir['splits'])}): {ir['images']} images, "
        f"{ir['ids']} ids ({ir['used_images']} used). Real visible gallery: splits "
        f"{', '.join(data['visible']['splits'])} of " + ", ".join(f"`{s['path']}` ({s['format']})"
                                                              for s in data["visible"]["sources"]) + ".",
        "",
        "| source | IR images | ids | FD ↓ | intra dist ↓ | inter dist | gap ↑ | d' ↑ | AUC ↑ | Rank-1 ↑ | mAP ↑ | "
        "chance R1 | without source: AUC / Rank-1 / mAP |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, s in report["sources"].items():
        d, r = s["distances"], s["retrieval"]
        w = s.get("retrieval_without_source", r)
        lines.append(
            f"| {name} | {s['used_images']} | {s['ids_with_visible']}/{s['ids']} | {_f(s['fd']['value'], 2)} | "
            f"{_f(d['intra']['mean'])} ± {_f(d['intra']['std'])} | {_f(d['inter']['mean'])} ± {_f(d['inter']['std'])} | "
            f"{_f(d['gap'])} | {_f(d['d_prime'], 2)} | {_f(d['auc'])} | {_f(r['rank1'], 2)} | {_f(r['mAP'], 2)} | "
            f"{_f(r['chance_rank1'], 2)} | {_f(s.get('auc_without_source', d['auc']))} / {_f(w['rank1'], 2)} / "
            f"{_f(w['mAP'], 2)} |")
    ref = report["reference"]["fd_real_ir_split_half"]
    lines += [""]
    if ref:
        lines.append(f"Reference: FD between two random halves of the real infrared set: {ref['fd']:.2f} "
                     f"({ref['sizes'][0]} vs {ref['sizes'][1]} images).")
    lines += [
        "FD: Fréchet distance of the synthetic-IR features to the real-IR features (lower = closer); it depends on "
        "the sample sizes and the feature dimension, so compare numbers at similar sizes only. Distances: cosine "
        "distance from each synthetic IR image to the real visible images of the same identity (intra) and of "
        "the folder's other identities (inter); AUC = P(intra < inter). Rank-1 / mAP (percent): synthetic IR "
        "queries against all real visible images of the folder's identities. Without source: the same with "
        "each image's own source picture (copies, img2img) left out of its ranking and intra distances.",
        "",
    ]
    for name, s in report["sources"].items():
        for kind, fname in s.get("plots", {}).items():
            lines.append(f"![{name} {kind}]({fname})")
    lines.append("")
    return "\n".join(lines)


def summary_lines(report: dict) -> list[str]:
    out = [f"features: {report['extractors']['fd']['name']} (FD), {report['extractors']['identity']['name']} (identity)"]
    for name, s in report["sources"].items():
        d, r = s["distances"], s["retrieval"]
        out.append(f"{name}: FD {_f(s['fd']['value'], 2)} | intra {_f(d['intra']['mean'])} inter "
                   f"{_f(d['inter']['mean'])} gap {_f(d['gap'])} AUC {_f(d['auc'])} | Rank-1 {_f(r['rank1'], 2)} "
                   f"mAP {_f(r['mAP'], 2)} ({s['used_images']} IR images, {s['ids_with_visible']} ids)"
                   + (f" | without source: AUC {_f(s['auc_without_source'])} Rank-1 "
                      f"{_f(s['retrieval_without_source']['rank1'], 2)} mAP {_f(s['retrieval_without_source']['mAP'], 2)}"
                      if s.get("sources_left_out") else ""))
    ref = report["reference"]["fd_real_ir_split_half"]
    if ref:
        out.append(f"reference: FD real IR half vs half {ref['fd']:.2f}")
    return out
