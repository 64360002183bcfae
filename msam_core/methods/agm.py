"""``agm``: Adaptive Gradient Modulation (Li et al., ICCV 2023, "Boosting Multi-modal Model
Performance with Adaptive Gradient Modulation").

Each step, after the ordinary backward pass:

1. mono-modal responses: the logits of every coalition (no-grad, eval-mode passes with the
   absent modalities at their baselines; feature masking at the fusion head), turned into each
   modality's Shapley share of the logits with the empty coalition valued 0, so the responses
   add up to the fused logits (the authors' formulas for two and three modalities, for any M);
2. score s_m = mean_b −log max(softmax(r_m[b])[y_b], 1e-8), a loss: lower is stronger;
3. ratio ρ_m = exp(mean_{k≠m} s_k − s_m) = exp(M/(M−1)·(s̄ − s_m)) (two modalities: the paper's
   exp(s_v − s_a)); target ratio η_m, the same formula on the running averages of the scores
   over all steps so far (before this step's; all 1 at the first step);
4. coefficient c_m = exp(α · min(η_m − ρ_m, clamp)): a modality stronger now than its running
   average is slowed, one weaker is sped up;
5. each modality's encoder gradients are multiplied by c_m (fusion-head gradients unchanged),
   then the base optimizer steps.

Where the coefficient acts: the authors scale the gradient flowing back through each
mono-modal response (backward hooks on the responses).  Here, as in BalanceBenchmark's AGM,
the coefficient scales each modality's encoder gradients directly, which is modality-specific
whatever the fusion head.  The authors also clip gradient norms when the head's gradients
grow; that is left out (no clipping here).

Options (``--method_options.<key> value``): ``agm_alpha`` (α, default 0.1), ``agm_clamp``
(upper bound on η − ρ, default 10), ``agm_start`` / ``agm_end`` (epochs, inclusive, in which
to modulate; default every epoch; the running averages are updated at every step).

Records, besides loss and the batch's Shapley contributions (phi, weight, dominant):
``score/<m>``, ``ratio/<m>``, ``target/<m>`` (η) and ``coef/<m>`` (applied; 1 outside the
window).  The running averages are method state, so a resumed run continues them exactly.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from msam_core.coalitions import mean_over_ranks
from msam_core.methods._modulated import EncoderModulation
from msam_core.methods._readouts import (
    all_masks,
    coalition_logits,
)
from msam_core.methods.registry import register_method
from msam_core.modulation import (
    agm_coefficients,
    agm_ratios,
    agm_scores,
    mono_modal_responses,
    running_mean,
)


@register_method("agm")
class AgmMethod(EncoderModulation):
    """AGM around the base optimizer (module docstring)."""

    MIN_MODALITIES = 2
    MIN_MODALITIES_REASON = (
        "it compares each modality's mono-modal response with the other modalities' responses, "
        "which one modality alone does not have"
    )
    OPTIONS = ("agm_alpha", "agm_clamp", "agm_start", "agm_end")
    prefix = "agm"  # the window options: agm_start, agm_end

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        self.alpha = float(self.option("agm_alpha", 0.1))
        self.clamp = float(self.option("agm_clamp", 10.0))
        if self.alpha < 0:
            raise ValueError(f"agm_alpha must be >= 0, got {self.alpha}")
        self.score_mean = torch.zeros(len(self.modalities), dtype=torch.float64)
        self.count = 0

    def scores(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor, features=None
    ) -> Tensor:
        """``[M]`` AGM scores of the batch (no grad; float64, CPU)."""
        masks = all_masks(len(self.modalities), targets.device)
        logits = coalition_logits(model, inputs, masks, features=features)
        responses = mono_modal_responses(logits.double())
        scores = agm_scores(responses, targets)
        return mean_over_ranks(scores, int(targets.shape[0])).cpu()

    def update(self, scores: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(ratios, targets, coefficients)`` for this step's scores; advances the averages."""
        ratios = agm_ratios(scores)
        targets = agm_ratios(self.score_mean)
        coefs = agm_coefficients(ratios, targets, self.alpha, self.clamp)
        self.count += 1
        self.score_mean = running_mean(self.score_mean, scores.double(), self.count)
        return ratios, targets, coefs

    def readout(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor, features: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """The batch's scores, then :meth:`update`: coefficients and the recorded fields."""
        scores = self.scores(model, inputs, targets, features)
        ratios, target_ratios, coefs = self.update(scores)
        return coefs, {"score": scores, "ratio": ratios, "target": target_ratios}

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The running score averages and the number of steps they average."""
        return {"score_mean": self.score_mean.tolist(), "count": self.count}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.score_mean = self.per_modality_state(state, ("score_mean", "count"), "score_mean")
        self.count = int(state["count"])
