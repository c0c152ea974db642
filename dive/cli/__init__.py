"""The `dive` command line: thin. Each command parses its stage's config dataclass, calls the
stage's function, prints. Options and defaults are defined once, on the dataclasses."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from dive.utils.config import add_dataclass_arguments, dataclass_from_args

os.environ.setdefault("HF_HUB_OFFLINE", "1")


# ---------------------------------------------------------------------------------------------
# dive data ...
# ---------------------------------------------------------------------------------------------


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from dive.data.synthvi.build import SynthConfig, build_world

    cfg = dataclass_from_args(SynthConfig, args)
    summary = build_world(cfg)
    imgs = summary["images"]
    print(f"SynthVI world written to {cfg.out} in {summary['seconds']} s (seed {cfg.seed})")
    print(f"  vi/        SYSU-MM01 layout: {imgs.get('vi', 0)} images, ids {summary['vi_splits']}")
    print(f"  external/  Market-1501 layout: {imgs.get('external', 0)} images "
          f"(+{imgs.get('junk', 0)} junk, +{imgs.get('distractor', 0)} distractors), {cfg.ext_ids}+{cfg.ext_test_ids} ids")
    print(f"  web/       captioned visible pool: {imgs.get('web', 0)} images")
    print(f"next: dive data inspect {cfg.out}")
    return 0


def _cmd_data_hash(args: argparse.Namespace) -> int:
    import hashlib

    from dive.utils.io import sha256_file

    root = Path(args.root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: not a directory")
    total = hashlib.sha256()
    n = 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            total.update(f"{p.relative_to(root)}\0{sha256_file(p)}\n".encode())
            n += 1
    print(f"{total.hexdigest()}  {n} files  {root}")
    return 0


def _cmd_data_inspect(args: argparse.Namespace) -> int:
    from dive.data.inspect import InspectConfig, format_report, inspect

    cfg = dataclass_from_args(InspectConfig, args)
    print(format_report(inspect(cfg)))
    return 0


# ---------------------------------------------------------------------------------------------
# dive reid ...
# ---------------------------------------------------------------------------------------------


def _cmd_reid_eval(args: argparse.Namespace) -> int:
    from dive.reid.protocols import evaluate_npz
    from dive.utils.io import write_json

    res = evaluate_npz(args.features, args.protocol, trials=args.trials, gallery=args.gallery, seed=args.seed)
    if args.json:
        write_json(args.json, res)
    print(f"{res['protocol']}: trials {res['trials']}, queries {res['num_valid_queries']}/{res['num_queries']} with a match")
    print("  " + "  ".join(f"{k} {res[k]:.2f}" for k in ("rank1", "rank5", "rank10", "rank20", "mAP", "mINP")))
    if args.json:
        print(f"  written: {args.json}")
    return 0


def _cmd_reid_bench_eval(args: argparse.Namespace) -> int:
    from dive.reid.bench_eval import benchmark_eval

    res = benchmark_eval(num_queries=args.queries, gallery_ids=args.gallery_ids, trials=args.trials, seed=args.seed)
    print(json.dumps(res, indent=2))
    return 0


# ---------------------------------------------------------------------------------------------
# dive base ...
# ---------------------------------------------------------------------------------------------


def _cmd_base_pretrain(args: argparse.Namespace) -> int:
    from dive.base.pretrain import BasePretrainConfig, pretrain

    cfg = dataclass_from_args(BasePretrainConfig, args)
    out = pretrain(cfg)
    print(f"base model written to {out} (diffusers layout; logs and previews in {cfg.run_dir})")
    return 0


def _cmd_reid_train(args: argparse.Namespace) -> int:
    from dive.reid.run import ReIDDataConfig, train_from_config
    from dive.reid.train import ReIDTrainConfig, epochs_summary

    run, data = train_from_config(dataclass_from_args(ReIDDataConfig, args), dataclass_from_args(ReIDTrainConfig, args))
    meta = json.loads((run / "model.json").read_text())
    last = epochs_summary(run)[-1]
    print(f"trained {meta['config']['method'].upper()} on {meta['train_images']} images, {meta['num_classes']} ids: "
          f"{meta['timing']['iterations']} batches, {meta['timing']['seconds_per_batch']} s/batch, "
          f"{meta['timing']['train_seconds']} s")
    print(f"  last epoch: loss {last['loss']:.3f}, id accuracy {last['acc_id']:.3f}"
          + (f", val R1 {last['val']['rank1']:.2f}" if "val" in last else ""))
    print(f"  weights: {run / 'model.safetensors'} ({meta['selected_by']}, epoch {meta['epoch']})")
    print(f"next: dive reid test {run} --data {args.data}")
    return 0


def _cmd_reid_run(args: argparse.Namespace) -> int:
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, run_reid
    from dive.reid.train import ReIDTrainConfig

    report = run_reid(dataclass_from_args(ReIDDataConfig, args), dataclass_from_args(ReIDTrainConfig, args),
                      dataclass_from_args(ReIDEvalConfig, args))
    _print_report(report)
    return 0


def _cmd_reid_baselines(args: argparse.Namespace) -> int:
    from dive.reid.baselines import BaselinesConfig, format_table, run_baselines

    cfg = dataclass_from_args(BaselinesConfig, args)
    res = run_baselines(cfg)
    print(format_table(res["rows"], tuple(cfg.seeds)))
    print(f"written: {cfg.out}/baselines.md, {cfg.out}/baselines.json")
    return 0


def _cmd_reid_test(args: argparse.Namespace) -> int:
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, evaluate_run

    report = evaluate_run(args.run, dataclass_from_args(ReIDDataConfig, args), dataclass_from_args(ReIDEvalConfig, args))
    _print_report(report)
    return 0


def _print_report(report: dict) -> None:
    from dive.reid.run import summary_line

    t = report["train"]["timing"]
    print(f"{report['label']}: trained {t['iterations']} batches in {t['train_seconds']} s "
          f"({t['seconds_per_batch']} s/batch); test {report['test_data']['test_ids']} ids, "
          f"{report['eval']['trials']} trials")
    print(summary_line(report))
    run = Path(report["run"])
    print(f"  written: {run / 'report.json'}, {run / 'report.md'}, {run / 'cmc.png'}")


def _cmd_generate(args: argparse.Namespace) -> int:
    from dive.generate.run import GenerateConfig, generate

    cfg = dataclass_from_args(GenerateConfig, args)
    out = generate(cfg)
    done = (out / "manifest.jsonl").exists()
    print(f"{'finished' if done else 'stopped; rerun the same command to resume'}: {out} "
          f"(images/, manifest{'.jsonl' if done else '-*.jsonl'}, generate.json)")
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from dive.generate.translate import TranslateConfig, translate

    cfg = dataclass_from_args(TranslateConfig, args)
    out = translate(cfg)
    done = (out / "manifest.jsonl").exists()
    print(f"{'finished' if done else 'stopped; rerun the same command to resume'}: {out} (images/, manifest.jsonl, "
          "generate.json)")
    if done:
        print(f"next: dive export --data {cfg.data} --synthetic {out} --out OUT")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dive.export import ExportConfig, export_dataset

    cfg = dataclass_from_args(ExportConfig, args)
    s = export_dataset(cfg)
    if not s["complete"]:
        print(f"stopped after {s['done']}/{s['total']} images; rerun the same command to finish {cfg.out}")
        return 1
    c = s["counts"]
    origin = " + ".join(f"{n} {k}" for k, n in c["per_origin"].items())
    print(f"exported {c['images']} images ({origin}) to {cfg.out} in SYSU-MM01 layout; ids per split "
          f"{c['ids_per_split']} ({c['new_ids']} new); {s['written']} written, {s['skipped']} unchanged, "
          f"{s['removed']} stale removed, {s['seconds']} s")
    print(f"next: dive reid run --data {cfg.out}")
    return 0


def _cmd_train_bench(args: argparse.Namespace) -> int:
    from dive.train.bench_speed import TrainBenchConfig, train_bench

    res = train_bench(dataclass_from_args(TrainBenchConfig, args))
    print(f"ours: {res['ours_steps_per_s']} steps/s | reference loop (diffusers TI + LoRA recipe): "
          f"{res['reference_steps_per_s']} steps/s | ratio {res['ratio']} "
          f"(batch {res['batch_size']}, {res['steps']} timed steps, {res['threads']} threads)")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from dive.bench.config import BenchConfig
    from dive.bench.run import run_bench

    result = run_bench(dataclass_from_args(BenchConfig, args))
    claims = [t["claim"]["holds"] for k, t in result["tables"].items() if k.startswith("main-")]
    print(f"tables: {args.out / 'tables.md'} (+ tables.json, plots); paper's claim holds: {all(claims)}")
    return 0


def _cmd_generate_bench(args: argparse.Namespace) -> int:
    from dive.generate.bench import GenerateBenchConfig, generate_bench

    res = generate_bench(dataclass_from_args(GenerateBenchConfig, args))
    print(f"ours: {res['ours_images_per_s']} images/s | plain diffusers loop: {res['plain_diffusers_images_per_s']} "
          f"images/s | ratio {res['ratio']} ({res['images']} images, batch {res['batch_size']}, {res['steps']} steps, "
          f"guidance {res['guidance']}, {res['threads']} threads, best of {res['repeats']}; "
          f"median of the {res['repeats']} back-to-back pairs: ratio {res['ratio_median_of_pairs']})")
    if "attention" in res:
        a = res["attention"]
        print(f"attention recording on: {a['recorded_s']} s vs off {a['plain_s']} s for {a['n']} images: "
              f"overhead {a['overhead_pct']}% (median of back-to-back pairs: {a['overhead_pct_median_of_pairs']}%; "
              f"same images: {a['identical']})")
    print(json.dumps(res))
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from dive.generate.grid import GridConfig, identity_grid

    print(f"written: {identity_grid(dataclass_from_args(GridConfig, args))}")
    return 0


def _cmd_package(args: argparse.Namespace) -> int:
    import torch

    from dive.train.trainer import package_checkpoint

    print(f"packaged: {package_checkpoint(args.src, args.dst, lora_dtype=torch.float32 if args.float32 else torch.float16, base_name=args.base_name)}")
    return 0


def _cmd_studio_latency(args: argparse.Namespace) -> int:
    from dive.studio.bench import first_image_latency

    print(json.dumps(first_image_latency(repeats=args.repeats), indent=2))
    return 0


def _cmd_infrared_words(args: argparse.Namespace) -> int:
    from dive.caption.infrared import InfraredWordsConfig, report_lines, run_infrared_words

    cfg = dataclass_from_args(InfraredWordsConfig, args)
    path = run_infrared_words(cfg)
    print("\n".join(report_lines(path)))
    print(f"  written: {path}")
    print(f"next: dive train ... --captions {cfg.captions} --infrared-words {path}")
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    from dive.caption.run import CaptionConfig, run_caption

    cfg = dataclass_from_args(CaptionConfig, args)
    path = run_caption(cfg)
    print((cfg.out / "report.md").read_text().rstrip())
    print(f"  written: {path}, {cfg.out / 'report.json'}")
    print(f"next: dive train ... --captions {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from dive.train.trainer import DiVETrainConfig, train_dive

    cfg = dataclass_from_args(DiVETrainConfig, args)
    final = train_dive(cfg)
    if final.exists():
        print(f"DiVE checkpoint written to {final} (LoRA + embeddings + tokens.json); run folder {cfg.out}")
    else:
        print(f"stopped before the last step; resume with the same command (run folder {cfg.out})")
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from dive.generate.attention import AttentionConfig, run_attention

    res, fig, js = run_attention(dataclass_from_args(AttentionConfig, args))
    print(res.format_summary())
    print(f"  written: {fig}, {js}")
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    from dive.metrics.quality import MetricsConfig, quality_report, summary_lines

    cfg = dataclass_from_args(MetricsConfig, args)
    report = quality_report(cfg)
    print("\n".join(summary_lines(report)))
    print(f"  written: {cfg.out / 'metrics.json'}, {cfg.out / 'metrics.md'} and "
          f"{sum(len(s.get('plots', {})) for s in report['sources'].values())} plots in {cfg.out}")
    return 0


def _cmd_baseline_grayscale(args: argparse.Namespace) -> int:
    from dive.baselines.grayscale import GrayscaleConfig, run_grayscale

    cfg = dataclass_from_args(GrayscaleConfig, args)
    out = run_grayscale(cfg)
    print(f"grayscale baseline written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive export --data {cfg.data} --synthetic {out} --out OUT")
    return 0


def _cmd_baseline_oracle(args: argparse.Namespace) -> int:
    from dive.baselines.oracle import OracleConfig, run_oracle

    cfg = dataclass_from_args(OracleConfig, args)
    out = run_oracle(cfg)
    print(f"oracle (true infrared renders, a ceiling) written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive metrics --synthetic GENERATED {out} --real-ir {cfg.data} --reid-run RUN --out OUT")
    return 0


def _cmd_baseline_cyclegan_train(args: argparse.Namespace) -> int:
    from dive.baselines.cyclegan import GENERATOR_CONFIG, CycleGANTrainConfig, train_cyclegan

    cfg = dataclass_from_args(CycleGANTrainConfig, args)
    run = train_cyclegan(cfg)
    if (run / GENERATOR_CONFIG).exists():
        meta = json.loads((run / GENERATOR_CONFIG).read_text())
        print(f"CycleGAN generator written to {run} (generator.safetensors + generator.json; "
              f"{meta['steps']} steps, {meta['seconds_per_step']} s/step)")
        print(f"next: dive baseline cyclegan apply --generator {run} --data {cfg.data} --out OUT")
    else:
        print(f"stopped before the last step; resume with the same command (run folder {run})")
    return 0


def _cmd_baseline_cyclegan_apply(args: argparse.Namespace) -> int:
    from dive.baselines.cyclegan import CycleGANApplyConfig, apply_cyclegan

    cfg = dataclass_from_args(CycleGANApplyConfig, args)
    out = apply_cyclegan(cfg)
    print(f"CycleGAN baseline written to {out} (images/, manifest.jsonl, generate.json)")
    print(f"next: dive export --data {cfg.data} --synthetic {out} --out OUT")
    return 0


# ---------------------------------------------------------------------------------------------


def _add_stage(sub, name: str, help_text: str, config_cls: type, func) -> argparse.ArgumentParser:
    """A command whose options are exactly its stage's config dataclass."""
    p = sub.add_parser(name, help=help_text)
    add_dataclass_arguments(p, config_cls)
    p.set_defaults(func=func)
    return p


def build_parser() -> argparse.ArgumentParser:
    from dive.data.inspect import InspectConfig
    from dive.data.synthvi.build import SynthConfig
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig
    from dive.reid.train import ReIDTrainConfig

    parser = argparse.ArgumentParser(prog="dive", description="DiVE Studio: visible-infrared ReID data expansion")
    sub = parser.add_subparsers(dest="group", required=True)

    data = sub.add_parser("data", help="prepare and look at datasets").add_subparsers(dest="command", required=True)
    _add_stage(data, "synth", "write a procedural SynthVI world (VI set, external set, web pool)", SynthConfig, _cmd_data_synth)
    p = data.add_parser("hash", help="one digest over every file's path and sha256 (determinism checks)")
    p.add_argument("root", type=Path)
    p.set_defaults(func=_cmd_data_hash)
    p = data.add_parser("inspect", help="summary table, contact sheet and raw-pixel modality gap of a dataset")
    p.add_argument("root", type=Path, help="a `dive data synth` output or one dataset in a supported layout")
    add_dataclass_arguments(p, InspectConfig, skip=("root",))
    p.set_defaults(func=_cmd_data_inspect)

    base = sub.add_parser("base", help="the tiny SD-architecture base model").add_subparsers(dest="command", required=True)
    p = base.add_parser("pretrain", help="train the tiny base from scratch on a SynthVI web pool (resumable)")
    from dive.base.pretrain import BasePretrainConfig

    add_dataclass_arguments(p, BasePretrainConfig)
    p.set_defaults(func=_cmd_base_pretrain)

    from dive.caption.run import CaptionConfig

    _add_stage(sub, "caption", "describe every training identity in words (attribute reader trained on the web pool)",
               CaptionConfig, _cmd_caption)
    from dive.caption.infrared import InfraredWordsConfig

    _add_stage(sub, "infrared-words", "each caption colour's grey in infrared, fitted on the VI set (for dive train "
               "--infrared-words)", InfraredWordsConfig, _cmd_infrared_words)

    from dive.train.trainer import DiVETrainConfig

    _add_stage(sub, "train", "DiVE fine-tuning: identity tokens + camera tokens + UNet LoRA (resumable)", DiVETrainConfig, _cmd_train)

    from dive.generate.run import GenerateConfig

    _add_stage(sub, "generate", "identities x camera tokens x N images with a DiVE checkpoint (resumable, shardable)", GenerateConfig, _cmd_generate)

    from dive.generate.translate import TranslateConfig

    _add_stage(sub, "translate", "img2img: the external ids' own visible images redrawn in each infrared camera by a DiVE "
               "checkpoint (not the paper's method; sources as the baselines choose them; resumable)", TranslateConfig,
               _cmd_translate)

    from dive.export import ExportConfig

    p = sub.add_parser("export", help="write the expanded set (VI + external RGB + synthetic IR) as a new SYSU-MM01 tree")
    add_dataclass_arguments(p, ExportConfig, skip=("synthetic",))
    p.add_argument("--synthetic", type=Path, nargs="+", action="extend", default=[], metavar="DIR",
                   help=ExportConfig.__dataclass_fields__["synthetic"].metadata["help"])
    p.set_defaults(func=_cmd_export)

    from dive.generate.attention import AttentionConfig

    _add_stage(sub, "attention", "per-token cross-attention maps of one generated image (figure + summary)", AttentionConfig, _cmd_attention)

    from dive.metrics.quality import MetricsConfig

    p = sub.add_parser("metrics", help="quality of generated infrared images: FD to real IR, identity distances, "
                                       "Rank-1 against real visible, t-SNE (metrics.json/.md + plots)")
    add_dataclass_arguments(p, MetricsConfig, skip=("synthetic", "out"))
    p.add_argument("--synthetic", type=Path, nargs="+", action="extend", required=True, metavar="DIR",
                   help=MetricsConfig.__dataclass_fields__["synthetic"].metadata["help"])
    p.add_argument("--out", type=Path, required=True, help="output folder: metrics.json, metrics.md, plots")
    p.set_defaults(func=_cmd_metrics)

    p = sub.add_parser("package", help="copy a run's checkpoint without training state, with reference images")
    p.add_argument("src", type=Path, help="a run's checkpoint-N or final folder")
    p.add_argument("dst", type=Path, help="where to write the shippable checkpoint")
    p.add_argument("--float32", action="store_true", help="keep the LoRA weights in float32 (default: float16, half the size)")
    p.add_argument("--base-name", default=None, help="name this base folder in dive.json instead of the one it trained on "
                   "(e.g. a shipped copy, repository-relative: checkpoints/NAME); refused unless its weights are identical")
    p.set_defaults(func=_cmd_package)

    p = sub.add_parser("studio-latency", help="time the studio's first Generate (4 images, default settings)")
    p.add_argument("--repeats", type=int, default=3)
    p.set_defaults(func=_cmd_studio_latency)

    from dive.generate.grid import GridConfig

    _add_stage(sub, "grid", "identities x infrared cameras: real visible images, then generated infrared", GridConfig, _cmd_grid)

    from dive.train.bench_speed import TrainBenchConfig

    _add_stage(sub, "train-bench", "training speed: our DiVE step vs a plain diffusers-recipe loop", TrainBenchConfig, _cmd_train_bench)

    from dive.generate.bench import GenerateBenchConfig

    _add_stage(sub, "generate-bench", "generation throughput: ours vs a plain diffusers loop; attention overhead",
               GenerateBenchConfig, _cmd_generate_bench)

    from dive.bench.config import BenchConfig

    _add_stage(sub, "bench", "the paper's tables in miniature: generate, baselines, export, ReID, metrics",
               BenchConfig, _cmd_bench)

    from dive.baselines.cyclegan import CycleGANApplyConfig, CycleGANTrainConfig
    from dive.baselines.grayscale import GrayscaleConfig
    from dive.baselines.oracle import OracleConfig

    baseline = sub.add_parser("baseline", help="comparison baselines: synthetic infrared images of the external ids "
                              "(folders for `dive export --synthetic`)").add_subparsers(dest="command", required=True)
    _add_stage(baseline, "grayscale", "grayscale copies of the external ids' visible images, N per infrared camera",
               GrayscaleConfig, _cmd_baseline_grayscale)
    _add_stage(baseline, "oracle", "SynthVI only: the external ids' true infrared images from the world's renderer "
               "(the ceiling of the identity metrics, not a method)", OracleConfig, _cmd_baseline_oracle)
    cyclegan = baseline.add_parser("cyclegan", help="unpaired visible->infrared CycleGAN: train on the VI set, then "
                                   "apply to the external ids").add_subparsers(dest="action", required=True)
    _add_stage(cyclegan, "train", "train the translator on the VI training images (resumable)", CycleGANTrainConfig,
               _cmd_baseline_cyclegan_train)
    _add_stage(cyclegan, "apply", "translate the external ids' visible images, N per infrared camera",
               CycleGANApplyConfig, _cmd_baseline_cyclegan_apply)

    reid = sub.add_parser("reid", help="visible-infrared ReID training and evaluation").add_subparsers(dest="command", required=True)
    p = reid.add_parser("eval", help="score features or a distance matrix with a standard protocol")
    p.add_argument("--features", type=Path, required=True,
                   help=".npz with query_pid, query_cam, gallery_pid, gallery_cam and query_feat+gallery_feat or distance")
    p.add_argument("--protocol", required=True,
                   choices=["sysu-all", "sysu-indoor", "llcm-v2i", "llcm-i2v", "regdb-v2t", "regdb-t2v"])
    p.add_argument("--trials", type=int, default=10, help="trials (single-shot gallery re-drawn per trial)")
    p.add_argument("--gallery", choices=["sampled", "as-given"], default="sampled",
                   help="'as-given' scores the gallery exactly as given (one trial, no sampling)")
    p.add_argument("--seed", type=int, default=0, help="gallery sampling seed")
    p.add_argument("--json", type=Path, default=None, help="write the result (percent, per trial) here")
    p.set_defaults(func=_cmd_reid_eval)
    p = reid.add_parser("bench-eval", help="time the evaluator on random SYSU-like features")
    p.add_argument("--queries", type=int, default=4000)
    p.add_argument("--gallery-ids", type=int, default=100)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_reid_bench_eval)
    p = reid.add_parser("train", help="train a two-stream VI-ReID network (AGW or CAJ recipe)")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDTrainConfig)
    p.set_defaults(func=_cmd_reid_train)
    p = reid.add_parser("run", help="train, then evaluate all-search + indoor; report.json/.md + CMC plot")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDTrainConfig)
    add_dataclass_arguments(p, ReIDEvalConfig)
    p.set_defaults(func=_cmd_reid_run)
    from dive.reid.baselines import BaselinesConfig

    _add_stage(reid, "baselines", "AGW, AGW+CAJ and AGW + external RGB over several seeds (mean ± spread)", BaselinesConfig, _cmd_reid_baselines)
    p = reid.add_parser("test", help="evaluate a trained run folder on the test ids (report.json/.md + CMC plot)")
    p.add_argument("run", type=Path, help="a run folder written by `dive reid train`")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDEvalConfig)
    p.set_defaults(func=_cmd_reid_test)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (FileNotFoundError, FileExistsError, ValueError, KeyError) as err:
        # user errors (a wrong path or layout, a bad option): one clear line, no traceback
        msg = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"dive: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
