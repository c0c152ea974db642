"""DEEN (`--method deen`): the DEE module, its CPM / ORT / batch-hard triplet losses on hand-made
examples, and training, resuming, loading, evaluating and the CLI on the tiny SynthVI world."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from dive.cli import main
from dive.reid import resume
from dive.reid.deen import DEEModule, DEENObjective, DEENReID
from dive.reid.evaluate import evaluate_model, extract_features
from dive.reid.losses import BatchHardTriplet, CrossEntropyLabelSmooth, center_pair_mining_loss, orthogonal_loss
from dive.reid.model import ModelSpec, TwoStreamReID, build_model
from dive.reid.run import ReIDDataConfig, load_reid_data
from dive.reid.train import ReIDTrainConfig, load_checkpoint, train_reid
from test_reid_resume import _Killed, dies_after  # one kill helper for every resume test

TINY = dict(method="deen", base_width=4, height=64, width=32, num_ids=2, num_per_modality=2, epochs=2,
            batches_per_epoch=2, warmup_epochs=0.0, lr_steps=(), progress=False, threads=1, log_every=1)
TINY_CLI = ["--base-width", "4", "--height", "64", "--width", "32", "--num-ids", "2", "--num-per-modality", "2",
            "--epochs", "1", "--batches-per-epoch", "2", "--threads", "1", "--no-progress"]


# ------------------------------------------------------------------------------------------------
# the module and the network
# ------------------------------------------------------------------------------------------------


def test_dee_module_expands_the_batch_by_its_branches():
    torch.manual_seed(0)
    for branches in (1, 2, 3):
        dee = DEEModule(16, branches).eval()  # eval: no dropout
        assert len(dee.branches) == branches
        assert all(len(b.dilated) == 3 and b.dilated[0].out_channels == 4 for b in dee.branches)  # C -> C/4
        x = torch.randn(3, 16, 8, 4)
        y = dee(x)
        assert y.shape == ((branches + 1) * 3, 16, 8, 4)
        assert torch.equal(y[:3], x)  # the original maps come first, unchanged
        assert not torch.allclose(y[3:6], x)  # a generated embedding differs from them
    assert DEEModule(2, 2).branches[0].dilated[0].out_channels == 1  # narrow layers keep >= 1 channel
    with pytest.raises(ValueError):
        DEEModule(16, 0)


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_deen_network_shapes_for_any_arch(arch):
    torch.manual_seed(0)
    spec = ModelSpec(num_classes=5, arch=arch, base_width=4, height=64, width=32, dee_branches=2)
    model = build_model(spec)
    assert isinstance(model, DEENReID)
    c3 = 4 * 4 * (4 if arch == "resnet50" else 1)  # layer3's width
    assert model.dee.branches[0].dilated[0].in_channels == c3
    c = model.embed_dim
    assert c == 4 * 8 * (4 if arch == "resnet50" else 1) and model.feat_dim == 2 * 3 * c
    x = torch.randn(4, 3, 64, 32)
    mask = torch.tensor([False, False, True, True])
    model.train()
    feat, logits = model(x, mask)
    assert feat.shape == (12, c) and logits.shape == (12, 5)
    model.eval()
    with torch.no_grad():
        test = model(x, mask)
        pooled = model.pooled(x, mask)
        bn = model.bnneck(pooled)
    assert test.shape == (4, model.feat_dim)
    # the test feature: per embedding, the L2-normalised pooled then BN-neck feature, concatenated
    expect = torch.cat([F.normalize(t[e * 4:(e + 1) * 4], dim=1) for e in range(3) for t in (pooled, bn)], 1)
    assert torch.allclose(test, expect, atol=1e-6)
    assert torch.allclose(test.view(4, 6, c).norm(dim=2), torch.ones(4, 6), atol=1e-5)
    # the spec round-trips; the plain network's spec reads as before
    assert spec.to_dict()["dee_branches"] == 2 and ModelSpec(**spec.to_dict()) == spec
    plain = ModelSpec(num_classes=5, base_width=4, height=64, width=32)
    assert "dee_branches" not in plain.to_dict() and type(build_model(plain)) is TwoStreamReID


# ------------------------------------------------------------------------------------------------
# losses on hand-made examples
# ------------------------------------------------------------------------------------------------


def test_orthogonal_loss_is_zero_for_orthogonal_branches_and_positive_otherwise():
    g1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0]])
    g2 = torch.tensor([[0.0, 1.0, 0.0], [3.0, 0.0, 1.0]])
    assert orthogonal_loss([g1, g2]).item() == 0.0
    g2b = torch.tensor([[1.0, 1.0, 0.0], [3.0, 0.0, 1.0]])  # image 0: <g1, g2> = 1
    assert orthogonal_loss([g1, g2b]).item() == pytest.approx(1.0 / (3 * 2))  # / expanded batch (N+1) n
    g3 = torch.tensor([[0.0, 0.0, 2.0], [0.0, 1.0, 0.0]])  # three branches: every pair counts
    # <g1, g2b> = 1 + 0, <g1, g3> = 0 + 2, <g2b, g3> = 0 + 0, over (3 + 1) x 2 embeddings
    assert orthogonal_loss([g1, g2b, g3]).item() == pytest.approx((1.0 + 2.0 + 0.0) / (4 * 2))
    assert orthogonal_loss([g1]).item() == 0.0  # one branch: nothing to decorrelate


def _cpm_example():
    # 1-D features, images: id0 vis, id0 ir, id1 vis, id1 ir (one image per id and modality: centers = features)
    labels = torch.tensor([0, 0, 1, 1])
    infrared = torch.tensor([False, True, False, True])
    original = torch.tensor([[0.0], [1.0], [10.0], [11.0]])  # v0 = 0, r0 = 1, v1 = 10, r1 = 11
    generated = torch.tensor([[0.9], [0.5], [10.0], [11.0]], requires_grad=True)  # gv0, gr0, gv1, gr1
    return original, generated, labels, infrared


def test_cpm_loss_on_a_hand_made_example():
    original, generated, labels, infrared = _cpm_example()
    # generated visible, id0: h(|r0-gv0| - |v0-gv0| + .2) = h(.1 - .9 + .2) = 0; id1: h(|11-10| - 0 + .2) = 1.2
    # generated infrared, id0: h(|v0-gr0| - |r0-gr0| + .2) = h(.5 - .5 + .2) = .2; id1: h(1 - 0 + .2) = 1.2
    # nearest other ids are 9+ away: no term; loss = ((0 + 1.2) / 2 + (.2 + 1.2) / 2) / 2
    loss = center_pair_mining_loss(original, generated, labels, infrared, margin=0.2)
    assert loss.item() == pytest.approx(0.65, abs=1e-5)
    loss.backward()
    # the own-modality distance is a fixed reference (no gradient): d loss / d gr0 = +1 / 2 / 2 only
    assert generated.grad[1, 0].item() == pytest.approx(0.25, abs=1e-5)
    assert generated.grad[0, 0].item() == 0.0  # id0's generated visible center already satisfies its pair

    # identities 0.1 apart: the nearest-other terms fire, h(0 - 0.1 + 0.2) = 0.1 each, weighted 0.5
    same = torch.tensor([[0.0], [0.0], [0.1], [0.1]])
    assert center_pair_mining_loss(same, same.clone(), labels, infrared, 0.2).item() == pytest.approx(
        0.2 + 0.5 * (0.1 + 0.1), abs=1e-5)
    # only identities seen in both modalities count; none -> 0
    vis_only = torch.tensor([False, False, False, False])
    assert center_pair_mining_loss(original, generated, labels, vis_only).item() == 0.0
    # centers: several images per identity and modality are averaged
    lab2, ir2 = torch.tensor([0, 0, 0, 0]), torch.tensor([False, False, True, True])
    orig2 = torch.tensor([[0.0], [2.0], [5.0], [5.0]])  # v0 = 1, r0 = 5
    gen2 = torch.tensor([[1.0], [1.0], [5.0], [5.0]])  # gv0 = 1, gr0 = 5: each 4 from the other center
    assert center_pair_mining_loss(orig2, gen2, lab2, ir2, 0.2).item() == pytest.approx(4.0 + 0.2, abs=1e-5)


def test_batch_hard_triplet_by_hand():
    feat = torch.tensor([[0.0], [1.0], [3.0]])  # ids 0, 0, 1
    labels = torch.tensor([0, 0, 1])
    loss, correct = BatchHardTriplet(0.3)(feat, labels)
    assert loss.item() == pytest.approx(0.0) and correct == 3
    # margin 1.5: anchor 1 has d_pos 1, d_neg 2 -> 0.5; anchors 0 (1 vs 3) and 2 (0 vs 2) stay at 0
    loss, _ = BatchHardTriplet(1.5)(feat, labels)
    assert loss.item() == pytest.approx(0.5 / 3, abs=1e-5)


def test_deen_objective_sums_the_published_terms():
    torch.manual_seed(0)
    labels = torch.tensor([0, 1, 0, 1])
    infrared = torch.tensor([False, False, True, True])
    feat = torch.rand(12, 6)  # 3 embeddings x 4 images
    logits = torch.randn(12, 2)
    ce, tri = CrossEntropyLabelSmooth(0.0), BatchHardTriplet(0.3)
    step = DEENObjective(2, ce, tri)(feat, logits, labels, infrared)
    y = labels.repeat(3)
    assert torch.equal(step.labels, y)
    cpm = sum(center_pair_mining_loss(feat[:4], feat[4 * b:4 * b + 4], labels, infrared, 0.2) for b in (1, 2))
    expect = ce(logits, y) + tri(feat, y)[0] + 0.8 * cpm + 0.01 * orthogonal_loss([feat[4:8], feat[8:]])
    assert step.loss.item() == pytest.approx(expect.item(), rel=1e-6)
    assert step.loss_ort.item() > 0 and step.loss_cpm.item() >= 0
    with pytest.raises(ValueError, match="embeddings"):
        DEENObjective(2, ce, tri)(feat[:8], logits[:8], labels, infrared)


def test_deen_options_are_checked():
    cfg = ReIDTrainConfig(method="deen")
    assert cfg.triplet_kind == "batch-hard" and cfg.dee_branches == 2 and not cfg.use_channel_aug
    assert cfg.deen_recipe() == {"branches": 2, "cpm_weight": 0.8, "cpm_margin": 0.2, "ort_weight": 0.01,
                                 "triplet_margin": 0.3}
    assert cfg.model_spec(3).dee_branches == 2 and ReIDTrainConfig().model_spec(3).dee_branches == 0
    assert ReIDTrainConfig(method="deen", deen_branches=3, cpm_weight=0.5).deen_recipe()["branches"] == 3
    with pytest.raises(ValueError, match="--cpm-weight: DEEN options"):
        ReIDTrainConfig(method="agw", cpm_weight=0.5)
    with pytest.raises(ValueError, match="--triplet-margin"):
        ReIDTrainConfig(method="agw", triplet_margin=0.5)
    with pytest.raises(ValueError, match="--deen-branches"):
        ReIDTrainConfig(method="deen", deen_branches=0)


# ------------------------------------------------------------------------------------------------
# training, resume, loading, evaluation, CLI
# ------------------------------------------------------------------------------------------------


def test_deen_trains_reproducibly_resumes_loads_and_evaluates(tiny_world_dir, tmp_path, monkeypatch):
    data = load_reid_data(ReIDDataConfig(data=tiny_world_dir))
    runs = [train_reid(ReIDTrainConfig(out=tmp_path / f"r{i}", seed=3, **TINY), data.train) for i in range(2)]
    w = [load_file(str(r / "model.safetensors")) for r in runs]
    assert any(k.startswith("dee.branches.1.") for k in w[0])
    assert w[0].keys() == w[1].keys() and all(torch.equal(w[0][k], w[1][k]) for k in w[0])  # same seed, same bytes
    assert (runs[0] / "model.safetensors").read_bytes() == (runs[1] / "model.safetensors").read_bytes()

    model, meta = load_checkpoint(runs[0])
    assert isinstance(model, DEENReID) and not model.training and meta["model_spec"]["dee_branches"] == 2
    assert all(torch.equal(model.state_dict()[k], w[0][k]) for k in w[0])
    assert meta["epoch"] == 2 and meta["config"]["method"] == "deen"
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["resolved"]["triplet"] == "batch-hard" and config["resolved"]["deen"]["branches"] == 2
    log = [json.loads(line) for line in (runs[0] / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["type"] == "epoch"]
    assert len(epochs) == 2 and all(r["loss_cpm"] >= 0 and r["loss_ort"] >= 0 for r in epochs)
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in log)
    first = next(r for r in log if r["type"] == "iter")
    assert first["batch_size"] == 8  # 2 ids x (2 visible + 2 infrared) images, expanded to 24 inside

    test = data.test[:6]
    feats = extract_features(model, test)
    assert feats.shape == (6, model.feat_dim) and torch.isfinite(torch.from_numpy(feats)).all()
    res = evaluate_model(model, data.test, ["sysu-all", "sysu-indoor"], trials=2)
    assert set(res) == {"sysu-all", "sysu-indoor"} and 0 <= res["sysu-all"]["rank1"] <= 100

    from dive.metrics.features import ReIDFeatures

    with pytest.raises(ValueError, match="DEEN network"):  # the quality metrics take one feature per image
        ReIDFeatures(runs[0])

    # killed right after epoch 1's state: the rerun continues and ends with the same bytes
    save, dying = resume.save_state, dies_after(1)
    out = tmp_path / "killed"
    monkeypatch.setattr(resume, "save_state", dying)
    with pytest.raises(_Killed):
        train_reid(ReIDTrainConfig(out=out, seed=3, **TINY), data.train)
    monkeypatch.setattr(resume, "save_state", save)
    assert not (out / "model.safetensors").exists() and (out / resume.STATE_FILE).is_file()
    train_reid(ReIDTrainConfig(out=out, seed=3, **TINY), data.train)
    for name in ("model.safetensors", "last.safetensors"):
        assert (out / name).read_bytes() == (runs[0] / name).read_bytes(), name


def test_deen_with_pretrained_weights_and_bf16(tiny_world_dir, tmp_path):
    data = load_reid_data(ReIDDataConfig(data=tiny_world_dir))
    torch.manual_seed(7)  # a width-4 resnet18 "ImageNet" file in torchvision's layout
    donor = build_model(ModelSpec(num_classes=3, base_width=4, height=64, width=32))
    tv = {}
    for k, v in donor.state_dict().items():
        if k.startswith("stem_visible."):
            tv[k.replace("stem_visible.conv", "conv1").replace("stem_visible.bn", "bn1")] = v.contiguous()
        elif k.startswith("layer"):
            tv[k.replace(".shortcut.", ".downsample.")] = v.contiguous()
    path = tmp_path / "r18.safetensors"
    save_file(tv, str(path))
    run = train_reid(ReIDTrainConfig(out=tmp_path / "pre", pretrained=path, lr=0.0, device="cpu",
                                     **dict(TINY, epochs=1)), data.train)
    meta = json.loads((run / "model.json").read_text())
    assert meta["pretrained"]["loaded"] == len(tv) and meta["pretrained"]["missing"] == []
    w = load_file(str(run / "model.safetensors"))
    assert torch.equal(w["layer3.0.conv1.weight"], tv["layer3.0.conv1.weight"])  # lr 0: the file's weights
    bf16 = train_reid(ReIDTrainConfig(out=tmp_path / "bf16", precision="bf16", **dict(TINY, epochs=1)), data.train)
    wb = load_file(str(bf16 / "model.safetensors"))
    assert all(v.dtype != torch.bfloat16 and torch.isfinite(v.float()).all() for v in wb.values())


def test_cli_reid_train_deen_then_test(tiny_world_dir, tmp_path, capsys):
    out = tmp_path / "deen"
    rc = main(["reid", "train", "--data", str(tiny_world_dir), "--out", str(out), "--method", "deen",
               "--deen-branches", "3", *TINY_CLI])
    printed = capsys.readouterr().out
    assert rc == 0 and "trained DEEN" in printed and (out / "model.safetensors").is_file()
    model, meta = load_checkpoint(out)
    assert isinstance(model, DEENReID) and len(model.dee.branches) == 3 and meta["config"]["deen_branches"] == 3
    rc = main(["reid", "test", str(out), "--data", str(tiny_world_dir), "--trials", "1", "--protocols", "sysu-all"])
    printed = capsys.readouterr().out
    assert rc == 0 and "DEEN (vi): trained" in printed and "All-search: R1" in printed
    rc = main(["reid", "train", "--data", str(tiny_world_dir), "--out", str(tmp_path / "agw"), "--method", "agw",
               "--ort-weight", "0.1", *TINY_CLI])
    assert rc == 2 and "--ort-weight: DEEN options" in capsys.readouterr().err
