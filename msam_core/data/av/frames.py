"""A folder of extracted video frames -> a fixed number of resized RGB frames ``[3*K, H, W]``.

Frames are picked evenly across the clip (the middle of K equal segments, as the published
code does at evaluation), so the same clip always gives the same input.  The K frames are
stacked along the channel axis in time order (frame k occupies channels 3k..3k+2); the
ResNet visual encoder unstacks them, encodes each frame with one shared 2-D trunk, and
averages over time.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: ImageNet channel statistics, which the published code normalises frames with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class FrameConfig:
    """``n_frames`` per clip, each resized to ``image_size`` (int or (H, W)), optionally
    normalised with the ImageNet mean and std (``normalize_frames``)."""

    n_frames: int = 1
    image_size: int | tuple[int, int] = 224
    normalize_frames: bool = True

    def __post_init__(self) -> None:
        if self.n_frames < 1:
            raise ValueError(f"n_frames must be >= 1, got {self.n_frames}")
        size = self.image_size
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"image_size must be a positive int or (H, W), got {self.image_size}")
        object.__setattr__(self, "image_size", size)

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape ``(3 * n_frames, H, W)`` of one clip's visual input."""
        return (3 * self.n_frames, *self.image_size)


def _natural_key(path: Path) -> list:
    # frame_2 before frame_10, whatever the zero padding.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def list_frames(folder: str | Path) -> list[Path]:
    """Image files (jpg, jpeg, png) directly inside ``folder``, in natural name order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    return sorted(files, key=_natural_key)


def pick_frames(n_available: int, n_frames: int) -> list[int]:
    """Indices of ``n_frames`` evenly spread frames: the middle of equal segments.

    With fewer frames than asked for, frames repeat (still in time order).
    """
    if n_available < 1:
        raise ValueError("no frames to pick from")
    return [min(n_available - 1, int((k + 0.5) * n_available / n_frames)) for k in range(n_frames)]


def load_image(path: str | Path, size: tuple[int, int]) -> Tensor:
    """One image as float RGB ``[3, H, W]`` in [0, 1], resized (bilinear) to ``size`` (H, W)."""
    with Image.open(path) as image:
        image = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def load_frames(folder: str | Path, config: FrameConfig) -> Tensor:
    """``config.n_frames`` frames of one clip, stacked to ``[3 * n_frames, H, W]``."""
    files = list_frames(folder)
    if not files:
        raise ValueError(f"no frames ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    frames = []
    for i in pick_frames(len(files), config.n_frames):
        try:
            frames.append(load_image(files[i], config.image_size))
        except OSError as err:  # PIL's UnidentifiedImageError included
            raise ValueError(f"cannot read image {files[i]}: {err}") from err
    out = torch.cat(frames, dim=0)
    if config.normalize_frames:
        mean = torch.tensor(IMAGENET_MEAN).repeat(config.n_frames).view(-1, 1, 1)
        std = torch.tensor(IMAGENET_STD).repeat(config.n_frames).view(-1, 1, 1)
        out = (out - mean) / std
    return out
