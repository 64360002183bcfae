"""``ogm_ge``: On-the-fly Gradient Modulation with Generalization Enhancement.

Peng et al., CVPR 2022, "Balanced Multimodal Learning via On-the-fly Gradient Modulation".
Each step, after the ordinary backward pass:

1. every modality's unimodal readout ``u_m`` (the fused model with the other modalities
   replaced by their baseline features: feature masking at the fusion head, so it works for
   every late-fusion head; see :mod:`msam_core.methods._readouts` for how it relates to the
   paper's split-weight readout of a concat head);
2. score_m = Σ_b softmax(u_m[b])[y_b]; discrepancy ratio ρ_m = score_m / mean_{k≠m} score_k
   (for two modalities the paper's score_a / score_v; with M modalities a modality is "ahead"
   when it is more confident than the others on average);
3. coefficient k_m = 1 − tanh(α · relu(ρ_m − 1)): only modalities ahead are slowed;
4. each modality's encoder gradients g become k_m · g, plus (GE) zero-mean Gaussian noise with
   the standard deviation of g, per parameter tensor, for every encoder (also those with
   k = 1, as the authors do; their code perturbs the convolution weights, here every encoder
   tensor of two or more elements);
5. the base optimizer steps.  Fusion-head gradients are left alone.

Options (``--method_options.<key> value``): ``ogm_alpha`` (α, default 0.5), ``ogm_ge``
(Gaussian enhancement on, default true; false gives plain OGM), ``ogm_form`` (``continuous``,
default, or ``published``: the authors' code's 1 − tanh(α · ρ) for ρ > 1), ``ogm_start`` /
``ogm_end`` (the epochs, inclusive, in which to modulate; default every epoch).

Records, besides loss and the batch's Shapley contributions (phi, weight, dominant):
``score/<m>``, ``ratio/<m>`` and ``coef/<m>`` (the coefficient applied: 1 outside the window).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from msam_core.coalitions import mean_over_ranks
from msam_core.methods._modulated import EncoderModulation
from msam_core.methods._readouts import (
    coalition_logits,
    singleton_masks,
)
from msam_core.methods.registry import register_method
from msam_core.modulation import (
    discrepancy_ratios,
    gaussian_enhancement,
    ogm_coefficients,
    ogm_scores,
)


@register_method("ogm_ge")
class OgmGeMethod(EncoderModulation):
    """OGM-GE around the base optimizer (module docstring)."""

    MIN_MODALITIES = 2
    MIN_MODALITIES_REASON = (
        "it slows a modality by the ratio of its unimodal score to the other modalities' scores, "
        "which one modality alone does not have"
    )
    OPTIONS = ("ogm_alpha", "ogm_form", "ogm_ge", "ogm_start", "ogm_end")
    prefix = "ogm"  # the window options: ogm_start, ogm_end

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        self.alpha = float(self.option("ogm_alpha", 0.5))
        self.form = str(self.option("ogm_form", "continuous"))
        self.enhance = bool(self.option("ogm_ge", True))
        ogm_coefficients(torch.ones(2), self.alpha, self.form)  # bad alpha / form fail here

    def coefficients(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor, features=None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """``(scores, ratios, coefficients)``, each ``[M]``, for one batch (no grad)."""
        masks = singleton_masks(len(self.modalities), targets.device)
        readouts = coalition_logits(model, inputs, masks, features=features)
        scores = mean_over_ranks(ogm_scores(readouts, targets), int(targets.shape[0]))
        ratios = discrepancy_ratios(scores)
        return scores, ratios, ogm_coefficients(ratios, self.alpha, self.form)

    @torch.no_grad()
    def modulate(self, coefficients: Tensor) -> None:
        """Scale (and, with GE, perturb) each modality's encoder gradients in place."""
        for m, name in enumerate(self.modalities):
            k = float(coefficients[m])
            for p in self.encoders[name]:
                if p.grad is None:
                    continue
                p.grad = gaussian_enhancement(p.grad, k) if self.enhance else p.grad.mul_(k)

    def readout(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor, features: Any
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """:meth:`coefficients` and the recorded fields."""
        scores, ratios, coefs = self.coefficients(model, inputs, targets, features)
        return coefs, {"score": scores, "ratio": ratios}
