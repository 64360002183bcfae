"""fp16 loss scaling for a step of several backward passes, on one ``torch.amp.GradScaler``.

A step may take several gradients before a parameter changes: SAM's two passes, MMPareto's
M + 1 losses, MLA's M sub-steps.  ``GradScaler``'s own protocol (one ``unscale_`` and one
``step`` per optimizer between two ``update`` calls) fits one backward per step, so here the
scaler keeps its state (scale, growth tracker, factors: its ``state_dict`` is what checkpoints
hold) and its update rule, and :class:`LossScaling` scales every pass of the step:

* :func:`backward` / :func:`grad`: the loss times the scale ``S``, then the new gradients divided
  by ``S`` in place, with torch's unscale kernel noting (without a host read) whether any is
  inf or NaN.  Every gradient a method sees is therefore unscaled: SAM's ``ε = ρ·g/‖g‖``,
  M-SAM's ``w_d·g' + (1 − w_d)·g``, OGM-GE's and AGM's coefficients, MMPareto's integration
  compute on true gradients.
* :meth:`LossScaling.check`: raises :class:`StepSkipped` when a gradient of the step so far was
  not finite (one host read, agreed by every ``torch.distributed`` rank).  It runs before any
  parameter changes: before the SAM ascent moves ``θ`` (``optim.sam``) and before every
  optimizer step (a step pre-hook, :meth:`LossScaling.step`), so a skipped step changes no
  parameter, as ``GradScaler.step`` skips.
* :meth:`LossScaling.step`: the block of one step (``step.run_step``'s); at its end the scaler's
  own ``update`` once: the scale backs off after a skipped step and grows after
  ``growth_interval`` clean ones.

The scaling in force is set by :func:`loss_scaling`, a ``with`` block around the method's step,
as ``torch.autocast`` is; outside one, :func:`backward` and :func:`grad` are plain autograd.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor

_ACTIVE: ContextVar[LossScaling | None] = ContextVar("msam_loss_scaling", default=None)


class StepSkipped(Exception):
    """A gradient of this step was inf or NaN under loss scaling: no parameter was changed, and
    the scale backs off at the step's end (``GradScaler.step``'s skip)."""


class _InfFlag:
    """What ``GradScaler.unscale_`` reads of an optimizer: one parameter whose gradient is NaN
    when the step found a non-finite gradient.  Unscaled by the scaler itself, it hands the
    step's verdict (from several passes) to ``GradScaler.update``, which then applies its own
    backoff / growth rule."""

    def __init__(self) -> None:
        self.flag = torch.zeros(1)
        self.param_groups = [{"params": [self.flag]}]

    def set(self, found: Tensor) -> None:
        if self.flag.device != found.device:
            self.flag = torch.zeros(1, device=found.device)
            self.param_groups = [{"params": [self.flag]}]
        self.flag.grad = torch.where(found.view(1) > 0, torch.nan, 0.0).float()


class LossScaling:
    """Dynamic loss scaling of every backward pass of a step (module docstring).

    ``scaler``: an enabled ``torch.amp.GradScaler`` (``GradScaler("cuda")`` in a run); its
    settings and ``state_dict`` are the run's.  :attr:`steps` counts the steps that took their
    gradients through the scaling (the scale updated), :attr:`skipped` those skipped.
    """

    def __init__(self, scaler: torch.amp.GradScaler) -> None:
        if not scaler.is_enabled():
            raise ValueError("LossScaling needs an enabled GradScaler")
        self.scaler = scaler
        self.steps = 0
        self.skipped = 0
        self._found: dict[torch.device, Tensor] = {}  # per device: 1.0 once a gradient was bad
        self._unchecked = False  # gradients unscaled since the last check
        self._flag = _InfFlag()

    # -- one pass --------------------------------------------------------------------------

    def scale(self, loss: Tensor) -> Tensor:
        """``S·loss``."""
        return self.scaler.scale(loss)

    @torch.no_grad()
    def unscale(self, grads: Sequence[Tensor]) -> None:
        """Divide ``grads`` by ``S`` in place, noting whether any entry is inf or NaN."""
        groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = defaultdict(list)
        for g in grads:
            groups[g.device, g.dtype].append(g)
        for (device, _), tensors in groups.items():
            # the scale as a tensor on the gradients' device (no host read); 1/S in float64,
            # as GradScaler computes it
            scale = self.scaler.scale(torch.ones((), device=device))
            inverse = scale.double().reciprocal().float()
            found = self._found.get(device)
            if found is None:
                found = self._found[device] = torch.zeros((), device=device)
            torch._amp_foreach_non_finite_check_and_unscale_(tensors, found, inverse)
        self._unchecked = True

    def check(self) -> None:
        """StepSkipped if a gradient unscaled in this step was inf or NaN (module docstring)."""
        if not self._unchecked:
            return
        self._unchecked = False
        found = self._found_total()
        if found is None:
            return
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(found, op=dist.ReduceOp.MAX)  # every rank skips, or none
        if float(found) > 0:
            raise StepSkipped(
                f"a gradient overflowed at loss scale {self.scaler.get_scale():g}; the step is "
                "skipped and the scale backs off"
            )

    def _found_total(self) -> Tensor | None:
        founds = list(self._found.values())
        if not founds:
            return None
        total = founds[0]
        for other in founds[1:]:
            total = total + other.to(total.device)
        self._found = {total.device: total}
        return total

    # -- one step --------------------------------------------------------------------------

    @contextmanager
    def step(self, optimizer: torch.optim.Optimizer) -> Iterator[None]:
        """The block of one optimisation step: :meth:`check` runs before every step of
        ``optimizer`` (of its ``base_optimizer`` for a SAM-family wrapper, whose step is that
        one's); at the end the scaler's ``update`` (once, also when the step was skipped or
        failed)."""
        self._found, self._unchecked = {}, False
        stepping = getattr(optimizer, "base_optimizer", optimizer)
        handle = stepping.register_step_pre_hook(lambda *_: self.check())
        try:
            yield
        except StepSkipped:
            self.skipped += 1
            raise
        finally:
            handle.remove()
            self._update()

    def _update(self) -> None:
        found = self._found_total()
        self._found, self._unchecked = {}, False
        if found is None:  # no gradient was taken through the scaling: nothing to judge
            return
        self._flag.set(found)
        self.scaler.unscale_(self._flag)
        self.scaler.update()
        self.steps += 1

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The scaler's state (plain numbers: a weights-only load takes it)."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.scaler.load_state_dict(state)


# --------------------------------------------------------------------------------------------
# the scaling in force, and the two ways to take gradients through it


def active_scaling() -> LossScaling | None:
    """The :class:`LossScaling` of the enclosing :func:`loss_scaling` block, or None."""
    return _ACTIVE.get()


@contextmanager
def loss_scaling(scaling: LossScaling | None) -> Iterator[LossScaling | None]:
    """Inside the block, :func:`backward`, :func:`grad` and the steps scale their losses with
    ``scaling`` (None: no scaling, plain autograd)."""
    token = _ACTIVE.set(scaling)
    try:
        yield scaling
    finally:
        _ACTIVE.reset(token)


def backward(loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> None:
    """``loss.backward(retain_graph=...)``; under loss scaling the new gradients of ``params``
    (those whose ``.grad`` this pass wrote: call it with cleared gradients) come out unscaled."""
    scaling = active_scaling()
    if scaling is None:
        loss.backward(retain_graph=retain_graph)
        return
    scaling.scale(loss).backward(retain_graph=retain_graph)
    scaling.unscale([p.grad for p in params if p.grad is not None])


def grad(loss: Tensor, params: Sequence[Tensor], retain_graph: bool = False) -> list[Tensor | None]:
    """``torch.autograd.grad(loss, params, allow_unused=True)``, unscaled under loss scaling."""
    scaling = active_scaling()
    if scaling is None:
        return list(torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True))
    grads = torch.autograd.grad(
        scaling.scale(loss), params, retain_graph=retain_graph, allow_unused=True
    )
    scaling.unscale([g for g in grads if g is not None])
    return list(grads)


def check_gradients() -> None:
    """StepSkipped when a gradient of this step was not finite under loss scaling; nothing
    without it.  Called before a parameter moves outside an optimizer step (SAM's ascent)."""
    scaling = active_scaling()
    if scaling is not None:
        scaling.check()
