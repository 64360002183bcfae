"""One optimisation step in one call: plain, SAM or M-SAM, each recording modality Shapley.

Every helper returns a :class:`StepResult` whose :meth:`StepResult.to_record` gives the
DESIGN.md iteration keys, so a training loop treats all methods alike.  The pieces are public
so other methods (OGM-GE, AGM, M-SAM variants) reuse them instead of copying a step:

1. :func:`forward_pass`: the forward with grad, through ``encode`` / ``fuse`` when the model
   has them (so the features can be reused), loss checked for NaN/inf;
2. :func:`batch_shapley`: coalition values of the batch -> :class:`ShapleyResult`
   (from the detached first-pass features when possible, else a no-grad input-masking pass;
   averaged over ranks under ``torch.distributed``);
3. :func:`perturbed_backward`: ``first_step``, the second forward/backward at ``θ + ε`` with
   batch-norm running statistics frozen; parameters restored if anything fails.

M-SAM step (DESIGN.md): g = ∇ℓ(θ); φ on the batch; d = argmax φ, w from
:func:`~msam_core.shapley.balance_weights`; ε = ρ·g/‖g‖; g' = ∇ℓ(θ+ε); base step on
w_d·g' + (1 − w_d)·g.  Cost: one SAM step plus the no-grad coalition pass.

Reusing the first pass: a late-fusion model's coalition values come from the training-mode
features of the first forward (dropout / batch statistics as in training; only the head runs
again, in eval mode).  For any model, the first pass's logits are the full coalition's when
train and eval mode compute the same (:func:`same_in_train_and_eval`), so 2**M − 1 coalitions
remain, the empty one a single row.  ``reuse_first_pass=False`` gives eval-mode values from a
fresh no-grad pass.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from msam_core.coalitions import (
    all_coalitions,
    check_targets,
    check_value_kind,
    coalition_sums,
    eval_mode,
    has_feature_path,
    mean_values,
    resolve_masking,
    training_modules,
    value_sums,
)
from msam_core.masking import check_inputs
from msam_core.optim.ascent import ascent, perturbed
from msam_core.optim.sam import MSAM, SAM, Restriction
from msam_core.param_groups import ModalityParameters, modality_parameters
from msam_core.shapley import (
    MAX_EXACT_PLAYERS,
    ShapleyResult,
    balance_weights,
    dominant_index,
    modality_shapley,
)

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Buffers that batch-norm-like layers update in a training-mode forward.
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class NonFiniteLossError(FloatingPointError):
    """The loss of a step is NaN or infinite; raised before the bad gradients reach the model."""


# --------------------------------------------------------------------------------------------
# small pieces


def unwrap(model: nn.Module) -> nn.Module:
    """The protocol model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Leave batch-norm running statistics exactly as they were after the block.

    Training-mode forwards inside still normalise with batch statistics (as SAM's second pass
    should); only ``running_mean`` / ``running_var`` / ``num_batches_tracked`` of every module
    that has them are copied back on exit, also on error.
    """
    saved = []
    for module in model.modules():
        for name in _RUNNING_STATS:
            buffer = getattr(module, name, None)
            if isinstance(buffer, Tensor):
                saved.append((buffer, buffer.detach().clone()))
    try:
        yield model
    finally:
        with torch.no_grad():
            for buffer, value in saved:
                buffer.copy_(value)


def _non_finite_facts(model: nn.Module, inputs: Mapping[str, Tensor]) -> list[str]:
    facts = []
    bad_inputs = [m for m, x in inputs.items() if x.is_floating_point() and not x.isfinite().all()]
    if bad_inputs:
        facts.append(f"the inputs of modalities {bad_inputs} contain NaN/inf")
    bad_params = [n for n, p in model.named_parameters() if not p.detach().isfinite().all()]
    if bad_params:
        shown = ", ".join(bad_params[:3]) + (" ..." if len(bad_params) > 3 else "")
        facts.append(f"{len(bad_params)} parameter tensors are already non-finite ({shown})")
    return facts


def check_finite_loss(
    loss: Tensor, where: str, model: nn.Module, inputs: Mapping[str, Tensor]
) -> float | None:
    """Raise :class:`NonFiniteLossError` naming the loss value and what to try.

    Returns a scalar loss as a float: the check and the value the step records are one
    device-to-host read (None for a loss of several elements, checked element-wise).
    """
    if loss.numel() == 1:
        value = float(loss.detach())
        if math.isfinite(value):
            return value
    elif bool(torch.isfinite(loss.detach()).all()):
        return None
    facts = _non_finite_facts(model, inputs)
    raise NonFiniteLossError(
        f"the loss {where} is {float(loss.detach()):g} on this batch; the step was stopped "
        f"before updating the parameters. "
        + (("Found: " + "; ".join(facts) + ". ") if facts else "")
        + "Try a lower learning rate (lr) or ascent radius (rho), or check the data for NaN/inf."
    )


# --------------------------------------------------------------------------------------------
# the first pass and the Shapley record


@dataclass
class FirstPass:
    """The forward at ``θ``: ``logits [B, C]``, ``loss`` (scalar, with grad) and the
    per-modality ``features`` when the model was run as ``fuse(encode(x))`` (else None);
    ``loss_value`` is ``float(loss)``, read once when the loss was checked."""

    logits: Tensor
    loss: Tensor
    features: dict[str, Tensor] | None
    loss_value: float | None = None

    @property
    def value(self) -> float:
        """ℓ(θ) as a float (read from the device only if it was not read already)."""
        return float(self.loss.detach()) if self.loss_value is None else self.loss_value

    @property
    def batch_size(self) -> int:
        return int(self.logits.shape[0])


def forward_pass(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
) -> FirstPass:
    """Forward with grad at the current parameters; raises NonFiniteLossError on NaN/inf loss.

    A late-fusion model runs as ``fuse(encode(inputs), None)`` (its ``forward`` with every
    modality present) so the features are kept; a wrapped (DDP) or early-fusion model runs
    through ``model(inputs)``.
    """
    core = unwrap(model)
    modalities = getattr(core, "modalities", None)
    if not modalities:
        raise ValueError(
            f"{type(core).__name__} does not follow the model protocol: it needs a "
            f"`modalities` list"
        )
    check_targets(targets, check_inputs(inputs, modalities))
    features = None
    if core is model and has_feature_path(core):
        features = dict(core.encode(inputs))
        logits = core.fuse(features, None)
    else:
        logits = model(inputs)
    loss = loss_fn(logits, targets)
    if loss.ndim != 0:
        raise ValueError(
            f"loss_fn must return a scalar (the batch mean), got shape {list(loss.shape)}"
        )
    value = check_finite_loss(loss, "at θ (first pass)", core, inputs)
    return FirstPass(logits, loss, features, value)


def same_in_train_and_eval(model: nn.Module) -> bool:
    """True when no module would compute differently in eval mode: no active dropout
    (p > 0) and no batch norm in training mode.  Then a training forward's outputs are the
    eval-mode outputs, and the step may reuse them as coalition values."""
    return _same_in_train_and_eval(training_modules(model))


def _same_in_train_and_eval(training: list[nn.Module]) -> bool:
    """:func:`same_in_train_and_eval` from the modules in training mode."""
    for module in training:
        if isinstance(module, _DropoutNd) and module.p > 0:
            return False
        if isinstance(module, _BatchNorm):
            return False
    return True


def is_distributed() -> bool:
    """True under ``torch.distributed`` with more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _reduce_values(values: Tensor, batch_size: int, device: torch.device) -> Tensor:
    """Sample-weighted mean of ``values`` over ``torch.distributed`` ranks (identity alone)."""
    if not is_distributed():
        return values
    packed = torch.cat([values * batch_size, values.new_tensor([batch_size])]).to(device)
    torch.distributed.all_reduce(packed)
    packed = packed.cpu()
    return packed[:-1] / packed[-1]


def batch_shapley(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    first: FirstPass | None = None,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
) -> ShapleyResult:
    """Shapley values of the batch, reusing the first pass ``first`` where the model allows.

    Late fusion (feature masking): only ``fuse`` runs, on the detached first-pass features (the
    baseline features are one eval-mode encoder pass on one sample).  Otherwise a no-grad
    coalition pass as :func:`~msam_core.coalitions.coalition_values`.  Either way the full
    coalition is skipped when ``first.logits`` already are its eval-mode logits
    (:func:`same_in_train_and_eval`).
    ``reuse_first_pass=False`` (or ``first=None``) always runs the full coalition pass.  Under
    ``torch.distributed`` the coalition values are averaged over ranks (weighted by batch
    size), so every rank picks the same dominant modality.
    """
    core = unwrap(model)
    resolved = resolve_masking(core, masking)
    modalities = list(core.modalities)
    if len(modalities) > MAX_EXACT_PLAYERS:  # sampled; φ averaged over ranks instead
        result = modality_shapley(core, inputs, targets, value, resolved, baselines, chunk_size)
        batch_size = int(targets.shape[0])
        phi = _reduce_values(result.phi, batch_size, targets.device)
        return ShapleyResult(modalities, phi, None, result.stderr)
    check_value_kind(value)
    if first is None:  # forward_pass checked these otherwise
        check_targets(targets, check_inputs(inputs, modalities))
    reuse = reuse_first_pass and first is not None
    training = training_modules(core)  # one walk of the module tree serves both uses below
    # the first pass's logits are the full coalition's when train and eval mode agree
    reuse_full = reuse and _same_in_train_and_eval(training)
    coalitions = all_coalitions(len(modalities))
    coalitions = coalitions[:-1] if reuse_full else coalitions  # the full one is the last
    features = first.features if resolved == "feature" and reuse and first.features else None
    with torch.no_grad(), eval_mode(core, training):
        sums, positions = coalition_sums(
            core, inputs, targets, coalitions, value, resolved, baselines, chunk_size, features
        )
    if reuse_full:
        sums.append(value_sums(first.logits.detach(), targets, 1, value))
        positions.append(len(coalitions))
    batch_size = int(targets.shape[0])
    values = mean_values(sums, positions, batch_size)  # the one device-to-host copy
    values = _reduce_values(values, batch_size, targets.device)
    return ShapleyResult.from_values(modalities, values)


# --------------------------------------------------------------------------------------------
# the second pass


def perturbed_backward(
    model: nn.Module,
    optimizer: MSAM | SAM,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    only: Restriction | None = None,
) -> float:
    """``optimizer.first_step`` (restricted to ``only`` when given), then loss and gradients at
    ``θ + ε`` (running stats frozen).

    Returns ``ℓ(θ+ε)``.  The caller finishes with ``optimizer.second_step``; if the second pass
    fails (e.g. NonFiniteLossError) the parameters are restored to ``θ`` before re-raising.
    """
    optimizer.first_step(zero_grad=True, only=only)
    try:
        with frozen_batchnorm_stats(model):
            loss = loss_fn(model(inputs), targets)
            where = "at θ+ε (second, perturbed pass)"
            value = check_finite_loss(loss, where, unwrap(model), inputs)
            loss.backward()
    except BaseException:
        optimizer.restore()
        raise
    return float(loss.detach()) if value is None else value


@torch.no_grad()
def _loss_after_ascent(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn,
    rho: float,
) -> float:
    """``ℓ(θ+ε)`` from the gradients already in ``.grad`` (θ, grads, running stats untouched)."""
    params = [p for p in model.parameters() if p.grad is not None]
    if not params:
        raise RuntimeError("sharpness needs the gradients of the first pass; none were found")
    eps = ascent(params, [p.grad for p in params], rho)
    with perturbed(params, eps), frozen_batchnorm_stats(model):
        return float(loss_fn(model(inputs), targets))


# --------------------------------------------------------------------------------------------
# results and the three steps


@dataclass
class StepResult:
    """What one step measured.

    ``loss`` = ℓ(θ) on the batch (before the update); ``loss_perturbed`` = ℓ(θ+ε) (SAM family,
    or plain steps asked for sharpness); ``shapley`` the batch's :class:`ShapleyResult` (None
    when not computed); ``dominant_weight`` the w_d the descent used (M-SAM; 1.0 for SAM);
    ``time_s`` the wall time of the whole step in seconds; ``phi_ema`` the averaged φ the
    step took its dominant modality and weights from, when it did not use the batch's.
    """

    loss: float
    shapley: ShapleyResult | None = None
    loss_perturbed: float | None = None
    dominant_weight: float | None = None
    time_s: float = 0.0
    phi_ema: Tensor | None = None

    @property
    def sharpness(self) -> float | None:
        """ℓ(θ+ε) − ℓ(θ) on the batch, or None when there was no ascent."""
        return None if self.loss_perturbed is None else self.loss_perturbed - self.loss

    @property
    def phi(self) -> Tensor | None:
        return None if self.shapley is None else self.shapley.phi

    @property
    def weights(self) -> Tensor | None:
        return None if self.shapley is None else self.shapley.weights

    @property
    def dominant(self) -> str | None:
        return None if self.shapley is None else self.shapley.dominant

    @property
    def values(self) -> Tensor | None:
        return None if self.shapley is None else self.shapley.values

    def to_record(self, modalities: Sequence[str] | None = None) -> dict[str, Any]:
        """DESIGN.md iteration keys: ``loss``, ``dominant``, ``phi/<m>``, ``weight/<m>``,
        ``sharpness``, ``time/step_s``; what was not measured is absent (never zero)."""
        record: dict[str, Any] = {"loss": self.loss}
        if self.shapley is not None:
            if modalities is not None and list(modalities) != self.shapley.modalities:
                raise ValueError(
                    f"record asked for modalities {list(modalities)} but the step measured "
                    f"{self.shapley.modalities}"
                )
            record.update(self.shapley.to_record())
            if self.phi_ema is not None:  # what the step used, beside the batch's phi/<m>
                names = self.shapley.modalities
                record["dominant"] = names[dominant_index(self.phi_ema)]
                weights = balance_weights(self.phi_ema)
                for m, name in enumerate(names):
                    record[f"weight/{name}"] = float(weights[m])
                    record[f"phi_ema/{name}"] = float(self.phi_ema[m])
        if self.sharpness is not None and math.isfinite(self.sharpness):
            record["sharpness"] = self.sharpness
        record["time/step_s"] = self.time_s
        return record


def plain_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    value: str | None = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
    sharpness_rho: float | None = None,
) -> StepResult:
    """One step of the base optimizer, recording the batch's Shapley values (``value=None``:
    none).  ``sharpness_rho`` adds ℓ(θ+ε) − ℓ(θ) for ε = ρ·g/‖g‖ (one more no-grad forward)."""
    start = time.perf_counter()
    first = forward_pass(model, inputs, targets, loss_fn)
    optimizer.zero_grad()
    first.loss.backward()
    shapley = None
    if value is not None:
        shapley = batch_shapley(
            model, inputs, targets, first, value, masking, baselines, chunk_size, reuse_first_pass
        )
    perturbed = None
    if sharpness_rho is not None:
        perturbed = _loss_after_ascent(model, inputs, targets, loss_fn, sharpness_rho)
    optimizer.step()
    loss = first.value
    return StepResult(loss, shapley, perturbed, None, time.perf_counter() - start)


def sam_step(
    model: nn.Module,
    optimizer: SAM | MSAM,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    value: str | None = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
) -> StepResult:
    """One SAM step (``w_d = 1``), recording the batch's Shapley values and sharpness."""
    start = time.perf_counter()
    first = forward_pass(model, inputs, targets, loss_fn)
    optimizer.zero_grad()
    first.loss.backward()
    shapley = None
    if value is not None:
        shapley = batch_shapley(
            model, inputs, targets, first, value, masking, baselines, chunk_size, reuse_first_pass
        )
    perturbed = perturbed_backward(model, optimizer, inputs, targets, loss_fn)
    if isinstance(optimizer, MSAM):
        optimizer.second_step(1.0)
    else:
        optimizer.second_step()
    loss = first.value
    return StepResult(loss, shapley, perturbed, 1.0, time.perf_counter() - start)


#: Where M-SAM's ascent may move: the dominant modality's parameters (the default) or every
#: parameter (``all``, the literal transcription, see :func:`msam_step`).
PERTURBS = ("dominant", "all")
#: Older spellings still accepted for a ``perturb`` value.
PERTURB_ALIASES = {"dominant_encoder": "dominant"}


def check_perturb(perturb: str) -> str:
    """The canonical ``perturb`` value (aliases resolved); ValueError naming the choices."""
    name = PERTURB_ALIASES.get(str(perturb), str(perturb))
    if name not in PERTURBS:
        older = ", ".join(f"{old} for {new}" for old, new in PERTURB_ALIASES.items())
        raise ValueError(
            f"unknown msam perturb {perturb!r}; choose one of {list(PERTURBS)} (older names "
            f"accepted: {older})"
        )
    return name


def msam_step(
    model: nn.Module,
    optimizer: MSAM,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
    *,
    perturb: str = "dominant",
    parts: ModalityParameters | None = None,
    average: Callable[[Tensor], Tensor] | None = None,
) -> StepResult:
    """One M-SAM step (docs/design.md, "M-SAM step").

    ``g = ∇ℓ(θ)``; φ on the batch, ``d = argmax φ``, ``w`` from
    :func:`~msam_core.shapley.balance_weights`; the ascent ``ε = ρ·g_d/‖g_d‖`` with ``g_d``
    the gradient restricted to the dominant modality's parameters (``perturb="dominant"``;
    ``parts`` from :func:`~msam_core.param_groups.modality_parameters`, found on the model when
    None) or ``ε = ρ·g/‖g‖`` (``perturb="all"``, the literal form); ``g' = ∇ℓ(θ+ε)`` with
    batch-norm running statistics frozen; base step on ``w_d·g' + (1 − w_d)·g``.
    ``average`` maps the batch's φ to the φ the step uses (the method's EMA); its result is
    kept as :attr:`StepResult.phi_ema`.  Cost: one SAM step plus the no-grad coalition pass.
    """
    if not isinstance(optimizer, MSAM):
        raise TypeError(
            f"msam_step needs an msam_core.MSAM optimizer (its second_step takes the dominant "
            f"weight), got {type(optimizer).__name__}; use sam_step for SAM"
        )
    if value is None:
        raise ValueError("msam_step needs Shapley values: value must be accuracy, prob or neg_loss")
    targeted = check_perturb(perturb) == "dominant"
    if targeted and parts is None:
        parts = modality_parameters(unwrap(model), "msam's targeted ascent (perturb=dominant)")
    start = time.perf_counter()
    first = forward_pass(model, inputs, targets, loss_fn)
    optimizer.zero_grad()
    first.loss.backward()
    shapley = batch_shapley(
        model, inputs, targets, first, value, masking, baselines, chunk_size, reuse_first_pass
    )
    used = None if average is None else average(shapley.phi)
    d = shapley.dominant_index if used is None else dominant_index(used)
    weights = shapley.weights if used is None else balance_weights(used)
    weight = float(weights[d])
    only = parts[shapley.modalities[d]] if targeted else None
    perturbed_loss = perturbed_backward(model, optimizer, inputs, targets, loss_fn, only)
    optimizer.second_step(weight)
    loss = first.value
    return StepResult(loss, shapley, perturbed_loss, weight, time.perf_counter() - start, used)
