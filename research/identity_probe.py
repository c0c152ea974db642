"""Can identity tokens learn an identity when each is seen often enough? Trains DiVE on a small
identity set (the K external ids with the most images + the first K VI ids, or vi_k=N), so every token is
visited many times, then scores generated IR against grayscale copies on the same external ids
(identity Rank-1 with the VI-only AGW model, `dive metrics`), and the generated IR of the probe's VI ids,
which it saw in infrared (whether it can draw an infrared identity at all).

    python research/identity_probe.py OUT [K] [STEPS] [GUIDANCE] [key=value ...]

keys: vi_k=N (VI ids), repeat=N (identity token written N times), base=DIR (another base),
captions=FILE (every prompt, in training and generation, also names the identity's attributes:
`dive caption` writes FILE; `dive caption --oracle` the world's true attributes, a captioner's
ceiling), or any `dive train` option (DiVETrainConfig field).
"""
import sys
from collections import Counter
from pathlib import Path

from dive import defaults
from dive.baselines.grayscale import GrayscaleConfig, run_grayscale
from dive.caption.run import load_captions
from dive.generate.run import GenerateConfig, generate
from dive.metrics.quality import MetricsConfig, quality_report, summary_lines
from dive.train.data import build_training_set, load_sources
from dive.train.trainer import DiVETrainConfig, DiVETrainer

out = Path(sys.argv[1])
k = int(sys.argv[2]) if len(sys.argv) > 2 else 32
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 1500
guidance = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0
extra = dict(a.split("=", 1) for a in sys.argv[5:])
k_vi = int(extra.pop("vi_k", k))
repeat = int(extra.pop("repeat", 1))
base = Path(extra.pop("base", str(defaults.BASE)))
data, reid = Path("data/synthvi"), Path("runs/reid-baselines/agw-seed0")
captions = load_captions(extra["captions"]) if "captions" in extra else None
vi, ext = load_sources(data)
counts = Counter(r.pid for r in ext)
keep_ext = set(sorted((p for p in counts if counts[p] >= 12), key=lambda p: (-counts[p], p))[:k])
keep_vi = set(sorted({r.pid for r in vi})[:k_vi])
# options that shape the training set go to it too (the trainer is handed the set, not the config)
shape = {key: extra[key] for key in ("granularity", "camera_mode", "vi_modalities") if key in extra}
ts = build_training_set([r for r in vi if r.pid in keep_vi], [r for r in ext if r.pid in keep_ext], captions=captions, **shape)
if repeat > 1:  # the identity token written N times: N times its share of the (near-uniform) cross-attention
    ts.table.template = ts.table.template.replace("{identity}", " ".join(["{identity}"] * repeat))
    id_of = {(t.dataset, t.pid): t.token for t in ts.table.identities}
    cam_of = {(c.dataset, c.camid): c.token for c in ts.table.cameras}
    ts.prompts = [ts.table.prompt(id_of[(r.dataset, r.pid)], cam_of[(r.dataset, r.camid)]) for r in ts.records]
print(ts.prompts[0])
print(f"probe: {len(ts.table.identities)} identity tokens, {len(ts.records)} images")
fields = DiVETrainConfig.__dataclass_fields__
typed = {key: (v == "1" if isinstance(fields[key].default, bool) else v if fields[key].default is None
              else type(fields[key].default)(v)) for key, v in extra.items()}
cfg = DiVETrainConfig(base=base, data=data, out=out / "train", steps=steps, save_every=500, preview_every=0, threads=2, **typed)
ckpt = DiVETrainer(cfg, training_set=ts).train()
tag = f"g{guidance:g}"
generate(GenerateConfig(base=base, checkpoint=ckpt, out=out / f"gen-{tag}", n=4, top_k=k, guidance=guidance))
# the VI ids were trained in infrared: can the generator draw *their* infrared identity at all?
generate(GenerateConfig(base=base, checkpoint=ckpt, out=out / f"gen-vi-{tag}", identities="vi", n=4, guidance=guidance))
gray = out / "grayscale"
if not (gray / "manifest.jsonl").exists():
    run_grayscale(GrayscaleConfig(data=data, out=gray, n=4, top_k=k))
report = quality_report(MetricsConfig(synthetic=(out / f"gen-{tag}", gray, out / f"gen-vi-{tag}"), real_ir=data,
                                      reid_run=reid, out=out / f"metrics-{tag}"))
print("\n".join(summary_lines(report)))
