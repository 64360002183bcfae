"""``joint``: the base optimizer alone (plain joint multimodal training).

Still records, at every step, the Shapley contributions, weights and dominant modality of
the current batch (from the coalition pass the step helper runs on the first-pass features),
so imbalance can be watched under plain training too.

Sharpness: joint training takes no ascent, so by default it records none per step.  The
option ``batch_sharpness`` (``--method_options.batch_sharpness true``) measures
ℓ(θ+ε) − ℓ(θ) on each training batch with ε = ρ·g/‖g‖ from the step's own gradient (one extra
no-grad forward), so ``sharpness`` means the same for ``joint`` as for the SAM family.
``measure_every`` adds the probe-batch measures (``sharpness/probe``, per modality, Hessian).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from msam_core.methods.base import Method
from msam_core.methods.registry import register_method
from msam_core.step import plain_step


@register_method("joint")
class JointMethod(Method):
    """Joint training with the base optimizer (SGD / Adam / AdamW)."""

    OPTIONS = ("batch_sharpness",)

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        self.measures_sharpness = _as_bool(self.option("batch_sharpness", False))

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        rho = self.rho if self.measures_sharpness else None
        result = plain_step(
            model,
            self.optimizer,
            inputs,
            targets,
            value=self.config.shapley_value,
            sharpness_rho=rho,
            rows=self.shapley_rows(targets),
        )
        return result.to_record(self.modalities)


def _as_bool(value: Any) -> bool:
    """A method option given as a bool or as the text a command line passes."""
    if isinstance(value, str):
        if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"batch_sharpness must be true or false, got {value!r}")
        return value.lower() in ("true", "1", "yes")
    return bool(value)
