"""Feature extraction and VI-ReID evaluation of a trained network.

``evaluate_model(model, records)`` takes a dataset's records (any split mix), keeps the test split,
extracts the features of its infrared and its visible images once, and scores them with
``dive.reid.protocols.evaluate`` under each protocol asked for (results in percent, averaged over
trials). A protocol's query modality decides the direction: infrared (or thermal) queries against
the visible gallery (``sysu-*``, ``llcm-i2v``, ``regdb-t2v``), or visible queries against the
infrared gallery (``llcm-v2i``, ``regdb-v2t``). Features are the BN-neck outputs, compared by
cosine distance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from dive.data.records import Modality, Record
from dive.reid.protocols import evaluate, get_protocol
from dive.reid.transforms import eval_batch, load_images


@torch.no_grad()
def extract_features(model: torch.nn.Module, records: Sequence[Record] | None = None, *,
                     images: torch.Tensor | None = None, modality: Sequence[bool] | None = None,
                     batch_size: int = 128, flip: bool = False, progress: bool = False) -> np.ndarray:
    """BN-neck features (N, dim) float32 of `records` (or of a pre-loaded uint8 `images` batch
    with a per-image `modality` mask, True = infrared), in batches, without gradients.

    Each image goes through its own modality's stem. ``flip=True`` averages the features of the
    image and its mirror. The model's mode is restored afterwards.
    """
    if images is None:
        if records is None:
            raise ValueError("give records or images")
        spec = model.spec
        images = load_images([r.path for r in records], spec.height, spec.width, progress=progress, desc="features")
        modality = [r.modality is Modality.INFRARED for r in records]
    if modality is None:
        raise ValueError("images need a modality mask (True = infrared)")
    is_ir = torch.as_tensor(np.asarray(modality, dtype=bool))
    if is_ir.numel() != images.shape[0]:
        raise ValueError(f"modality mask has {is_ir.numel()} entries for {images.shape[0]} images")
    was_training = model.training
    dev = next(model.parameters()).device  # the network's device (cpu, cuda, mps)
    model.eval()
    try:
        feats = torch.empty((images.shape[0], model.feat_dim), dtype=torch.float32)
        for code in (False, True):  # one stem at a time: visible, then infrared
            idx = torch.nonzero(is_ir == code).flatten()
            name = "infrared" if code else "visible"
            for s in range(0, idx.numel(), batch_size):
                sel = idx[s:s + batch_size]
                x = eval_batch(images[sel]).to(dev)
                f = model(x, name)
                if flip:
                    f = (f + model(x.flip(-1), name)) / 2.0
                feats[sel] = f.float().cpu()
    finally:
        model.train(was_training)
    return feats.numpy()


@dataclass
class EvalSet:
    """Infrared ("query") and visible ("gallery") images of one split, loaded once (uint8);
    protocols with visible queries swap the two roles."""

    query_pid: np.ndarray
    query_cam: np.ndarray
    gallery_pid: np.ndarray
    gallery_cam: np.ndarray
    query_images: torch.Tensor
    gallery_images: torch.Tensor
    query_path: np.ndarray | None = None
    gallery_path: np.ndarray | None = None

    @property
    def sizes(self) -> tuple[int, int]:
        return int(self.query_pid.size), int(self.gallery_pid.size)


def prepare_eval_set(records: Sequence[Record], height: int, width: int, split: str | None = "test",
                     progress: bool = False) -> EvalSet:
    """Query = infrared images, gallery = visible images of `split` (None: all given records)."""
    recs = [r for r in records if split is None or r.split == split]
    query = [r for r in recs if r.modality is Modality.INFRARED]
    gallery = [r for r in recs if r.modality is Modality.VISIBLE]
    if not query or not gallery:
        raise ValueError(
            f"evaluation needs infrared queries and visible gallery images in split {split!r}; "
            f"found {len(query)} infrared and {len(gallery)} visible"
        )
    return EvalSet(
        query_pid=np.array([r.pid for r in query]), query_cam=np.array([r.camid for r in query]),
        gallery_pid=np.array([r.pid for r in gallery]), gallery_cam=np.array([r.camid for r in gallery]),
        query_images=load_images([r.path for r in query], height, width, progress, "query"),
        gallery_images=load_images([r.path for r in gallery], height, width, progress, "gallery"),
        query_path=np.array([str(r.path) for r in query]), gallery_path=np.array([str(r.path) for r in gallery]),
    )


def evaluate_prepared(model: torch.nn.Module, es: EvalSet, protocol: str | Sequence[str] = "sysu-all",
                      trials: int = 10, seed: int = 0, flip: bool = False, batch_size: int = 128,
                      gallery: str = "sampled"):
    """Score a prepared set; a protocol name gives one result, a list a {protocol: result} dict.

    ``gallery`` is the gallery draw of ``dive.reid.protocols.evaluate`` (``sampled``, ``agw``).
    """
    names = [protocol] if isinstance(protocol, str) else list(protocol)
    protos = [get_protocol(n) for n in names]  # unknown names fail before any feature is computed
    ir_feat = extract_features(model, images=es.query_images, modality=np.ones(es.sizes[0], bool),
                               batch_size=batch_size, flip=flip)
    vis_feat = extract_features(model, images=es.gallery_images, modality=np.zeros(es.sizes[1], bool),
                                batch_size=batch_size, flip=flip)
    ir = dict(pid=es.query_pid, cam=es.query_cam, feat=ir_feat, path=es.query_path)
    vis = dict(pid=es.gallery_pid, cam=es.gallery_cam, feat=vis_feat, path=es.gallery_path)
    out = {}
    for name, proto in zip(names, protos):
        q, g = (vis, ir) if proto.query_modality == "visible" else (ir, vis)
        out[name] = evaluate(proto, query_pid=q["pid"], query_cam=q["cam"], gallery_pid=g["pid"],
                             gallery_cam=g["cam"], query_feat=q["feat"], gallery_feat=g["feat"],
                             trials=trials, seed=seed, gallery=gallery, gallery_path=g["path"])
    return out[protocol] if isinstance(protocol, str) else out


def evaluate_model(model: torch.nn.Module, dataset_records: Sequence[Record],
                   protocol: str | Sequence[str] = "sysu-all", trials: int = 10, seed: int = 0, *,
                   split: str | None = "test", flip: bool = False, batch_size: int = 128,
                   progress: bool = False, gallery: str = "sampled"):
    """Evaluate on a dataset's `split` (default: test), in each protocol's direction.

    `protocol` is a name (returns that protocol's result dict) or a list of names (returns
    ``{name: result}``; features are extracted once for all of them).
    """
    es = prepare_eval_set(dataset_records, model.spec.height, model.spec.width, split, progress)
    return evaluate_prepared(model, es, protocol, trials=trials, seed=seed, flip=flip, batch_size=batch_size,
                             gallery=gallery)
