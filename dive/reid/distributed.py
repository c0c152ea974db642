"""ReID training on several processes: ``torchrun`` / ``accelerate launch`` (DistributedDataParallel).

Launched with ``WORLD_SIZE`` > 1 in the environment (``torchrun --nproc_per_node N -m dive reid
train ...`` or ``accelerate launch --num_processes N -m dive reid train ...``), ``train_reid``
starts a process group (gloo on CPU, nccl on CUDA, one GPU per process: ``cuda:LOCAL_RANK``) and
wraps the network in ``DistributedDataParallel``:

* every process draws the same global batch as a single process would (same seed, same sampler,
  same augmentation draws) and keeps the identities ``ids[rank::world]`` of it: P/world identities
  x (K visible + K infrared). The batch-hard triplet loss mines within that share, so every
  anchor still has its positives; gradients are averaged over the processes;
* batch norm stays per-process (plain BatchNorm over each process's share, as torchreid and AGW
  train on several GPUs); DDP copies process 0's running statistics to the others every step;
* process 0 alone writes the run folder (config, log, checkpoints, resume state) and evaluates;
  a rerun after a kill resumes every process from the same ``last.state.safetensors``, and only on
  the same number of processes. The log's losses are the mean over the processes (iteration rows
  add ``loss_ranks``), ``batch_size`` is the global batch.

Without ``WORLD_SIZE`` (or with 1) nothing here is used and training is the single-process run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.distributed as dist

from dive.reid.device import resolve_device


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else default


def world_size() -> int:
    """Processes of this launch (1 when not launched by torchrun / accelerate)."""
    return max(1, _env_int("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """True for the one process that writes and reports (rank 0, or no multi-process launch)."""
    return world_size() == 1 or _env_int("RANK", 0) == 0


@dataclass
class Group:
    """This process's place in the run: `rank` of `world`, and the device it trains on."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def gather(self, values: Sequence[float]) -> list[list[float]]:
        """`values` of every process, in rank order (float64)."""
        if not self.enabled:
            return [list(values)]
        dev = self.device if self.device is not None and self.device.type == "cuda" else torch.device("cpu")
        mine = torch.tensor(list(values), dtype=torch.float64, device=dev)
        out = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(out, mine)
        return [t.cpu().tolist() for t in out]

    def wrap(self, model: torch.nn.Module, find_unused: bool) -> torch.nn.Module:
        """The network as trained here: itself, or a DistributedDataParallel of it. `find_unused`:
        some process may see a batch without one modality (its stem then has no gradient)."""
        if not self.enabled:
            return model
        ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


@contextmanager
def process_group(device_name: str = "auto") -> Iterator[Group]:
    """Join the launch's process group for the run (and leave it after); a plain `Group` when
    single-process. `device_name`: a --device value; on CUDA each process takes GPU ``LOCAL_RANK``."""
    world = world_size()
    if world == 1:
        yield Group()
        return
    device = resolve_device(device_name)
    rank, local = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if device.type == "cuda":
        if local >= torch.cuda.device_count():
            raise ValueError(f"process {rank} (local rank {local}) has no GPU: torch sees "
                             f"{torch.cuda.device_count()}; launch at most that many processes per machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise ValueError(f"several training processes run on cpu or cuda, not {device.type}")
    ours = not dist.is_initialized()
    if ours:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=rank, world_size=world)
    try:
        yield Group(rank=dist.get_rank(), world=dist.get_world_size(), device=device)
    finally:
        if ours:
            dist.destroy_process_group()

