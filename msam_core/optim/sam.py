"""SAM and Modality-Aware SAM as ``torch.optim.Optimizer`` wrappers around a base optimizer.

One M-SAM step (DESIGN.md, "M-SAM step"), in two explicit phases::

    loss(model(x), y).backward()                # g = ∇ℓ(θ)
    optimizer.first_step(zero_grad=True)        # θ -> θ + ε,  ε = ρ·g/‖g‖
    loss(model(x), y).backward()                # g' = ∇ℓ(θ + ε)
    optimizer.second_step(dominant_weight=w_d)  # θ restored; base step on w_d·g' + (1 − w_d)·g

``w_d = 1`` is SAM exactly (Foret et al. 2021); ``w_d = 0`` or ``ρ = 0`` is the base optimizer
exactly.  ``adaptive=True`` is ASAM's scale-invariant ascent ``ε = ρ·|θ|²g/‖|θ|g‖``.

As in the reference SAM, the wrapper builds the base optimizer on its own ``param_groups`` and
shares them, so learning-rate schedulers (on either object), per-group ``lr`` / ``rho`` /
``adaptive`` and weight decay (the base optimizer's) just work; ``state_dict`` round-trips the
base optimizer's state (momentum, Adam moments) together with the groups.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

Closure = Callable[[], Tensor]


class _SharpnessAware(torch.optim.Optimizer):
    """The shared machinery: ascent to ``θ + ε``, exact restore, weighted descent."""

    #: Whether :meth:`_ascend` keeps ``g = ∇ℓ(θ)`` for the descent (SAM does not need it).
    _keeps_first_grad = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[torch.optim.Optimizer],
        rho: float = 0.05,
        adaptive: bool = False,
        **base_kwargs: Any,
    ) -> None:
        if not (isinstance(rho, int | float) and math.isfinite(rho) and rho >= 0):
            raise ValueError(f"rho (the ascent radius) must be a finite number >= 0, got {rho!r}")
        if not (
            isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer)
        ):
            raise TypeError(
                f"base_optimizer must be a torch.optim.Optimizer class such as torch.optim.SGD "
                f"(the wrapper builds it on its own parameter groups), got {base_optimizer!r}"
            )
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # shared: schedulers see one lr
        self.defaults.update(self.base_optimizer.defaults)

    # -- the two phases ----------------------------------------------------------------------

    @property
    def perturbed(self) -> bool:
        """True between the ascent (``first_step``) and the descent (``second_step``)."""
        return any("theta" in state for state in self.state.values())

    @torch.no_grad()
    def _ascend(self, zero_grad: bool) -> None:
        if self.perturbed:
            raise RuntimeError(
                "first_step called twice: the parameters are already at θ + ε; call "
                "second_step (or restore) first"
            )
        # the norm runs over the parameters actually perturbed: those with a gradient
        scaled = [
            (p.abs() * p.grad if group["adaptive"] else p.grad)
            for group in self.param_groups
            for p in group["params"]
            if p.grad is not None
        ]
        if not scaled:
            raise RuntimeError(
                "first_step found no gradients: call loss.backward() on the loss at θ first"
            )
        device = scaled[0].device
        grad_norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(s).to(device) for s in scaled])
        )
        for group in self.param_groups:
            scale = group["rho"] / (grad_norm + 1e-12)
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                state["theta"] = p.detach().clone()  # restored by copy: exact, unlike θ+ε−ε
                step = (p * p * p.grad if group["adaptive"] else p.grad) * scale.to(p)
                if self._keeps_first_grad:
                    state["first_grad"] = p.grad  # moved, not copied: the next backward starts at 0
                p.grad = None
                p.add_(step)
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def restore(self) -> None:
        """Put every perturbed parameter back at ``θ`` and drop the step's saved state.

        For error handling between the two phases (e.g. a non-finite perturbed loss); gradients
        are cleared, the base optimizer does not step.
        """
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                theta = state.pop("theta", None)
                state.pop("first_grad", None)
                if theta is not None:
                    p.copy_(theta)
        self.zero_grad()

    @torch.no_grad()
    def _descend(self, dominant_weight: float, zero_grad: bool) -> None:
        if not self.perturbed:
            raise RuntimeError("second_step called without first_step: nothing to descend from")
        w = _check_weight(dominant_weight)
        for group in self.param_groups:
            for p in group["params"]:
                state = self.state.get(p, {})
                theta = state.pop("theta", None)
                first = state.pop("first_grad", None)
                if theta is not None:  # every perturbed parameter, even without a second grad
                    p.copy_(theta)
                p.grad = _combine(p.grad, first, w)
        self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its state + the shared groups, with rho/adaptive)."""
        if self.perturbed:
            raise RuntimeError(
                "state_dict called between first_step and second_step: the parameters are at "
                "θ + ε; finish the step (second_step) or call restore() before checkpointing"
            )
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load what :meth:`state_dict` returned (the groups are re-shared afterwards)."""
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups  # load replaced the group dicts

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to both wrapper and base optimizer (they share one list of groups)."""
        if "base_optimizer" not in self.__dict__:  # during __init__: the base does not exist yet
            super().add_param_group(param_group)
            return
        for key in ("rho", "adaptive"):
            param_group.setdefault(key, self.defaults[key])
        self.base_optimizer.add_param_group(param_group)
        self.param_groups = self.base_optimizer.param_groups

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_optimizer!r})"


def _check_weight(weight: float | Tensor) -> float:
    w = float(weight)
    if not (math.isfinite(w) and 0.0 <= w <= 1.0):
        raise ValueError(
            f"dominant_weight must be in [0, 1] (the dominant modality's share w_d of the loss), "
            f"got {weight!r}"
        )
    return w


def _combine(second: Tensor | None, first: Tensor | None, w: float) -> Tensor | None:
    """``w·g' + (1 − w)·g``; a missing gradient counts as zero, and is None if both are.

    The two ends are exact (no arithmetic): w = 1 gives g' (SAM), w = 0 gives g (base).
    """
    if w == 1.0 or first is None:
        return None if second is None or w == 0.0 else (second if w == 1.0 else second.mul_(w))
    if w == 0.0 or second is None:
        return first if w == 0.0 else first.mul_(1.0 - w)
    return second.mul_(w).add_(first, alpha=1.0 - w)  # in place: g' is this step's own tensor


class MSAM(_SharpnessAware):
    """Modality-Aware SAM (arXiv 2510.24919): a SAM step on the dominant modality's share.

    ``MSAM(params, torch.optim.SGD, rho=0.05, adaptive=False, lr=0.1, momentum=0.9)``; the
    keyword arguments after ``adaptive`` go to the base optimizer (weight decay included).
    ``first_step`` moves to ``θ + ε`` (ε normalised over the parameters that have a gradient);
    ``second_step(dominant_weight)`` restores ``θ`` and steps the base optimizer on
    ``w_d·∇ℓ(θ+ε) + (1 − w_d)·∇ℓ(θ)`` (= ∇L_d(θ+ε) + ∇L_s(θ) with L_d = w_d·ℓ, L_s = (1−w_d)·ℓ).
    Between the phases the first-pass gradient is kept in ``self.state`` (one copy of the
    gradients) next to ``θ``.
    """

    def first_step(self, zero_grad: bool = False) -> None:
        """Store ``g`` and ``θ``, move to ``θ + ε``.  Gradients of perturbed params are cleared
        (moved into state); ``zero_grad=True`` also clears every other parameter's."""
        self._ascend(zero_grad)

    def second_step(self, dominant_weight: float, zero_grad: bool = False) -> None:
        """Restore ``θ``; the base optimizer steps on ``w_d·g' + (1 − w_d)·g``."""
        self._descend(dominant_weight, zero_grad)

    def step(self, closure: Closure | None = None, dominant_weight: float = 1.0) -> Tensor:
        """The closure form: ``∇ℓ(θ)`` must already be in ``.grad``; ``closure`` recomputes the
        loss and calls ``backward`` (it runs at ``θ + ε``).  Returns the closure's loss."""
        if closure is None:
            raise ValueError(
                "MSAM.step needs a closure that computes the loss and calls backward (it is "
                "evaluated at θ + ε); or call first_step / second_step yourself"
            )
        _check_weight(dominant_weight)
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                loss = closure()
        except BaseException:
            self.restore()
            raise
        self.second_step(dominant_weight)
        return loss


class SAM(_SharpnessAware):
    """Sharpness-Aware Minimization (Foret et al. 2021): :class:`MSAM` with ``w_d = 1``.

    Same constructor and phases; ``second_step`` takes no weight, and the first-pass gradient
    is not kept (SAM steps on ``∇ℓ(θ+ε)`` alone).
    """

    _keeps_first_grad = False

    def first_step(self, zero_grad: bool = False) -> None:
        """Store ``θ``, move to ``θ + ε``; perturbed parameters' gradients are cleared."""
        self._ascend(zero_grad)

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``θ``; the base optimizer steps on ``∇ℓ(θ + ε)``."""
        self._descend(1.0, zero_grad)

    def step(self, closure: Closure | None = None) -> Tensor:
        """Closure form as :meth:`MSAM.step`; returns the loss at ``θ + ε``."""
        if closure is None:
            raise ValueError(
                "SAM.step needs a closure that computes the loss and calls backward (it is "
                "evaluated at θ + ε); or call first_step / second_step yourself"
            )
        self.first_step(zero_grad=True)
        try:
            with torch.enable_grad():
                loss = closure()
        except BaseException:
            self.restore()
            raise
        self.second_step()
        return loss
