"""``mla``: Multimodal Learning with Alternating unimodal adaptation (Zhang, Latham & Yao,
CVPR 2024, "Multimodal Representation Learning by Alternating Unimodal Adaptation").

The model's head is one classifier shared by every modality (fusion ``shared``,
:class:`msam_core.models.fusion.SharedFusion`; the loop builds MLA's model with it whatever
``--fusion`` names, and early fusion is refused: it has no encoders to alternate between).
Each step takes one batch through every modality in turn, in model order; for modality m:

1. ℓ_m = CE(head(h_m), y) with h_m the modality's features (encoded once, at the step's start);
2. gradients of ℓ_m for encoder m and the shared head only;
3. gradient modification of the head's first linear layer W (the one reading the features),
   so learning modality m does not overwrite what the head learnt for the others: the
   projector P (F × F, P_0 = I) is updated with the batch's mean feature r of modality m,
   k = P r, P ← P − k kᵀ / (a + rᵀ k), P ← P / ‖P‖_F, and the gradient becomes
   ∇W + ∇W·Pᵀ (a = ``mla_alpha``); skipped on the very first sub-step of the run;
4. an optimizer step.

A step is therefore M optimizer steps (the authors' schedule).  At test time the model predicts
with the shared head's outputs blended by their uncertainty, w_m = softmax_m(−H_m) per sample —
that is the ``shared`` head's ``forward``, so evaluation, Shapley readouts and checkpoints need
nothing special.  With one modality there is nothing to protect, no modification is made, and
the step is plain training of the one-modality model.

From the authors' code (Cecile-hi/Multimodal-Learning-with-Alternating-Unimodal-Adaptation,
``GSPlugin``) and BalanceBenchmark's MLA trainer.  Differences: a is a constant option (the
authors decay it from 0.1 to 0.01 through each epoch, a schedule tied to the loader's length);
the test-time entropy is taken per sample over classes (the authors' code takes the softmax over
the batch dimension, which the paper's formula does not); the features are not re-encoded
between sub-steps (as the authors: each modality's encoder has not moved yet when its turn
comes, only the head has).  The gradient modification follows the authors' code (∇W + ∇W·Pᵀ),
not the paper's pure projection ∇W·P.

Options: ``mla_alpha`` (a, default 0.1).  Records: ``loss/<m>`` (each modality's loss before
its sub-step) besides loss (the blended prediction's, at θ) and the Shapley record.  The
projector and the sub-step count are method state.  Under ``torch.distributed`` each
sub-step's gradients and the mean features r are averaged over ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.methods._multihead import (
    MultiLossMethod,
    assign,
    average_over_ranks,
    gradients,
    require_late_fusion,
    trainable,
)
from msam_core.methods.registry import register_method
from msam_core.models.fusion import SharedFusion
from msam_core.param_groups import modality_parameter_groups
from msam_core.step import FirstPass


def update_projector(projector: Tensor, mean_feature: Tensor, alpha: float) -> Tensor:
    """One recursive update of ``P`` ``[F, F]`` with a mean feature ``r`` ``[F]``, normalised."""
    r = mean_feature.reshape(1, -1).to(projector)
    k = projector @ r.T
    updated = projector - (k @ k.T) / (alpha + (r @ k))
    return updated / torch.linalg.matrix_norm(updated)


@register_method("mla")
class MlaMethod(MultiLossMethod):
    """MLA: alternating unimodal steps through a shared head (module docstring)."""

    OPTIONS = ("mla_alpha",)
    fusion = "shared"

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        core = require_late_fusion(
            model, self.name, "alternates between the modalities' encoders", min_modalities=1
        )
        if not isinstance(core.head, SharedFusion):
            raise ValueError(
                f"mla trains one classifier shared by every modality and predicts with its "
                f"uncertainty-weighted outputs; this model's head is {type(core.head).__name__}. "
                "Build it with --fusion shared (msam train and compare do so for mla)"
            )
        self.alpha = float(self.option("mla_alpha", 0.1))
        if not (math.isfinite(self.alpha) and self.alpha > 0):
            raise ValueError(f"mla_alpha must be a positive number, got {self.alpha}")
        groups = modality_parameter_groups(core)
        self.encoders = {m: trainable(groups[m]) for m in self.modalities}
        self.head = trainable(core.head.parameters())
        self.reader = next(m for m in core.head.classifier if isinstance(m, nn.Linear))
        width = self.reader.weight.shape[1]
        self.projector = torch.eye(width, device=self.reader.weight.device)
        self.count = 0

    @torch.no_grad()
    def modify(self, mean_feature: Tensor) -> None:
        """Update the projector with ``mean_feature`` and modify the reading layer's gradient."""
        self.projector = update_projector(self.projector, mean_feature, self.alpha)
        grad = self.reader.weight.grad
        if grad is not None:
            grad.add_(grad @ self.projector.T)

    def update(
        self, core: nn.Module, first: FirstPass, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict[str, float]:
        """One optimizer step per modality, in model order (module docstring)."""
        fields: dict[str, float] = {}
        for i, m in enumerate(self.modalities):
            last = i == len(self.modalities) - 1
            loss = F.cross_entropy(core.head.classifier(first.features[m]), targets)
            fields[f"loss/{m}"] = self.checked(loss, f"of modality {m!r}'s turn", core, inputs)
            params = self.encoders[m] + self.head
            grads = average_over_ranks(gradients(loss, params, retain_graph=not last))
            self.optimizer.zero_grad(set_to_none=True)
            assign(params, grads)
            if len(self.modalities) > 1 and self.count > 0:
                mean = first.features[m].detach().mean(0)
                self.modify(average_over_ranks([mean])[0])
            self.optimizer.step()
            self.count += 1
        self.optimizer.zero_grad(set_to_none=True)
        return fields

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The projector ``[F, F]`` and the number of sub-steps taken."""
        return {"projector": self.projector.detach().cpu(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"projector", "count"}:
            raise ValueError(f"mla state must hold ['count', 'projector'], got {sorted(state)}")
        projector = torch.as_tensor(state["projector"])
        if projector.shape != self.projector.shape:
            raise ValueError(
                f"mla state has a {list(projector.shape)} projector, this model's head reads "
                f"{list(self.projector.shape)}; was the checkpoint written for another model?"
            )
        self.projector = projector.to(self.projector)
        self.count = int(state["count"])
