"""Question: does this torch's oneDNN still crash in the backward of a strided 1x1 convolution with
few input channels, which `dive.reid.model.PointwiseConv` keeps clear of?

Each case runs in a child process (a crash kills the process, not this script): a 1x1 convolution
of `cin` -> 2*cin channels, stride 2, channels-last input of 12 images at 16x8, oneDNN on, one
thread, 20 forward + backward passes, first through torch's strided kernel and then through
`PointwiseConv`. Prints one line per case: ok, or the signal / exit status and the last line of
its error output.

    .venv/bin/python research/onednn_pointwise_crash.py [--cin 1 2 4 6 8 16]
"""

from __future__ import annotations

import argparse
import subprocess
import sys

CHILD = """
import sys, torch, torch.nn.functional as F
from dive.reid.model import PointwiseConv
torch.set_num_threads(1)
torch.backends.mkldnn.enabled = True
cin, ours = int(sys.argv[1]), sys.argv[2] == "ours"
conv = PointwiseConv(cin, 2 * cin, 1, stride=2, bias=False).to(memory_format=torch.channels_last)
x = torch.randn(12, cin, 16, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
for _ in range(20):
    y = conv(x) if ours else F.conv2d(x, conv.weight, stride=2)
    y.square().sum().backward()
"""


def run_case(cin: int, path: str) -> str:
    out = subprocess.run([sys.executable, "-c", CHILD, str(cin), path], capture_output=True, text=True, timeout=600)
    if out.returncode == 0:
        return "ok"
    last = (out.stderr.strip().splitlines() or ["(no error output)"])[-1]
    return f"exit {out.returncode}: {last}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cin", type=int, nargs="+", default=[1, 2, 4, 6, 8, 16])
    args = ap.parse_args()
    import torch

    print(f"torch {torch.__version__}; {'oneDNN available' if torch.backends.mkldnn.is_available() else 'no oneDNN'}")
    for cin in args.cin:
        print(f"cin {cin:3d}: strided kernel {run_case(cin, 'torch')} | PointwiseConv {run_case(cin, 'ours')}")


if __name__ == "__main__":
    main()
