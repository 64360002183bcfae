"""Sharpness ``ℓ(θ+ε) − ℓ(θ)``: overall, per modality block, and the periodic measures.

``ε = ρ·g/‖g‖`` is the SAM ascent (ASAM: ``ε = ρ·T²g/‖Tg‖`` with ``T = |θ|``).  Restricting
``ε`` to one modality's encoder parameters (the others stay at ``θ``) measures how sharp the
loss is along that encoder alone: the per-modality sharpness ``sharpness/<m>``; the head and
shared parameters give ``sharpness/fusion``.  Every block's ascent has radius ``ρ``.

Measurements leave the model as they found it: parameters restored exactly (copied back, not
subtracted), batch-norm running statistics and other buffers restored, ``.grad`` untouched,
and the global RNG state unchanged (each forward sees the same dropout masks).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.coalitions import eval_mode
from msam_core.hessian import hessian_record, trainable_parameters
from msam_core.optim.ascent import ascent, perturbed
from msam_core.param_groups import has_modality_groups, modality_parameter_groups

LossFn = Callable[[Tensor, Tensor], Tensor]


def _check_rho(rho: float) -> None:
    if not rho >= 0:
        raise ValueError(f"rho (the ascent radius) must be >= 0, got {rho}")


@contextmanager
def _measurement(model: nn.Module) -> Iterator[Callable[[], None]]:
    """Restore buffers and the RNG state on exit; yield ``reset()`` that rewinds the RNG so
    every forward inside draws the same random numbers (same dropout masks)."""
    buffers = [(b, b.detach().clone()) for b in model.buffers()]
    device = next(model.parameters()).device
    cpu_state = torch.get_rng_state()
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None

    def reset() -> None:
        torch.set_rng_state(cpu_state)
        if cuda_state is not None:
            torch.cuda.set_rng_state(cuda_state, device)

    try:
        yield reset
    finally:
        with torch.no_grad():
            for b, saved in buffers:
                b.copy_(saved)
        reset()


def _loss_and_grads(
    model: nn.Module, inputs, targets, params: Sequence[Tensor], loss_fn: LossFn
) -> tuple[float, list[Tensor]]:
    loss = loss_fn(model(inputs), targets)
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [
        g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)
    ]
    return float(loss.detach()), grads


def _loss_at(model: nn.Module, inputs, targets, loss_fn: LossFn) -> float:
    with torch.no_grad():
        return float(loss_fn(model(inputs), targets))


def sharpness(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    rho: float,
    loss_fn: LossFn = F.cross_entropy,
    params: Iterable[nn.Parameter] | None = None,
    adaptive: bool = False,
) -> float:
    """``ℓ(θ+ε) − ℓ(θ)`` on the batch with ``ε`` the SAM ascent over ``params``.

    ``params`` defaults to all trainable parameters; the others are not moved.  Cost: one
    forward-backward and one forward, in the model's current train/eval mode.
    """
    _check_rho(rho)
    params = list(params) if params is not None else trainable_parameters(model)
    with _measurement(model) as reset:
        reset()
        loss, grads = _loss_and_grads(model, inputs, targets, params, loss_fn)
        with perturbed(params, ascent(params, grads, rho, adaptive)):
            reset()
            return _loss_at(model, inputs, targets, loss_fn) - loss


def modality_sharpness(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    rho: float,
    loss_fn: LossFn = F.cross_entropy,
    adaptive: bool = False,
    overall: bool = False,
) -> dict[str, float]:
    """Sharpness of each modality's encoder and of the fusion head, from one shared gradient.

    Returns ``{"sharpness/<m>": ..., "sharpness/fusion": ...}`` (plus ``"sharpness"``, the
    ascent over all parameters, when ``overall``; one extra forward).  Cost: one
    forward-backward, then one forward per block.  A block with no parameters is left out.
    Raises ValueError for a model without per-modality encoders (early fusion).
    """
    _check_rho(rho)
    groups = modality_parameter_groups(model)
    params = trainable_parameters(model)
    position = {id(p): i for i, p in enumerate(params)}
    out: dict[str, float] = {}
    with _measurement(model) as reset:
        reset()
        loss, grads = _loss_and_grads(model, inputs, targets, params, loss_fn)
        blocks = [(f"sharpness/{b}", ps) for b, ps in groups.items() if ps]
        if overall:
            blocks.append(("sharpness", params))
        for key, block in blocks:
            block_grads = [grads[position[id(p)]] for p in block]
            with perturbed(block, ascent(block, block_grads, rho, adaptive)):
                reset()
                out[key] = _loss_at(model, inputs, targets, loss_fn) - loss
    return out


def periodic_measures(
    model: nn.Module,
    probe_inputs: Mapping[str, Tensor],
    probe_targets: Tensor,
    rho: float,
    *,
    loss_fn: LossFn = F.cross_entropy,
    adaptive: bool = False,
    overall: bool = False,
    hessian: bool = True,
    blocks: bool = True,
    tol: float = 1e-3,
    max_iter: int = 50,
    n_samples: int = 16,
    seed: int = 0,
    method: str = "lanczos",
    progress: bool = False,
) -> dict[str, float]:
    """Everything the loop records every k steps and at epoch end, on a fixed probe batch.

    Runs in eval mode (so the numbers follow the weights, not batch statistics or dropout)
    and restores the model's mode.  Keys: ``sharpness/<m>`` and ``sharpness/fusion`` for
    late-fusion models (left out for early fusion), ``sharpness`` when ``overall`` (e.g. for
    ``joint`` runs, where no SAM step measures it), and, when ``hessian``, the keys of
    :func:`msam_core.hessian.hessian_record` (per block when ``blocks``; top eigenvalue by
    ``method``, ``"lanczos"`` or ``"power"``).  ``seed`` fixes the Hessian probes so
    successive measurements differ only through the weights.  ``progress``: a progress bar
    over the Hessian measures, for calls outside training (the loop has its own bar).
    """
    out: dict[str, float] = {}
    with eval_mode(model):
        if has_modality_groups(model):
            out.update(
                modality_sharpness(
                    model, probe_inputs, probe_targets, rho, loss_fn, adaptive, overall
                )
            )
        elif overall:
            out["sharpness"] = sharpness(
                model, probe_inputs, probe_targets, rho, loss_fn, adaptive=adaptive
            )
        if hessian:
            out.update(
                hessian_record(
                    model,
                    probe_inputs,
                    probe_targets,
                    blocks,
                    loss_fn=loss_fn,
                    tol=tol,
                    max_iter=max_iter,
                    n_samples=n_samples,
                    method=method,
                    generator=torch.Generator().manual_seed(seed),
                    progress=progress,
                )
            )
    return out
