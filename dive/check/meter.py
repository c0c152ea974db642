"""Seconds and peak memory per stage of a run, printed as a table and one JSON line.

Peak resident memory (RSS) per stage: on Linux the kernel's own high-water mark (`VmHWM` in
/proc/self/status), reset at each stage's start by writing 5 to /proc/self/clear_refs; elsewhere a
thread samples the RSS every 20 ms (psutil). With a CUDA device the stage's peak of allocated GPU
memory is reported too.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _reset_kernel_peak() -> bool:
    try:
        _CLEAR_REFS.write_text("5")
        return _kernel_peak_mb() is not None
    except OSError:
        return False


def _kernel_peak_mb() -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


class _Sampler(threading.Thread):
    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        import psutil

        self.process, self.interval = psutil.Process(), interval
        self.peak = self.process.memory_info().rss
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def stop(self) -> float:
        self.stopped.set()
        self.join()
        return max(self.peak, self.process.memory_info().rss) / 2**20


class StageMeter:
    """`with meter.stage("train") as info: ...` times a stage, measures its peak memory and keeps
    `info` (a dict the stage fills with what it made) in its row."""

    def __init__(self, device: str = "cpu"):
        self.rows: list[dict] = []
        self.cuda = str(device).startswith("cuda")
        self.method = "VmHWM" if _reset_kernel_peak() else "sampled"

    @contextmanager
    def stage(self, name: str) -> Iterator[dict]:
        info: dict = {}
        sampler = None
        if self.method == "VmHWM":
            _reset_kernel_peak()
        else:
            sampler = _Sampler()
            sampler.start()
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            yield info
        except BaseException:
            print(f"stage {name!r} failed after {time.perf_counter() - t0:.1f} s", file=sys.stderr)
            raise
        finally:
            peak = sampler.stop() if sampler is not None else _kernel_peak_mb()
        row = {"stage": name, "seconds": round(time.perf_counter() - t0, 2), "peak_rss_mb": round(peak or 0.0, 1)}
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            row["peak_cuda_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
        row.update(info)
        self.rows.append(row)

    def table(self) -> str:
        """The rows as an aligned text table: stage, seconds, peak memory, then what each stage made."""
        heads = ["stage", "seconds", "peak RSS MiB"] + (["peak CUDA MiB"] if self.cuda else []) + ["result"]
        body = []
        for r in self.rows:
            extra = ", ".join(f"{k}={_short(v)}" for k, v in r.items()
                              if k not in ("stage", "seconds", "peak_rss_mb", "peak_cuda_mb"))
            body.append([r["stage"], f"{r['seconds']:.1f}", f"{r['peak_rss_mb']:.0f}"]
                        + ([f"{r['peak_cuda_mb']:.0f}"] if self.cuda else []) + [extra])
        body.append(["total", f"{sum(r['seconds'] for r in self.rows):.1f}",
                     f"{max((r['peak_rss_mb'] for r in self.rows), default=0):.0f}"]
                    + ([f"{max(r['peak_cuda_mb'] for r in self.rows):.0f}"] if self.cuda and self.rows else []) + [""])
        widths = [max(len(row[i]) for row in [heads] + body) for i in range(len(heads) - 1)]
        lines = []
        for row in [heads] + body:
            cells = [c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
            lines.append("  ".join(cells + [row[-1]]).rstrip())
        return "\n".join(lines)

    def json_line(self, **extra) -> str:
        return json.dumps({**extra, "memory_method": self.method, "stages": self.rows}, sort_keys=True)


def _short(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return "x".join(map(str, v)) if all(isinstance(x, int) for x in v) else json.dumps(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    return str(v)
