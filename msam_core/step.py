"""One optimisation step in one call: plain, SAM or M-SAM, each recording modality Shapley.

Every step has the same skeleton, :func:`run_step`: the forward at ``θ``, ``zero_grad``, the
backward, the batch's Shapley values, then the method's own *update* (a function of the first
pass and the Shapley result that changes the parameters), timed as a whole.  It returns a
:class:`StepResult` whose :meth:`StepResult.to_record` gives the iteration keys
(docs/design.md, "The run directory"), so a training loop treats all methods alike.  The pieces
updates are built from are public:

1. :func:`forward_pass`: the forward with grad, through ``encode`` / ``fuse`` when the model
   has them (so the features can be reused), loss checked for NaN/inf;
2. :func:`~msam_core.shapley.batch_shapley` (imported here): the batch's φ, reusing the first
   pass where the model allows, the same on every ``torch.distributed`` rank;
3. :func:`perturbed_backward`: ``first_step`` (optionally restricted to some parameters), the
   second forward/backward at ``θ + ε`` with batch-norm running statistics frozen; parameters
   restored if anything fails.

Under fp16 (a :func:`~msam_core.optim.scaling.loss_scaling` block, which the loop opens beside
autocast) :func:`run_step` is the one place that runs the step through the loss scaling: every
backward pass (its own, the perturbed one, a method's ``scaling.grad``) is scaled and unscaled
at once, so updates see true gradients; a non-finite gradient skips the whole step before any
parameter changes (θ restored if the ascent had moved it) and the scale backs off, once per
step (docs/design.md, "Precision").

:func:`plain_step`, :func:`sam_step` and :func:`msam_step` (docs/design.md, "M-SAM step") are
the three updates every built-in method uses; OGM-GE / AGM and M-SAM's attributed variant pass
their own update to :func:`run_step`.  Step time: :attr:`StepResult.time_s` is the skeleton's
measure for callers of these functions; in a run, ``time/step_s`` is the loop's measure of the
whole ``Method.step`` (the same clock for every method, plug-ins included).
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.dropout import _DropoutNd

from msam_core.coalitions import check_targets, has_feature_path, submodules, unwrap
from msam_core.hooks import global_hooks, has_hooks
from msam_core.masking import check_inputs
from msam_core.optim.ascent import ascent, perturbed
from msam_core.optim.sam import MSAM, SAM, Restriction
from msam_core.optim.scaling import StepSkipped, active_scaling
from msam_core.optim.scaling import backward as scaled_backward
from msam_core.param_groups import ModalityParameters, modality_parameters
from msam_core.shapley import ShapleyResult, balance_weights, batch_shapley, dominant_index

LossFn = Callable[[Tensor, Tensor], Tensor]

#: Buffers that batch-norm-like layers update in a training-mode forward.
_RUNNING_STATS = ("running_mean", "running_var", "num_batches_tracked")


class NonFiniteLossError(FloatingPointError):
    """The loss of a step is NaN or infinite; raised before the bad gradients reach the model."""


# --------------------------------------------------------------------------------------------
# small pieces


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Leave batch-norm running statistics exactly as they were after the block.

    Training-mode forwards inside still normalise with batch statistics (as SAM's second pass
    should); only ``running_mean`` / ``running_var`` / ``num_batches_tracked`` of every module
    that registers them as buffers are copied back on exit, also on error.
    """
    saved = []
    for module in submodules(model):  # buffers read from the dict: no __getattr__ misses
        buffers = module._buffers
        if not buffers:
            continue
        for name in _RUNNING_STATS:
            buffer = buffers.get(name)
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
# the first pass


@dataclass
class FirstPass:
    """The forward at ``θ``: ``logits [B, C]``, ``loss`` (scalar, with grad) and the
    per-modality ``features`` when the model was run as ``fuse(encode(x))`` (else None);
    ``loss_value`` is ``float(loss)``, read once when the loss was checked."""

    logits: Tensor
    loss: Tensor
    features: dict[str, Tensor] | None
    loss_value: float | None = None
    #: each feature's ``_version`` as the encoders left it (before the head ran)
    feature_versions: dict[str, int] | None = None

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
    *,
    check: bool = True,
) -> FirstPass:
    """Forward with grad at the current parameters; raises NonFiniteLossError on NaN/inf loss.

    A late-fusion model runs as ``fuse(encode(inputs), None)`` (its ``forward`` with every
    modality present) so the features are kept; a wrapped (DDP) or early-fusion model runs
    through ``model(inputs)``.  ``check=False``: the loss is neither read nor checked here
    (``loss_value`` None); the caller checks it later (:func:`run_step` reads it with the
    coalition values).
    """
    core = unwrap(model)
    modalities = getattr(core, "modalities", None)
    if not modalities:
        raise ValueError(
            f"{type(core).__name__} does not follow the model protocol: it needs a "
            f"`modalities` list"
        )
    check_targets(targets, check_inputs(inputs, modalities))
    features = versions = None
    if core is model and has_feature_path(core):
        features = dict(core.encode(inputs))
        versions = {m: f._version for m, f in features.items()}
        logits = core.fuse(features, None)
    else:
        logits = model(inputs)
    loss = loss_fn(logits, targets)
    if loss.ndim != 0:
        raise ValueError(
            f"loss_fn must return a scalar (the batch mean), got shape {list(loss.shape)}"
        )
    value = check_finite_loss(loss, "at θ (first pass)", core, inputs) if check else None
    return FirstPass(logits, loss, features, value, versions)


def check_first_pass(
    first: FirstPass,
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    optimizer: torch.optim.Optimizer,
) -> None:
    """The check :func:`forward_pass` skipped with ``check=False``: NonFiniteLossError naming
    ℓ(θ) when it is NaN/inf, with the gradients cleared (nothing has changed the parameters
    yet); reads the loss only if it was not read already."""
    if math.isfinite(first.value):
        return
    optimizer.zero_grad()
    check_finite_loss(first.loss, "at θ (first pass)", unwrap(model), inputs)


# --------------------------------------------------------------------------------------------
# the second pass


def perturbed_backward(
    model: nn.Module,
    optimizer: MSAM | SAM,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    only: Restriction | None = None,
    kept: Mapping[str, Tensor] | None = None,
) -> float:
    """``optimizer.first_step`` (restricted to ``only`` when given), then loss and gradients at
    ``θ + ε`` (running stats frozen).

    ``kept``: features of the first pass (with their graph) for modalities whose encoders the
    ascent does not move, used as they are at ``θ + ε`` (:func:`kept_features`); the model is
    then run as ``fuse`` over them and the other encoders.  Returns ``ℓ(θ+ε)``.  The caller
    finishes with ``optimizer.second_step``; if the second pass fails (e.g.
    NonFiniteLossError) the parameters are restored to ``θ`` before re-raising.
    """
    optimizer.first_step(zero_grad=True, only=only)
    try:
        with frozen_batchnorm_stats(model):
            loss = loss_fn(_logits(model, inputs, kept), targets)
            where = "at θ+ε (second, perturbed pass)"
            value = check_finite_loss(loss, where, unwrap(model), inputs)
            scaled_backward(loss, _params(optimizer))
    except BaseException:
        optimizer.restore()
        raise
    return float(loss.detach()) if value is None else value


def _logits(model: nn.Module, inputs: Mapping[str, Tensor], kept: Mapping[str, Tensor] | None):
    """``model(inputs)``, with the features in ``kept`` instead of running their encoders."""
    if not kept:
        return model(inputs)
    features = {m: kept[m] if m in kept else model.encoders[m](inputs[m]) for m in model.modalities}
    return model.fuse(features, None)


def reusable_encoders(model: nn.Module, parts: ModalityParameters | None) -> dict | None:
    """Per modality, the ids of its encoder's parameters, when a targeted second pass may keep
    the first pass's features of the encoders its ascent does not move; else None.

    Keeping a feature is exact only if rerunning its encoder would give the same tensor, so
    this says yes only when that is known rather than hoped: a targeted ascent (``parts``); the
    model run unwrapped as the stock ``LateFusionModel`` (forward, encode and input masking not
    overridden on the class or the instance, so ``encoders[m]`` sees modality m alone); every
    encoder module of a type whose
    forward is known to be a deterministic function of its input and parameters
    (:func:`_deterministic_module`: torch's layers and msam's own encoders, matched by exact
    type; dropout only at p = 0 or in eval mode); no forward or backward hooks on the model or
    its encoders, nor global ones (a hook may draw noise or rewrite weights, as spectral norm
    does); and nothing compiled anywhere in the model (a compiled backward frees its buffers,
    so it cannot run through the retained graph).  Anything else reruns every encoder: slower,
    never wrong.
    """
    base = sys.modules.get("msam_core.models.base")  # loaded whenever such a model exists
    if parts is None or base is None or not isinstance(model, base.LateFusionModel):
        return None
    stock = base.LateFusionModel
    if any(getattr(type(model), name) is not getattr(stock, name) for name in _STOCK_PATH):
        return None
    if any(name in vars(model) for name in _STOCK_PATH):  # replaced on the instance
        return None
    if has_hooks(model) or global_hooks() or any(map(_compiled, submodules(model))):
        return None
    found = {}
    for m in model.modalities:
        modules = submodules(model.encoders[m])
        if not all(_deterministic_module(x) and not has_hooks(x) for x in modules):
            return None
        found[m] = {id(p) for x in modules for p in x._parameters.values() if p is not None}
    return found


#: the LateFusionModel methods a kept feature relies on: ``forward`` runs ``encode`` on the
#: (unmasked) inputs, each ``encoders[m]`` on modality m alone
_STOCK_PATH = ("forward", "encode", "mask_inputs", "fuse", "__call__", "_call_impl")


#: torch layers whose forward is a deterministic function of input, parameters and buffers
#: (matched by exact type, so a subclass with its own forward is not taken on trust)
_DETERMINISTIC_TORCH = tuple(
    getattr(nn, name)
    for name in (
        "Sequential ModuleList ModuleDict Identity Flatten Unflatten "
        "Linear Bilinear Conv1d Conv2d Conv3d ConvTranspose1d ConvTranspose2d ConvTranspose3d "
        "BatchNorm1d BatchNorm2d BatchNorm3d SyncBatchNorm LayerNorm GroupNorm RMSNorm "
        "InstanceNorm1d InstanceNorm2d InstanceNorm3d LocalResponseNorm Embedding EmbeddingBag "
        "ReLU ReLU6 LeakyReLU PReLU ELU SELU CELU GELU SiLU Mish Tanh Sigmoid Softplus Softsign "
        "Hardswish Hardsigmoid Hardtanh Hardshrink Softshrink Tanhshrink LogSigmoid Threshold "
        "Softmax LogSoftmax Softmin GLU "
        "MaxPool1d MaxPool2d MaxPool3d AvgPool1d AvgPool2d AvgPool3d LPPool1d LPPool2d "
        "AdaptiveAvgPool1d AdaptiveAvgPool2d AdaptiveAvgPool3d "
        "AdaptiveMaxPool1d AdaptiveMaxPool2d AdaptiveMaxPool3d "
        "ZeroPad1d ZeroPad2d ZeroPad3d ConstantPad1d ConstantPad2d ConstantPad3d "
        "ReflectionPad1d ReflectionPad2d ReflectionPad3d ReplicationPad1d ReplicationPad2d "
        "ReplicationPad3d PixelShuffle PixelUnshuffle Upsample ChannelShuffle"
    ).split()
    if hasattr(nn, name)
)

#: msam's own encoders (module, class names): their forward only chains the layers above
_DETERMINISTIC_MSAM = (
    ("msam_core.models.encoders", ("MLPEncoder", "ConvEncoder1d", "ConvEncoder2d")),
    ("msam_core.models.resnet", ("BasicBlock", "ResNet18Encoder")),
)


def _deterministic_module(module: nn.Module) -> bool:
    """Whether ``module``'s own forward gives the same output for the same input twice."""
    if "forward" in vars(module):  # a forward set on the instance is nobody's audited code
        return False
    kind = type(module)
    if kind in _DETERMINISTIC_TORCH:
        return True
    if isinstance(module, _DropoutNd) and kind.__module__ == "torch.nn.modules.dropout":
        return not module.training or module.p == 0
    for where, names in _DETERMINISTIC_MSAM:
        loaded = sys.modules.get(where)
        if loaded is not None and any(kind is getattr(loaded, n, None) for n in names):
            return True
    return False


def _compiled(module: nn.Module) -> bool:
    return getattr(module, "_compiled_call_impl", None) is not None


def kept_features(
    first: FirstPass, encoders: Mapping[str, set[int]] | None, only: Restriction | None
) -> dict[str, Tensor] | None:
    """The first pass's features (graph retained) of the modalities whose encoders (from
    :func:`reusable_encoders`) hold none of the parameters the ascent ``only`` moves."""
    if encoders is None or only is None or first.features is None:
        return None
    moved = {id(p) for p, _ in only}
    versions = first.feature_versions or {}
    return {
        m: first.features[m]
        for m, ids in encoders.items()
        # a head that wrote into a feature in place (inplace dropout) left it changed
        if moved.isdisjoint(ids) and first.features[m]._version == versions.get(m)
    }


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
    step took its dominant modality and weights from, when it did not use the batch's;
    ``loss_scale`` the fp16 loss scale the step's passes were scaled by (None without loss
    scaling) and ``skipped`` True when a non-finite gradient skipped the step.
    """

    loss: float
    shapley: ShapleyResult | None = None
    loss_perturbed: float | None = None
    dominant_weight: float | None = None
    time_s: float = 0.0
    phi_ema: Tensor | None = None
    loss_scale: float | None = None
    skipped: bool = False

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
        """Iteration keys (docs/design.md, "The run directory"): ``loss``, ``dominant``,
        ``phi/<m>``, ``weight/<m>``, ``sharpness``, ``time/step_s``; what was not measured is
        absent (never zero)."""
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
        if self.loss_scale is not None:
            record["loss_scale"] = self.loss_scale
        if self.skipped:
            record["skipped"] = True
        record["time/step_s"] = self.time_s
        return record


@dataclass
class Update:
    """What a method's update reports to :func:`run_step`: ``loss_perturbed`` = ℓ(θ+ε) when it
    took an ascent, ``dominant_weight`` the w_d its descent used, ``phi_ema`` the averaged φ it
    took the dominant modality and weights from (see :class:`StepResult`)."""

    loss_perturbed: float | None = None
    dominant_weight: float | None = None
    phi_ema: Tensor | None = None


#: A method's update: ``(first pass, the batch's Shapley result or None) -> Update``.
UpdateFn = Callable[[FirstPass, ShapleyResult | None], Update]


def run_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    update: UpdateFn,
    loss_fn: LossFn = F.cross_entropy,
    value: str | None = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
    *,
    backward: bool = True,
    rows: Tensor | None = None,
    retain_graph: bool = False,
) -> StepResult:
    """The skeleton of every step: forward at ``θ``, ``optimizer.zero_grad()``, backward
    (``backward=False``: the update takes its own gradients), the batch's Shapley values
    (``value=None``: none; ``masking``, ``baselines``, ``chunk_size``, ``reuse_first_pass`` as
    :func:`~msam_core.shapley.batch_shapley`; ``rows``: the batch's rows the coalition values
    are computed on, :func:`msam_core.rows.row_subset`), then ``update(first, shapley)``,
    which changes the parameters.  ``retain_graph``: keep the first pass's graph for the
    update (M-SAM's second pass through the encoders its ascent did not move,
    :func:`kept_features`).  Returns the :class:`StepResult`, timed over the whole step.

    Under loss scaling (fp16) the step runs in the scaling's step block: the backward passes
    come out unscaled, and a non-finite gradient ends the update before any parameter changes
    (:class:`~msam_core.optim.scaling.StepSkipped`, caught here: gradients cleared, the
    result ``skipped``, the scale backed off)."""
    start = time.perf_counter()
    scaling = active_scaling()
    # with coalition values to compute, ℓ(θ) is read with them (one transfer) and checked then,
    # before the update; under loss scaling it is checked first, as the scaling expects
    deferred = value is not None and scaling is None
    first = forward_pass(model, inputs, targets, loss_fn, check=not deferred)
    optimizer.zero_grad()
    scale = None if scaling is None else scaling.scaler.get_scale()
    done, skipped, shapley = Update(), False, None
    shapley_args = (value, masking, baselines, chunk_size, reuse_first_pass)
    try:
        with contextlib.nullcontext() if scaling is None else scaling.step(optimizer):
            if backward:
                scaled_backward(first.loss, _params(optimizer), retain_graph=retain_graph)
            if value is not None:
                shapley = batch_shapley(model, inputs, targets, first, *shapley_args, rows=rows)
            if deferred:
                check_first_pass(first, model, inputs, optimizer)
            done = update(first, shapley)
    except StepSkipped:
        optimizer.zero_grad()
        skipped = True
    elapsed = time.perf_counter() - start
    measured = (done.loss_perturbed, done.dominant_weight, elapsed, done.phi_ema)
    return StepResult(first.value, shapley, *measured, loss_scale=scale, skipped=skipped)


def _params(optimizer: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in optimizer.param_groups for p in group["params"]]


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
    *,
    rows: Tensor | None = None,
) -> StepResult:
    """One step of the base optimizer, recording the batch's Shapley values (``value=None``:
    none).  ``sharpness_rho`` adds ℓ(θ+ε) − ℓ(θ) for ε = ρ·g/‖g‖ (one more no-grad forward)."""

    def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
        perturbed = None
        if sharpness_rho is not None:
            perturbed = _loss_after_ascent(model, inputs, targets, loss_fn, sharpness_rho)
        optimizer.step()
        return Update(perturbed)

    shapley_args = (value, masking, baselines, chunk_size, reuse_first_pass)
    return run_step(model, optimizer, inputs, targets, update, loss_fn, *shapley_args, rows=rows)


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
    *,
    rows: Tensor | None = None,
) -> StepResult:
    """One SAM step (``w_d = 1``), recording the batch's Shapley values and sharpness."""

    def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
        perturbed = perturbed_backward(model, optimizer, inputs, targets, loss_fn)
        if isinstance(optimizer, MSAM):
            optimizer.second_step(1.0)
        else:
            optimizer.second_step()
        return Update(perturbed, 1.0)

    shapley_args = (value, masking, baselines, chunk_size, reuse_first_pass)
    return run_step(model, optimizer, inputs, targets, update, loss_fn, *shapley_args, rows=rows)


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


#: Each model's modality parameters, found once (a walk of the module tree, about a tenth of
#: a small model's step) rather than on every call of :func:`msam_step`.
_PARTS: weakref.WeakKeyDictionary[nn.Module, ModalityParameters] = weakref.WeakKeyDictionary()


def _modality_parts(model: nn.Module, optimizer: torch.optim.Optimizer) -> ModalityParameters:
    """:func:`modality_parameters` of ``model``, cached; found again when the optimizer no
    longer holds every cached parameter (the model's parameters were replaced)."""
    parts = _PARTS.get(model)
    held = {p for group in optimizer.param_groups for p in group["params"]}
    if parts is None or any(p not in held for entries in parts.values() for p, _ in entries):
        parts = modality_parameters(model, "msam's targeted ascent (perturb=dominant)")
        _PARTS[model] = parts
    return parts


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
    rows: Tensor | None = None,
) -> StepResult:
    """One M-SAM step (docs/design.md, "M-SAM step").

    ``g = ∇ℓ(θ)``; φ on the batch, ``d = argmax φ``, ``w`` from
    :func:`~msam_core.shapley.balance_weights`; the ascent ``ε = ρ·g_d/‖g_d‖`` with ``g_d``
    the gradient restricted to the dominant modality's parameters (``perturb="dominant"``;
    ``parts`` from :func:`~msam_core.param_groups.modality_parameters`, found on the model when
    None) or ``ε = ρ·g/‖g‖`` (``perturb="all"``, the literal form); ``g' = ∇ℓ(θ+ε)`` with
    batch-norm running statistics frozen; base step on ``w_d·g' + (1 − w_d)·g``.
    ``average`` maps the batch's φ to the φ the step uses (the method's EMA); its result is
    kept as :attr:`StepResult.phi_ema`.  Cost: one SAM step plus the no-grad coalition pass,
    less the encoders the targeted ascent leaves unmoved, which the second pass does not rerun
    (:func:`reusable_encoders`).
    """
    if not isinstance(optimizer, MSAM):
        raise TypeError(
            f"msam_step needs an msam_core.MSAM optimizer (its second_step takes the dominant "
            f"weight), got {type(optimizer).__name__}; use sam_step for SAM"
        )
    if value is None:
        raise ValueError("msam_step needs Shapley values: value must be accuracy, prob or neg_loss")
    if check_perturb(perturb) == "dominant" and parts is None:
        parts = _modality_parts(unwrap(model), optimizer)
    encoders = reusable_encoders(model, parts)
    update = msam_update(model, optimizer, inputs, targets, loss_fn, parts, average, encoders)
    shapley_args = (value, masking, baselines, chunk_size, reuse_first_pass)
    retain = encoders is not None
    return run_step(
        model,
        optimizer,
        inputs,
        targets,
        update,
        loss_fn,
        *shapley_args,
        rows=rows,
        retain_graph=retain,
    )


def msam_update(
    model: nn.Module,
    optimizer: MSAM,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    loss_fn: LossFn = F.cross_entropy,
    parts: ModalityParameters | None = None,
    average: Callable[[Tensor], Tensor] | None = None,
    encoders: Mapping[str, set[int]] | None = None,
) -> UpdateFn:
    """M-SAM's update for :func:`run_step` on this batch (:func:`msam_step`): the ascent on
    the dominant modality's entries of ``parts`` (every parameter when ``parts`` is None, the
    literal form), the second pass, the weighted descent.  ``encoders``
    (:func:`reusable_encoders`, with ``run_step(..., retain_graph=True)``): the second pass
    keeps the first pass's features of the encoders the ascent does not move."""

    def update(first: FirstPass, shapley: ShapleyResult | None) -> Update:
        if shapley is None:
            raise ValueError("the M-SAM update needs the batch's Shapley values (value=None)")
        used = None if average is None else average(shapley.phi)
        if used is None:
            d = shapley.dominant_index
            weight = shapley.weight_floats[d]
        else:
            d = dominant_index(used)
            weight = float(balance_weights(used)[d])
        only = None if parts is None else parts[shapley.modalities[d]]
        kept = kept_features(first, encoders, only)
        perturbed = perturbed_backward(model, optimizer, inputs, targets, loss_fn, only, kept)
        optimizer.second_step(weight)
        return Update(perturbed, weight, used)

    return update
