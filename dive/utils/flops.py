"""How far a workload is from the machine's limit: its FLOPs, the FLOP/s it reaches, and that rate
as a share of the CPU's measured matmul peak.

* ``count_flops(fn)`` runs ``fn()`` once under ``torch.utils.flop_counter.FlopCounterMode`` and
  returns the FLOPs torch counts (matrix products, convolutions and attention, forward and
  backward; element-wise work is not counted) with a per-module breakdown. torch 2.13 has no
  formula for the CPU attention kernels (``_scaled_dot_product_flash_attention_for_cpu`` and its
  backward), so this module adds them, counted as torch counts the GPU ones: 2 FLOPs per
  multiply-add of QK^T and PV forward, the four products of the gradients backward.
* ``matmul_peak(dtype, threads)``: the best FLOP/s of timed ``size x size`` matmuls (2048 by
  default; ``2 n^3`` FLOPs each) on the given thread count; ``measure_peaks`` does float32 and,
  where the CPU has native bf16 (cpuinfo flags ``avx512_bf16`` or ``amx_bf16`` and oneDNN bf16
  support), bfloat16, else says "not available" and why.
* ``workload_record(...)``: one JSON-able line per workload (``RECORD_FIELDS``), and
  ``format_table`` the short human table of several.

A shared machine's speed wanders: every rate here is the best of repeated timings, and a share is
meaningful only when the workload and the peak were timed in the same process on the same threads.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from dive.utils.threads import torch_threads

#: size of the square matmul whose rate is the machine's peak
PEAK_SIZE = 2048
#: cpuinfo flags that mean the CPU multiplies bf16 natively
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: the fields of every workload record (``workload_record``), in output order
RECORD_FIELDS = ("workload", "unit", "flops_per_unit", "gflops_per_unit", "seconds_per_unit", "units_per_s",
                 "flop_per_s", "gflop_per_s", "threads", "peak_float32_flop_per_s", "share_of_float32_peak",
                 "peak_bf16_flop_per_s", "share_of_bf16_peak", "bf16")
_ATTN_OPS = ("_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_flash_attention_for_cpu_backward")


# ------------------------------------------------------------------------------------------------
# counting
# ------------------------------------------------------------------------------------------------


def _attention_forward_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    """QK^T and PV of one attention call: (B, H, Sq, D) x (B, H, Sk, D) and (B, H, Sk, Dv)."""
    b, h, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * sq * sk * (d + dv)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    """dV = P^T dO, dP = dO V^T, dQ = dS K, dK = dS^T Q (the recomputed QK^T is not counted, as torch's
    own formulas for the GPU kernels do not count it)."""
    b, h, sq, d = query_shape
    sk, dv = key_shape[-2], value_shape[-1]
    return 2 * b * h * sq * sk * (2 * dv + 2 * d)


def _custom_formulas() -> dict:
    found = {}
    for name, formula in zip(_ATTN_OPS, (_attention_forward_flops, _attention_backward_flops)):
        packet = getattr(torch.ops.aten, name, None)
        if packet is not None:
            found[packet.default] = formula
    return found


def flop_counter() -> FlopCounterMode:
    """A silent FlopCounterMode that also counts the CPU attention kernels."""
    return FlopCounterMode(display=False, custom_mapping=_custom_formulas())


def count_flops(fn: Callable[[], Any]) -> tuple[int, dict[str, int], Any]:
    """(total FLOPs, FLOPs per top-level module, fn's result) of one call of `fn`. Modules are the
    outermost torch modules the work ran in (e.g. the UNet, the VAE); work outside any module is
    under "Global" only and so appears in the total, not in the breakdown."""
    with flop_counter() as counter:
        out = fn()
    counts = counter.get_flop_counts()
    total = int(counter.get_total_flops())
    modules = {name: int(sum(ops.values())) for name, ops in counts.items()
               if name != "Global" and "." not in name}
    return total, modules, out


# ------------------------------------------------------------------------------------------------
# the machine's peak
# ------------------------------------------------------------------------------------------------


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> set[str]:
    """The CPU feature flags of the first processor listed in `cpuinfo` (empty where it cannot be read)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return set()


def bf16_support(cpuinfo: str | Path = "/proc/cpuinfo") -> tuple[bool, str]:
    """(available, reason): whether a bf16 matmul runs natively on this CPU."""
    flags = sorted(set(BF16_FLAGS) & cpu_flags(cpuinfo))
    if not flags:
        return False, f"not available: the CPU has none of the flags {', '.join(BF16_FLAGS)} ({cpuinfo})"
    if not torch.backends.mkldnn.is_available():
        return False, f"not available: the CPU has {', '.join(flags)} but this torch build has no oneDNN (mkldnn)"
    mkldnn_ops = getattr(torch.ops, "mkldnn", None)
    check = getattr(mkldnn_ops, "_is_mkldnn_bf16_supported", None) if mkldnn_ops is not None else None
    if check is not None and not check():
        return False, f"not available: the CPU has {', '.join(flags)} but oneDNN reports no bf16 support"
    return True, f"available ({', '.join(flags)})"


def matmul_peak(dtype: torch.dtype = torch.float32, threads: int = 0, size: int = PEAK_SIZE, repeats: int = 5,
                min_seconds: float = 0.2, seed: int = 0) -> float:
    """The best FLOP/s of a (size x size) @ (size x size) matmul in `dtype` on `threads` torch
    threads (0: torch's current setting): one warm-up, then `repeats` timed runs of as many matmuls
    as fill `min_seconds`; each matmul is 2 size^3 FLOPs."""
    if size < 1 or repeats < 1:
        raise ValueError(f"size and repeats must be >= 1; got size={size}, repeats={repeats}")
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(size, size, generator=g).to(dtype)
    b = torch.randn(size, size, generator=g).to(dtype)
    out = torch.empty(size, size, dtype=dtype)
    with torch_threads(threads):
        t = time.perf_counter()
        torch.mm(a, b, out=out)
        first = max(time.perf_counter() - t, 1e-9)
        per_run = max(1, int(min_seconds / first))
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            for _ in range(per_run):
                torch.mm(a, b, out=out)
            best = min(best, (time.perf_counter() - t) / per_run)
    return 2.0 * size ** 3 / best


def measure_peaks(threads: int = 0, size: int = PEAK_SIZE, repeats: int = 5, min_seconds: float = 0.2,
                  cpuinfo: str | Path = "/proc/cpuinfo") -> dict:
    """The machine's float32 (and, where native, bf16) matmul peak on `threads` threads:
    ``{"threads", "size", "float32_flop_per_s", "bf16_flop_per_s" (None when not available), "bf16"}``."""
    threads_used = threads if threads > 0 else torch.get_num_threads()
    fp32 = matmul_peak(torch.float32, threads, size, repeats, min_seconds)
    ok, why = bf16_support(cpuinfo)
    bf16 = matmul_peak(torch.bfloat16, threads, size, repeats, min_seconds) if ok else None
    return {"threads": threads_used, "size": size, "float32_flop_per_s": fp32, "bf16_flop_per_s": bf16, "bf16": why,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def wait_policy_note(policy: str | None, threads: int) -> str | None:
    """A warning when OpenMP's idle threads sleep between operations (``OMP_WAIT_POLICY=PASSIVE``):
    the many small operations of these models then wait on each wake-up, and two threads barely
    beat one (docs/throughput.md). None when the policy is unset or active, or on one thread."""
    if threads == 1 or (policy or "").strip().upper() != "PASSIVE":
        return None
    return ("OMP_WAIT_POLICY=PASSIVE: idle threads sleep between operations, which slows multi-threaded "
            "training and generation here (unset it to time them at their best)")


# ------------------------------------------------------------------------------------------------
# records
# ------------------------------------------------------------------------------------------------


def share(flop_per_s: float, peak_flop_per_s: float | None) -> float | None:
    """The achieved rate as a fraction of a peak (None without a peak)."""
    if peak_flop_per_s is None:
        return None
    if peak_flop_per_s <= 0:
        raise ValueError(f"a peak must be > 0 FLOP/s; got {peak_flop_per_s}")
    return flop_per_s / peak_flop_per_s


def _sig(x: float, digits: int = 4) -> float:
    return float(f"{x:.{digits}g}")


def workload_record(workload: str, unit: str, flops_per_unit: float, seconds_per_unit: float, peaks: dict,
                    **extra) -> dict:
    """One workload's line: FLOPs per unit (an image, a step, a batch), the timed seconds per unit,
    the FLOP/s that makes, and its share of each measured peak. `extra` fields follow the standard ones."""
    if seconds_per_unit <= 0:
        raise ValueError(f"{workload}: seconds per {unit} must be > 0; got {seconds_per_unit}")
    rate = flops_per_unit / seconds_per_unit
    s32, s16 = share(rate, peaks["float32_flop_per_s"]), share(rate, peaks.get("bf16_flop_per_s"))
    rec = {"workload": workload, "unit": unit, "flops_per_unit": int(flops_per_unit),
           "gflops_per_unit": _sig(flops_per_unit / 1e9), "seconds_per_unit": _sig(seconds_per_unit),
           "units_per_s": _sig(1.0 / seconds_per_unit), "flop_per_s": _sig(rate, 6), "gflop_per_s": _sig(rate / 1e9),
           "threads": peaks["threads"], "peak_float32_flop_per_s": _sig(peaks["float32_flop_per_s"], 6),
           "share_of_float32_peak": _sig(s32),
           "peak_bf16_flop_per_s": None if peaks.get("bf16_flop_per_s") is None else _sig(peaks["bf16_flop_per_s"], 6),
           "share_of_bf16_peak": None if s16 is None else _sig(s16), "bf16": peaks["bf16"]}
    rec.update(extra)
    return rec


def peak_record(peaks: dict) -> dict:
    """The peak measurement itself as a line (workload "peak")."""
    return {"workload": "peak", "threads": peaks["threads"], "size": peaks["size"],
            "peak_float32_flop_per_s": _sig(peaks["float32_flop_per_s"], 6),
            "peak_float32_gflop_per_s": _sig(peaks["float32_flop_per_s"] / 1e9),
            "peak_bf16_flop_per_s": None if peaks["bf16_flop_per_s"] is None else _sig(peaks["bf16_flop_per_s"], 6),
            "peak_bf16_gflop_per_s": None if peaks["bf16_flop_per_s"] is None else _sig(peaks["bf16_flop_per_s"] / 1e9),
            "bf16": peaks["bf16"], "omp_wait_policy": peaks.get("omp_wait_policy")}


def speed_fields(flops_per_unit: float, seconds_per_unit: float, peaks: dict, prefix: str = "") -> dict:
    """The FLOP fields a bench adds to its own result: ``{prefix}flops_per_unit``, ``{prefix}gflop_per_s``,
    ``{prefix}share_of_float32_peak`` and ``{prefix}share_of_bf16_peak``."""
    rec = workload_record("", "", flops_per_unit, seconds_per_unit, peaks)
    return {f"{prefix}{k}": rec[k] for k in ("flops_per_unit", "gflop_per_s", "share_of_float32_peak",
                                             "share_of_bf16_peak")}


def format_table(records: list[dict]) -> str:
    """A short table: one row per workload, then the peak it is measured against."""
    rows = [("workload", "GFLOP/unit", "s/unit", "GFLOP/s", "fp32 peak", "share fp32", "share bf16")]
    peak = None
    for r in records:
        if r["workload"] == "peak":
            peak = r
            continue
        s16 = "n/a" if r["share_of_bf16_peak"] is None else f"{100 * r['share_of_bf16_peak']:.1f}%"
        rows.append((f"{r['workload']} (per {r['unit']})", f"{r['gflops_per_unit']:.4g}", f"{r['seconds_per_unit']:.4g}",
                     f"{r['gflop_per_s']:.4g}", f"{r['peak_float32_flop_per_s'] / 1e9:.4g}",
                     f"{100 * r['share_of_float32_peak']:.1f}%", s16))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in rows]
    if peak is not None:
        bf = peak["bf16"] if peak["peak_bf16_gflop_per_s"] is None else f"{peak['peak_bf16_gflop_per_s']:.4g} GFLOP/s"
        lines.append(f"matmul peak ({peak['size']}x{peak['size']}, {peak['threads']} threads): float32 "
                     f"{peak['peak_float32_gflop_per_s']:.4g} GFLOP/s; bf16 {bf}")
        note = wait_policy_note(peak.get("omp_wait_policy"), peak["threads"])
        if note:
            lines.append(note)
    return "\n".join(lines)
