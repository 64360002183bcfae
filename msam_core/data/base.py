"""What every dataset hands the training loop: named modalities, splits and metadata.

A dataset is a :class:`MultimodalDataset` holding three splits.  In-memory sets use
:class:`TensorSplit` (batches are gathered by index, no per-sample collate); file-backed
sets may use any ``torch.utils.data.Dataset`` whose items are ``(dict[str, Tensor], int)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor
from torch.utils.data import Dataset

MODALITY_KINDS = ("vector", "image", "sequence", "spectrogram")


@dataclass(frozen=True)
class ModalitySpec:
    """One modality: its name, the kind of encoder it needs, and its per-sample shape.

    ``kind`` is one of ``vector`` ``[D]``, ``image`` ``[C, H, W]``, ``sequence`` ``[C, T]``,
    ``spectrogram`` ``[1, F, T]`` (an image-like time-frequency map).
    """

    name: str
    kind: str
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.kind not in MODALITY_KINDS:
            raise ValueError(
                f"modality {self.name!r}: unknown kind {self.kind!r}; "
                f"choose one of {MODALITY_KINDS}"
            )


class TensorSplit(Dataset):
    """An in-memory split: ``inputs[m]`` is ``[N, *shape]``, ``targets`` is ``[N]`` (long)."""

    def __init__(self, inputs: Mapping[str, Tensor], targets: Tensor) -> None:
        targets = torch.as_tensor(targets).long()
        if targets.ndim != 1:
            raise ValueError(f"targets must be 1-D [N], got shape {tuple(targets.shape)}")
        n = targets.shape[0]
        for name, x in inputs.items():
            if x.shape[0] != n:
                raise ValueError(f"modality {name!r} has {x.shape[0]} samples but targets have {n}")
        self.inputs: dict[str, Tensor] = dict(inputs)
        self.targets = targets

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        return {m: x[index] for m, x in self.inputs.items()}, int(self.targets[index])

    def take(self, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Gather a batch by index in one indexing op per modality."""
        return {m: x[indices] for m, x in self.inputs.items()}, self.targets[indices]


@dataclass
class MultimodalDataset:
    """Train / val / test splits of one multimodal classification task.

    ``modalities`` fixes the modality order used everywhere (coalition bit m = modality m).
    ``info`` carries description, licence and citation for shipped real data.
    """

    name: str
    modalities: Sequence[ModalitySpec]
    num_classes: int
    train: Dataset
    val: Dataset
    test: Dataset
    info: dict = field(default_factory=dict)

    @property
    def modality_names(self) -> list[str]:
        return [spec.name for spec in self.modalities]

    def split(self, name: str) -> Dataset:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; choose one of 'train', 'val', 'test'")
        return getattr(self, name)
