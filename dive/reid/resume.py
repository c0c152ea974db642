"""Resuming a ReID training run after a kill, byte for byte.

After every epoch the trainer writes ``last.state.safetensors`` (atomically, one file, so it is
never half of one epoch and half of another): the model (weights, BN statistics), the optimizer
state (``dive.utils.state``'s flat form: tensors here, plain numbers in the metadata), the
augmentation generator's and torch's global RNG states, the best-val weights when selecting by
validation, and as JSON in the safetensors metadata the epoch and batch counters, the history
and a fingerprint of the run's settings and data. The identity sampler needs no state: epoch
``e`` draws from ``(seed, e)`` alone. A rerun of the same command loads it and continues with the
next epoch, so it ends with the same weights as an uninterrupted run (same seed and threads). No
pickle anywhere. A run killed before its first epoch ended has nothing to resume and starts over.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Sequence

import torch
from safetensors import safe_open

from dive.utils.io import save_safetensors
from dive.utils.state import optimizer_from_flat, optimizer_to_flat, truncate_log

STATE_FILE = "last.state.safetensors"
STATE_FORMAT = "dive-reid-resume"
#: options that do not change what is trained
UNTRAINED_OPTIONS = ("out", "force", "progress", "log_every")


class CannotResume(ValueError):
    """The run folder's resume state cannot continue this run: other settings, data or process
    count, or an unreadable state file (a caller may start the run over with --force)."""


def prepare_run_dir(run: Path, force: bool) -> Path:
    """The run folder: new, an unfinished run of the same settings (resumed), or anything with --force.
    A finished run is refused."""
    run = Path(run)
    if run.exists() and not run.is_dir():
        raise FileExistsError(f"{run}: exists and is not a folder")
    if run.is_dir() and (run / "model.json").exists() and not force:
        raise FileExistsError(f"{run}: already holds a ReID run (finished: `dive reid test {run}` evaluates it); "
                              "choose another --out or pass --force")
    if run.is_dir() and not force and not (run / STATE_FILE).exists() and (run / "config.json").exists():
        try:  # killed before its first epoch ended: nothing to resume, it starts over; anything else is refused
            ours = "train" in json.loads((run / "config.json").read_text())
        except (OSError, ValueError):
            ours = False
        if not ours:
            raise FileExistsError(f"{run / 'config.json'}: not a ReID run's; choose another --out or pass --force")
    run.mkdir(parents=True, exist_ok=True)
    if force:
        (run / STATE_FILE).unlink(missing_ok=True)  # start over: never resume the old run's state
    return run


def fingerprint(cfg_dict: dict, labels: list, paths: Sequence[str], label_ids: Sequence[int], meta: dict) -> dict:
    """What a resumed run must share with the run it continues: options, labels and the exact images."""
    h = hashlib.sha256()
    for p, y in zip(paths, label_ids):
        h.update(f"{p}\t{y}\n".encode())
    return {"config": {k: v for k, v in cfg_dict.items() if k not in UNTRAINED_OPTIONS}, "labels": labels,
            "images": len(paths), "images_sha256": h.hexdigest(), "meta": json.loads(json.dumps(meta, default=str))}


def save_state(run: Path, model: torch.nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
               best_state: dict[str, torch.Tensor] | None, info: dict) -> Path:
    """Write the resume state of a finished epoch (`info`: counters, history, fingerprint)."""
    tensors = {f"model.{k}": v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    opt_tensors, opt_meta = optimizer_to_flat(opt)
    tensors |= opt_tensors
    tensors["rng.augment"] = gen.get_state().clone()
    tensors["rng.torch"] = torch.get_rng_state().clone()
    if best_state is not None:
        tensors |= {f"best.{k}": v.detach().contiguous().clone() for k, v in best_state.items()}
    meta = dict(info, optimizer=opt_meta, has_best=best_state is not None)
    path = run / STATE_FILE
    save_safetensors(tensors, path, {"format": STATE_FORMAT, "state": json.dumps(meta, sort_keys=True)})
    return path


def read_state(run: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The saved tensors and metadata of `run`, or None when it has no resume state."""
    path = run / STATE_FILE
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        if header.get("format") != STATE_FORMAT:
            raise ValueError("not a resume state")
        return tensors, json.loads(header["state"])
    except Exception as err:  # noqa: BLE001 - a damaged file: one line naming it
        raise CannotResume(f"{path}: unreadable resume state ({err}); pass --force to start the run over") from None


def restore(tensors: dict[str, torch.Tensor], meta: dict, model: torch.nn.Module, opt: torch.optim.Optimizer,
            gen: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Load a saved state into the freshly built model, optimizer and generator; returns the
    best-val weights saved with it (or None)."""
    model.load_state_dict({k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")})
    optimizer_from_flat(opt, tensors, meta["optimizer"])
    gen.set_state(tensors["rng.augment"])
    torch.set_rng_state(tensors["rng.torch"])
    if not meta.get("has_best"):
        return None
    return {k[len("best."):]: v for k, v in tensors.items() if k.startswith("best.")}


def differences(saved: dict, now: dict) -> list[str]:
    """Names of the fingerprint entries (options by name) in which two runs differ."""
    out = [f"--{k.replace('_', '-')}" for k in sorted(set(saved["config"]) | set(now["config"]))
           if saved["config"].get(k) != now["config"].get(k)]
    out += [k for k in ("labels", "images", "images_sha256", "meta") if saved.get(k) != now.get(k)]
    return out


def trim_log(path: Path, iteration: int) -> None:
    """Keep the log rows up to batch `iteration` (the resumed epoch's end); a row cut by a kill goes too."""
    truncate_log(path, iteration, key="iter", sort_keys=True)
