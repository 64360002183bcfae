"""One run on several processes: the pieces the loop needs from ``torch.distributed``.

A run launched by ``torchrun`` (or ``msam train --nproc N``, which calls torch's own launcher,
:mod:`torch.distributed.run`) has ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` in its
environment.  :func:`join` starts the process group from them (NCCL on CUDA, gloo on the
CPU).  Each optimisation step takes one *global* batch of ``batch_size`` samples, the same on
every rank (the data order is drawn from one seeded generator); rank ``r`` takes the rows
:func:`shard` gives it.  :func:`weighted_grad_hook` makes DDP's all-reduce the sample-weighted
mean of the ranks' gradients, so a step is the one-process step on the whole batch whatever
the ranks' shares (uneven in a last, smaller batch); :func:`weighted_mean` does the same for
the numbers a step records and for evaluation sums.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class World:
    """This process's place: ``rank`` of ``size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes records and checkpoints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_world() -> World:
    """The world ``torchrun`` describes in the environment (one process when it does not)."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def join(device_type: str) -> World:
    """Start the process group of a ``torchrun`` launch (once), and return this process's world.

    NCCL for CUDA, gloo otherwise; one process alone needs no group.
    """
    world = launched_world()
    if not world.active:
        return world
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, store=_attempt_store(world), **_ranks(world))
    return world


def _ranks(world: World) -> dict[str, int]:
    return {"rank": world.rank, "world_size": world.size}


def _attempt_store(world: World) -> dist.Store:
    """The launcher's key-value store, under a prefix of its own per ``--max-restarts``
    attempt: a restarted rank must never read the address a dead rank published before."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world.size,
        is_master=not agent and world.main,
        timeout=timedelta(minutes=10),
    )
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    return dist.PrefixStore(f"msam/attempt_{attempt}/", store)


def leave(world: World) -> None:
    """Wait for every rank, then take the group down (no-op alone)."""
    if world.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def shard(n: int, world: World) -> slice:
    """Rank ``world.rank``'s rows of a global batch of ``n`` rows: contiguous, sizes as equal as
    possible (the first ``n % size`` ranks take one more)."""
    base, extra = divmod(n, world.size)
    start = world.rank * base + min(world.rank, extra)
    return slice(start, start + base + (1 if world.rank < extra else 0))


def weighted_mean(values: Sequence[float] | Tensor, weight: float, world: World) -> Tensor:
    """``Σ_r weight_r · values_r / Σ_r weight_r`` over the ranks (``values`` alone when alone)."""
    local = torch.as_tensor(values, dtype=torch.float64).flatten()
    if not world.active:
        return local
    packed = torch.cat([local * weight, local.new_tensor([weight])])
    if dist.get_backend() == "nccl":
        packed = packed.cuda()
    dist.all_reduce(packed)
    packed = packed.cpu()
    return packed[:-1] / packed[-1]


def all_sum(values: Tensor, world: World) -> Tensor:
    """Element-wise sum of a float64 CPU tensor over the ranks."""
    if not world.active:
        return values
    moved = values.cuda() if dist.get_backend() == "nccl" else values.clone()
    dist.all_reduce(moved)
    return moved.cpu()


def has_changing_buffers(model: torch.nn.Module) -> bool:
    """True when ``model`` has buffers besides its modality baselines (``baselines``): BatchNorm
    statistics, which DDP must broadcast before every forward.  The baselines are fitted before
    training and never change, and DDP copies rank 0's at construction, so broadcasting them
    again before each forward (two collectives per SAM step) would be pure latency."""
    fixed = {id(b) for b in getattr(model, "baselines", {}).values()}
    return any(id(b) not in fixed for b in model.buffers())


class GradWeight:
    """This rank's share ``n_r / n`` of the current global batch; the hook reads it."""

    def __init__(self) -> None:
        self.share = 1.0


def weighted_grad_hook(state, bucket):  # no annotations: DDP inspects them (as strings here)
    """DDP communication hook: all-reduce ``share_r · g_r`` (a sum), i.e. the sample-weighted
    mean of the ranks' batch-mean gradients, which is the whole batch's mean gradient."""
    buffer = bucket.buffer()
    buffer.mul_(state.share)
    work = dist.all_reduce(buffer, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


class ShardView(torch.utils.data.Dataset):
    """Samples ``indices`` of ``split`` as a split of their own (one rank's evaluation share)."""

    def __init__(self, split: torch.utils.data.Dataset, indices: Tensor) -> None:
        self.split, self.indices = split, indices

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int):
        return self.split[int(self.indices[index])]

    def __getattr__(self, name: str):
        split = self.__dict__.get("split")
        if name == "take" and hasattr(split, "take"):  # in-memory: one indexing op
            return lambda rows: split.take(self.indices[rows])
        raise AttributeError(name)


def evaluation_shard(split: torch.utils.data.Dataset, world: World) -> ShardView:
    """Rank ``world.rank``'s contiguous share of a split's samples."""
    return ShardView(split, torch.arange(len(split))[shard(len(split), world)])
