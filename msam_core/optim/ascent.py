"""The one sharpness-aware primitive: the ascent ε, an exact restore, the weighted combine.

Every place that perturbs parameters goes through these three pieces: the SAM-family
optimizers (:mod:`msam_core.optim.sam`), the per-step and per-modality sharpness measures, and
every M-SAM variant.

* :func:`ascent`: ``ε = ρ·g/‖g‖`` (ASAM: ``ρ·|θ|²g/‖|θ|g‖``) with one norm over every entry
  that may move.  Restricting the ascent to a subset of the parameters is passing only that
  subset; restricting it to part of a tensor (e.g. the columns of a first layer that read one
  modality) is a bool ``mask`` of the tensor's shape, outside which ε is exactly zero and which
  the norm does not see.
* :func:`move` / :func:`restore` (and :func:`perturbed`, both as a ``with`` block): ``θ``
  is saved by copy and copied back, so the restore is exact, unlike ``θ + ε − ε``.
* :func:`combine`: ``a·g' + b·g`` with exact ends (``a = 1, b = 0`` is ``g'``, SAM's descent).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import Tensor

#: Added to ``‖g‖`` so a zero gradient gives ``ε = 0`` rather than NaN.
NORM_EPS = 1e-12


def _per_param(value: float | bool | Sequence, n: int, name: str) -> list:
    if isinstance(value, bool | int | float):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} parameters")
    return values


@torch.no_grad()
def ascent(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    rho: float | Sequence[float],
    adaptive: bool | Sequence[bool] = False,
    masks: Sequence[Tensor | None] | None = None,
) -> list[Tensor]:
    """The ascent ``ε`` for ``params`` from the gradients ``grads`` (same order and shapes).

    ``ε = ρ·g/‖g‖`` or, ``adaptive`` (ASAM), ``ε = ρ·|θ|²g/‖|θ|g‖``, with one norm over all
    ``params`` (a zero gradient gives ``ε = 0``).  ``rho`` and ``adaptive`` are one value or one
    per parameter (its optimizer group's).  ``masks[i]``, when given and not None, is a bool
    tensor of ``params[i]``'s shape: ε is zero where it is False and the norm runs over the
    entries where it is True only, so the masked ε has norm ``ρ``.  Foreach ops (one kernel
    per operation over all tensors, not one per parameter) in the usual case of one ``ρ`` and
    no ``adaptive``; the norm stays on the device (no host read).
    """
    n = len(params)
    if n == 0:
        return []
    rhos = _per_param(rho, n, "rho")
    flags = _per_param(adaptive, n, "adaptive")
    masks = [None] * n if masks is None else list(masks)
    if len(masks) != n or len(grads) != n:
        raise ValueError(f"ascent needs one gradient and one mask per parameter ({n})")
    # a mask may have been made before the model moved (a method built, then model.to("cuda"),
    # as Lightning does): it follows the gradient's device
    directions = [
        g if mask is None else g * mask.to(device=g.device, dtype=g.dtype)
        for g, mask in zip(grads, masks, strict=True)
    ]
    scaled = [
        p.detach().abs() * g if a else g for p, g, a in zip(params, directions, flags, strict=True)
    ]
    device = scaled[0].device
    norms = torch._foreach_norm(scaled)
    norm = torch.linalg.vector_norm(torch.stack([v.to(device) for v in norms]))
    inverse = 1.0 / (norm + NORM_EPS)
    uniform = len(set(rhos)) == 1 and not any(flags)
    if uniform and all(g.device == device and g.dtype == norm.dtype for g in directions):
        return torch._foreach_mul(directions, inverse * rhos[0])
    return [
        (p.detach() * p.detach() * g if a else g) * (r * inverse).to(g)
        for p, g, r, a in zip(params, directions, rhos, flags, strict=True)
    ]


@torch.no_grad()
def move(params: Sequence[Tensor], eps: Sequence[Tensor]) -> list[Tensor]:
    """``θ -> θ + ε`` in place; returns copies of ``θ`` for :func:`restore`."""
    saved = [p.detach().clone() for p in params]
    for p, e in zip(params, eps, strict=True):
        p.add_(e)
    torch.clear_autocast_cache()  # under autocast, half copies of θ cached would be reused
    return saved


@torch.no_grad()
def restore(params: Sequence[Tensor], saved: Sequence[Tensor]) -> None:
    """Copy the values :func:`move` saved back into ``params`` (exact)."""
    for p, theta in zip(params, saved, strict=True):
        p.copy_(theta)
    torch.clear_autocast_cache()


@contextmanager
def perturbed(params: Sequence[Tensor], eps: Sequence[Tensor]) -> Iterator[None]:
    """Inside the block the parameters are at ``θ + ε``; ``θ`` is restored on exit, also on
    error."""
    saved = move(params, eps)
    try:
        yield
    finally:
        restore(params, saved)


@torch.no_grad()
def combine(
    seconds: Sequence[Tensor | None],
    firsts: Sequence[Tensor | None],
    a: float,
    b: float | None = None,
) -> list[Tensor | None]:
    """``a·g' + b·g`` for every parameter (``b`` defaults to ``1 − a``: the M-SAM descent
    ``w·g' + (1 − w)·g``), with foreach ops over the parameters that have both gradients.

    A missing gradient counts as zero, and a result is None if both are.  The ends are exact
    (no arithmetic): ``a = 1, b = 0`` gives ``g'`` (SAM), ``a = 0, b = 1`` gives ``g``.  The
    ``seconds`` (the perturbed pass's own gradients) and ``firsts`` are overwritten in place.
    """
    b = 1.0 - a if b is None else b
    seconds = [None if a == 0.0 else g for g in seconds]
    firsts = [None if b == 0.0 else g for g in firsts]
    both = [
        i
        for i, (s, f) in enumerate(zip(seconds, firsts, strict=True))
        if s is not None and f is not None
    ]
    only_second = [g for g, f in zip(seconds, firsts, strict=True) if g is not None and f is None]
    only_first = [f for g, f in zip(seconds, firsts, strict=True) if g is None and f is not None]
    if a != 1.0:
        scaled = [seconds[i] for i in both] + only_second
        if scaled:
            torch._foreach_mul_(scaled, a)
    if both:
        torch._foreach_add_([seconds[i] for i in both], [firsts[i] for i in both], alpha=b)
    if b != 1.0 and only_first:
        torch._foreach_mul_(only_first, b)
    return [s if s is not None else f for s, f in zip(seconds, firsts, strict=True)]
