"""`dive generate`, `translate`, `attention`, `grid` and `generate-bench`: images from a DiVE checkpoint."""

from __future__ import annotations

import argparse
import json

from dive.cli.common import add_stage, print_wait_note
from dive.utils.config import dataclass_from_args


def _cmd_generate(args: argparse.Namespace) -> int:
    from dive.generate.run import GenerateConfig, generate

    cfg = dataclass_from_args(GenerateConfig, args)
    print_wait_note()
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


def _cmd_attention(args: argparse.Namespace) -> int:
    from dive.generate.attention import AttentionConfig, run_attention

    res, fig, js = run_attention(dataclass_from_args(AttentionConfig, args))
    print(res.format_summary())
    print(f"  written: {fig}, {js}")
    return 0


def _cmd_grid(args: argparse.Namespace) -> int:
    from dive.generate.grid import GridConfig, identity_grid

    print(f"written: {identity_grid(dataclass_from_args(GridConfig, args))}")
    return 0


def _cmd_generate_bench(args: argparse.Namespace) -> int:
    from dive.generate.bench import GenerateBenchConfig, generate_bench

    res = generate_bench(dataclass_from_args(GenerateBenchConfig, args))
    print(f"ours: {res['ours_images_per_s']} images/s | plain diffusers loop: {res['plain_diffusers_images_per_s']} "
          f"images/s | ratio {res['ratio']} ({res['images']} images, batch {res['batch_size']}, {res['steps']} steps, "
          f"guidance {res['guidance']}, {res['threads']} threads, best of {res['repeats']}; "
          f"median of the {res['repeats']} back-to-back pairs: ratio {res['ratio_median_of_pairs']}, in CPU time "
          f"{res['ratio_cpu_median_of_pairs']})")
    if "fast_images_per_s" in res:
        print(f"ours --fast: {res['fast_images_per_s']} images/s | ratio to plain {res['fast_ratio']} "
              f"(median of pairs {res['fast_ratio_median_of_pairs']}, in CPU time "
              f"{res['fast_ratio_cpu_median_of_pairs']}); largest difference from ours: "
              f"{res['fast_max_grey_diff']} grey levels")
    if "deep_cache_images_per_s" in res:
        print(f"ours --fast --deep-cache {args.deep_cache}: {res['deep_cache_images_per_s']} images/s | ratio to plain "
              f"{res['deep_cache_ratio']} (median of pairs {res['deep_cache_ratio_median_of_pairs']}, in CPU time "
              f"{res['deep_cache_ratio_cpu_median_of_pairs']}); other images: largest difference from ours "
              f"{res['deep_cache_max_grey_diff']} grey levels, mean {res['deep_cache_mean_grey_diff']}")
    for key, what in (("attention", ""), ("fast_attention", " (--fast)"),
                      ("deep_cache_attention", f" (--fast --deep-cache {args.deep_cache})")):
        if key in res:
            a = res[key]
            print(f"attention recording on{what}: {a['recorded_s']} s vs off {a['plain_s']} s for {a['n']} images: "
                  f"overhead {a['overhead_pct']}% (median of back-to-back pairs: {a['overhead_pct_median_of_pairs']}%; "
                  f"same images: {a['identical']})")
    print(json.dumps(res))
    print_wait_note(res["threads"])
    return 0


def _register_generate(sub) -> None:
    from dive.generate.run import GenerateConfig

    add_stage(sub, "generate", "identities x camera tokens x N images with a DiVE checkpoint (resumable, shardable)", GenerateConfig, _cmd_generate)


def _register_translate(sub) -> None:
    from dive.generate.translate import TranslateConfig

    add_stage(sub, "translate", "img2img: the external ids' own visible images redrawn in each infrared camera by a DiVE "
              "checkpoint (not the paper's method; sources as the baselines choose them; resumable)", TranslateConfig,
              _cmd_translate)


def _register_attention(sub) -> None:
    from dive.generate.attention import AttentionConfig

    add_stage(sub, "attention", "per-token cross-attention maps of one generated image (figure + summary)", AttentionConfig, _cmd_attention)


def _register_grid(sub) -> None:
    from dive.generate.grid import GridConfig

    add_stage(sub, "grid", "identities x infrared cameras: real visible images, then generated infrared", GridConfig, _cmd_grid)


def _register_generate_bench(sub) -> None:
    from dive.generate.bench import GenerateBenchConfig

    add_stage(sub, "generate-bench", "generation throughput: ours vs a plain diffusers loop; attention overhead",
              GenerateBenchConfig, _cmd_generate_bench)


COMMANDS = {"generate": _register_generate, "translate": _register_translate, "attention": _register_attention,
            "grid": _register_grid, "generate-bench": _register_generate_bench}
