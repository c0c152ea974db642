"""Training state (model + optimizer + scheduler + step) as safetensors + JSON, never pickle.

An optimizer's `state_dict()` is tensors plus plain numbers; tensors go to safetensors under
`opt.<param index>.<key>`, everything else to JSON. Saves are atomic and the state file is
written before its JSON, whose presence marks a complete checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from safetensors.torch import load_file

from dive.utils.io import atomic_path, save_safetensors, write_json


def optimizer_to_flat(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"opt.{idx}.{k}"] = v.detach().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_from_flat(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if not name.startswith("opt."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = t
    for idx, sc in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(sc)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def save_training_state(
    directory: str | Path,
    *,
    modules: dict[str, torch.nn.Module | dict[str, torch.Tensor]],
    optimizer: torch.optim.Optimizer | None,
    meta: dict,
    lr_scheduler: Any = None,
) -> Path:
    """Write `state.safetensors` + `state.json` in `directory` (both atomic)."""
    directory = Path(directory)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, mod in modules.items():
        sd = mod.state_dict() if isinstance(mod, torch.nn.Module) else mod
        for k, v in sd.items():
            tensors[f"{prefix}.{k}"] = v.detach().contiguous().clone()
    full_meta = dict(meta)
    if optimizer is not None:
        opt_t, opt_meta = optimizer_to_flat(optimizer)
        tensors.update(opt_t)
        full_meta["optimizer"] = opt_meta
    if lr_scheduler is not None:
        full_meta["lr_scheduler"] = lr_scheduler.state_dict()
    save_safetensors(tensors, directory / "state.safetensors")
    write_json(directory / "state.json", full_meta)
    return directory


def read_training_state(directory: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """All tensors and the metadata of a saved state (for state that is not an nn.Module)."""
    directory = Path(directory)
    meta_path, state_path = directory / "state.json", directory / "state.safetensors"
    if not meta_path.exists() or not state_path.exists():
        raise FileNotFoundError(f"{directory}: not a complete training state (expected state.json + state.safetensors)")
    return load_file(str(state_path)), json.loads(meta_path.read_text())


def load_training_state(
    directory: str | Path,
    *,
    modules: dict[str, torch.nn.Module],
    optimizer: torch.optim.Optimizer | None = None,
    lr_scheduler: Any = None,
) -> dict:
    tensors, meta = read_training_state(directory)
    state_path = Path(directory) / "state.safetensors"
    for prefix, mod in modules.items():
        sd = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        missing, unexpected = mod.load_state_dict(sd, strict=False)
        if missing or unexpected:
            raise ValueError(f"{state_path}: '{prefix}' does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
    if optimizer is not None and "optimizer" in meta:
        optimizer_from_flat(optimizer, tensors, meta["optimizer"])
    if lr_scheduler is not None and "lr_scheduler" in meta:
        lr_scheduler.load_state_dict(meta["lr_scheduler"])
    return meta


def latest_checkpoint(run_dir: str | Path, prefix: str = "checkpoint-") -> Path | None:
    """The complete checkpoint folder with the highest step, or None."""
    best, best_step = None, -1
    for p in Path(run_dir).glob(f"{prefix}*"):
        try:
            step = int(p.name[len(prefix):])
        except ValueError:
            continue
        if (p / "state.json").exists() and step > best_step:
            best, best_step = p, step
    return best


@contextlib.contextmanager
def new_dir_beside(dst: str | Path) -> Iterator[Path]:
    """Yield a new empty folder beside `dst` to write a whole folder into. On success it takes
    `dst`'s place: the previous `dst` (if any) is moved aside, the new folder renamed into place,
    and only then the previous one removed. On an error the new folder is removed and `dst` is
    left as it was. Callers decide whether `dst` may be replaced."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".new", dir=dst.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700 folders; give the mode a normal mkdir would
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", suffix=".old", dir=dst.parent))
        os.replace(dst, old)
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old)


def prune_checkpoints(run_dir: str | Path, keep: int, prefix: str = "checkpoint-") -> None:
    """Delete all but the `keep` newest `checkpoint-N` folders of a run."""
    ckpts = sorted(Path(run_dir).glob(f"{prefix}*"), key=lambda p: int(p.name[len(prefix):]))
    for p in ckpts[:-keep] if keep > 0 else ckpts:
        shutil.rmtree(p, ignore_errors=True)


def truncate_log(path: str | Path, after_step: int, *, keep: Callable[[dict], bool] | None = None, key: str = "step",
                 sort_keys: bool = False) -> None:
    """On resume, drop the JSONL log rows written after the checkpoint resumed from, so the loss
    curve continues exactly; a row cut by a kill is dropped too. `keep(row)` marks rows kept
    whatever their step (another stage's rows, for instance). `key` names the rows' step field;
    `sort_keys` rewrites rows as a log written with sorted keys was written."""
    path = Path(path)
    if not path.exists():
        return
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (keep is not None and keep(row)) or row.get(key, 0) <= after_step:
            rows.append(row)
    with atomic_path(path) as tmp:
        tmp.write_text("".join(json.dumps(r, sort_keys=sort_keys) + "\n" for r in rows))


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The generator of one training step, from (seed, stage, step) alone: resumes need no RNG state."""
    import numpy as np

    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, stage, step]).generate_state(1)[0]))


def warmup_cosine(step: int, warmup: int, total: int, floor: float = 0.1) -> float:
    """Learning-rate factor: linear warm-up over `warmup` steps, then cosine decay to `floor`."""
    import math

    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, t)))
