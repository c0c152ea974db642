"""Question: how much slower is a ReID training batch with oneDNN (mkldnn) convolutions off?

Deterministic ReID runs switch oneDNN off (its CPU convolutions are outside
`torch.use_deterministic_algorithms`; on AMD EPYC hosts with torch 2.13 they corrupted the heap on
1 thread and differed between runs on 2). This times the bench's default network (narrow ResNet-18,
batch 64 at 128x64, one thread) with oneDNN on and off, alternating, and prints the best of each.

    .venv/bin/python research/onednn_speed.py [--repeats 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from dive.reid.model import ModelSpec, build_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(ModelSpec(num_classes=240))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(64, 3, 128, 64)

    def step() -> None:
        out = model(x)
        loss = sum(v.float().pow(2).mean() for v in (out.values() if isinstance(out, dict) else
                   (out if isinstance(out, (tuple, list)) else [out])) if torch.is_tensor(v))
        opt.zero_grad()
        loss.backward()
        opt.step()

    times: dict[bool, list[float]] = {True: [], False: []}
    for _ in range(args.repeats):
        for on in (True, False):
            torch.backends.mkldnn.enabled = on
            step()  # warm-up at this setting
            t = time.perf_counter()
            for _ in range(args.batches):
                step()
            times[on].append((time.perf_counter() - t) / args.batches)
    best = {on: min(v) for on, v in times.items()}
    print(f"oneDNN on: {best[True]:.3f} s/batch | off: {best[False]:.3f} s/batch | off/on {best[False] / best[True]:.2f}")


if __name__ == "__main__":
    main()
