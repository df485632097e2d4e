"""Data-parallel training on PyTorch's own engine: ``torchrun`` processes, ``DistributedDataParallel``, and a sampler
that gives every process its share of the *same global batch* a single process would see.

``relax train`` joins a process group when it runs under ``torchrun`` (``WORLD_SIZE > 1`` in the environment):
backend ``nccl`` on CUDA (one GPU per process, ``cuda:LOCAL_RANK``), ``gloo`` on CPU. ``trainer.batch_size`` stays the
*global* batch: each global batch (drawn from one permutation per epoch, exactly as in one process) is dealt out
round-robin, ``indices[rank::world]``, and each process scales its loss by ``local_size · world / global_size`` so
that DDP's gradient average equals the single-process gradient, also for a short last batch.

Example:
    $ torchrun --nproc_per_node 2 -m relaxcli train recipes/nbody_relaxed.yaml
    $ relax train --nproc 2 recipes/nbody_relaxed.yaml          # the same, launched for you
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import Sampler

__all__ = ["Dist", "init_from_env", "current", "GlobalBatches", "shard", "wrap"]


@dataclass(frozen=True)
class Dist:
    """This process's place in the process group (``world == 1``: not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that writes the run directory."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    def broadcast(self, obj: Any) -> Any:
        """``obj`` as rank 0 has it (a picklable value made by this program, never read from disk)."""
        if not self.enabled:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over the processes (float64 on the communication device, returned on the CPU)."""
        if not self.enabled:
            return values
        t = values.to(device=_comm_device(), dtype=torch.float64)
        tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
        return t.cpu()

    def weighted_mean(self, record: dict[str, float], weight: float) -> dict[str, float]:
        """``Σ_ranks weight_r · record_r`` per key; with weights ``local_size / global_size`` the global mean.
        Every process must pass the same keys in the same order."""
        if not self.enabled:
            return record
        keys = list(record)
        summed = self.all_reduce_sum(torch.tensor([record[k] * weight for k in keys], dtype=torch.float64))
        return dict(zip(keys, summed.tolist()))

    def barrier(self) -> None:
        if self.enabled:
            tdist.barrier()


def _comm_device() -> torch.device:
    if tdist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current() -> Dist:
    """The process group this process belongs to (``Dist()`` when none was initialised)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def init_from_env(device: str) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ...); a no-op outside torchrun. ``device`` is the recipe's ``trainer.device``: CUDA picks
    ``nccl`` and this process's GPU, CPU picks ``gloo``."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or (tdist.is_available() and tdist.is_initialized()):
        return current()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(local_rank)
    tdist.init_process_group("nccl" if cuda else "gloo", timeout=timedelta(minutes=30))
    return current()


class GlobalBatches(Sampler[list[int]]):
    """This process's share of each global batch: one permutation of ``range(n)`` per epoch (from ``generator``),
    cut into global batches of ``batch_size``, of which this process takes ``batch[rank::world]``.

    With ``world == 1`` these are plain shuffled batches. A last global batch with fewer items than processes would
    leave a process without data; it is dropped (:attr:`dropped` says how many items that is).
    """

    def __init__(self, n: int, batch_size: int, generator: torch.Generator, dist: Dist = Dist()) -> None:
        self.n, self.batch_size, self.generator, self.dist = n, batch_size, generator, dist
        sizes = [min(batch_size, n - start) for start in range(0, n, batch_size)]
        self.global_sizes = [s for s in sizes if s >= dist.world]
        self.dropped = sum(sizes) - sum(self.global_sizes)

    def __len__(self) -> int:
        return len(self.global_sizes)

    def __iter__(self) -> Iterator[list[int]]:
        perm = torch.randperm(self.n, generator=self.generator).tolist()
        for k in range(len(self.global_sizes)):
            batch = perm[k * self.batch_size : (k + 1) * self.batch_size]
            yield batch[self.dist.rank :: self.dist.world]


def shard(n: int, dist: Dist) -> Sequence[int]:
    """The indices of an evaluation split that this process evaluates (round-robin)."""
    return range(dist.rank, n, dist.world)


def wrap(model: nn.Module, device: torch.device, dist: Dist) -> nn.Module:
    """``model`` in ``DistributedDataParallel`` when distributed (the branches are used in every step, also at
    θ = 0, so no unused-parameter search is needed); ``model`` itself otherwise."""
    if not dist.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)
