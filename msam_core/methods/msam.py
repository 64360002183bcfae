"""``msam``: Modality-Aware SAM (arXiv 2510.24919), DESIGN.md's default form.

Each step: Shapley contributions φ on the batch, dominant d = argmax φ, weights
w_m = max(φ_m, 0) / Σ max(φ_k, 0); the base optimizer steps on w_d·∇ℓ(θ+ε) + (1 − w_d)·∇ℓ(θ),
i.e. only the dominant modality's share of the loss is made flat.  ``rho`` and ``adaptive``
as for SAM.  Records phi/<m>, weight/<m>, dominant and sharpness every step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from msam_core.methods.base import Method, base_optimizer_factory
from msam_core.optim.sam import MSAM
from msam_core.step import msam_step


class Msam(Method):
    """M-SAM: a SAM step on the dominant modality's share of the loss."""

    measures_sharpness = True

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        base_cls, kwargs = base_optimizer_factory(config)
        self.optimizer = MSAM(
            model.parameters(),
            base_cls,
            rho=float(config.rho),
            adaptive=bool(config.adaptive),
            **kwargs,
        )

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        result = msam_step(model, self.optimizer, inputs, targets, value=self.config.shapley_value)
        return result.to_record(self.modalities)
