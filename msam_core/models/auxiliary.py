"""Heads that a training method keeps beside a late-fusion model, over its ``encode()`` features.

MMPareto and G-Blending train one unimodal classifier per modality next to the fused one.  The
model stays as built (its ``fuse`` is still what predicts, evaluates and is checkpointed as
``model``); the method owns these heads, optimises them with the model and carries them in its
own checkpoint state.  That keeps every model usable with every method and leaves the model
protocol unchanged; the alternative, a model variant with extra outputs, would change what
``model(inputs)`` returns for all other code.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn


class UnimodalHeads(nn.Module):
    """One linear classifier per modality: ``heads(features) -> {m: logits [B, C]}``.

    ``features`` are the model's ``encode`` output, ``{m: [B, feature_dim]}``.
    """

    def __init__(self, modalities: Sequence[str], feature_dim: int, num_classes: int) -> None:
        super().__init__()
        self.modalities = list(modalities)
        self.heads = nn.ModuleDict(
            {m: nn.Linear(int(feature_dim), int(num_classes)) for m in self.modalities}
        )

    def forward(self, features: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {m: self.heads[m](features[m]) for m in self.modalities}


def unimodal_heads_for(model: nn.Module) -> UnimodalHeads:
    """:class:`UnimodalHeads` sized for ``model`` (late fusion), on its parameters' device."""
    feature_dim = getattr(model, "feature_dim", None)
    num_classes = getattr(model, "num_classes", None)
    if feature_dim is None or num_classes is None:
        raise ValueError(
            f"{type(model).__name__} does not say its feature width and class count "
            "(feature_dim, num_classes attributes); unimodal heads need both"
        )
    device = next(model.parameters()).device
    heads = UnimodalHeads(model.modalities, feature_dim, num_classes)
    return heads.to(device=device, dtype=torch.get_default_dtype())
