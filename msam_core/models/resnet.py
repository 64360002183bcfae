"""ResNet-18-style encoders for spectrograms and video frames, trained from scratch.

The audio-visual imbalance literature (OGM-GE and its successors) encodes a log-spectrogram
``[1, F, T]`` and a few RGB frames with two ResNet-18s trained from scratch; the frames go
through one shared 2-D trunk and the features are averaged over time.  This module builds
that network without torchvision and without any weight download.

Registered encoders (``build_model(..., encoder="resnet18")``):

* ``resnet18``: batch normalisation, as in the published code.  Batch statistics couple the
  samples of a batch in train mode, so input and feature masking agree in eval mode (where
  coalitions are evaluated), not in train mode.
* ``resnet18_gn``: the same network with group normalisation: no batch statistics, so
  feature masking equals input masking in every mode, and tiny batches are fine.

Width follows ``feature_dim``: the last stage has ``feature_dim`` channels (stages
``w, 2w, 4w, 8w`` with ``w = feature_dim // 8``), so ``feature_dim=512`` is the standard
ResNet-18 and the default 64 a light one for CPUs.  A visual modality ``[3K, H, W]`` (K
frames stacked along channels, as :mod:`msam_core.data.av.frames` produces) is read as K
RGB frames.  Inputs smaller than 64 pixels get a CIFAR-style stem (3x3, stride 1, no max
pool) so the grid does not collapse to one pixel in the first layer.
"""

from __future__ import annotations

from torch import Tensor, nn

from msam_core.data.base import ModalitySpec
from msam_core.models.encoders import register_encoder

NORMS = ("batch", "group")
#: Inputs whose smaller side is below this use the CIFAR-style stem.
SMALL_INPUT = 64


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    # Up to 32 groups that divide the channels (GroupNorm's usual setting, adapted to width).
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (projected when the shape changes)."""

    def __init__(self, in_channels: int, channels: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, 1, bias=False)
        self.norm1 = _norm(norm, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, 1, bias=False)
        self.norm2 = _norm(norm, channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride, bias=False), _norm(norm, channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet18Encoder(nn.Module):
    """ResNet-18 trunk: ``[B, frames * frame_channels, H, W] -> [B, feature_dim]``.

    Args:
        frame_channels: channels of one image (1 for a spectrogram, 3 for an RGB frame).
        frames: images stacked along the channel axis; each goes through the same trunk and
            the pooled features are averaged over them.
        width: channels of the first stage (64 in ResNet-18); the stages are w, 2w, 4w, 8w.
        feature_dim: output width; a linear layer maps ``8 * width`` to it when they differ.
        norm: ``"batch"`` or ``"group"``.
        small_input: CIFAR-style stem (3x3 stride 1, no max pool) instead of 7x7 stride 2
            plus max pool.
    """

    def __init__(
        self,
        frame_channels: int,
        frames: int = 1,
        width: int = 64,
        feature_dim: int | None = None,
        norm: str = "batch",
        small_input: bool = False,
    ) -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if min(frame_channels, frames, width) < 1:
            raise ValueError(
                f"frame_channels, frames and width must be >= 1, got "
                f"{frame_channels}, {frames}, {width}"
            )
        self.frame_channels, self.frames = frame_channels, frames
        if small_input:
            stem = [nn.Conv2d(frame_channels, width, 3, 1, 1, bias=False)]
        else:
            stem = [nn.Conv2d(frame_channels, width, 7, 2, 3, bias=False)]
        stem += [_norm(norm, width), nn.ReLU(inplace=True)]
        if not small_input:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers, channels = [], width
        for stage, out_channels in enumerate((width, 2 * width, 4 * width, 8 * width)):
            stride = 1 if stage == 0 else 2
            layers += [BasicBlock(channels, out_channels, stride, norm)]
            layers += [BasicBlock(out_channels, out_channels, 1, norm)]
            channels = out_channels
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        out_dim = feature_dim or channels
        self.project: nn.Module = (
            nn.Identity() if out_dim == channels else nn.Linear(channels, out_dim)
        )
        self.feature_dim = out_dim
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        expected = self.frames * self.frame_channels
        if x.ndim != 4 or x.shape[1] != expected:
            raise ValueError(
                f"ResNet18Encoder expects [B, {expected}, H, W] ({self.frames} x "
                f"{self.frame_channels} channels), got {list(x.shape)}"
            )
        b, _, h, w = x.shape
        # Frames share the trunk: fold them into the batch, then average their features.
        x = x.reshape(b * self.frames, self.frame_channels, h, w)
        features = self.pool(self.layers(self.stem(x))).flatten(1)
        features = features.view(b, self.frames, -1).mean(dim=1)
        return self.project(features)


def resnet18_for(spec: ModalitySpec, feature_dim: int, norm: str = "batch") -> ResNet18Encoder:
    """A ResNet-18 sized for modality ``spec`` (``[C, H, W]``) with ``feature_dim`` outputs.

    ``C = 3K`` with ``K > 1`` on an image modality is read as K stacked RGB frames; any other
    C is one C-channel image.  Width ``max(1, feature_dim // 8)``.
    """
    if len(spec.shape) != 3:
        raise ValueError(
            f"resnet18 needs per-sample shape [C, H, W]; modality {spec.name!r} ({spec.kind}) "
            f"has {list(spec.shape)}"
        )
    channels, height, width = spec.shape
    frames = channels // 3 if spec.kind == "image" and channels > 3 and channels % 3 == 0 else 1
    return ResNet18Encoder(
        frame_channels=channels // frames,
        frames=frames,
        width=max(1, feature_dim // 8),
        feature_dim=feature_dim,
        norm=norm,
        small_input=min(height, width) < SMALL_INPUT,
    )


@register_encoder("resnet18", kinds=("image", "spectrogram"))
def build_resnet18(spec: ModalitySpec, feature_dim: int) -> nn.Module:
    """ResNet-18 with batch normalisation (as the published audio-visual code)."""
    return resnet18_for(spec, feature_dim, norm="batch")


@register_encoder("resnet18_gn", kinds=("image", "spectrogram"))
def build_resnet18_gn(spec: ModalitySpec, feature_dim: int) -> nn.Module:
    """ResNet-18 with group normalisation (no batch statistics)."""
    return resnet18_for(spec, feature_dim, norm="group")
