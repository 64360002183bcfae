"""M-SAM's variants (DESIGN.md): options of the ``msam`` method, never silent changes.

With every option at its default this is the ``msam`` method exactly (its step is the default
M-SAM step).  Options (``--method_options.<key> value``):

``decomposition``: ``weighted`` (default) or ``attributed``.
    ``weighted`` splits the fused loss by the dominant modality's Shapley weight,
    L_d = w_d·ℓ, L_s = (1 − w_d)·ℓ, so the ascent direction is that of the whole loss.
    ``attributed`` splits the fused *logits* z by modality with the Shapley values of the
    coalition logits (the empty coalition's logits shared equally, so Σ_m r_m = z exactly) and
    lets the loss's gradient flow through the dominant modality's share only:
    L_d = ℓ(r_d + sg(z − r_d)), L_s = ℓ(sg(r_d) + z − r_d), where sg stops the gradient.  Both
    have the value ℓ and ∇L_d + ∇L_s = ∇ℓ exactly, but the ascent ε = ρ·∇L_d/‖∇L_d‖ now follows
    the dominant modality's part of the prediction.  Descent: ∇L_d(θ+ε) + ∇L_s(θ).  Costs one
    pass of the fusion head over every coalition with grad, at θ and at θ+ε.
``phi_ema``: β in [0, 1), default 0 (off).
    The dominant modality and the weights come from an exponential moving average of the
    batch Shapley values, φ̄_t = β·φ̄_{t−1} + (1 − β)·φ_t, divided by 1 − β^t (as Adam's moments)
    so early steps are not pulled towards zero; a noisy batch then does not flip the dominant
    modality.  ``phi/<m>`` still records the batch's φ; ``phi_ema/<m>`` the average used, and
    ``dominant`` / ``weight/<m>`` what the step used.
``perturb``: ``all`` (default) or ``dominant_encoder``.
    ``dominant_encoder`` perturbs only the dominant modality's encoder (ε normalised over its
    parameters, zero elsewhere), so the flatness sought is that of the dominant encoder's
    landscape; needs a late-fusion model.

Invariants the tests hold: ρ = 0 is the base optimizer step (up to rounding) for every
variant; with the default options the step is the ``msam`` step.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.methods._readouts import (
    all_masks,
    coalition_logits,
    encoder_parameters,
    is_distributed,
    require_modality_encoders,
)
from msam_core.methods.msam import Msam
from msam_core.methods.registry import register_method
from msam_core.optim.modulation import mono_modal_responses
from msam_core.shapley import balance_weights, dominant_index
from msam_core.step import (
    StepResult,
    batch_shapley,
    check_finite_loss,
    forward_pass,
    frozen_batchnorm_stats,
    unwrap,
)

DECOMPOSITIONS = ("weighted", "attributed")
PERTURBS = ("all", "dominant_encoder")


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


def ascent_steps(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float | Sequence[float],
    adaptive: bool | Sequence[bool],
) -> list[Tensor]:
    """SAM's ε for ``params`` from ascent gradients ``grads`` (same order).

    ``ε = ρ·g/‖g‖`` or, adaptive (ASAM), ``ε = ρ·|θ|²g/‖|θ|g‖``, with one norm over all
    ``params`` as :class:`~msam_core.MSAM` takes it; ``rho`` and ``adaptive`` are one value
    or one per parameter (its optimizer group's).
    """
    if not params:
        return []
    rhos = [float(rho)] * len(params) if isinstance(rho, int | float) else list(rho)
    flags = [adaptive] * len(params) if isinstance(adaptive, bool) else list(adaptive)
    terms = list(zip(params, grads, rhos, flags, strict=True))
    scaled = [p.abs() * g if a else g for p, g, _, a in terms]
    norm = float(
        torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(s) for s in scaled]))
    )
    return [(p * p * g if a else g) * (r / (norm + 1e-12)) for p, g, r, a in terms]


@register_method("msam")
class MsamVariants(Msam):
    """The ``msam`` method with the DESIGN.md variants as options (module docstring)."""

    OPTIONS = ("decomposition", "phi_ema", "perturb")

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        self.decomposition = str(self.option("decomposition", "weighted"))
        self.phi_ema = float(self.option("phi_ema", 0.0))
        self.perturb = str(self.option("perturb", "all"))
        if self.decomposition not in DECOMPOSITIONS:
            raise ValueError(
                f"unknown msam decomposition {self.decomposition!r}; choose one of "
                f"{list(DECOMPOSITIONS)}"
            )
        if not 0.0 <= self.phi_ema < 1.0:
            raise ValueError(
                f"phi_ema (the EMA factor β over φ) must be in [0, 1), 0 = off; got {self.phi_ema}"
            )
        if self.perturb not in PERTURBS:
            raise ValueError(
                f"unknown msam perturb {self.perturb!r}; choose one of {list(PERTURBS)}"
            )
        self.encoders: dict[str, list[nn.Parameter]] = {}
        if self.perturb == "dominant_encoder":
            require_modality_encoders(model, "msam with perturb=dominant_encoder")
            self.encoders = encoder_parameters(model)
        self.ema = torch.zeros(len(self.modalities), dtype=torch.float64)
        self.ema_steps = 0

    @property
    def is_default(self) -> bool:
        """True when no variant is switched on (the step is the default M-SAM step)."""
        return self.decomposition == "weighted" and self.phi_ema == 0.0 and self.perturb == "all"

    # -- φ and its average -------------------------------------------------------------------

    def averaged_phi(self, phi: Tensor) -> Tensor:
        """The bias-corrected EMA of φ after this batch (``phi`` itself when off)."""
        if self.phi_ema == 0.0:
            return phi.double()
        beta = self.phi_ema
        self.ema_steps += 1
        self.ema = beta * self.ema + (1.0 - beta) * phi.double().cpu()
        return self.ema / (1.0 - beta**self.ema_steps)

    # -- the step ----------------------------------------------------------------------------

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        if self.is_default:
            return super().step(model, inputs, targets)
        if self.decomposition == "attributed" and is_distributed():
            raise ValueError(
                "msam with decomposition=attributed takes its gradients through the coalition "
                "passes, outside DistributedDataParallel's gradient all-reduce, so the replicas "
                "would drift apart; under torch.distributed use the default decomposition "
                "(weighted), phi_ema or perturb=dominant_encoder"
            )
        start = time.perf_counter()
        optimizer = self.optimizer
        params = [p for group in optimizer.param_groups for p in group["params"]]
        optimizer.zero_grad()
        first = forward_pass(model, inputs, targets)
        value = self.config.shapley_value
        if self.decomposition == "weighted":
            first.loss.backward()
            shapley = batch_shapley(model, inputs, targets, first, value)
        else:
            shapley = batch_shapley(model, inputs, targets, first, value)
        phi = self.averaged_phi(shapley.phi)
        d = dominant_index(phi)
        weights = balance_weights(phi)
        w = float(weights[d])

        if self.decomposition == "weighted":
            first_grads = [p.grad for p in params]
            ascent_grads = first_grads
        else:
            # the gradients are taken inside the block: restoring the running statistics
            # on exit writes buffers the eval-mode baseline encoding saved for backward
            with frozen_batchnorm_stats(model):
                logits = coalition_logits(
                    model,
                    inputs,
                    all_masks(len(self.modalities)),
                    features=first.features,
                    grad=True,
                )
                loss_d, loss_s, _ = attributed_losses(logits, targets, d)
                ascent_grads = _grads(loss_d, params, retain_graph=True)
                first_grads = _grads(loss_s, params)
        loss_perturbed, second_grads = self._perturbed_pass(
            model, inputs, targets, params, ascent_grads, d
        )
        for p, g2, g1 in zip(params, second_grads, first_grads, strict=True):
            p.grad = _combine(g2, g1, w if self.decomposition == "weighted" else None)
        optimizer.base_optimizer.step()

        loss = float(first.loss.detach())
        result = StepResult(loss, shapley, loss_perturbed, w, time.perf_counter() - start)
        record = result.to_record(self.modalities)
        record["dominant"] = self.modalities[d]
        for m, name in enumerate(self.modalities):
            record[f"weight/{name}"] = float(weights[m])
            if self.phi_ema:
                record[f"phi_ema/{name}"] = float(phi[m])
        return record

    def _perturbed_pass(
        self,
        model: nn.Module,
        inputs: Mapping[str, Tensor],
        targets: Tensor,
        params: list[nn.Parameter],
        ascent_grads: list[Tensor | None],
        dominant: int,
    ) -> tuple[float, list[Tensor | None]]:
        """Move to θ + ε, take the second gradients, restore θ; ``(ℓ(θ+ε), grads)``."""
        allowed = None
        if self.perturb == "dominant_encoder":
            allowed = {id(p) for p in self.encoders[self.modalities[dominant]]}
        moved: list[tuple[nn.Parameter, Tensor]] = []
        group_of = {id(p): g for g in self.optimizer.param_groups for p in g["params"]}
        chosen = [
            (p, g)
            for p, g in zip(params, ascent_grads, strict=True)
            if g is not None and (allowed is None or id(p) in allowed)
        ]
        try:
            with torch.no_grad():
                groups = [group_of[id(p)] for p, _ in chosen]
                eps = ascent_steps(
                    [p for p, _ in chosen],
                    [g for _, g in chosen],
                    [float(group["rho"]) for group in groups],
                    [bool(group["adaptive"]) for group in groups],
                )
                for (p, _), e in zip(chosen, eps, strict=True):
                    moved.append((p, p.detach().clone()))
                    p.add_(e)
            for p in params:
                p.grad = None
            with frozen_batchnorm_stats(model):
                if self.decomposition == "weighted":
                    loss = F.cross_entropy(model(inputs), targets)
                    check_finite_loss(
                        loss, "at θ+ε (second, perturbed pass)", unwrap(model), inputs
                    )
                    loss.backward()
                    perturbed = float(loss.detach())
                else:
                    logits = coalition_logits(
                        model, inputs, all_masks(len(self.modalities)), grad=True
                    )
                    loss_d, _, fused = attributed_losses(logits, targets, dominant)
                    check_finite_loss(
                        fused, "at θ+ε (second, perturbed pass)", unwrap(model), inputs
                    )
                    loss_d.backward()
                    perturbed = float(fused)
            grads = [p.grad for p in params]
        finally:
            with torch.no_grad():
                for p, theta in moved:
                    p.copy_(theta)
        return perturbed, grads

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
    """``∂loss/∂p`` for each of ``params``; None for frozen or unused ones."""
    need = [p for p in params if p.requires_grad]
    found = iter(torch.autograd.grad(loss, need, retain_graph=retain_graph, allow_unused=True))
    return [next(found) if p.requires_grad else None for p in params]


def _combine(second: Tensor | None, first: Tensor | None, w: float | None) -> Tensor | None:
    """``w·g' + (1 − w)·g`` (weighted) or ``g'_d + g_s`` (``w`` None: attributed)."""
    if second is None and first is None:
        return None
    if second is None:
        second = torch.zeros_like(first)
    if first is None:
        first = torch.zeros_like(second)
    if w is None:
        return second + first
    return second * w + first * (1.0 - w)
