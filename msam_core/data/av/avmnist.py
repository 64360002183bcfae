"""AV-MNIST as MultiBench distributes it: MNIST digit images paired with spoken-digit spectrograms.

The arrays are memory-mapped, so a split costs no memory until its items are read.  Like
MultiBench, values are scaled from 0-255 to [0, 1] and the last 5000 training samples form
the validation split.
"""

from __future__ import annotations

from math import isqrt
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from msam_core.data.av.common import MalformedDataError, MissingDataError, check_root
from msam_core.data.base import ModalitySpec, MultimodalDataset
from msam_core.data.registry import register_dataset

NAME = "avmnist"
LAYOUT = """\
<data_root>/
├── image/
│   ├── train_data.npy    [N, 784] (or [N, 28, 28]) digit images, values 0-255
│   └── test_data.npy
├── audio/
│   ├── train_data.npy    [N, 112, 112] spectrograms of spoken digits, values 0-255
│   └── test_data.npy
├── train_labels.npy      [N] digit labels 0-9
└── test_labels.npy
"""
CITATION = (
    "Liang, P. P., Lyu, Y., Fan, X., et al. (2021). MultiBench: Multiscale Benchmarks for "
    "Multimodal Representation Learning. NeurIPS Datasets and Benchmarks Track."
)


def _load(path: Path) -> np.ndarray:
    if not path.is_file():
        raise MissingDataError(NAME, f"file {path} is missing", LAYOUT)
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise MalformedDataError(
            NAME, f"cannot read {path} as a .npy array: {err}", LAYOUT
        ) from err


def _as_image_shape(array: np.ndarray, path: Path) -> tuple[int, int]:
    """(H, W) of the images in ``array`` ([N, H*W] square, or [N, H, W])."""
    if array.ndim == 3:
        return int(array.shape[1]), int(array.shape[2])
    if array.ndim == 2 and isqrt(array.shape[1]) ** 2 == array.shape[1]:
        side = isqrt(array.shape[1])
        return side, side
    raise MalformedDataError(
        NAME, f"{path}: expected [N, H*W] (square) or [N, H, W], got shape {array.shape}", LAYOUT
    )


class AVMNISTSplit(Dataset):
    """Rows ``indices`` of the memory-mapped arrays: ``({"image", "audio"}, label)``.

    ``image`` is ``[1, H, W]`` and ``audio`` ``[1, F, T]``, float32 divided by ``scale``.
    """

    def __init__(
        self,
        image: np.ndarray,
        audio: np.ndarray,
        labels: np.ndarray,
        indices: np.ndarray,
        image_hw: tuple[int, int],
        scale: float,
    ) -> None:
        self.image, self.audio, self.labels = image, audio, labels
        self.indices = np.asarray(indices, dtype=np.int64)
        self.image_hw = image_hw
        self.scale = scale
        self.targets = np.asarray(labels[self.indices], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def _rows(self, rows: np.ndarray | int) -> tuple[Tensor, Tensor]:
        image = np.array(self.image[rows], dtype=np.float32).reshape(-1, 1, *self.image_hw)
        audio = np.array(self.audio[rows], dtype=np.float32)
        audio = audio.reshape(-1, 1, *audio.shape[-2:])
        return torch.from_numpy(image) / self.scale, torch.from_numpy(audio) / self.scale

    def __getitem__(self, index: int) -> tuple[dict[str, Tensor], int]:
        image, audio = self._rows(int(self.indices[index]))
        return {"image": image[0], "audio": audio[0]}, int(self.targets[index])

    def take(self, indices: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """Gather a batch by position in this split (one memory-mapped read per modality)."""
        positions = np.asarray(indices.cpu(), dtype=np.int64)
        image, audio = self._rows(self.indices[positions])
        return {"image": image, "audio": audio}, torch.as_tensor(self.targets[positions])


@register_dataset(NAME)
def load_avmnist(
    data_root: str | Path | None = None,
    *,
    val_size: int = 5000,
    normalize: bool = True,
    seed: int = 0,
) -> MultimodalDataset:
    """AV-MNIST from ``data_root`` (layout in :data:`LAYOUT`): ``image`` and ``audio``.

    ``image`` ``[1, 28, 28]`` (kind image) and ``audio`` ``[1, 112, 112]`` (kind
    spectrogram); 10 classes.  The last ``val_size`` training rows are the validation split
    (MultiBench's 55000 / 5000).  ``normalize`` divides by 255 as MultiBench does.
    ``seed`` is accepted like every loader's but changes nothing: the splits are fixed.
    """
    del seed
    root = check_root(data_root, NAME, LAYOUT)
    arrays = {}
    for split in ("train", "test"):
        paths = {
            "image": root / "image" / f"{split}_data.npy",
            "audio": root / "audio" / f"{split}_data.npy",
            "labels": root / f"{split}_labels.npy",
        }
        loaded = {key: _load(path) for key, path in paths.items()}
        sizes = {str(paths[k]): int(v.shape[0]) if v.ndim else 0 for k, v in loaded.items()}
        if len(set(sizes.values())) != 1:
            raise MalformedDataError(
                NAME, f"{split} files disagree on the number of samples: {sizes}", LAYOUT
            )
        if loaded["audio"].ndim not in (2, 3):
            raise MalformedDataError(
                NAME,
                f"{paths['audio']}: expected [N, F, T], got shape {loaded['audio'].shape}",
                LAYOUT,
            )
        if loaded["audio"].ndim == 2:  # flattened square spectrograms
            side = _as_image_shape(loaded["audio"], paths["audio"])
            loaded["audio"] = loaded["audio"].reshape(-1, *side)
        loaded["image_hw"] = _as_image_shape(loaded["image"], paths["image"])
        labels = np.asarray(loaded["labels"]).astype(np.int64).ravel()
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise MalformedDataError(NAME, f"{paths['labels']}: labels must be digits 0-9", LAYOUT)
        loaded["labels"] = labels
        arrays[split] = loaded
    tr, te = arrays["train"], arrays["test"]
    if tr["image_hw"] != te["image_hw"] or tr["audio"].shape[1:] != te["audio"].shape[1:]:
        raise MalformedDataError(
            NAME,
            f"train and test shapes differ: image {tr['image_hw']} vs {te['image_hw']}, "
            f"audio {tr['audio'].shape[1:]} vs {te['audio'].shape[1:]}",
            LAYOUT,
        )
    n_train = len(tr["labels"])
    if not 0 < val_size < n_train:
        raise ValueError(
            f"val_size must be between 1 and {n_train - 1} (train rows), got {val_size}"
        )
    scale = 255.0 if normalize else 1.0
    train_rows = np.arange(n_train - val_size)
    val_rows = np.arange(n_train - val_size, n_train)
    test_rows = np.arange(len(arrays["test"]["labels"]))

    def part(split: str, rows: np.ndarray) -> AVMNISTSplit:
        a = arrays[split]
        return AVMNISTSplit(a["image"], a["audio"], a["labels"], rows, a["image_hw"], scale)

    return MultimodalDataset(
        name=NAME,
        modalities=[
            ModalitySpec("image", "image", (1, *tr["image_hw"])),
            ModalitySpec("audio", "spectrogram", (1, *tr["audio"].shape[1:])),
        ],
        num_classes=10,
        train=part("train", train_rows),
        val=part("train", val_rows),
        test=part("test", test_rows),
        info={
            "description": "AV-MNIST (MultiBench): MNIST digits paired with spectrograms of "
            "spoken digits (FSDD), both degraded to make the task multimodal.",
            "class_names": [str(d) for d in range(10)],
            "source": str(root),
            "license": "see MultiBench / MNIST / FSDD terms; supplied by the user",
            "citation": CITATION,
            "sizes": {"train": len(train_rows), "val": val_size, "test": len(test_rows)},
        },
    )
