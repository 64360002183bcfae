"""Early fusion: the (masked) inputs are flattened and joined, then one network classifies them.

There is no per-modality encoder, so no ``encode`` / ``fuse`` and no feature-masking fast path:
coalition values always come from input masking.  What belongs to one modality is the slice of
the first layer's weight that reads its inputs (:meth:`EarlyFusionModel.modality_parameters`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor, nn

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

    def modality_parameters(self) -> dict[str, list[tuple[nn.Parameter, Tensor]]]:
        """Each modality's part: the first layer's weight ``[hidden, in]`` masked to the columns
        that read that modality's flattened inputs (in ``modalities`` order, as ``forward``
        joins them).  The bias and later layers are shared by every modality."""
        first = next(m for m in self.network.modules() if isinstance(m, nn.Linear))
        weight = first.weight
        parts, start = {}, 0
        for m in self.modalities:
            width = math.prod(self.modality_specs[m].shape)
            mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
            mask[:, start : start + width] = True
            parts[m] = [(weight, mask)]
            start += width
        return parts

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``; absent modalities (``mask`` False) are replaced by baselines."""
        masked = self.mask_inputs(inputs, mask)
        joined = torch.cat([masked[m].flatten(1) for m in self.modalities], dim=1)
        return self.classifier(self.network(joined))
