"""Per-modality encoders and their registry.

An encoder maps one modality's batch ``[B, *shape]`` to features ``[B, feature_dim]``. Builders
are registered by name with the kinds of input they take; ``"auto"`` picks one by the modality's
kind (vector -> ``mlp``, image / spectrogram -> ``cnn``, sequence -> ``cnn1d``). Another module
adds an encoder without editing this file::

    @register_encoder("resnet18", kinds=("image", "spectrogram"))
    def build_resnet18(spec: ModalitySpec, feature_dim: int) -> nn.Module: ...

and importing that module makes ``build_model(..., encoder="resnet18")`` work.

The built-in encoders use no batch normalisation: a sample's features never depend on the other
samples of its batch, which keeps input and feature masking exactly equal in train mode too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from msam_core.data.base import MODALITY_KINDS, ModalitySpec
from msam_core.suggest import did_you_mean

EncoderBuilder = Callable[[ModalitySpec, int], nn.Module]

# the default encoder for each kind of modality
AUTO_ENCODER = {"vector": "mlp", "image": "cnn", "spectrogram": "cnn", "sequence": "cnn1d"}


@dataclass(frozen=True)
class _Entry:
    builder: EncoderBuilder
    kinds: tuple[str, ...]


_ENCODERS: dict[str, _Entry] = {}


def register_encoder(
    name: str, kinds: Sequence[str] = MODALITY_KINDS
) -> Callable[[EncoderBuilder], EncoderBuilder]:
    """Decorator: make ``builder(spec, feature_dim) -> nn.Module`` available as ``name``.

    ``kinds`` lists the modality kinds the encoder accepts; ``build_encoder`` refuses others.
    """
    unknown = [k for k in kinds if k not in MODALITY_KINDS]
    if unknown:
        raise ValueError(f"unknown modality kinds {unknown}; choose from {MODALITY_KINDS}")
    if name == "auto":
        raise ValueError("'auto' is reserved: it picks an encoder by modality kind")

    def decorate(builder: EncoderBuilder) -> EncoderBuilder:
        if name in _ENCODERS and _ENCODERS[name].builder is not builder:
            raise ValueError(f"encoder {name!r} is already registered")
        _ENCODERS[name] = _Entry(builder, tuple(kinds))
        return builder

    return decorate


def encoder_names() -> list[str]:
    """Registered encoder names (plus ``"auto"``), sorted."""
    return ["auto", *sorted(_ENCODERS)]


def build_encoder(spec: ModalitySpec, name: str = "auto", feature_dim: int = 64) -> nn.Module:
    """An encoder for modality ``spec`` mapping ``[B, *spec.shape]`` to ``[B, feature_dim]``.

    Raises ValueError listing the choices for an unknown name, or naming the kinds the encoder
    takes when it does not fit the modality.
    """
    if name == "auto":
        name = AUTO_ENCODER[spec.kind]
    if name not in _ENCODERS:
        hint = did_you_mean(name, encoder_names())
        raise ValueError(f"unknown encoder {name!r}{hint}; choose one of {encoder_names()}")
    entry = _ENCODERS[name]
    if spec.kind not in entry.kinds:
        raise ValueError(
            f"encoder {name!r} takes {list(entry.kinds)} inputs, but modality {spec.name!r} is "
            f"{spec.kind} of shape {list(spec.shape)}"
        )
    if feature_dim < 1:
        raise ValueError(f"feature_dim must be positive, got {feature_dim}")
    return entry.builder(spec, int(feature_dim))


def _expect_ndim(spec: ModalitySpec, ndim: int, layout: str) -> None:
    if len(spec.shape) != ndim:
        raise ValueError(
            f"modality {spec.name!r} ({spec.kind}) must have per-sample shape {layout}, "
            f"got {list(spec.shape)}"
        )


class MLPEncoder(nn.Module):
    """Flatten, then ``Linear -> ReLU -> Linear -> ReLU``: ``[B, *shape] -> [B, feature_dim]``."""

    def __init__(self, in_features: int, feature_dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Flatten(),
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, feature_dim),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvEncoder2d(nn.Module):
    """Small CNN for ``[B, C, H, W]``: two 3x3 conv blocks, 4x4 average pool, linear.

    Pooling to a 4x4 grid (not to one value) keeps where a pattern is, which class patterns of
    images and spectrograms depend on.
    """

    def __init__(self, in_channels: int, feature_dim: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(4),
            nn.Flatten(),
            nn.Linear(2 * width * 16, feature_dim),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class ConvEncoder1d(nn.Module):
    """1-D CNN for sequences ``[B, C, T]``: two conv blocks (kernel 5), pool to 8 steps, linear."""

    def __init__(self, in_channels: int, feature_dim: int, width: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(in_channels, width, 5, padding=2),
            nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True),
            nn.Conv1d(width, 2 * width, 5, padding=2),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(8),
            nn.Flatten(),
            nn.Linear(2 * width * 8, feature_dim),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


@register_encoder("mlp")
def build_mlp(spec: ModalitySpec, feature_dim: int) -> nn.Module:
    """MLP over the flattened input; takes any kind."""
    return MLPEncoder(math.prod(spec.shape), feature_dim, hidden=max(128, feature_dim))


@register_encoder("cnn", kinds=("image", "spectrogram"))
def build_cnn(spec: ModalitySpec, feature_dim: int) -> nn.Module:
    """Small 2-D CNN for ``[C, H, W]`` images and ``[1, F, T]`` spectrograms."""
    _expect_ndim(spec, 3, "[C, H, W]")
    return ConvEncoder2d(spec.shape[0], feature_dim)


@register_encoder("cnn1d", kinds=("sequence",))
def build_cnn1d(spec: ModalitySpec, feature_dim: int) -> nn.Module:
    """1-D CNN for ``[C, T]`` sequences."""
    _expect_ndim(spec, 2, "[C, T]")
    return ConvEncoder1d(spec.shape[0], feature_dim)
