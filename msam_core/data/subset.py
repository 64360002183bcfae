"""Train and evaluate on a subset of a dataset's modalities (config key ``modalities``).

The subset keeps everything else of the dataset: the same samples in the same splits, the same
labels and per-modality tensors, so a run on ``modalities=[visual]`` is the visual modality of
the very data the fused run saw (its ceiling when trained alone, ``docs/design.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from torch.utils.data import Dataset

from msam_core.data.base import MultimodalDataset, TensorSplit


class _ModalitySubset(Dataset):
    """A file-backed split whose items keep only ``names`` (read lazily, item by item)."""

    def __init__(self, split: Dataset, names: Sequence[str]) -> None:
        self.split = split
        self.names = list(names)

    def __len__(self) -> int:
        return len(self.split)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[dict[str, Any], int]:
        inputs, label = self.split[index]
        return {m: inputs[m] for m in self.names}, label


def check_modality_subset(available: Sequence[str], wanted: Sequence[str], where: str) -> list[str]:
    """``wanted`` in the dataset's order, or ValueError naming the bad names and the valid ones.

    ``where`` names the dataset in the message.  An empty ``wanted`` means every modality.
    """
    wanted = [str(m).strip() for m in wanted]
    if not wanted:
        return list(available)
    unknown = [m for m in wanted if m not in available]
    if unknown:
        raise ValueError(
            f"modalities {unknown} are not modalities of {where}; its modalities are "
            f"{list(available)} (give a comma list of those, e.g. --modalities {available[0]})"
        )
    repeated = sorted({m for m in wanted if wanted.count(m) > 1})
    if repeated:
        raise ValueError(f"modalities lists {repeated} more than once")
    # the dataset's order: coalition bit m is modality m, whatever order the user typed
    return [m for m in available if m in wanted]


def select_modalities(dataset: MultimodalDataset, names: Sequence[str]) -> MultimodalDataset:
    """``dataset`` restricted to the modalities ``names`` (all of them when empty)."""
    keep = check_modality_subset(dataset.modality_names, names, f"dataset {dataset.name!r}")
    if keep == dataset.modality_names:
        return dataset

    def subset(split: Dataset) -> Dataset:
        if isinstance(split, TensorSplit):
            return TensorSplit({m: split.inputs[m] for m in keep}, split.targets)
        return _ModalitySubset(split, keep)

    info = {**dataset.info, "modalities_kept": keep, "modalities_all": dataset.modality_names}
    return replace(
        dataset,
        modalities=[spec for spec in dataset.modalities if spec.name in keep],
        train=subset(dataset.train),
        val=subset(dataset.val),
        test=subset(dataset.test),
        info=info,
    )
