"""``msam``: Modality-Aware SAM (arXiv 2510.24919), the step of docs/design.md, "M-SAM step".

Each step: Shapley contributions φ on the batch, dominant d = argmax φ, shares
w_m = max(φ_m, 0) / Σ max(φ_k, 0); a SAM ascent on the dominant modality's parameters only,
ε = ρ·g_d/‖g_d‖; the base optimizer steps on w_d·∇ℓ(θ+ε) + (1 − w_d)·∇ℓ(θ).  ``rho`` and
``adaptive`` as for SAM.  Records phi/<m>, weight/<m>, dominant and sharpness every step.

Options (``--method_options.<key> value``), never silent changes:

``perturb``: ``dominant`` (default) or ``all``.
    ``dominant`` moves only the dominant modality's parameters
    (:func:`~msam_core.param_groups.modality_parameters`: a late-fusion model's encoder, early
    fusion's first-layer columns reading that modality, or what the model's own
    ``modality_parameters()`` declares); ``all`` is the literal transcription, ε = ρ·g/‖g‖ over
    every parameter, which is SAM's ascent whatever w_d (README, "M-SAM").  ``dominant_encoder``
    is accepted as the older spelling of ``dominant``.
``decomposition``: ``weighted`` (default) or ``attributed``.
    ``weighted`` splits the fused loss by the dominant modality's share, L_d = w_d·ℓ,
    L_s = (1 − w_d)·ℓ.  ``attributed`` splits the fused *logits* z by modality with the Shapley
    values of the coalition logits (the empty coalition's logits shared equally, so
    Σ_m r_m = z exactly) and lets the loss's gradient flow through the dominant modality's share
    only: L_d = ℓ(r_d + sg(z − r_d)), L_s = ℓ(sg(r_d) + z − r_d), where sg stops the gradient.
    Both have the value ℓ and ∇L_d + ∇L_s = ∇ℓ exactly; the ascent follows ∇L_d and the descent
    is ∇L_d(θ+ε) + ∇L_s(θ).  Costs one pass of the fusion head over every coalition with grad,
    at θ and at θ+ε.
``phi_ema``: β in [0, 1), default 0 (off).
    The dominant modality and the weights come from an exponential moving average of the
    batch Shapley values, φ̄_t = β·φ̄_{t−1} + (1 − β)·φ_t, divided by 1 − β^t (as Adam's moments)
    so early steps are not pulled towards zero; a noisy batch then does not flip the dominant
    modality.  ``phi/<m>`` still records the batch's φ; ``phi_ema/<m>`` the average used, and
    ``dominant`` / ``weight/<m>`` what the step used.

Invariants the tests hold: ρ = 0 is the base optimizer step (up to rounding) for every
variant; ``perturb=all`` with w_d = 1 is SAM; the targeted ε is zero outside the dominant
modality's parameters and has norm ρ.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.coalitions import is_distributed, unwrap
from msam_core.methods._readouts import all_masks, coalition_logits
from msam_core.methods.base import Method, sharpness_aware_optimizer
from msam_core.methods.registry import register_method
from msam_core.modulation import mono_modal_responses
from msam_core.optim.sam import MSAM, Restriction
from msam_core.optim.scaling import backward as scaled_backward
from msam_core.optim.scaling import grad as scaled_grad
from msam_core.param_groups import modality_parameters
from msam_core.shapley import ShapleyResult, balance_weights, dominant_index
from msam_core.step import (
    FirstPass,
    Update,
    check_finite_loss,
    check_perturb,
    frozen_batchnorm_stats,
    msam_update,
    reusable_encoders,
    run_step,
)

DECOMPOSITIONS = ("weighted", "attributed")


def attributed_losses(coalition_logits: Tensor, targets: Tensor, dominant: int) -> tuple:
    """``(L_d, L_s, ℓ)`` of the attributed decomposition from coalition logits ``[2**M, B, C]``.

    ``r = mono_modal_responses(logits)`` (Σ_m r_m = z, the full coalition's logits);
    ``L_d = ℓ(r_d + sg(z − r_d))`` and ``L_s = ℓ(sg(r_d) + z − r_d)``; all three equal ``ℓ(z)``
    in value and ``∇L_d + ∇L_s = ∇ℓ``.
    """
    responses = mono_modal_responses(coalition_logits)
    z = coalition_logits[-1]
    r_d = responses[dominant]
    loss_d = F.cross_entropy(r_d + (z - r_d).detach(), targets)
    loss_s = F.cross_entropy(r_d.detach() + (z - r_d), targets)
    return loss_d, loss_s, F.cross_entropy(z.detach(), targets)


@register_method("msam")
class MsamMethod(Method):
    """The ``msam`` method: the targeted M-SAM step, with the variants as options."""

    OPTIONS = ("decomposition", "phi_ema", "perturb")
    # chosen on validation by benchmarks/msam_study.py's rule on the default stage (README:
    # the M-SAM study); the targeted ascent moves one encoder, so it takes a larger radius
    # than SAM's whole-model 0.05
    DEFAULT_RHO = 1.0
    measures_sharpness = True

    optimizer: MSAM

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        self.decomposition = str(self.option("decomposition", "weighted"))
        self.phi_ema = float(self.option("phi_ema", 0.0))
        self.perturb = check_perturb(self.option("perturb", "dominant"))
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"unknown msam decomposition {self.decomposition!r}; choose one of "
                f"{list(DECOMPOSITIONS)}"
            )
        if not 0.0 <= self.phi_ema < 1.0:
            raise ValueError(
                f"phi_ema (the EMA factor β over φ) must be in [0, 1), 0 = off; got {self.phi_ema}"
            )
        # which parameters each modality owns: found (or refused) before any file is written
        self.parts = None
        if self.perturb == "dominant":
            self.parts = modality_parameters(
                unwrap(model), "msam's targeted ascent (the default, perturb=dominant)"
            )
        self.ema = torch.zeros(len(self.modalities), dtype=torch.float64)
        self.ema_steps = 0

    def build_optimizer(self, model: nn.Module, config: Any) -> MSAM:
        """The :class:`~msam_core.optim.MSAM` wrapper around the configured base optimizer."""
        return sharpness_aware_optimizer(MSAM, model, config, type(self).DEFAULT_RHO)

    # -- φ and its average -------------------------------------------------------------------

    def averaged_phi(self, phi: Tensor) -> Tensor:
        """The bias-corrected EMA of φ after this batch (``phi`` itself when off)."""
        if self.phi_ema == 0.0:
            return phi.double()
        beta = self.phi_ema
        self.ema_steps += 1
        self.ema = beta * self.ema + (1.0 - beta) * phi.double().cpu()
        return self.ema / (1.0 - beta**self.ema_steps)

    def restriction(self, dominant: int) -> Restriction | None:
        """The ascent's parameters for dominant modality index ``dominant`` (None: all)."""
        return None if self.parts is None else self.parts[self.modalities[dominant]]

    # -- the step ----------------------------------------------------------------------------

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        if self.decomposition == "attributed":
            return self._attributed_step(model, inputs, targets)
        average = self.averaged_phi if self.phi_ema else None
        encoders = reusable_encoders(model, self.parts)
        update = msam_update(
            model,
            self.optimizer,
            inputs,
            targets,
            parts=self.parts,
            average=average,
            encoders=encoders,
        )
        value = self.config.shapley_value
        rows = self.shapley_rows(targets)
        retain = encoders is not None
        result = run_step(
            model,
            self.optimizer,
            inputs,
            targets,
            update,
            value=value,
            rows=rows,
            retain_graph=retain,
        )
        return result.to_record(self.modalities)

    def _attributed_step(
        self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict:
        """The step with ``decomposition=attributed`` (module docstring)."""
        if is_distributed():
            raise ValueError(
                "msam with decomposition=attributed takes its gradients through the coalition "
                "passes, outside DistributedDataParallel's gradient all-reduce, so the replicas "
                "would drift apart; under torch.distributed use the default decomposition "
                "(weighted), phi_ema or perturb"
            )
        optimizer = self.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        masks = all_masks(len(self.modalities))

        def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
            phi = self.averaged_phi(shapley.phi)
            d = dominant_index(phi)
            w = float(balance_weights(phi)[d])
            # the gradients are taken inside the block: restoring the running statistics on
            # exit writes buffers the eval-mode baseline encoding saved for backward
            with frozen_batchnorm_stats(model):
                logits = coalition_logits(model, inputs, masks, features=first.features, grad=True)
                loss_d, loss_s, _ = attributed_losses(logits, targets, d)
                for p, g in zip(params, _grads(loss_d, params, retain_graph=True), strict=True):
                    p.grad = g
                kept = dict(zip(params, _grads(loss_s, params), strict=True))
            optimizer.first_step(zero_grad=True, only=self.restriction(d), first_grads=kept)
            try:
                with frozen_batchnorm_stats(model):
                    logits = coalition_logits(model, inputs, masks, grad=True)
                    loss_d, _, fused = attributed_losses(logits, targets, d)
                    where = "at θ+ε (second, perturbed pass)"
                    check_finite_loss(fused, where, unwrap(model), inputs)
                    scaled_backward(loss_d, params)
            except BaseException:
                optimizer.restore()
                raise
            optimizer.second_step(1.0, first_weight=1.0)  # ∇L_d(θ+ε) + ∇L_s(θ)
            return Update(float(fused), w, phi if self.phi_ema else None)

        value = self.config.shapley_value
        rows = self.shapley_rows(targets)
        result = run_step(
            model, optimizer, inputs, targets, update, value=value, backward=False, rows=rows
        )
        return result.to_record(self.modalities)

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The EMA of φ and its step count (empty when the EMA is off)."""
        if not self.phi_ema:
            return {}
        return {"phi_ema": self.ema.tolist(), "steps": self.ema_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if not self.phi_ema:
            super().load_state_dict(state)
            return
        self.ema = self.per_modality_state(state, ("phi_ema", "steps"), "phi_ema")
        self.ema_steps = int(state["steps"])


def _grads(loss: Tensor, params: list[nn.Parameter], retain_graph: bool = False) -> list:
    """``∂loss/∂p`` for each of ``params``; None for frozen or unused ones (unscaled under
    fp16's loss scaling)."""
    need = [p for p in params if p.requires_grad]
    found = iter(scaled_grad(loss, need, retain_graph=retain_graph))
    return [next(found) if p.requires_grad else None for p in params]
