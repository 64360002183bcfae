"""``mmpareto``: MMPareto (Wei & Hu, ICML 2024, "MMPareto: Boosting Multimodal Learning with
Innocent Unimodal Assistance").

The fused loss ℓ plus one unimodal loss ℓ_m per modality, each from a linear head over the
modality's ``encode`` features (heads the method owns: :mod:`msam_core.models.auxiliary`).
Each step, for every encoder m, with g = ∇_m ℓ (multimodal) and u = ∇_m ℓ_m (unimodal), over
all of the encoder's parameters:

1. conflict test: cos(g, u);
2. weights: no conflict (cos > 0) → (½, ½); conflict → the Pareto (minimum-norm) weights of
   the two, α = (u·u − g·u) / ‖g − u‖² on g, 1 − α on u;
3. per parameter tensor p: d_p = 2α g_p + 2(1 − α) u_p, rescaled to at least the norm of the
   plain sum, d_p · max(1, ‖g_p + u_p‖ / ‖d_p‖), then multiplied by γ (magnitude enhancement).

Without conflict the encoder gradient is therefore γ·(g + u), the "enhanced sum".  The fusion
head steps on ∇ℓ and each unimodal head on ∇ℓ_m.  Each encoder is touched only by the fused
loss and its own unimodal loss, so the two-objective rule is the paper's for any number of
modalities M (written for two).

From the authors' code (GeWu-Lab/MMPareto_ICML2024) and BalanceBenchmark's: the rescaling
compares norms per parameter tensor, the conflict test and weights use the whole encoder,
γ = 1.5 by default.  Differences: the weights are the closed form of the two-vector minimum-norm
problem (the authors' solver returns the same for two vectors when they conflict); the authors'
solver's 0.999 / 0.001 clamps only matter when one gradient's projection exceeds the other's
norm, which cannot happen under a conflict.  Gradients come from ``autograd.grad`` on the fused
and unimodal losses of one forward pass instead of three backward passes, which is the same
numbers at lower cost.

Options (``--method_options.<key> value``): ``mmpareto_gamma`` (γ, default 1.5, > 0).
Records, besides loss and the batch's Shapley contributions: ``loss/<m>`` (unimodal loss),
``cos/<m>`` (cosine of g and u) and ``coef/<m>`` (α, the weight of the multimodal gradient:
0.5 without conflict).  The unimodal heads are method state, checkpointed with it.
Under ``torch.distributed`` the gradients are averaged over ranks before the rule (so the
conflict test sees the full batch).  Early fusion is refused: it has no per-modality encoder to
apply the rule to.
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
    dot,
    gradients,
    require_late_fusion,
    trainable,
)
from msam_core.methods.registry import register_method
from msam_core.models.auxiliary import unimodal_heads_for
from msam_core.param_groups import modality_parameter_groups
from msam_core.step import FirstPass


def pareto_weight(g: list[Tensor], u: list[Tensor]) -> tuple[float, float]:
    """``(cos(g, u), α)``: α = ½ without conflict, else the minimum-norm weight on ``g``."""
    gg, uu, gu = float(dot(g, g)), float(dot(u, u)), float(dot(g, u))
    if gg == 0.0 or uu == 0.0:
        return 0.0, 0.5  # one side has no gradient: nothing conflicts
    cos = gu / math.sqrt(gg * uu)
    if cos > 0:
        return cos, 0.5
    return cos, min(max((uu - gu) / (gg + uu - 2 * gu), 0.0), 1.0)


def integrate(g: Tensor, u: Tensor, alpha: float, gamma: float) -> Tensor:
    """One parameter tensor's gradient: the weighted pair, at least the sum's norm, times γ."""
    combined = 2 * alpha * g + 2 * (1 - alpha) * u
    norm = torch.linalg.vector_norm(combined)
    if float(norm) == 0.0:
        return combined
    scale = torch.clamp(torch.linalg.vector_norm(g + u) / norm, min=1.0)
    return combined * scale * gamma


@register_method("mmpareto")
class MmParetoMethod(MultiLossMethod):
    """MMPareto around the base optimizer (module docstring)."""

    OPTIONS = ("mmpareto_gamma",)

    def __init__(self, model: nn.Module, config: Any) -> None:
        core = require_late_fusion(
            model, self.name, "integrates each encoder's multimodal and unimodal gradients"
        )
        self.heads = unimodal_heads_for(core)
        super().__init__(model, config)
        self.gamma = float(self.option("mmpareto_gamma", 1.5))
        if not (math.isfinite(self.gamma) and self.gamma > 0):
            raise ValueError(f"mmpareto_gamma must be a positive number, got {self.gamma}")
        groups = modality_parameter_groups(core)
        self.encoders = {m: trainable(groups[m]) for m in self.modalities}
        encoder_ids = {id(p) for ps in self.encoders.values() for p in ps}
        self.shared = [p for p in trainable(core.parameters()) if id(p) not in encoder_ids]
        self.head_params = {m: trainable(self.heads.heads[m].parameters()) for m in self.modalities}

    def update(
        self, core: nn.Module, first: FirstPass, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict[str, float]:
        """The rule of the module docstring on each encoder, then the optimizer step."""
        logits = self.heads(first.features)
        fields: dict[str, float] = {}
        unimodal = {}
        for m in self.modalities:
            unimodal[m] = F.cross_entropy(logits[m], targets)
            where = f"of modality {m!r}'s unimodal head"
            fields[f"loss/{m}"] = self.checked(unimodal[m], where, core, inputs)
        model_params = [*self.shared, *(p for m in self.modalities for p in self.encoders[m])]
        fused = gradients(first.loss, model_params, retain_graph=True)
        own = []
        for i, m in enumerate(self.modalities):
            last = i == len(self.modalities) - 1
            own += gradients(unimodal[m], self.encoders[m] + self.head_params[m], not last)
        fused, own = _split(average_over_ranks(fused + own), len(fused))

        n_shared = len(self.shared)
        assign(self.shared, fused[:n_shared])
        at, ot = n_shared, 0
        for m in self.modalities:
            n, h = len(self.encoders[m]), len(self.head_params[m])
            g, u = fused[at : at + n], own[ot : ot + n]
            cos, alpha = pareto_weight(g, u)
            assign(
                self.encoders[m],
                [integrate(gp, up, alpha, self.gamma) for gp, up in zip(g, u, strict=True)],
            )
            assign(self.head_params[m], own[ot + n : ot + n + h])
            fields[f"cos/{m}"], fields[f"coef/{m}"] = cos, alpha
            at, ot = at + n, ot + n + h
        self.optimizer.step()
        return fields

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The unimodal heads' parameters."""
        return {"heads": self.heads.state_dict()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.per_modality_heads(state, ("heads",))


def _split(values: list[Tensor], n: int) -> tuple[list[Tensor], list[Tensor]]:
    return values[:n], values[n:]
