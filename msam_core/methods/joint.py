"""``joint``: the base optimizer alone (plain joint multimodal training).

Still records, at every step, the Shapley contributions, weights and dominant modality of
the current batch (from the coalition pass the step helper runs on the first-pass features),
so imbalance can be watched under plain training too.  No sharpness: joint training has no
ascent step to measure it with (``measure_every`` adds it on a probe batch).
"""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor, nn

from msam_core.methods.base import Method
from msam_core.methods.registry import register_method
from msam_core.step import plain_step


@register_method("joint")
class Joint(Method):
    """Joint training with the base optimizer (SGD / Adam / AdamW)."""

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        result = plain_step(model, self.optimizer, inputs, targets, value=self.config.shapley_value)
        return result.to_record(self.modalities)
