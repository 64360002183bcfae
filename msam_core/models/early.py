"""Early fusion: the (masked) inputs are flattened and joined, then one network classifies them.

There is no per-modality encoder, so no ``encode`` / ``fuse`` and no feature-masking fast path:
coalition values always come from input masking.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from msam_core.data.base import ModalitySpec
from msam_core.models.base import MultimodalModel
from msam_core.models.encoders import MLPEncoder
from msam_core.models.fusion import make_classifier


class EarlyFusionModel(MultimodalModel):
    """``[flatten(x_1), ..., flatten(x_M)] -> MLP -> [B, feature_dim] -> classifier -> [B, C]``.

    The joint MLP has the same form as a late-fusion model's vector encoder, and the classifier
    the same form as its head's, so early and late fusion differ only in where modalities meet.
    """

    def __init__(
        self,
        modalities: Sequence[ModalitySpec],
        num_classes: int,
        feature_dim: int = 64,
        hidden: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__(modalities, num_classes)
        in_features = sum(math.prod(spec.shape) for spec in self.modality_specs.values())
        self.feature_dim = int(feature_dim)
        self.network = MLPEncoder(in_features, self.feature_dim, hidden=max(128, feature_dim))
        self.classifier = make_classifier(self.feature_dim, num_classes, hidden, dropout)

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``; absent modalities (``mask`` False) are replaced by baselines."""
        masked = self.mask_inputs(inputs, mask)
        joined = torch.cat([masked[m].flatten(1) for m in self.modalities], dim=1)
        return self.classifier(self.network(joined))
