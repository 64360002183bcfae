"""Coalition values ``v(S)`` of a model on a batch, all coalitions in batched no-grad passes.

``v(S)`` is the value of the model with only the modalities in ``S`` present (the others
replaced by their baselines), on the batch (DESIGN.md, "Modality Shapley"):

* ``"accuracy"``: fraction of samples whose argmax logit is the target class (default);
* ``"prob"``: mean softmax probability of the target class;
* ``"neg_loss"``: minus the mean cross-entropy.

Two ways to remove a modality (``masking``):

* ``"input"``: the batch is repeated once per coalition and the model sees a ``[K*B, M]`` mask;
  the model replaces each absent input by its baseline (DESIGN.md's protocol). Works for any
  model, early fusion included.
* ``"feature"``: for late-fusion models with ``encode`` / ``fuse``: each encoder runs once on
  the real inputs and once on the baseline inputs, and only the fusion head sees the repeated
  batch, an absent modality's features replaced by the encoding of its baseline. Equal to input
  masking whenever the encoders treat samples independently (eval mode), and much cheaper.
* ``"auto"``: ``"feature"`` when the model has ``encode`` and ``fuse``, else ``"input"``.

The repeated batch goes through as few passes as memory and speed allow (see
:func:`coalition_values`).  Every value is computed without gradients in eval mode; each
module's train/eval flag is put back afterwards, also when the model raises.  Results are
float64 tensors on the CPU (they are tiny, and Shapley values and the dominant modality are
read on the host anyway).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from msam_core.masking import apply_input_mask, check_inputs, coalition_masks, validate_mask

VALUE_KINDS = ("accuracy", "prob", "neg_loss")
MASKINGS = ("input", "feature", "auto")


# --------------------------------------------------------------------------------------------
# checks and small helpers


def check_value_kind(value: str) -> str:
    """Return ``value`` if it names a coalition value; ValueError listing the choices if not."""
    if value not in VALUE_KINDS:
        raise ValueError(f"unknown coalition value {value!r}; choose one of {list(VALUE_KINDS)}")
    return value


def has_feature_path(model: nn.Module) -> bool:
    """True when ``model`` exposes the late-fusion ``encode`` / ``fuse`` pair."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "fuse", None))


def resolve_masking(model: nn.Module, masking: str) -> str:
    """``"input"`` or ``"feature"`` for ``model`` (``"auto"`` picks the fast path if it can)."""
    if masking not in MASKINGS:
        raise ValueError(f"unknown masking {masking!r}; choose one of {list(MASKINGS)}")
    if masking == "auto":
        return "feature" if has_feature_path(model) else "input"
    if masking == "feature" and not has_feature_path(model):
        raise ValueError(
            f"masking='feature' needs a late-fusion model with encode(inputs) and "
            f"fuse(features, mask); {type(model).__name__} has no such pair. "
            f"Use masking='input' (or 'auto')"
        )
    return masking


def check_targets(targets: Tensor, batch_size: int) -> Tensor:
    """Targets must be class indices ``[B]``; ValueError naming the shape otherwise."""
    if targets.ndim != 1 or targets.shape[0] != batch_size:
        raise ValueError(
            f"targets must be class indices of shape [B] = [{batch_size}], "
            f"got shape {list(targets.shape)}"
        )
    if targets.is_floating_point() or targets.is_complex():
        raise ValueError(f"targets must be integer class indices, got dtype {targets.dtype}")
    return targets


def _modalities(model: nn.Module) -> list[str]:
    names = getattr(model, "modalities", None)
    if not names:
        raise ValueError(
            f"{type(model).__name__} does not follow the model protocol: it needs a "
            f"`modalities` list (the order of mask columns and coalition bits)"
        )
    return list(names)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own flag on exit (even on error)."""
    training = [module for module in model.modules() if module.training]
    # `training` is a plain attribute: object.__setattr__ skips nn.Module.__setattr__'s
    # parameter/buffer checks, which dominate a small step's Shapley overhead otherwise
    for module in training:
        object.__setattr__(module, "training", False)
    try:
        yield model
    finally:
        for module in training:
            object.__setattr__(module, "training", True)


#: Rows per pass on the CPU when ``chunk_size`` is None: passes of ~1024 rows keep the stacked
#: features in cache (M = 6, B = 256, late fusion: ~3x faster than all 64 coalitions at once).
CPU_ROWS_PER_PASS = 1024


def _rows(
    n_coalitions: int, chunk_size: int | None, batch_size: int, device: torch.device
) -> Iterator[slice]:
    """Coalition slices of at most ``chunk_size`` coalitions.

    ``None``: every coalition in one pass on an accelerator; on the CPU, passes of about
    :data:`CPU_ROWS_PER_PASS` rows.
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size (coalitions per pass) must be >= 1 or None, got {chunk_size}")
    if chunk_size is None:
        cpu = torch.device(device).type == "cpu"
        chunk_size = max(1, CPU_ROWS_PER_PASS // batch_size) if cpu else n_coalitions
    for start in range(0, n_coalitions, chunk_size):
        yield slice(start, min(start + chunk_size, n_coalitions))


def _repeat(x: Tensor, times: int) -> Tensor:
    """``[B, ...] -> [times*B, ...]``: copy ``k`` occupies rows ``k*B .. (k+1)*B``."""
    return x.repeat(times, *([1] * (x.ndim - 1)))


def values_from_logits(logits: Tensor, targets: Tensor, n_coalitions: int, value: str) -> Tensor:
    """Per-coalition value ``[K]`` (CPU float64) from logits ``[K*B, C]`` of a repeated batch."""
    check_value_kind(value)
    batch_size = targets.shape[0]
    if logits.ndim != 2 or logits.shape[0] != n_coalitions * batch_size:
        raise ValueError(
            f"the model returned logits of shape {list(logits.shape)} for {n_coalitions} "
            f"coalitions of a batch of {batch_size}; expected [{n_coalitions * batch_size}, C]"
        )
    repeated = _repeat(targets.to(logits.device).long(), n_coalitions)
    if value == "accuracy":
        per_sample = (logits.argmax(1) == repeated).to(torch.float64)
    elif value == "prob":
        per_sample = logits.float().softmax(1).gather(1, repeated.unsqueeze(1)).squeeze(1)
    else:
        per_sample = -F.cross_entropy(logits.float(), repeated, reduction="none")
    sums = per_sample.view(n_coalitions, batch_size).sum(1)
    return sums.to("cpu", torch.float64) / batch_size


# --------------------------------------------------------------------------------------------
# baselines


def baseline_inputs(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    baselines: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """One baseline sample per modality, ``{m: [1, *shape]}``, on the inputs' device/dtype.

    ``baselines`` if given, else the model's own ``baselines`` (the protocol models carry them
    as buffers), else zeros.
    """
    modalities = _modalities(model)
    check_inputs(inputs, modalities)
    own = getattr(model, "baselines", None)
    chosen = baselines if baselines is not None else own if isinstance(own, Mapping) else {}
    out = {}
    for m in modalities:
        like = inputs[m][:1]
        base = chosen.get(m)
        out[m] = torch.zeros_like(like) if base is None else torch.zeros_like(like) + base.to(like)
    return out


def encode_baselines(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    baselines: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Features of the baseline inputs, ``{m: [1, ...]}`` (no grad, eval mode, modes restored)."""
    with torch.no_grad(), eval_mode(model):
        return dict(model.encode(baseline_inputs(model, inputs, baselines)))


# --------------------------------------------------------------------------------------------
# coalition values


def _check_masks(masks: Tensor, n_modalities: int) -> Tensor:
    masks = torch.as_tensor(masks)
    if masks.ndim != 2 or masks.shape[1] != n_modalities:
        raise ValueError(
            f"coalition masks must have shape [K, M] = [K, {n_modalities}] (one row per "
            f"coalition, modalities in model.modalities order), got {list(masks.shape)}"
        )
    return validate_mask(masks, n_modalities, masks.shape[0])


class _Plan:
    """Rows of one pass over a chunk of coalitions ``[k, M]``.

    Rows ``j*B .. (j+1)*B`` are sample ``0..B-1`` under the j-th non-empty coalition; with
    ``one_row_for_empty`` the empty coalition (every sample the same baseline, so the same
    logits in eval mode) gets one final row instead of B.
    """

    def __init__(self, chunk: Tensor, batch_size: int, one_row_for_empty: bool) -> None:
        device = chunk.device
        self.batch_size = batch_size
        self.full = chunk.any(1) if one_row_for_empty else torch.ones_like(chunk[:, 0])
        full_cpu = self.full.cpu()
        self.n_full = int(full_cpu.sum())
        self.n_empty = chunk.shape[0] - self.n_full
        self.full_cpu = full_cpu
        self.samples = torch.cat(
            [
                torch.arange(batch_size, device=device).repeat(self.n_full),
                torch.zeros(min(self.n_empty, 1), dtype=torch.long, device=device),
            ]
        )
        self.row_mask = torch.cat(
            [
                chunk[self.full].repeat_interleave(batch_size, dim=0),
                chunk.new_zeros(min(self.n_empty, 1), chunk.shape[1]),
            ]
        )

    def store(self, out: Tensor, rows: slice, logits: Tensor, targets: Tensor, value: str) -> None:
        """Write each coalition's value into ``out[rows]`` from this pass's ``logits``."""
        index = torch.arange(rows.start, rows.stop)
        split = self.n_full * self.batch_size
        if logits.shape[0] != split + min(self.n_empty, 1):
            raise ValueError(
                f"the model returned logits of shape {list(logits.shape)} for a pass of "
                f"{split + min(self.n_empty, 1)} rows; expected one row of logits per input row"
            )
        if self.n_full:
            values = values_from_logits(logits[:split], targets, self.n_full, value)
            out[index[self.full_cpu]] = values
        if self.n_empty:
            empty = logits[split:].expand(self.batch_size, -1)
            out[index[~self.full_cpu]] = values_from_logits(empty, targets, 1, value)


def coalition_values_from_features(
    model: nn.Module,
    features: Mapping[str, Tensor],
    baseline_features: Mapping[str, Tensor],
    targets: Tensor,
    value: str = "accuracy",
    *,
    masks: Tensor | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Coalition values from already-computed features: only ``model.fuse`` runs.

    ``features[m]`` is ``[B, ...]`` (e.g. the detached features of a training step's first
    forward pass) and ``baseline_features[m]`` is ``[1, ...]`` or ``[B, ...]``, the encoding of
    modality m's baseline (see :func:`encode_baselines`).  ``masks [K, M]`` selects coalitions;
    default all ``2**M`` in bitmask order.  Returns ``[K]`` (CPU float64).
    """
    modalities = _modalities(model)
    check_value_kind(value)
    for what, given in (("features", features), ("baseline_features", baseline_features)):
        missing = [m for m in modalities if m not in given]
        if missing:
            raise KeyError(f"{what} are missing modalities {missing}; the model has {modalities}")
    batch_size = check_inputs(features, modalities)
    check_targets(targets, batch_size)
    device = features[modalities[0]].device
    masks = coalition_masks(len(modalities), device) if masks is None else masks
    masks = _check_masks(masks, len(modalities)).to(device)
    # one pool per modality, [real rows; baseline rows]; each coalition row gathers from it
    pools = {m: _feature_pool(features, baseline_features, m, batch_size) for m in modalities}
    sample = torch.arange(batch_size, device=device)
    # the pool row of each sample's baseline: one shared row (B) or one per sample (B + b)
    base_row = {m: batch_size + sample * (pools[m].shape[0] > batch_size + 1) for m in pools}
    # with shared baselines every sample of the empty coalition is the same: one row does
    shared = all(pools[m].shape[0] == batch_size + 1 for m in modalities)
    out = torch.empty(masks.shape[0], dtype=torch.float64)
    with torch.no_grad(), eval_mode(model):
        for rows in _rows(masks.shape[0], chunk_size, batch_size, device):
            plan = _Plan(masks[rows], batch_size, one_row_for_empty=shared)
            stacked = {}
            for i, m in enumerate(modalities):
                index = torch.where(plan.row_mask[:, i], plan.samples, base_row[m][plan.samples])
                stacked[m] = pools[m].index_select(0, index)  # one copy: [rows, ...]
            plan.store(out, rows, model.fuse(stacked, plan.row_mask), targets, value)
    return out


def _feature_pool(
    features: Mapping[str, Tensor], baseline_features: Mapping[str, Tensor], m: str, batch_size: int
) -> Tensor:
    """``[B + 1 or 2B, ...]``: modality ``m``'s features, then its baseline features."""
    real = features[m].detach()
    base = baseline_features[m].detach().to(real)
    if base.shape[1:] != real.shape[1:] or base.shape[0] not in (1, batch_size):
        raise ValueError(
            f"baseline_features[{m!r}] must have shape [1, ...] or [B, ...] matching the "
            f"features {list(real.shape[1:])} per sample (B = {batch_size}), "
            f"got {list(base.shape)}"
        )
    return torch.cat([real, base])


def masked_values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    masks: Tensor,
    value: str = "accuracy",
    masking: str = "input",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """Values ``[K]`` (CPU float64) of the coalitions given as bool rows of ``masks [K, M]``.

    See :func:`coalition_values`; this is the same computation on chosen coalitions (the
    permutation sampler uses it for more than 10 modalities).
    """
    modalities = _modalities(model)
    check_value_kind(value)
    masking = resolve_masking(model, masking)
    batch_size = check_inputs(inputs, modalities)
    check_targets(targets, batch_size)
    device = inputs[modalities[0]].device
    masks = _check_masks(masks, len(modalities)).to(device)
    with torch.no_grad(), eval_mode(model):
        if masking == "feature":
            features = model.encode(inputs)
            base = model.encode(baseline_inputs(model, inputs, baselines))
            return coalition_values_from_features(
                model, features, base, targets, value, masks=masks, chunk_size=chunk_size
            )
        return _input_masked_values(
            model, inputs, targets, masks, value, baselines, chunk_size, batch_size
        )


def _input_masked_values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    masks: Tensor,
    value: str,
    baselines: Mapping[str, Tensor] | None,
    chunk_size: int | None,
    batch_size: int,
) -> Tensor:
    """Input masking, ``chunk_size`` coalitions per pass (callers hold no_grad + eval mode).

    The empty coalition gets one row instead of B: every sample is then the same baseline
    input, so one row's logits are every sample's (rows never interact in eval mode).
    """
    modalities = _modalities(model)
    out = torch.empty(masks.shape[0], dtype=torch.float64)
    for rows in _rows(masks.shape[0], chunk_size, batch_size, masks.device):
        plan = _Plan(masks[rows], batch_size, one_row_for_empty=True)
        stacked = {m: inputs[m].index_select(0, plan.samples) for m in modalities}
        if baselines is None:  # the model replaces absent inputs by its own baselines
            logits = model(stacked, plan.row_mask)
        else:  # the protocol: model(x, mask) == model(apply_input_mask(x, mask))
            logits = model(apply_input_mask(stacked, plan.row_mask, modalities, baselines))
        plan.store(out, rows, logits, targets, value)
    return out


def coalition_values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str = "accuracy",
    masking: str = "input",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> Tensor:
    """``v(S)`` for every coalition: a ``[2**M]`` CPU float64 tensor indexed by bitmask.

    ``inputs`` is ``{modality: [B, ...]}``, ``targets`` class indices ``[B]``.  ``value`` is
    ``"accuracy"``, ``"prob"`` or ``"neg_loss"``; ``masking`` is ``"input"``, ``"feature"`` or
    ``"auto"`` (module docstring).  ``baselines`` replace absent inputs instead of the model's
    own (``{m: tensor broadcasting against one sample}``).  The coalitions go through batched
    no-grad eval-mode passes: all in one on an accelerator, ~1024 rows per pass on the CPU
    (:data:`CPU_ROWS_PER_PASS`); ``chunk_size`` sets the coalitions per pass instead
    (``chunk_size * B`` rows, to bound memory).  The empty coalition takes one row.  Each
    module's train/eval flag is restored afterwards.
    """
    modalities = _modalities(model)
    device = next(iter(inputs.values())).device if inputs else None
    masks = coalition_masks(len(modalities), device)
    return masked_values(model, inputs, targets, masks, value, masking, baselines, chunk_size)
