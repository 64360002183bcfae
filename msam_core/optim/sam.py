"""SAM and Modality-Aware SAM as ``torch.optim.Optimizer`` wrappers around a base optimizer.

One M-SAM step (docs/design.md, "M-SAM step"), in two explicit phases::

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from msam_core.optim.ascent import ascent, combine
from msam_core.optim.scaling import check_gradients

Closure = Callable[[], Tensor]
#: The parameters an ascent may move, each with a bool mask of its shape or None (all of it).
Restriction = Sequence[tuple[Tensor, Tensor | None]]


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
        self._ascended = False
        self._theta: dict[Tensor, Tensor] = {}  # θ during a step, per parameter
        self._moved: list[Tensor] = []  # the parameters the ascent moved
        self._params: list[Tensor] = []  # every parameter, and its first-pass gradient
        self._firsts: list[Tensor | None] = []
        super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
        self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        self.param_groups = self.base_optimizer.param_groups  # shared: schedulers see one lr
        self.defaults.update(self.base_optimizer.defaults)

    # -- the two phases ----------------------------------------------------------------------

    @property
    def perturbed(self) -> bool:
        """True between the ascent (``first_step``) and the descent (``second_step``)."""
        return self._ascended

    @torch.no_grad()
    def _ascend(
        self,
        zero_grad: bool,
        only: Restriction | None = None,
        kept: Mapping[Tensor, Tensor | None] | None = None,
    ) -> None:
        if self.perturbed:
            raise RuntimeError(
                "first_step called twice: the parameters are already at θ + ε; call "
                "second_step (or restore) first"
            )
        params = [p for group in self.param_groups for p in group["params"]]
        with_grad = [p for p in params if p.grad is not None]
        if not with_grad:
            raise RuntimeError(
                "first_step found no gradients: call loss.backward() on the loss at θ first"
            )
        check_gradients()  # fp16: an overflowed g skips the step before θ moves
        group_of = {p: group for group in self.param_groups for p in group["params"]}
        if only is None:  # the whole model: the parameters that have a gradient
            chosen = [(p, None) for p in with_grad]
        else:
            unknown = [tuple(p.shape) for p, _ in only if p not in group_of]
            if unknown:
                raise ValueError(
                    f"first_step(only=...) names parameters of shapes {unknown} that this "
                    "optimizer does not hold"
                )
            chosen = [(p, mask) for p, mask in only if p.grad is not None]
        moved = [p for p, _ in chosen]
        eps = ascent(
            moved,
            [p.grad for p in moved],
            [group_of[p]["rho"] for p in moved],
            [group_of[p]["adaptive"] for p in moved],
            [mask for _, mask in chosen],
        )
        if moved:
            # θ kept by copy (buffers reused step to step): the restore is exact, unlike θ+ε−ε
            torch._foreach_copy_([self._theta_buffer(p) for p in moved], moved)
            torch._foreach_add_(moved, eps)
            torch.clear_autocast_cache()  # under autocast, half copies of θ cached would be reused
        self._moved = moved
        self._ascended = True
        if self._keeps_first_grad:  # moved, not copied: the next backward starts at 0
            self._firsts = [p.grad if kept is None else kept.get(p) for p in params]
            self._params = params
        for p in with_grad:
            p.grad = None  # every gradient is now None: zero_grad has nothing left to do

    def _theta_buffer(self, p: Tensor) -> Tensor:
        """Where ``θ`` of ``p`` is kept during a step (allocated once per parameter)."""
        buffer = self._theta.get(p)
        if buffer is None or (buffer.shape, buffer.dtype, buffer.device) != (
            p.shape,
            p.dtype,
            p.device,
        ):
            buffer = self._theta[p] = torch.empty_like(p)
        return buffer

    def _put_back(self) -> None:
        """Copy ``θ`` back into the parameters the ascent moved; forget the step's state."""
        if self._moved:
            torch._foreach_copy_(self._moved, [self._theta[p] for p in self._moved])
            torch.clear_autocast_cache()
        self._moved, self._params, self._firsts = [], [], []
        self._ascended = False

    @torch.no_grad()
    def restore(self) -> None:
        """Put every perturbed parameter back at ``θ`` and drop the step's saved state.

        For error handling between the two phases (e.g. a non-finite perturbed loss); gradients
        are cleared, the base optimizer does not step.
        """
        self._put_back()
        self.zero_grad()

    @torch.no_grad()
    def second_step(
        self,
        dominant_weight: float = 1.0,
        zero_grad: bool = False,
        *,
        first_weight: float | None = None,
    ) -> None:
        """Restore ``θ``; the base optimizer steps on ``w_d·g' + (1 − w_d)·g``
        (``first_weight`` replaces ``1 − w_d``: 1 for the attributed decomposition's sum).
        Foreach ops: one copy back of θ, one scale and one add for the blend."""
        a = _check_weight(dominant_weight)
        b = 1.0 - a if first_weight is None else float(first_weight)
        if not self.perturbed:
            raise RuntimeError("second_step called without first_step: nothing to descend from")
        params, firsts = self._params, self._firsts
        self._put_back()
        if params and not (a == 1.0 and b == 0.0):  # SAM's descent is g' itself
            combined = combine([p.grad for p in params], firsts, a, b)
            for p, g in zip(params, combined, strict=True):
                p.grad = g
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

    def first_step(
        self,
        zero_grad: bool = False,
        *,
        only: Restriction | None = None,
        first_grads: Mapping[Tensor, Tensor | None] | None = None,
    ) -> None:
        """Store ``g`` and ``θ``, move to ``θ + ε``; every gradient is moved into the state.

        ``only``: ``[(parameter, mask or None), ...]``, the parameters the ascent may move (ε
        is zero elsewhere and normalised over them; a mask restricts it to part of a tensor),
        e.g. the dominant modality's (:func:`msam_core.param_groups.modality_parameters`).
        ``first_grads``: the gradients the descent blends with ``g'`` when they are not the
        ``∇ℓ(θ)`` in ``.grad`` (the attributed decomposition's ``∇L_s(θ)``).
        """
        self._ascend(zero_grad, only, first_grads)

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

    def first_step(self, zero_grad: bool = False, *, only: Restriction | None = None) -> None:
        """Store ``θ``, move to ``θ + ε`` (``only`` as in :meth:`MSAM.first_step`); the
        gradients are cleared."""
        self._ascend(zero_grad, only)

    def second_step(self, zero_grad: bool = False) -> None:
        """Restore ``θ``; the base optimizer steps on ``∇ℓ(θ + ε)``."""
        super().second_step(1.0, zero_grad, first_weight=0.0)

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
