"""`dive reid ...`: visible-infrared ReID training and evaluation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dive.cli.common import add_stage
from dive.utils.config import add_dataclass_arguments, dataclass_from_args


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


def _cmd_reid_train(args: argparse.Namespace) -> int:
    from dive.reid.distributed import is_main_process
    from dive.reid.pretrained import train_config_from_args
    from dive.reid.run import ReIDDataConfig, train_from_config
    from dive.reid.train import ReIDTrainConfig, epochs_summary

    run, data = train_from_config(dataclass_from_args(ReIDDataConfig, args), train_config_from_args(ReIDTrainConfig, args))
    if not is_main_process():  # one of several training processes: the first one reports
        return 0
    meta = json.loads((run / "model.json").read_text())
    last = epochs_summary(run)[-1]
    print(f"trained {meta['config']['method'].upper()} on {meta['train_images']} images, {meta['num_classes']} ids: "
          f"{meta['timing']['iterations']} batches, {meta['timing']['seconds_per_batch']} s/batch, "
          f"{meta['timing']['train_seconds']} s")
    print(f"  last epoch: loss {last['loss']:.3f}, id accuracy {last['acc_id']:.3f}"
          + (f", val R1 {last['val']['rank1']:.2f}" if "val" in last else ""))
    print(f"  weights: {run / 'model.safetensors'} ({meta['selected_by']}, epoch {meta['epoch']})")
    trial = f" --regdb-trial {args.regdb_trial}" if data.format == "regdb" else ""
    print(f"next: dive reid test {run} --data {args.data}{trial}")
    return 0


def _cmd_reid_run(args: argparse.Namespace) -> int:
    from dive.reid.distributed import is_main_process
    from dive.reid.pretrained import train_config_from_args
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig, run_reid, train_from_config
    from dive.reid.train import ReIDTrainConfig

    if not is_main_process():  # one of several training processes: it trains; the first one evaluates
        train_from_config(dataclass_from_args(ReIDDataConfig, args), train_config_from_args(ReIDTrainConfig, args))
        return 0
    report = run_reid(dataclass_from_args(ReIDDataConfig, args), train_config_from_args(ReIDTrainConfig, args),
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

    report = evaluate_run(args.run, dataclass_from_args(ReIDDataConfig, args), dataclass_from_args(ReIDEvalConfig, args),
                          device=args.device)
    _print_report(report)
    return 0


def _print_report(report: dict) -> None:
    from dive.reid.run import summary_line

    t = report["train"]["timing"]
    print(f"{report['label']}: trained {t['iterations']} batches in {t['train_seconds']} s "
          f"({t['seconds_per_batch']} s/batch); test {report['test_data']['test_ids']} ids, "
          f"{max(r['trials'] for r in report['results'].values())} trial(s)")
    print(summary_line(report))
    run = Path(report["run"])
    print(f"  written: {run / 'report.json'}, {run / 'report.md'}, {run / 'cmc.png'}")


def _register_reid(sub) -> None:
    from dive.reid.baselines import BaselinesConfig
    from dive.reid.device import DEVICES
    from dive.reid.pretrained import defer_preset_defaults
    from dive.reid.run import ReIDDataConfig, ReIDEvalConfig
    from dive.reid.train import ReIDTrainConfig

    reid = sub.add_parser("reid", help="visible-infrared ReID training and evaluation").add_subparsers(dest="command", required=True)
    p = reid.add_parser("eval", help="score features or a distance matrix with a standard protocol")
    p.add_argument("--features", type=Path, required=True,
                   help=".npz with query_pid, query_cam, gallery_pid, gallery_cam and query_feat+gallery_feat or distance")
    p.add_argument("--protocol", required=True,
                   choices=["sysu-all", "sysu-indoor", "llcm-v2i", "llcm-i2v", "regdb-v2t", "regdb-t2v"])
    p.add_argument("--trials", type=int, default=10, help="trials (single-shot gallery re-drawn per trial)")
    p.add_argument("--gallery", choices=["sampled", "agw", "as-given"], default="sampled",
                   help="'sampled': single-shot draw per (seed, trial); 'agw': AGW's own draw (random.seed(seed + "
                        "trial), ids ascending; an optional gallery_path array orders each id and camera's "
                        "images); 'as-given' scores the gallery exactly as given (one trial, no sampling)")
    p.add_argument("--seed", type=int, default=0, help="gallery sampling seed")
    p.add_argument("--json", type=Path, default=None, help="write the result (percent, per trial) here")
    p.set_defaults(func=_cmd_reid_eval)
    p = reid.add_parser("bench-eval", help="time the evaluator on random SYSU-like features")
    p.add_argument("--queries", type=int, default=4000)
    p.add_argument("--gallery-ids", type=int, default=100)
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_reid_bench_eval)
    multi = "several GPUs or CPU processes: torchrun --nproc_per_node N -m dive reid %s ... (or accelerate launch)"
    p = reid.add_parser("train", help="train a two-stream VI-ReID network (AGW, CAJ or DEEN recipe: --method)",
                        epilog=multi % "train")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDTrainConfig)
    defer_preset_defaults(p)
    p.set_defaults(func=_cmd_reid_train)
    p = reid.add_parser("run", help="train (AGW, CAJ or DEEN: --method) on SynthVI, SYSU-MM01, LLCM or RegDB, then "
                                     "evaluate with the data's protocols; report.json/.md + CMC plot",
                        epilog=multi % "run")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDTrainConfig)
    add_dataclass_arguments(p, ReIDEvalConfig)
    defer_preset_defaults(p)
    p.set_defaults(func=_cmd_reid_run)
    add_stage(reid, "baselines", "AGW, AGW+CAJ and AGW + external RGB over several seeds (mean ± spread)", BaselinesConfig, _cmd_reid_baselines)
    p = reid.add_parser("test", help="evaluate a trained run folder on the test ids (report.json/.md + CMC plot)")
    p.add_argument("run", type=Path, help="a run folder written by `dive reid train`")
    add_dataclass_arguments(p, ReIDDataConfig)
    add_dataclass_arguments(p, ReIDEvalConfig)
    p.add_argument("--device", default="auto", choices=list(DEVICES), help="auto (cuda when present), cpu, cuda or mps")
    p.set_defaults(func=_cmd_reid_test)


COMMANDS = {"reid": _register_reid}
