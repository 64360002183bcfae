"""Batches of a split in a given order: the one batching path of training and evaluation.

In-memory splits (with ``take``) gather a batch in one indexing op.  File-backed splits (the
audio-visual loaders) read item by item; with ``num_workers > 0`` the items are read in that
many DataLoader worker processes, ahead of the model, giving the same batches in the same
order (so results and resume stay exact).  An item that fails to load in a worker is raised
in the main process with its own type and message (naming the file), as without workers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

Batch = tuple[dict[str, Tensor], Tensor]


def collate_items(items: Sequence[tuple[dict[str, Tensor], int]]) -> Batch:
    """Stack ``[(inputs, label), ...]`` items into ``({m: [B, ...]}, targets [B])``."""
    inputs = {m: torch.stack([x[m] for x, _ in items]) for m in items[0][0]}
    return inputs, torch.as_tensor([int(y) for _, y in items])


def fetch_batch(split: Dataset, indices: Tensor) -> Batch:
    """Gather samples ``indices`` of a split: one indexing op for in-memory splits."""
    if hasattr(split, "take"):
        return split.take(indices)
    return collate_items([split[int(i)] for i in indices])


class _ItemOrError(Dataset):
    """A split whose failing item comes back as its exception instead of killing the worker."""

    def __init__(self, split: Dataset) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        try:
            return self.split[index]
        except Exception as err:  # re-raised in the main process by _collate_or_error
            return err


def _collate_or_error(items: list[Any]) -> Batch | Exception:
    for item in items:
        if isinstance(item, Exception):
            return item
    return collate_items(items)


def _chunks(order: Tensor, batch_size: int, rows: Callable[[int], slice] | None) -> list[Tensor]:
    chunks = [order[s : s + batch_size] for s in range(0, len(order), batch_size)]
    return chunks if rows is None else [chunk[rows(len(chunk))] for chunk in chunks]


def _worker_batches(
    split: Dataset, chunks: list[Tensor], num_workers: int, pin: bool
) -> Iterator[Batch]:
    loader = DataLoader(
        _ItemOrError(split),
        batch_sampler=[chunk.tolist() for chunk in chunks],
        num_workers=num_workers,
        collate_fn=_collate_or_error,
        pin_memory=pin,
        # the workers' base seed comes from here, not from the global RNG, which the
        # training step's dropout draws from: any num_workers gives the same run
        generator=torch.Generator().manual_seed(0),
    )
    for batch in loader:
        if isinstance(batch, Exception):
            raise batch
        yield batch


def iterate_batches(
    split: Dataset,
    order: Tensor,
    batch_size: int,
    device: torch.device,
    num_workers: int = 0,
    rows: Callable[[int], slice] | None = None,
) -> Iterator[Batch]:
    """Batches in ``order`` (the last one may be smaller), moved to ``device``.

    ``num_workers > 0`` reads a file-backed split's items in worker processes; in-memory
    splits ignore it (one indexing op is already faster than handing tensors between
    processes).  ``rows(n)`` picks this process's rows of each batch of ``n`` (one rank's
    share of a global batch under ``torch.distributed``); None keeps them all.
    """
    chunks = _chunks(order, batch_size, rows)
    if num_workers > 0 and not hasattr(split, "take"):
        batches = _worker_batches(split, chunks, num_workers, device.type == "cuda")
    else:
        batches = (fetch_batch(split, chunk) for chunk in chunks)
    for inputs, targets in batches:
        yield {m: x.to(device) for m, x in inputs.items()}, targets.to(device)
