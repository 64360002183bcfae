"""``sam``: Sharpness-Aware Minimization (Foret et al. 2021) around the base optimizer.

``rho`` is the ascent radius, ``adaptive`` switches to ASAM's scale-invariant ascent.
Every step records ``sharpness`` = ℓ(θ+ε) − ℓ(θ) on the batch (free: both losses are
computed anyway) and the batch's Shapley contributions.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from msam_core.methods.base import Method, sharpness_aware_optimizer
from msam_core.methods.registry import register_method
from msam_core.optim.sam import SAM
from msam_core.step import sam_step


@register_method("sam")
class SamMethod(Method):
    """SAM: both passes at full weight, ``w_d = 1`` in M-SAM's terms."""

    measures_sharpness = True

    def build_optimizer(self, model: nn.Module, config: Any) -> SAM:
        """The :class:`~msam_core.optim.SAM` wrapper around the configured base optimizer."""
        return sharpness_aware_optimizer(SAM, model, config, type(self).DEFAULT_RHO)

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        value, rows = self.config.shapley_value, self.shapley_rows(targets)
        result = sam_step(model, self.optimizer, inputs, targets, value=value, rows=rows)
        return result.to_record(self.modalities)
