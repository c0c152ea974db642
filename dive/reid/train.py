"""Train a VI-ReID network with the AGW, CAJ or DEEN recipe on any list of Records.

``train_reid(cfg, train_records, val=None)`` writes a run folder and returns its path::

    config.json         the ReIDTrainConfig (+ caller metadata: data source, train set)
    log.jsonl           one line per `log_every` iterations and one per epoch (loss, lr, accuracy, val)
    last.safetensors    weights after the latest epoch (+ last.json), rewritten every epoch
    last.state.safetensors  what a rerun after a kill resumes from (dive.reid.resume)
    model.safetensors   the selected weights (+ model.json: spec, config, label map, epoch, timing)

Every file is written atomically (temp file + rename). Model selection never looks at the test
set: ``select="last"`` (default) keeps the last epoch; ``select="best-val"`` keeps the epoch with
the best validation Rank-1 (sysu-all-like: infrared val images as queries, visible val images as
a single-shot gallery, ``val_trials`` trials).

Recipes (``method``): ``agw`` = cross-entropy on the BN-neck logits + WRT triplet on the pooled
feature, batch P ids x K visible + K infrared, pad/crop/flip/random erasing. ``caj`` = the same
network plus a channel-augmented copy of every visible image in the batch (visible, augmented
visible and infrared learned jointly) and the ADP triplet (alpha 1, gamma 1, squared gap).
``deen`` = the network with DEEN's embedding expansion after layer3 (2 generated embeddings per
image), CE + batch-hard triplet (margin 0.3) on every embedding + 0.8 CPM + 0.01 ORT, and a test
feature built from all embeddings (dive.reid.deen; its log rows add ``loss_cpm`` / ``loss_ort``).
Options left at "auto" (or unset) follow the method.

Labels: identities are keyed by (dataset, pid) (``identity_key="dataset-pid"``), numbered in
sorted order; for one dataset this is exactly ``dive.data.records.relabel``. So external ids
whose numbers collide with VI ids stay distinct people. An expanded set whose synthetic images
must join a real identity gives them the same dataset name and pid (or use ``identity_key="pid"``).

Synthetic data (an export's generated images, ``dive.reid.synthetic``): ``synthetic_share`` sets
the share of each batch's ids drawn from the ids with synthetic images (``IdentitySampler``);
``synthetic_weight`` scales their images' CE terms and the triplet terms they anchor (for DEEN on
every embedding; CPM and ORT unweighted). At their defaults the run is exactly as without them.

Reproducibility: the seed fixes the initial weights (``torch.manual_seed``), the batch order
(``IdentitySampler``) and the augmentations (one ``torch.Generator``); deterministic algorithms
are switched on for the run. Same seed, same thread count, same kernels (``onednn``) ->
bitwise-identical weights.

The CPU default: a narrow ResNet-18 (base width 16: channels 16/32/64/128, 0.7 M parameters) at
128x64, 18 epochs x 100 batches of 8 ids x (4 visible + 4 infrared), SGD lr 0.1 with 2 warm-up
epochs and x0.1 at epochs 12 and 16, one thread: about 0.47 s per batch on oneDNN's convolutions
(``dive speed --threads 1 --only reid``), ~14 minutes of training on the 2-core CPU here. The paper
setting: ``--preset paper --pretrained resnet50.safetensors`` (dive.reid.pretrained); device,
precision and workers: dive.reid.device; several GPUs or CPU processes (``torchrun`` /
``accelerate launch``, DistributedDataParallel): dive.reid.distributed."""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import os
import platform
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

from dive.data.records import Modality, Record
from dive.reid import resume
from dive.reid.checkpoints import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, load_checkpoint, save_checkpoint
from dive.reid.config import METHODS, ReIDTrainConfig
from dive.reid.deen import DEENObjective
from dive.reid.device import BatchLoader, Runtime, make_optimizer, resolve_device
from dive.reid.distributed import Group, process_group
from dive.reid.evaluate import EvalSet, evaluate_prepared, prepare_eval_set
from dive.reid.losses import CrossEntropyLabelSmooth, build_triplet
from dive.reid.model import build_model, count_parameters
from dive.reid.pretrained import load_pretrained
from dive.reid.sampler import IdentitySampler
from dive.reid.synthetic import image_weights, row_weights, synthetic_summary
from dive.reid.transforms import load_images
from dive.utils.config import config_to_dict
from dive.utils.io import write_json
from dive.utils.threads import torch_threads

#: what other modules import from here (the config and checkpoint functions live beside it)
__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "METHODS", "ReIDTrainConfig", "epochs_summary",
           "identity_of", "label_map", "load_checkpoint", "lr_at", "save_checkpoint", "train_reid"]


# ------------------------------------------------------------------------------------------------
# labels, schedule, runtime
# ------------------------------------------------------------------------------------------------


def identity_of(r: Record, key: str) -> tuple[str, int]:
    return (r.dataset, r.pid) if key == "dataset-pid" else ("", r.pid)


def label_map(records: Sequence[Record], key: str = "dataset-pid") -> dict[tuple[str, int], int]:
    """Training labels 0..K-1 over every identity of `records`, in sorted (dataset, pid) order."""
    return {ident: i for i, ident in enumerate(sorted({identity_of(r, key) for r in records}))}


def lr_at(cfg: ReIDTrainConfig, epoch_float: float) -> float:
    """Learning rate at a fractional epoch: linear warm-up, then step decay at `lr_steps`."""
    lr = cfg.lr * cfg.lr_gamma ** sum(1 for s in cfg.lr_steps if epoch_float >= s)
    if cfg.warmup_epochs > 0 and epoch_float < cfg.warmup_epochs:
        lr *= max(epoch_float, 1e-3) / cfg.warmup_epochs
    return lr


@contextmanager
def _runtime(cfg: ReIDTrainConfig) -> Iterator[None]:
    """Threads, determinism and the CPU convolution kernels for the run: oneDNN's with ``onednn``
    (the default), else torch's own, about half as fast. Either gives the same bytes for the same
    seed and thread count (and other bytes on another thread count)."""
    prev_det, prev_onednn = torch.are_deterministic_algorithms_enabled(), torch.backends.mkldnn.enabled
    with torch_threads(cfg.threads):
        # on a GPU a few kernels (max-pool backward) have no deterministic version: warn, do not stop
        torch.use_deterministic_algorithms(bool(cfg.deterministic), warn_only=resolve_device(cfg.device).type != "cpu")
        torch.backends.mkldnn.enabled = prev_onednn and cfg.onednn
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(prev_det)
            torch.backends.mkldnn.enabled = prev_onednn


class _Log:
    """Append-only JSONL loss log (one json object per line, flushed); `append` continues a resumed run's."""

    def __init__(self, path: Path, append: bool = False):
        self.f = open(path, "a" if append else "w", encoding="utf-8")

    def write(self, row: dict) -> None:
        self.f.write(json.dumps(row, sort_keys=True) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


class _NoLog:
    """The log of a process that does not write (every process but the first of a multi-process run)."""

    def write(self, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------------------------------
# training
# ------------------------------------------------------------------------------------------------


def build_losses(cfg: ReIDTrainConfig) -> tuple[CrossEntropyLabelSmooth, torch.nn.Module | None,
                                                 DEENObjective | None]:
    """The recipe's losses: identity cross-entropy, the triplet loss (None when off) and, for DEEN,
    its objective over every expanded embedding (None otherwise)."""
    ce = CrossEntropyLabelSmooth(cfg.label_smoothing)
    tri = None if cfg.triplet_kind == "none" else build_triplet(
        cfg.triplet_kind, cfg.adp_alpha, cfg.adp_gamma, cfg.adp_square, cfg.triplet_margin_value)
    objective = None
    if cfg.method == "deen":
        recipe = cfg.deen_recipe()
        objective = DEENObjective(recipe["branches"], ce, tri, cfg.triplet_weight, recipe["cpm_weight"],
                                  recipe["cpm_margin"], recipe["ort_weight"])
    return ce, tri, objective


def train_reid(cfg: ReIDTrainConfig, train_records: Sequence[Record], val: Sequence[Record] | None = None,
               *, meta: dict | None = None, synthetic: Sequence[bool] | None = None) -> Path:
    """Train on `train_records` (any mix of datasets / modalities); returns the run folder.

    `val`: records whose infrared images query their visible ones (val ids; never the test set),
    used by ``select="best-val"`` and ``val_every``. `meta`: extra JSON-able facts stored in
    config.json and the checkpoint metadata (e.g. where the data came from). Launched on several
    processes (dive.reid.distributed), each trains on its share of every batch; the first writes.
    `synthetic`: one bool per training record (True: a generated image; ``dive.reid.synthetic``),
    needed by ``synthetic_share`` and ``synthetic_weight`` away from their defaults.
    """
    if not train_records:
        raise ValueError("no training records")
    flags = _synthetic_flags(cfg, len(train_records), synthetic)
    with process_group(cfg.device) as group:
        return _train(cfg, list(train_records), val, meta, group, flags)


def _synthetic_flags(cfg: ReIDTrainConfig, n: int, synthetic: Sequence[bool] | None) -> np.ndarray | None:
    """The synthetic flag per record the run uses (None when the options are at their defaults)."""
    if not cfg.uses_synthetic:
        return None
    if synthetic is None:
        raise ValueError("--synthetic-share / --synthetic-weight need to know which training images are synthetic: "
                         "train on a `dive export` folder (its export.json and manifest record them)")
    flags = np.asarray(synthetic, dtype=bool)
    if flags.shape != (n,):
        raise ValueError(f"synthetic flags: {flags.size} for {n} training records; expected one per record")
    if cfg.synthetic_weight != 1.0 and not flags.any():
        raise ValueError(f"--synthetic-weight {cfg.synthetic_weight:g}: the training set has no synthetic images "
                         "to weigh; leave the option at 1 or train on an export with synthetic images")
    return flags


def _train(cfg: ReIDTrainConfig, records: list[Record], val: Sequence[Record] | None, meta: dict | None,
           group: Group, flags: np.ndarray | None = None) -> Path:
    if cfg.num_ids < group.world:
        raise ValueError(f"--num-ids {cfg.num_ids}: each of the {group.world} processes needs at least one "
                         "identity of every batch; use at least as many ids as processes")
    run = Path(cfg.run_dir)
    if group.is_main:
        run = resume.prepare_run_dir(cfg.run_dir, cfg.force)
        write_json(run / "config.json", {"train": config_to_dict(cfg), "meta": meta or {},
                                         "resolved": cfg.resolved(), "world_size": group.world})
    group.barrier()  # the folder is ready (and a --force run's old state gone) before any process reads it
    t_start = time.perf_counter()
    labels_of = label_map(records, cfg.identity_key)
    label_list = [list(k) for k in sorted(labels_of, key=labels_of.get)]
    y_all = torch.tensor([labels_of[identity_of(r, cfg.identity_key)] for r in records], dtype=torch.int64)
    is_ir = np.array([r.modality is Modality.INFRARED for r in records], dtype=bool)

    with _runtime(cfg):
        images = load_images([r.path for r in records], cfg.height, cfg.width, cfg.progress, "load train")
        val_set: EvalSet | None = None
        do_val = group.is_main and val is not None and (cfg.select == "best-val" or cfg.val_every > 0)
        if cfg.select == "best-val" and val is None:
            raise ValueError("select='best-val' needs val records (the val identities)")
        if do_val:
            val_set = prepare_eval_set(val, cfg.height, cfg.width, split=None, progress=cfg.progress)
        t_loaded = time.perf_counter()

        torch.manual_seed(cfg.seed)
        spec = cfg.model_spec(len(labels_of))
        model = build_model(spec)
        pretrained = load_pretrained(model, cfg.pretrained) if cfg.pretrained is not None else None
        if pretrained is not None:
            print(pretrained.summary())
        rt = Runtime(cfg.device, cfg.precision, index=group.device.index if group.enabled else None)
        model.to(rt.device).train()
        opt = make_optimizer(model, cfg.optimizer, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.base_lr_mult)
        ce, tri, objective = build_losses(cfg)
        sampler = IdentitySampler(y_all.numpy(), is_ir, cfg.num_ids, cfg.num_per_modality,
                                  cfg.batches_per_epoch, cfg.seed, synthetic=flags,
                                  synthetic_share=cfg.synthetic_share)
        weights = None if cfg.synthetic_weight == 1.0 else image_weights(flags, cfg.synthetic_weight)
        gen = torch.Generator().manual_seed(cfg.seed)
        batches = BatchLoader(sampler, images, y_all, gen, cfg.augment(), cfg.use_channel_aug, workers=cfg.workers,
                              seed=cfg.seed, pin_memory=rt.pin_memory, share=(group.rank, group.world))
        n_batches = len(sampler)
        total = cfg.epochs * n_batches

        fp_meta = dict(meta or {}, world_size=group.world) if group.enabled else (meta or {})
        if flags is not None:  # which images are synthetic is part of the data
            fp_meta = dict(fp_meta, synthetic=hashlib.sha256(np.packbits(flags).tobytes()).hexdigest())
        fingerprint = resume.fingerprint(_fingerprint_config(cfg), label_list, [str(r.path) for r in records],
                                         y_all.tolist(), fp_meta)
        best: tuple[float, int, dict] | None = None
        history: list[dict] = []
        start_epoch, it, val_seconds, seconds_before = 0, 0, 0.0, 0.0
        saved = resume.read_state(run)
        if saved is not None:
            tensors, state = saved
            was = state["fingerprint"]["meta"].get("world_size", 1)
            if was != group.world:
                raise resume.CannotResume(f"{run / resume.STATE_FILE}: an unfinished run of {was} process(es); "
                                          f"resume it on as many (this launch: {group.world}), use another --out, "
                                          "or pass --force")
            differ = resume.differences(state["fingerprint"], fingerprint)
            if differ:
                raise resume.CannotResume(f"{run / resume.STATE_FILE}: an unfinished run with other settings or data "
                                          f"({', '.join(differ)} differ); rerun it as it was, use another --out, "
                                          "or pass --force")
            best_state = resume.restore(tensors, state, model, opt, gen)
            if best_state is not None:
                best = (state["best_key"], state["best_epoch"], best_state)
            start_epoch, it, history = state["epoch"], state["iter"], state["history"]
            val_seconds, seconds_before = state["val_seconds"], state["train_seconds"]
            if group.is_main:
                resume.trim_log(run / "log.jsonl", it)
        # the network as trained: DDP over the processes (a stem idle on one process's batch is allowed)
        net = group.wrap(model, find_unused=bool(sampler.visible_only_ids or sampler.infrared_only_ids))
        log = _Log(run / "log.jsonl", append=saved is not None) if group.is_main else _NoLog()
        bar = None
        if cfg.progress and group.is_main:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start_epoch * n_batches, desc=f"reid {cfg.method}", unit="batch")
        base_meta = {
            "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "model_spec": spec.to_dict(),
            "config": config_to_dict(cfg), "meta": meta or {}, "identity_key": cfg.identity_key,
            "labels": label_list, "num_classes": len(labels_of), "train_images": len(records),
            "train_images_infrared": int(is_ir.sum()), "parameters": count_parameters(model),
            "visible_only_ids": sampler.visible_only_ids, "batches_per_epoch": n_batches,
            "torch": torch.__version__, "python": platform.python_version(), "threads": torch.get_num_threads(),
            "device": str(rt.device), "world_size": group.world, "pretrained": pretrained and {
                "path": str(cfg.pretrained), "layout": pretrained.layout, "loaded": len(pretrained.loaded),
                "unused": pretrained.unused, "missing": pretrained.missing},
        }
        if flags is not None:
            base_meta |= synthetic_summary(flags, y_all.numpy())
        t_train = time.perf_counter() - seconds_before  # a resumed run counts the time of the runs before it
        try:
            for epoch in range(start_epoch, cfg.epochs):
                sums = {"loss": 0.0, "loss_id": 0.0, "loss_tri": 0.0, "acc_id": 0.0, "acc_tri": 0.0, "n": 0}
                if objective is not None:
                    sums |= {"loss_cpm": 0.0, "loss_ort": 0.0}
                t_epoch = time.perf_counter()
                drawn = sampler.epoch(epoch) if weights is not None else None  # the same batches again
                for b, (x, mask, y) in enumerate(batches.epoch(epoch)):
                    w = None if drawn is None else row_weights(
                        next(drawn), weights, y_all, cfg.use_channel_aug, (group.rank, group.world), y)
                    lr = lr_at(cfg, epoch + b / n_batches)
                    for g in opt.param_groups:
                        g["lr"] = lr * g["lr_mult"]
                    x, mask, y = rt.to_device(x, mask, y)
                    if w is not None:
                        w = w.to(y.device)
                    with rt.autocast():
                        feat, logits = net(x, mask)
                    feat, logits = feat.float(), logits.float()  # losses in fp32 (no-op at fp32)
                    extra = {}
                    if objective is None:
                        loss_id = ce(logits, y, w)
                        if tri is not None:
                            loss_tri, correct = tri(feat, y, w)
                        else:
                            loss_tri, correct = logits.sum() * 0.0, 0
                        loss = loss_id + cfg.triplet_weight * loss_tri
                    else:  # DEEN: the batch expanded to its original + generated embeddings
                        step = _weighted(objective, w)(feat, logits, y, mask)
                        loss, loss_id, loss_tri, correct = step.loss, step.loss_id, step.loss_tri, step.correct
                        y = step.labels  # each image's label once per embedding
                        extra = {"loss_cpm": step.loss_cpm.item(), "loss_ort": step.loss_ort.item()}
                    acc_id = float((logits.argmax(1) == y).float().mean())
                    vals = {"loss": loss.item(), "loss_id": loss_id.item(), "loss_tri": loss_tri.item(),
                            "acc_id": acc_id, "acc_tri": correct / len(y), **extra}
                    size, more = len(x), {}
                    if group.enabled:  # the mean over the processes; a bad loss on any one stops them all
                        vals, size, more = _mean_over(group, vals, size)
                    if not math.isfinite(vals["loss"]):
                        raise FloatingPointError(f"loss is {vals['loss']} at epoch {epoch}, batch {b}; lower --lr")
                    rt.step(loss, opt)
                    it += 1
                    acc_id = vals["acc_id"]
                    for k, v_ in vals.items():
                        sums[k] += v_
                    sums["n"] += 1
                    if cfg.log_every > 0 and (it % cfg.log_every == 0 or it == 1):
                        log.write({"type": "iter", "epoch": epoch, "iter": it, "lr": lr, "batch_size": size, **more,
                                   **{k: round(v_, 6) for k, v_ in vals.items()},
                                   "seconds": round(time.perf_counter() - t_train, 3)})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(ep=epoch, loss=f"{vals['loss']:.3f}", id=f"{vals['loss_id']:.2f}",
                                        acc=f"{acc_id:.2f}")
                n = max(sums.pop("n"), 1)
                row = {"type": "epoch", "epoch": epoch, "iter": it, "lr": lr,
                       **{k: round(v_ / n, 6) for k, v_ in sums.items()},
                       "epoch_seconds": round(time.perf_counter() - t_epoch, 3)}
                if val_set is not None and (cfg.select == "best-val" or (epoch + 1) % cfg.val_every == 0
                                            or epoch + 1 == cfg.epochs):
                    t_val = time.perf_counter()
                    res = evaluate_prepared(model, val_set, "sysu-all", trials=cfg.val_trials, seed=0)
                    val_seconds += time.perf_counter() - t_val
                    row["val"] = {k: round(res[k], 4) for k in ("rank1", "rank10", "mAP", "mINP")}
                    key = res["rank1"] + 1e-3 * res["mAP"]
                    if cfg.select == "best-val" and (best is None or key > best[0]):
                        best = (key, epoch, copy.deepcopy(model.state_dict()))
                    model.train()
                history.append(row)
                log.write(row)
                if not group.is_main:
                    continue
                save_checkpoint(run / "last", model, dict(base_meta, epoch=epoch + 1, selected_by="last",
                                                          history=history))
                resume.save_state(run, model, opt, gen, best[2] if best else None, {
                    "epoch": epoch + 1, "iter": it, "history": history, "val_seconds": val_seconds,
                    "train_seconds": time.perf_counter() - t_train, "fingerprint": fingerprint,
                    "best_key": best[0] if best else None, "best_epoch": best[1] if best else None})
        finally:
            if bar is not None:
                bar.close()
            log.close()

        t_end = time.perf_counter()
        timing = {"load_seconds": round(t_loaded - t_start, 2), "train_seconds": round(t_end - t_train, 2),
                  "val_seconds": round(val_seconds, 2),
                  "seconds_per_batch": round((t_end - t_train - val_seconds) / max(it, 1), 4), "iterations": it}
        if cfg.select == "best-val" and best is not None:
            sel_epoch, state = best[1] + 1, best[2]
        else:
            sel_epoch, state = cfg.epochs, None
        if group.is_main:
            save_checkpoint(run / "model", model, dict(base_meta, epoch=sel_epoch, selected_by=cfg.select,
                                                       history=history, timing=timing), state=state)
    group.barrier()  # every process returns once the run folder is complete
    return run


def _weighted(objective: DEENObjective, w: torch.Tensor | None) -> DEENObjective:
    """DEEN's objective with per-image weights on its CE and triplet terms (every embedding of an
    image carries the image's weight); CPM (identity centers) and ORT stay unweighted."""
    if w is None:
        return objective
    k = objective.branches + 1
    out = copy.copy(objective)
    out.ce = functools.partial(objective.ce, weights=w.repeat(k))
    if objective.triplet is not None:
        out.triplet = functools.partial(objective.triplet, weights=w.repeat(k))
    return out


def _fingerprint_config(cfg: ReIDTrainConfig) -> dict:
    """The options a resumed run must share; the synthetic-data options only when set (so the state of
    a run that never had them still matches)."""
    out = config_to_dict(cfg)
    if cfg.synthetic_share is None:
        out.pop("synthetic_share")
    if cfg.synthetic_weight == 1.0:
        out.pop("synthetic_weight")
    return out


def _mean_over(group: Group, vals: dict, size: int) -> tuple[dict, int, dict]:
    """One step's numbers averaged over the processes, the global batch size, and each process's loss."""
    rows = group.gather([*vals.values(), size])
    mean = {k: sum(r[i] for r in rows) / len(rows) for i, k in enumerate(vals)}
    return mean, int(sum(r[-1] for r in rows)), {"loss_ranks": [round(r[0], 6) for r in rows]}


def epochs_summary(run: str | os.PathLike) -> list[dict]:
    """The per-epoch rows of a run's log.jsonl."""
    rows = [json.loads(line) for line in (Path(run) / "log.jsonl").read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("type") == "epoch"]


