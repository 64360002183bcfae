"""Early fusion: the (masked) inputs are flattened and joined, then one network classifies them.

There is no per-modality encoder, so no ``encode`` / ``fuse`` and no feature-masking fast path.
The first layer is linear, though: its output is a sum of one product per modality,
``W x = Σ_m W[:, cols_m] x_m``, so every coalition's first-layer output is a sum of products
computed once (:meth:`EarlyFusionModel.first_layer_parts`,
:meth:`~EarlyFusionModel.after_first_layer`), and coalition values need the rest of the network
per coalition only (docs/design.md, "Model
protocol").  ``forward`` itself stays one matmul over the joined inputs, so training pays
nothing for this.  What belongs to one modality is the slice of the first layer's weight that
reads its inputs (:meth:`EarlyFusionModel.modality_parameters`).
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

    def first_layer(self) -> nn.Linear:
        """The joint network's first ``Linear`` (``[hidden, in]``), which reads every input."""
        return self.network.net[1]

    def modality_columns(self) -> dict[str, slice]:
        """The columns of :meth:`first_layer`'s weight reading each modality's flattened
        inputs, in ``modalities`` order (as ``forward`` joins them)."""
        columns, start = {}, 0
        for m in self.modalities:
            width = math.prod(self.modality_specs[m].shape)
            columns[m] = slice(start, start + width)
            start += width
        return columns

    def first_layer_parts(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Each modality's share of the first layer's output, ``{m: [N, hidden]}`` =
        ``flatten(x_m) @ W[:, cols_m]ᵀ`` (no bias): their sum through
        :meth:`after_first_layer` is ``forward(inputs)`` up to rounding.  ``inputs`` are taken
        as given (no masking); the coalition path sums real and baseline parts itself."""
        weight = self.first_layer().weight
        return {
            m: inputs[m].flatten(1) @ weight[:, cols].T
            for m, cols in self.modality_columns().items()
        }

    def after_first_layer(self, z: Tensor) -> Tensor:
        """Logits ``[N, C]`` from the first layer's output without its bias, ``z [N, hidden]``
        (a sum of :meth:`first_layer_parts`): bias, then the rest of the network."""
        # net = Flatten, Linear (the first layer), ReLU, Linear, ReLU
        return self.classifier(self.network.net[2:](z + self.first_layer().bias))

    def modality_parameters(self) -> dict[str, list[tuple[nn.Parameter, Tensor]]]:
        """Each modality's part: the first layer's weight ``[hidden, in]`` masked to the columns
        that read that modality's flattened inputs (:meth:`modality_columns`).  The bias and
        later layers are shared by every modality."""
        weight = self.first_layer().weight
        parts = {}
        for m, cols in self.modality_columns().items():
            mask = torch.zeros(weight.shape, dtype=torch.bool, device=weight.device)
            mask[:, cols] = True
            parts[m] = [(weight, mask)]
        return parts

    def forward(self, inputs: Mapping[str, Tensor], mask: Tensor | None = None) -> Tensor:
        """Logits ``[B, C]``; absent modalities (``mask`` False) are replaced by baselines."""
        masked = self.mask_inputs(inputs, mask)
        joined = torch.cat([masked[m].flatten(1) for m in self.modalities], dim=1)
        return self.classifier(self.network(joined))
