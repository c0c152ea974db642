"""FLOP counting, the matmul peak, the workload records and `dive speed` (dive.utils.flops)."""

import json

import pytest
import torch

from dive.utils import flops
from dive.utils.flops import RECORD_FIELDS, count_flops, workload_record

NO_BF16 = {"threads": 1, "size": 64, "float32_flop_per_s": 4e10, "bf16_flop_per_s": None,
           "bf16": "not available: test"}


def test_linear_flops_are_analytic_forward_and_backward():
    torch.manual_seed(0)
    lin = torch.nn.Linear(24, 10)
    x = torch.randn(5, 24, requires_grad=True)
    fwd, modules, out = count_flops(lambda: lin(x))
    assert fwd == 2 * 5 * 24 * 10
    assert modules == {"Linear": fwd}
    assert out.shape == (5, 10)
    # backward: the gradient of the input and of the weight, each a product of the forward's size
    both, _, _ = count_flops(lambda: lin(x).sum().backward())
    assert both == 3 * fwd


def test_conv_flops_are_analytic():
    conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
    x = torch.randn(2, 3, 16, 12, requires_grad=True)
    fwd, _, out = count_flops(lambda: conv(x))
    n, c_out, h, w = out.shape
    assert (h, w) == (8, 6)
    assert fwd == 2 * n * c_out * h * w * 3 * 3 * 3
    both, _, _ = count_flops(lambda: conv(x).sum().backward())
    assert both == 3 * fwd


def test_cpu_attention_is_counted_as_torch_counts_gpu_attention():
    """torch has no formula for the CPU attention kernel; ours counts QK^T and PV forward and the
    four gradient products backward."""
    b, h, sq, sk, d, dv = 2, 3, 16, 10, 8, 6
    q = torch.randn(b, h, sq, d, requires_grad=True)
    k = torch.randn(b, h, sk, d, requires_grad=True)
    v = torch.randn(b, h, sk, dv, requires_grad=True)
    attn = torch.nn.functional.scaled_dot_product_attention
    fwd, _, _ = count_flops(lambda: attn(q, k, v))
    assert fwd == 2 * b * h * sq * sk * (d + dv)
    both, _, _ = count_flops(lambda: attn(q, k, v).sum().backward())
    assert both == fwd + 2 * b * h * sq * sk * (2 * dv + 2 * d)


def test_share_is_flop_rate_over_peak_and_bf16_is_none_without_it():
    rec = workload_record("x", "batch", 3e9, 0.5, NO_BF16, batch_size=4)
    assert rec["flop_per_s"] == pytest.approx(6e9)
    assert rec["share_of_float32_peak"] == pytest.approx(6e9 / 4e10, rel=1e-3)
    assert rec["share_of_bf16_peak"] is None and rec["peak_bf16_flop_per_s"] is None
    assert rec["bf16"].startswith("not available")
    with_bf16 = workload_record("x", "batch", 3e9, 0.5, dict(NO_BF16, bf16_flop_per_s=1.2e11, bf16="available"))
    assert with_bf16["share_of_bf16_peak"] == pytest.approx(0.05, rel=1e-3)
    assert flops.share(1.0, 4.0) == 0.25 and flops.share(1.0, None) is None
    with pytest.raises(ValueError, match="seconds per batch"):
        workload_record("x", "batch", 1e9, 0.0, NO_BF16)
    # a record is one JSON line: the documented fields first, in order, then the workload's own
    line = json.loads(json.dumps(rec))
    assert list(line)[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
    assert line["batch_size"] == 4


def test_bf16_support_reads_cpuinfo_flags(tmp_path, monkeypatch):
    plain = tmp_path / "plain"
    plain.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n")
    ok, why = flops.bf16_support(plain)
    assert not ok and why.startswith("not available") and "avx512_bf16" in why
    amx = tmp_path / "amx"
    amx.write_text("processor\t: 0\nflags\t\t: fpu avx512f avx512_bf16 amx_bf16 amx_tile\n")
    assert flops.cpu_flags(amx) >= {"avx512_bf16", "amx_bf16"}
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: True, raising=False)
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: True)
    ok, why = flops.bf16_support(amx)
    assert ok and "amx_bf16" in why and "avx512_bf16" in why
    assert flops.cpu_flags(tmp_path / "missing") == set()


def test_measure_peaks_times_a_matmul_and_bf16_only_where_native(tmp_path, monkeypatch):
    plain = tmp_path / "cpuinfo"
    plain.write_text("flags\t\t: fpu avx2\n")
    before = torch.get_num_threads()
    peaks = flops.measure_peaks(1, size=64, repeats=2, min_seconds=0.01, cpuinfo=plain)
    assert torch.get_num_threads() == before  # scoped
    assert peaks["threads"] == 1 and peaks["size"] == 64
    assert peaks["float32_flop_per_s"] > 0 and peaks["bf16_flop_per_s"] is None
    assert peaks["bf16"].startswith("not available")
    monkeypatch.setattr(flops, "bf16_support", lambda cpuinfo: (True, "available (amx_bf16)"))
    peaks = flops.measure_peaks(1, size=64, repeats=1, min_seconds=0.01, cpuinfo=plain)
    assert peaks["bf16_flop_per_s"] > 0 and peaks["bf16"] == "available (amx_bf16)"
    assert flops.peak_record(peaks)["peak_bf16_gflop_per_s"] > 0
    with pytest.raises(ValueError, match="size and repeats"):
        flops.matmul_peak(size=0)


def test_format_table_lists_workloads_and_the_peak():
    peak = flops.peak_record(NO_BF16)
    rec = workload_record("reid", "batch", 3e9, 0.5, NO_BF16)
    table = flops.format_table([peak, rec])
    assert "reid (per batch)" in table and "15.0%" in table  # 6 GFLOP/s of 40
    assert "bf16 not available: test" in table


def test_generate_bench_reports_flops_and_share(micro_base, micro_dive_run):
    from dive.generate.bench import GenerateBenchConfig, generate_bench

    res = generate_bench(GenerateBenchConfig(base=micro_base, checkpoint=micro_dive_run / "final", n=2, batch_size=2,
                                             steps=2, repeats=1, threads=1, attention=False))
    per_image = res["unet_flops_per_step"] * 2 + res["text_encoder_flops_per_image"] + res["decode_flops_per_image"]
    assert res["unet_flops_per_step"] > 0 and res["decode_flops_per_image"] > 0
    assert abs(res["flops_per_image"] - per_image) <= 2  # integer division per part
    # the plain diffusers loop renders the same images with the same networks: the same FLOPs
    assert res["plain_diffusers_flops_per_image"] == pytest.approx(res["flops_per_image"], rel=0.02)
    rate = res["flops_per_image"] * res["ours_images_per_s"] / 1e9
    assert res["ours_gflop_per_s"] == pytest.approx(rate, rel=0.01)
    assert res["ours_share_of_float32_peak"] == pytest.approx(rate / res["peak_float32_gflop_per_s"], rel=0.01)
    assert "plain_diffusers_share_of_float32_peak" in res and "bf16" in res


def test_train_bench_counts_both_loops(micro_base, tiny_world_dir, tmp_path):
    from dive.train.bench_speed import TrainBenchConfig, train_bench

    res = train_bench(TrainBenchConfig(base=micro_base, data=tiny_world_dir, steps=1, warmup=1, batch_size=4, rank=4,
                                       threads=1, out=tmp_path / "tb"))
    # the reference encodes its images with the VAE every step; ours encoded them once up front
    assert res["reference_flops_per_step"] > res["ours_flops_per_step"] > 0
    rate = res["ours_flops_per_step"] * res["ours_steps_per_s"] / 1e9
    assert res["ours_gflop_per_s"] == pytest.approx(rate, rel=0.02)
    assert res["ours_share_of_float32_peak"] == pytest.approx(rate / res["peak_float32_gflop_per_s"], rel=0.02)


def test_dive_speed_end_to_end(micro_base, micro_dive_run, tiny_world_dir, tmp_path, capsys):
    from dive.cli import main

    out = tmp_path / "speed.jsonl"
    rc = main(["speed", "--threads", "1", "--only", "generate", "train", "reid",
               "--checkpoint", str(micro_dive_run / "final"), "--base", str(micro_base), "--images", "2",
               "--batch-size", "2", "--steps", "2", "--repeats", "1",
               "--train-base", str(micro_base), "--data", str(tiny_world_dir), "--train-steps", "1",
               "--train-warmup", "1", "--train-batch-size", "4", "--rank", "4", "--train-out", str(tmp_path / "t"),
               "--reid-batches", "1", "--reid-warmup", "1", "--peak-size", "64", "--peak-repeats", "1",
               "--json", str(out)])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["workload"] for r in lines] == ["peak", "generate", "train", "reid"]
    peak = lines[0]["peak_float32_flop_per_s"]
    for rec in lines[1:]:
        assert list(rec)[: len(RECORD_FIELDS)] == list(RECORD_FIELDS)
        assert rec["flops_per_unit"] > 0 and rec["threads"] == 1 and rec["peak_float32_flop_per_s"] == peak
        assert rec["flop_per_s"] == pytest.approx(rec["flops_per_unit"] / rec["seconds_per_unit"], rel=1e-3)
        assert rec["share_of_float32_peak"] == pytest.approx(rec["flop_per_s"] / peak, rel=1e-3)
    gen, train, reid = lines[1:]
    assert gen["unit"] == "image" and gen["steps"] == 2 and gen["images"] == 2
    assert train["unit"] == "step" and train["batch_size"] == 4
    # the default AGW batch: 8 ids x (4 visible + 4 infrared) through a width-16 ResNet-18 at 128x64
    assert reid["unit"] == "batch" and reid["batch_size"] == 64 and reid["arch"] == "resnet18"
    printed = capsys.readouterr().out
    assert "generate (per image)" in printed and "reid (per batch)" in printed and f"written: {out}" in printed


def test_dive_speed_names_missing_training_data(tmp_path, capsys):
    from dive.cli import main

    rc = main(["speed", "--only", "train", "--data", str(tmp_path / "nowhere")])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nowhere: not found" in err and "dive data synth" in err


def test_wait_policy_note_only_for_passive_threads_and_the_table_carries_it(monkeypatch):
    assert flops.wait_policy_note(None, 2) is None and flops.wait_policy_note("ACTIVE", 2) is None
    assert flops.wait_policy_note("passive", 1) is None  # one thread: nothing waits
    assert "PASSIVE" in flops.wait_policy_note(" passive ", 2)
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    peaks = flops.measure_peaks(2, size=32, repeats=1, min_seconds=0.0)
    assert peaks["omp_wait_policy"] == "PASSIVE"
    assert "OMP_WAIT_POLICY=PASSIVE" in flops.format_table([flops.peak_record(peaks)])
    monkeypatch.delenv("OMP_WAIT_POLICY")
    peaks = flops.measure_peaks(2, size=32, repeats=1, min_seconds=0.0)
    assert "OMP_WAIT_POLICY" not in flops.format_table([flops.peak_record(peaks)])


def test_training_and_generation_commands_warn_of_sleeping_threads(monkeypatch, capsys):
    from dive.cli.common import print_wait_note

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    print_wait_note(2)
    assert capsys.readouterr().out.startswith("note: OMP_WAIT_POLICY=PASSIVE")
    print_wait_note(1)
    monkeypatch.delenv("OMP_WAIT_POLICY")
    print_wait_note(2)
    assert capsys.readouterr().out == ""
