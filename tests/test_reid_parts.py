"""ReID sampler, transforms and network: composition, seeding, shapes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dive.reid.model import ModelSpec, build_model
from dive.reid.sampler import IdentitySampler
from dive.reid.transforms import (
    AugmentConfig, augment_batch, channel_augment, pad_random_crop, random_erasing, random_hflip, resize,
)


def toy_labels():
    # ids 0..4 paired (3 visible + 2 infrared each), id 5 visible-only (6 images)
    labels, ir = [], []
    for pid in range(5):
        labels += [pid] * 5
        ir += [False] * 3 + [True] * 2
    labels += [5] * 6
    ir += [False] * 6
    return np.array(labels), np.array(ir)


def test_sampler_composition():
    labels, ir = toy_labels()
    s = IdentitySampler(labels, ir, num_ids=3, num_per_modality=2, batches_per_epoch=20, seed=1)
    assert len(s) == 20 and s.visible_only_ids == 1
    seen_vis_only = False
    for b in s.epoch(0):
        vis_ids, ir_ids = labels[b.visible], labels[b.infrared]
        assert not ir[b.visible].any() and ir[b.infrared].all()
        ids = np.unique(vis_ids)
        assert ids.size == 3  # P distinct ids, K visible each
        assert all((vis_ids == i).sum() == 2 for i in ids)
        for i in ids:  # K infrared for each paired id, none for the visible-only one
            assert (ir_ids == i).sum() == (0 if i == 5 else 2)
        seen_vis_only |= 5 in ids
        for i in ids:  # without replacement when the id has >= K images of a modality
            assert np.unique(b.visible[vis_ids == i]).size == 2
    assert seen_vis_only
    # auto epoch length: visible images // (P*K)
    assert len(IdentitySampler(labels, ir, 3, 2, 0)) == (15 + 6) // 6


def test_sampler_determinism():
    labels, ir = toy_labels()
    a = IdentitySampler(labels, ir, 2, 2, 5, seed=7)
    b = IdentitySampler(labels, ir, 2, 2, 5, seed=7)
    c = IdentitySampler(labels, ir, 2, 2, 5, seed=8)
    flat = lambda s, e: np.concatenate([np.r_[x.visible, x.infrared] for x in s.epoch(e)])  # noqa: E731
    assert np.array_equal(flat(a, 3), flat(b, 3))
    assert not np.array_equal(flat(a, 3), flat(c, 3))
    assert not np.array_equal(flat(a, 0), flat(a, 1))
    with pytest.raises(ValueError):
        IdentitySampler(labels, ir, num_ids=7)


def batch(n=6, h=16, w=8, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, 3, h, w), dtype=np.uint8))


def test_transforms_shapes_and_seeding():
    x = batch()
    a = augment_batch(x, torch.Generator().manual_seed(3), AugmentConfig(pad=2))
    b = augment_batch(x, torch.Generator().manual_seed(3), AugmentConfig(pad=2))
    c = augment_batch(x, torch.Generator().manual_seed(4), AugmentConfig(pad=2))
    assert a.shape == x.shape and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    ca = augment_batch(x, torch.Generator().manual_seed(3), channel=True)
    assert ca.shape == x.shape
    assert resize(x, 32, 16).shape == (6, 3, 32, 16) and resize(x, 32, 16).dtype == torch.uint8


def test_individual_transforms():
    g = torch.Generator().manual_seed(0)
    x = batch().float() / 255
    assert torch.equal(pad_random_crop(x, 0, g), x)
    crop = pad_random_crop(x, 3, g)  # every crop is a shifted window of the zero-padded image
    padded = torch.nn.functional.pad(x, (3, 3, 3, 3))
    for i in range(x.shape[0]):
        assert any(torch.equal(crop[i], padded[i, :, dy:dy + 16, dx:dx + 8]) for dy in range(7) for dx in range(7))
    flipped = random_hflip(x, g, p=1.0)
    assert torch.equal(flipped, x.flip(-1)) and torch.equal(random_hflip(x, g, p=0.0), x)
    assert torch.equal(random_erasing(x, g, p=0.0), x)
    erased = random_erasing(x + 5.0, g, p=1.0)
    assert all((erased[i] == 0).any() for i in range(x.shape[0]))  # a zero rectangle in every image
    ch = channel_augment(x, g, gray_p=1.0)
    for i in range(x.shape[0]):  # one channel copied to all, or grayscale: all channels equal
        assert torch.allclose(ch[i, 0], ch[i, 1]) and torch.allclose(ch[i, 1], ch[i, 2])
    kept = channel_augment(x, torch.Generator().manual_seed(1), gray_p=0.0)
    for i in range(x.shape[0]):
        assert torch.equal(kept[i], x[i]) or torch.equal(kept[i, 0], kept[i, 1])


@pytest.mark.parametrize("arch,width,dim", [("resnet18", 8, 64), ("resnet50", 4, 128)])
def test_model_shapes_both_modalities(arch, width, dim):
    torch.manual_seed(0)
    m = build_model(ModelSpec(num_classes=5, arch=arch, base_width=width, height=64, width=32))
    assert m.feat_dim == dim
    x = torch.randn(4, 3, 64, 32)
    m.train()
    for mod in ("visible", "infrared", torch.tensor([0, 1, 0, 1])):
        feat, logits = m(x, mod)
        assert feat.shape == (4, dim) and logits.shape == (4, 5)
    m.eval()
    with torch.no_grad():
        mixed = m(x, torch.tensor([False, True, False, True]))
        vis, ir = m(x, "visible"), m(x, "infrared")
    assert mixed.shape == (4, dim)
    assert torch.allclose(mixed[0], vis[0], atol=1e-5) and torch.allclose(mixed[1], ir[1], atol=1e-5)
    assert not torch.allclose(vis, ir)  # two stems, two sets of weights
    assert m.classifier.bias is None and not m.bnneck.bias.requires_grad
