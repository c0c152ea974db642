"""ReID options for an export's synthetic images: --synthetic-share (the expanded ids' share of each
batch) and --synthetic-weight (the weight of the synthetic images' loss terms), their defaults
(today's batches and losses), what the run records, and their refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from dive.cli import main
from dive.data.records import Modality
from dive.data.registry import load_dataset
from dive.export import ExportConfig, export_dataset
from dive.export.files import DONE_FILE
from dive.reid.device import assemble_batch
from dive.reid.losses import BatchHardTriplet, CrossEntropyLabelSmooth, WeightedRegularizedTriplet
from dive.reid.run import ReIDDataConfig, load_reid_data, train_from_config
from dive.reid.sampler import IdentitySampler
from dive.reid.synthetic import EXPORT_FILE, image_weights, row_weights, synthetic_flags
from dive.reid.train import ReIDTrainConfig, train_reid
from dive.reid.transforms import AugmentConfig

# 2 batches of 4 ids x (2 visible + 2 infrared) at 64x32 through a width-4 network
TINY_TRAIN = dict(base_width=4, height=64, width=32, num_ids=4, num_per_modality=2, epochs=1,
                  batches_per_epoch=2, warmup_epochs=0.0, lr_steps=(), progress=False, threads=1)
TINY_CLI = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "4", "--num-per-modality", "2",
            "--epochs", "1", "--batches-per-epoch", "2", "--threads", "1", "--no-progress"]


def write_synthetic(folder: Path, dataset: str, ids: list[int]) -> None:
    """A generated-images folder (PNG + manifest.jsonl): 2 infrared images per id on cameras 3 and 6."""
    rows = []
    for pid in ids:
        for cam in (3, 6):
            for i in range(2):
                rel = f"images/{pid:04d}/c{cam}/{i}.png"
                (folder / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(np.full((16, 8, 3), (40 * pid + 9 * cam + i) % 256, np.uint8)).save(folder / rel)
                rows.append({"path": rel, "dataset": dataset, "pid": pid, "camid": cam, "modality": "infrared"})
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def export(tiny_world_dir, tmp_path_factory) -> dict:
    ext = [r for r in load_dataset("synthvi", tiny_world_dir).records
           if r.dataset == "synthvi_ext" and r.split == "train"]
    syn = tmp_path_factory.mktemp("gen") / "generated"
    write_synthetic(syn, "synthvi_ext", sorted({r.pid for r in ext})[:2])
    out = tmp_path_factory.mktemp("exp") / "sysu_plus"
    export_dataset(ExportConfig(data=tiny_world_dir, out=out, synthetic=(syn,)), progress=False)
    data = load_reid_data(ReIDDataConfig(data=out))
    flags = synthetic_flags(out, data.train)
    labels = np.array([r.pid for r in data.train])
    return {"out": out, "data": data, "flags": flags, "pids": labels,
            "summary": json.loads((out / DONE_FILE).read_text())}


def toy_sampler(share: float | None = None, *, flags: bool = True, **kw) -> IdentitySampler:
    """10 ids x (2 visible + 2 infrared); ids 6..9 carry a synthetic infrared image."""
    labels = np.repeat(np.arange(10), 4)
    ir = np.tile([False, False, True, True], 10)
    syn = (labels >= 6) & ir & np.tile([False, False, True, False], 10)
    return IdentitySampler(labels, ir, kw.pop("num_ids", 5), 2, 6, seed=3,
                           synthetic=syn if flags else None, synthetic_share=share, **kw)


# ------------------------------------------------------------------------------------------------
# what an export records
# ------------------------------------------------------------------------------------------------


def test_flags_mark_exactly_the_exported_synthetic_images(export):
    assert EXPORT_FILE == DONE_FILE
    flags, data = export["flags"], export["data"]
    new_ids = {d["id"] for d in export["summary"]["new_ids"]}
    assert flags.sum() == export["summary"]["counts"]["per_origin"]["synthetic"] == 2 * 2 * 2
    flagged = [r for r, f in zip(data.train, flags) if f]
    assert all(r.modality is Modality.INFRARED and r.pid in new_ids for r in flagged)
    # the new ids' real (visible) images are real; the VI ids have no synthetic image
    assert not any(f for r, f in zip(data.train, flags) if r.pid not in new_ids or r.modality is Modality.VISIBLE)


# ------------------------------------------------------------------------------------------------
# --synthetic-share
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 0.8])
def test_each_batch_draws_round_f_p_expanded_ids(share):
    sampler = toy_sampler(share)
    n_exp = round(share * 5)
    for epoch in (0, 1):
        for batch in sampler.epoch(epoch):
            assert len(set(batch.ids.tolist())) == 5
            assert int((batch.ids >= 6).sum()) == n_exp
    # deterministic per (seed, epoch): epoch 1 alone gives the same batches
    again = [b.ids.tolist() for b in toy_sampler(share).epoch(1)]
    assert again == [b.ids.tolist() for b in sampler.epoch(1)]


def test_share_on_an_export_and_the_distributed_split(export):
    pids, flags = export["pids"], export["flags"]
    expanded = set(pids[flags].tolist())
    labels = np.unique(pids, return_inverse=True)[1]
    is_ir = np.array([r.modality is Modality.INFRARED for r in export["data"].train])
    sampler = IdentitySampler(labels, is_ir, 4, 2, 5, seed=1, synthetic=flags, synthetic_share=0.5)
    uniq = np.unique(pids)
    for batch in sampler.epoch(0):
        drawn = [int(uniq[i]) for i in batch.ids]
        assert sum(p in expanded for p in drawn) == 2
        parts = [batch.ids[r::2].tolist() for r in range(2)]  # each process's ids cover the batch once
        assert sorted(parts[0] + parts[1]) == sorted(batch.ids.tolist())


def test_share_left_off_gives_todays_batches():
    today = toy_sampler(flags=False)
    flagged = toy_sampler(None)
    for epoch in (0, 2):
        a, b = list(today.epoch(epoch)), list(flagged.epoch(epoch))
        assert len(a) == len(b) == 6
        for x, y in zip(a, b):
            assert np.array_equal(x.ids, y.ids) and np.array_equal(x.visible, y.visible)
            assert np.array_equal(x.infrared, y.infrared)
    # a share changes the draw (the test above could fail)
    assert [b.ids.tolist() for b in toy_sampler(0.8).epoch(0)] != [b.ids.tolist() for b in today.epoch(0)]


def test_share_refusals():
    labels, ir = np.repeat(np.arange(4), 2), np.tile([False, True], 4)
    with pytest.raises(ValueError, match="no synthetic images"):
        IdentitySampler(labels, ir, 2, 1, synthetic=np.zeros(8, bool), synthetic_share=0.5)
    with pytest.raises(ValueError, match="no real ids"):
        IdentitySampler(labels, ir, 2, 1, synthetic=np.ones(8, bool), synthetic_share=0.5)
    with pytest.raises(ValueError, match="needs 2 distinct expanded ids .* has 1"):
        IdentitySampler(labels, ir, 2, 1, synthetic=labels == 0, synthetic_share=1.0)
    with pytest.raises(ValueError, match="synthetic flag per training image"):
        IdentitySampler(labels, ir, 2, 1, synthetic_share=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        toy_sampler(1.5)
    for bad in (-0.1, 1.01, math.nan):
        with pytest.raises(ValueError, match="--synthetic-share must be in"):
            ReIDTrainConfig(synthetic_share=bad)
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match="--synthetic-weight must be"):
            ReIDTrainConfig(synthetic_weight=bad)
    assert not ReIDTrainConfig().uses_synthetic and ReIDTrainConfig(synthetic_share=0.0).uses_synthetic


# ------------------------------------------------------------------------------------------------
# --synthetic-weight
# ------------------------------------------------------------------------------------------------


def test_weight_zero_removes_the_synthetic_images_id_loss():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 5, generator=g, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    syn = torch.tensor([False, True, False, True, False, False, True, False])
    w = torch.where(syn, 0.0, 1.0)
    for eps in (0.0, 0.1):
        ce = CrossEntropyLabelSmooth(eps)
        assert torch.equal(ce(logits, y, None), ce(logits, y))  # no weights: today's loss
        per = F.cross_entropy(logits, y, reduction="none", label_smoothing=eps)
        loss = ce(logits, y, w)
        assert torch.allclose(loss, per[~syn].sum() / 8)  # the real images' terms, over the whole batch
        (grad,) = torch.autograd.grad(loss, logits)
        assert torch.all(grad[syn] == 0) and torch.all(grad[~syn].abs().sum(1) > 0)
        (grad_all,) = torch.autograd.grad(ce(logits, y), logits)
        assert torch.all(grad_all[syn].abs().sum(1) > 0)  # unweighted, the synthetic rows do count
        assert torch.allclose(ce(logits, y, torch.ones(8)), ce(logits, y))
        half = ce(logits, y, torch.where(syn, 0.5, 1.0))
        assert torch.allclose(half, (loss + ce(logits, y)) / 2) and not torch.allclose(loss, ce(logits, y))


def test_triplet_weights_scale_the_anchor_terms():
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(8, 6, generator=g)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    w = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 1.0])
    bh = BatchHardTriplet(margin=5.0)  # a wide margin: every anchor has a term
    d = torch.cdist(feat, feat)
    same = y.view(-1, 1) == y.view(1, -1)
    per = (d.masked_fill(~same, -1).max(1).values - d.masked_fill(same, 1e9).min(1).values + 5.0).clamp(min=0)
    assert torch.allclose(bh(feat, y, w)[0], (per * w).sum() / 8, atol=1e-5)
    assert torch.equal(bh(feat, y, None)[0], bh(feat, y)[0])
    for tri in (WeightedRegularizedTriplet(), WeightedRegularizedTriplet(1.0, 1.0, True)):
        assert torch.equal(tri(feat, y, None)[0], tri(feat, y)[0])
        assert torch.allclose(tri(feat, y, torch.ones(8))[0], tri(feat, y)[0])
        assert tri(feat, y, w)[0] < tri(feat, y)[0]


@pytest.mark.parametrize("channel_aug", [False, True])
def test_row_weights_follow_the_assembled_batch(channel_aug):
    sampler = toy_sampler(None)
    flags = np.zeros(40, bool)
    flags[[26, 30, 34]] = True
    weights = image_weights(flags, 0.0)
    images = torch.rand(40, 3, 16, 8)
    aug = AugmentConfig(pad=0, flip_p=0.0, erasing_p=0.0)
    index = torch.arange(40)  # labels = image index: the assembled labels name each row's image
    for batch in sampler.epoch(0):
        _, _, rows = assemble_batch(images, index, batch, torch.Generator().manual_seed(0), aug, channel_aug)
        w = row_weights(batch, weights, index, channel_aug, (0, 1), rows)
        assert torch.equal(w, weights[rows])
        with pytest.raises(RuntimeError, match="do not line up"):
            row_weights(batch, weights, index, not channel_aug, (0, 1), rows)
    # two processes: each keeps the rows of its own identities, in order
    labels = torch.from_numpy(np.repeat(np.arange(10), 4))
    batch = next(iter(sampler.epoch(0)))
    _, _, y = assemble_batch(images, labels, batch, torch.Generator().manual_seed(0), aug, channel_aug)
    full = row_weights(batch, torch.arange(40.0), labels, channel_aug, (0, 1), y)
    for rank in range(2):
        keep = torch.isin(y, torch.as_tensor(batch.ids[rank::2]))
        assert torch.equal(row_weights(batch, torch.arange(40.0), labels, channel_aug, (rank, 2), y[keep]),
                           full[keep])


# ------------------------------------------------------------------------------------------------
# runs: defaults, records, refusals
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_defaults_train_exactly_as_without_the_options(export, tmp_path):
    data, flags = export["data"], export["flags"]
    a = train_reid(ReIDTrainConfig(out=tmp_path / "a", **TINY_TRAIN), data.train)
    b = train_reid(ReIDTrainConfig(out=tmp_path / "b", synthetic_weight=1.0, **TINY_TRAIN), data.train,
                   synthetic=flags)
    c = train_reid(ReIDTrainConfig(out=tmp_path / "c", synthetic_weight=0.0, **TINY_TRAIN), data.train,
                   synthetic=flags)
    log = {k: [{n: v for n, v in json.loads(line).items() if n != "seconds" and "seconds" not in n}
               for line in (r / "log.jsonl").read_text().splitlines()] for k, r in zip("abc", (a, b, c))}
    assert log["a"] == log["b"]
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert log["a"] != log["c"]  # weight 0 trains differently (the batches hold synthetic images)
    meta = json.loads((c / "model.json").read_text())
    assert meta["synthetic_images"] == 8 and meta["expanded_ids"] == 2 and meta["config"]["synthetic_weight"] == 0.0
    assert "synthetic_images" not in json.loads((a / "model.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("method", ["caj", "deen"])
def test_weighted_runs_of_the_other_recipes(export, tmp_path, method):
    """CAJ (channel-augmented copies in the batch) and DEEN (expanded embeddings) train with both options."""
    data, flags = export["data"], export["flags"]
    cfg = ReIDTrainConfig(out=tmp_path / method, method=method, synthetic_share=0.5, synthetic_weight=0.5,
                          **TINY_TRAIN)
    run = train_reid(cfg, data.train, synthetic=flags)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert rows[-1]["type"] == "epoch" and math.isfinite(rows[-1]["loss"])


@pytest.mark.slow
def test_cli_run_records_the_options_in_the_report(export, tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["reid", "run", "--data", str(export["out"]), "--out", str(out), "--trials", "1",
               "--protocols", "sysu-all", "--synthetic-share", "0.5", "--synthetic-weight", "0.25", *TINY_CLI])
    assert rc == 0, capsys.readouterr()
    report = json.loads((out / "report.json").read_text())
    assert report["train_config"]["synthetic_share"] == 0.5 and report["train_config"]["synthetic_weight"] == 0.25
    assert report["train"]["synthetic_images"] == 8 and report["train"]["expanded_ids"] == 2
    config = json.loads((out / "config.json").read_text())["train"]
    assert config["synthetic_share"] == 0.5 and config["synthetic_weight"] == 0.25
    assert "Synthetic data: 8 synthetic images of 2 expanded ids" in (out / "report.md").read_text()


def test_options_are_in_the_help(capsys):
    for cmd in ("run", "train"):
        with pytest.raises(SystemExit):
            main(["reid", cmd, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "--synthetic-share" in text and "--synthetic-weight" in text and "expanded ids" in text


def test_refused_where_no_export_records_synthetic_images(export, tiny_world_dir, tmp_path, capsys):
    for opt in (["--synthetic-share", "0.5"], ["--synthetic-weight", "0"]):
        rc = main(["reid", "train", "--data", str(tiny_world_dir), "--out", str(tmp_path / "x"), *opt, *TINY_CLI])
        err = capsys.readouterr().err
        assert rc == 2 and str(tiny_world_dir / "export.json") in err and "dive export" in err
    assert not (tmp_path / "x").exists()
    rc = main(["reid", "train", "--data", str(tiny_world_dir), "--out", str(tmp_path / "x"),
               "--synthetic-share", "2", *TINY_CLI])
    assert rc == 2 and "--synthetic-share must be in [0, 1]" in capsys.readouterr().err
    data = export["data"]
    with pytest.raises(ValueError, match="need to know which training images are synthetic"):
        train_reid(ReIDTrainConfig(out=tmp_path / "y", synthetic_share=0.5, **TINY_TRAIN), data.train)
    with pytest.raises(ValueError, match="has no synthetic images to weigh"):
        train_reid(ReIDTrainConfig(out=tmp_path / "y", synthetic_weight=0.5, **TINY_TRAIN), data.train,
                   synthetic=np.zeros(len(data.train), bool))
    # an export folder without its manifest, or with an image the manifest lacks
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "export.json").write_text("{}")
    with pytest.raises(ValueError, match="manifest.jsonl: not found"):
        synthetic_flags(fake, data.train)
    (fake / "manifest.jsonl").write_text(json.dumps({"path": "cam1/0001/0001.jpg", "origin": "real"}) + "\n")
    inside = [type(r)(str(fake / "cam1/0002/0001.jpg"), r.pid, r.camid, r.modality, r.dataset, r.split)
              for r in data.train[:1]]
    with pytest.raises(ValueError, match="no row for 1 training image"):
        synthetic_flags(fake, inside)
