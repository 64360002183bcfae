"""``build_model``: the one call that turns modality specs and a fusion name into a model."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import nn

from msam_core.data.base import ModalitySpec
from msam_core.models.base import LateFusionModel, feature_dims
from msam_core.models.early import EarlyFusionModel
from msam_core.models.encoders import build_encoder, encoder_names
from msam_core.models.fusion import FUSION_HEADS
from msam_core.suggest import did_you_mean

FUSIONS = ("early", *FUSION_HEADS)


def fusion_names() -> list[str]:
    """The fusion names users type: ``early`` and the late-fusion heads."""
    return list(FUSIONS)


def build_model(
    modalities: Sequence[ModalitySpec],
    num_classes: int,
    fusion: str = "concat",
    encoder: str | Mapping[str, str] = "auto",
    feature_dim: int | Mapping[str, int] = 64,
    hidden: int | None = None,
    dropout: float = 0.0,
) -> nn.Module:
    """A model following the protocol: ``model(inputs, mask=None) -> logits [B, num_classes]``.

    Args:
        modalities: the dataset's specs (``dataset.modalities``); their order is the model's.
        num_classes: number of classes ``C``.
        fusion: ``early``, ``concat``, ``sum``, ``gated``, ``film`` or ``shared`` (see
            :mod:`msam_core.models.fusion`).
        encoder: registered encoder name for every modality, or ``{modality: name}``; ``auto``
            picks by kind (vector -> mlp, image / spectrogram -> cnn, sequence -> cnn1d).
            Ignored by early fusion, whose single network is an MLP over the joined inputs.
        feature_dim: width ``F`` of each modality's features (and of early fusion's network),
            or ``{modality: F_m}`` for encoders of different widths (late fusion; ``sum``
            needs one width).
        hidden: width of the classifier's hidden layer; ``None`` gives a linear classifier,
            as in the imbalance literature.
        dropout: dropout probability before each classifier layer.

    Parameters are created in a fixed order, so ``torch.manual_seed`` fixes the initial weights.
    """
    specs = list(modalities)
    if not specs or not all(isinstance(s, ModalitySpec) for s in specs):
        raise ValueError(
            "modalities must be a non-empty sequence of ModalitySpec (e.g. dataset.modalities), "
            f"got {modalities!r}"
        )
    if fusion not in FUSIONS:
        hint = did_you_mean(fusion, fusion_names())
        raise ValueError(f"unknown fusion {fusion!r}{hint}; choose one of {fusion_names()}")
    names = [s.name for s in specs]
    if isinstance(encoder, Mapping):
        extra = sorted(set(encoder) - set(names))
        if extra:
            raise ValueError(f"encoder names modalities {extra} that are not among {names}")
        choice = {m: encoder.get(m, "auto") for m in names}
    else:
        choice = dict.fromkeys(names, encoder)
    for m, name in choice.items():
        if name not in encoder_names():
            hint = did_you_mean(name, encoder_names())
            raise ValueError(
                f"unknown encoder {name!r} for modality {m!r}{hint}; "
                f"choose one of {encoder_names()}"
            )
    if fusion == "early":
        if isinstance(feature_dim, Mapping):
            raise ValueError(
                f"early fusion has one network over the joined inputs, so one feature_dim; "
                f"got {dict(feature_dim)}"
            )
        return EarlyFusionModel(specs, num_classes, feature_dim, hidden, dropout)
    dims = feature_dims(feature_dim, names)
    encoders = {s.name: build_encoder(s, choice[s.name], dims[s.name]) for s in specs}
    head = FUSION_HEADS[fusion](names, feature_dim, num_classes, hidden, dropout)
    return LateFusionModel(specs, num_classes, encoders, head, feature_dim)
