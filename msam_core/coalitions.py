"""Coalition values ``v(S)`` of a model on a batch, all coalitions in batched no-grad passes.

``v(S)`` is the value of the model with only the modalities in ``S`` present (the others
replaced by their baselines), on the batch (docs/design.md, "Modality Shapley"):

* ``"accuracy"``: fraction of samples whose argmax logit is the target class (default);
* ``"prob"``: mean softmax probability of the target class;
* ``"neg_loss"``: minus the mean cross-entropy.

Two ways to remove a modality (``masking``):

* ``"input"``: the batch is repeated once per coalition and the model sees a ``[K*B, M]`` mask;
  the model replaces each absent input by its baseline (docs/design.md, "Model protocol").
  Works for any model, early fusion included.
* ``"feature"``: for late-fusion models with ``encode`` / ``fuse``: each encoder runs once on
  the real inputs and once on the baseline inputs, and only the fusion head sees the repeated
  batch, an absent modality's features replaced by the encoding of its baseline. Equal to input
  masking whenever the encoders treat samples independently (eval mode), and much cheaper.
* ``"first_layer"``: for models whose first layer is linear and reads every modality (early
  fusion, ``first_layer_parts`` / ``after_first_layer``): each modality's product with its
  columns of the first layer's weight is computed once, on the real inputs and on the
  baselines, every coalition's first-layer output is the sum of its members' real parts and
  the others' baseline parts, and only the rest of the network runs per coalition.  Equal to
  input masking up to float rounding (the first layer's sum is split by modality).
* ``"auto"``: ``"feature"`` when the model has ``encode`` and ``fuse``, else ``"first_layer"``
  when it has that pair, else ``"input"``.

The repeated batch goes through as few passes as memory and speed allow (see
:func:`coalition_values`).  Every value is computed without gradients in eval mode; each
module's train/eval flag is put back afterwards, also when the model raises.  Results are
float64 tensors on the CPU (they are tiny, and Shapley values and the dominant modality are
read on the host anyway).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.dropout import _DropoutNd

from msam_core.masking import apply_input_mask, check_inputs, coalition_masks, validate_mask
from msam_core.suggest import did_you_mean

VALUE_KINDS = ("accuracy", "prob", "neg_loss")
MASKINGS = ("input", "feature", "first_layer", "auto")


# --------------------------------------------------------------------------------------------
# checks and small helpers


def check_value_kind(value: str) -> str:
    """Return ``value`` if it names a coalition value; ValueError listing the choices if not."""
    if value not in VALUE_KINDS:
        hint = did_you_mean(str(value), VALUE_KINDS)
        raise ValueError(
            f"unknown coalition value {value!r}{hint}; choose one of {list(VALUE_KINDS)}"
        )
    return value


def has_feature_path(model: nn.Module) -> bool:
    """True when ``model`` exposes the late-fusion ``encode`` / ``fuse`` pair."""
    return callable(getattr(model, "encode", None)) and callable(getattr(model, "fuse", None))


def has_first_layer_path(model: nn.Module) -> bool:
    """True when ``model`` exposes ``first_layer_parts`` / ``after_first_layer`` (a linear
    first layer over every modality, as early fusion has)."""
    return callable(getattr(model, "first_layer_parts", None)) and callable(
        getattr(model, "after_first_layer", None)
    )


def resolve_masking(model: nn.Module, masking: str) -> str:
    """``"input"``, ``"feature"`` or ``"first_layer"`` for ``model`` (``"auto"`` picks the
    fastest path the model offers)."""
    if masking not in MASKINGS:
        hint = did_you_mean(str(masking), MASKINGS)
        raise ValueError(f"unknown masking {masking!r}{hint}; choose one of {list(MASKINGS)}")
    if masking == "auto":
        if has_feature_path(model):
            return "feature"
        return "first_layer" if has_first_layer_path(model) else "input"
    if masking == "first_layer" and not has_first_layer_path(model):
        raise ValueError(
            f"masking='first_layer' needs a model with first_layer_parts(inputs) and "
            f"after_first_layer(z) (early fusion); {type(model).__name__} has no such pair. "
            f"Use masking='input' (or 'auto')"
        )
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


def unwrap(model: nn.Module) -> nn.Module:
    """The protocol model inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    return model.module if isinstance(model, wrappers) else model


def submodules(model: nn.Module) -> list[nn.Module]:
    """Every module of ``model`` (itself included), each once, as ``model.modules()`` but in
    about half its time: the walk follows the child dicts directly, without the generators
    and name prefixes that are a visible part of a small model's step."""
    found, seen = [model], {id(model)}
    for module in found:  # grows as it goes: a breadth-first walk
        for child in module._modules.values():
            if child is not None and id(child) not in seen:
                seen.add(id(child))
                found.append(child)
    return found


def training_modules(model: nn.Module) -> list[nn.Module]:
    """The modules of ``model`` (itself included) whose ``training`` flag is set: one walk."""
    return [module for module in submodules(model) if module.training]


@contextmanager
def eval_mode(model: nn.Module, training: list[nn.Module] | None = None) -> Iterator[nn.Module]:
    """Put every module in eval mode; restore each module's own flag on exit (even on error).

    ``training``: :func:`training_modules` of ``model`` when the caller already walked the
    module tree (a step does, to decide whether it may reuse its first pass).
    """
    training = training_modules(model) if training is None else training
    # `training` is a plain attribute: object.__setattr__ skips nn.Module.__setattr__'s
    # parameter/buffer checks, which dominate a small step's Shapley overhead otherwise
    for module in training:
        object.__setattr__(module, "training", False)
    try:
        yield model
    finally:
        for module in training:
            object.__setattr__(module, "training", True)


#: Coalitions as Python tuples of present-flags, ``((m_0 present, m_1 present, ...), ...)``:
#: what the passes are planned from (hashable, so a plan is built once and reused).
Coalitions = tuple[tuple[bool, ...], ...]


#: Rows per pass of input masking on the CPU when ``chunk_size`` is None (at least one
#: coalition per pass).  Passes about the size of a training batch keep the stacked rows in
#: cache and let the allocator reuse the step's own freed blocks; larger passes page-fault
#: fresh memory every step.
CPU_ROWS_PER_PASS = 256
#: Rows per pass of feature masking on the CPU: only the fusion head runs, so a pass's fixed
#: costs (stacking, the head's module calls, the value sums) weigh more than its memory (B =
#: 256, M = 4, alone: 2.6 ms at 1024 rows, 3.5 ms at 256), up to where the passes page-fault
#: inside a step (M-SAM, M = 4: a few faults per step at 1024 rows, ~450 at 2048).  The values
#: are the same bits however the rows are split.
CPU_FEATURE_ROWS = 1024
#: Rows per pass of first-layer masking on the CPU: its rows are the first layer's width, not
#: the inputs', so larger passes pay off (M = 4, B = 256: 1024 rows 5.7 ms, 256 rows 7.3 ms).
CPU_FIRST_LAYER_ROWS = 1024


def _chunks(
    coalitions: Coalitions,
    chunk_size: int | None,
    batch_size: int,
    device: torch.device,
    one_row_for_empty: bool,
) -> Iterator[slice]:
    """Slices of ``coalitions``, one per pass.

    ``chunk_size`` coalitions per pass when given; ``None``: every coalition in one pass on an
    accelerator; on the CPU, passes of at most :data:`CPU_ROWS_PER_PASS` rows plus the empty
    coalition's one row (at least one coalition each).
    """
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size (coalitions per pass) must be >= 1 or None, got {chunk_size}")
    n = len(coalitions)
    if chunk_size is not None or torch.device(device).type != "cpu":
        step = chunk_size or n
        yield from (slice(start, min(start + step, n)) for start in range(0, n, step))
        return
    start, rows = 0, 0
    for k, coalition in enumerate(coalitions):
        size = 1 if one_row_for_empty and not any(coalition) else batch_size
        if k > start and rows + size > CPU_ROWS_PER_PASS + 1:  # + 1: the empty's row
            yield slice(start, k)
            start, rows = k, 0
        rows += size
    yield slice(start, n)


# --------------------------------------------------------------------------------------------
# from logits to values: sums over the batch stay on the device, one transfer per call


def value_sums(
    logits: Tensor, targets: Tensor, n_coalitions: int, value: str, per_row: bool = False
) -> Tensor:
    """Per-coalition sums over the batch ``[K]``, on the logits' device, from logits
    ``[K*B, C]`` of a repeated batch: int64 counts of correct samples (accuracy), else float32
    sums of the true-class probability / log-probability (= −cross-entropy).  ``per_row``: the
    terms of those sums, ``[K, B]`` (bool for accuracy), instead."""
    batch_size = targets.shape[0]
    per = logits.reshape(n_coalitions, batch_size, logits.shape[-1])
    targets = targets.to(logits.device).long()
    if value == "accuracy":
        rows = per.argmax(2) == targets
    else:
        index = targets.view(1, batch_size, 1).expand(n_coalitions, batch_size, 1)
        scores = per.float().softmax(2) if value == "prob" else per.float().log_softmax(2)
        rows = scores.gather(2, index).squeeze(2)
    return rows if per_row else rows.sum(1)


def _means(sums: Tensor, batch_size: int) -> Tensor:
    """Sums over the batch -> mean values, CPU float64 (the one device-to-host transfer)."""
    return sums.to("cpu", torch.float64) / batch_size


def values_from_logits(logits: Tensor, targets: Tensor, n_coalitions: int, value: str) -> Tensor:
    """Per-coalition value ``[K]`` (CPU float64) from logits ``[K*B, C]`` of a repeated batch."""
    check_value_kind(value)
    batch_size = targets.shape[0]
    if logits.ndim != 2 or logits.shape[0] != n_coalitions * batch_size:
        raise ValueError(
            f"the model returned logits of shape {list(logits.shape)} for {n_coalitions} "
            f"coalitions of a batch of {batch_size}; expected [{n_coalitions * batch_size}, C]"
        )
    return _means(value_sums(logits, targets, n_coalitions, value), batch_size)


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


#: Per model: the own baselines' identity and version, the inputs' dtype/device/shape, and the
#: baseline rows built from them (:func:`_own_baseline_inputs`).
_BASELINE_ROWS: weakref.WeakKeyDictionary[nn.Module, tuple] = weakref.WeakKeyDictionary()


def _own_baseline_inputs(model: nn.Module, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """:func:`baseline_inputs` with the model's own baselines, built once and reused while
    every baseline buffer is the same tensor at the same version and storage
    (``set_baselines``, ``load_state_dict`` and any in-place write bump the version; a
    ``.data =`` assignment changes the storage) and the inputs keep their dtype,
    device and per-sample shape.  The rows are shared between calls: read them only."""
    own = getattr(model, "baselines", None)
    if not isinstance(own, Mapping):
        return baseline_inputs(model, inputs)
    key = tuple(
        (m, inputs[m].dtype, inputs[m].device, inputs[m].shape[1:])
        + ((None,) if own.get(m) is None else (id(own[m]), own[m]._version, own[m].data_ptr()))
        for m in _modalities(model)
    )
    cached = _BASELINE_ROWS.get(model)
    if cached is not None and cached[0] == key:
        return dict(cached[1])
    rows = baseline_inputs(model, inputs)
    # the entry holds the buffers themselves, so the ids in its key are never reused
    _BASELINE_ROWS[model] = (key, rows, dict(own))
    return dict(rows)


def encode_baselines(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    baselines: Mapping[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """Features of the baseline inputs, ``{m: [1, ...]}`` (no grad, eval mode, modes restored)."""
    with torch.no_grad(), eval_mode(model):
        return dict(model.encode(baseline_inputs(model, inputs, baselines)))


# --------------------------------------------------------------------------------------------
# coalitions and the rows of one pass


@lru_cache(maxsize=16)
def all_coalitions(n_modalities: int) -> Coalitions:
    """Every coalition in bitmask order, as :data:`Coalitions` (row k = bitmask k)."""
    return tuple(tuple(row) for row in coalition_masks(n_modalities).tolist())


def _check_masks(masks: Tensor, n_modalities: int) -> Coalitions:
    masks = torch.as_tensor(masks)
    if masks.ndim != 2 or masks.shape[1] != n_modalities:
        raise ValueError(
            f"coalition masks must have shape [K, M] = [K, {n_modalities}] (one row per "
            f"coalition, modalities in model.modalities order), got {list(masks.shape)}"
        )
    masks = validate_mask(masks, n_modalities, masks.shape[0])
    return tuple(tuple(row) for row in masks.cpu().tolist())


class _Plan:
    """Rows of one pass over a chunk of coalitions.

    Rows ``j*B .. (j+1)*B`` are sample ``0..B-1`` under the j-th coalition of ``present``;
    with ``one_row_for_empty`` the empty coalition (every sample the same baseline, so the same
    logits in eval mode) gets one final row instead of B.  ``positions[i]`` is the chunk index
    of the i-th value the pass yields: ``present`` in order and the empty coalitions, these
    first when they come first in the chunk (bitmask order: then the values are in chunk order
    and need no reordering).  Built once per (chunk, B, device) by :func:`_plan`: a step reuses
    its masks every time.
    """

    def __init__(
        self, chunk: Coalitions, batch_size: int, device: torch.device, one_row_for_empty: bool
    ) -> None:
        full = [not one_row_for_empty or any(c) for c in chunk]
        self.batch_size = batch_size
        self.present = [c for c, f in zip(chunk, full, strict=True) if f]
        self.n_full = len(self.present)
        self.n_empty = len(chunk) - self.n_full
        fulls = [k for k, f in enumerate(full) if f]
        empties = [k for k, f in enumerate(full) if not f]
        self.empty_first = bool(empties) and (not fulls or empties[-1] < fulls[0])
        self.positions = empties + fulls if self.empty_first else fulls + empties
        empty_rows = [(False,) * len(chunk[0])] if self.n_empty else []
        repeats = torch.tensor([batch_size] * self.n_full + [1] * len(empty_rows))
        rows = torch.tensor(self.present + empty_rows, dtype=torch.bool)
        self.row_mask = rows.repeat_interleave(repeats, dim=0).to(device)  # [rows, M]
        self.n_rows = int(self.row_mask.shape[0])
        self._coefficients: dict[torch.dtype, tuple[Tensor, Tensor]] = {}

    def coefficients(self, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
        """``(present, absent)`` ``[k, M]`` 0/1 in ``dtype``: which modalities each coalition of
        :attr:`present` holds and lacks (built once per dtype; read them only)."""
        found = self._coefficients.get(dtype)
        if found is None:
            present = self.row_mask[:: self.batch_size][: self.n_full].to(dtype)
            found = self._coefficients[dtype] = (present, 1 - present)
        return found

    def stack(self, real: Tensor, base: Tensor, i: int) -> Tensor:
        """Modality ``i``'s rows ``[rows, ...]``: ``real [B, ...]`` where it is present,
        ``base`` (``[1, ...]``, or ``[B, ...]`` per sample) where absent; one copy at most."""
        base_rows = base.expand_as(real) if base.shape[0] == 1 else base
        parts = [real if c[i] else base_rows for c in self.present]
        if self.n_empty:
            parts.append(base[:1])
        if len(parts) == 1 and parts[0] is real:
            return real  # one coalition with this modality present: the batch itself
        return torch.cat(parts)

    def repeat(self, x: Tensor) -> Tensor:
        """``[rows, ...]``: the batch ``x [B, ...]`` once per coalition of ``present``, then its
        first sample for the empty coalition (input masking: the model replaces what is absent)."""
        parts = [x] * self.n_full + ([x[:1]] if self.n_empty else [])
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def sums(self, logits: Tensor, targets: Tensor, value: str, per_row: bool = False) -> Tensor:
        """Sums over the batch of each value in :attr:`positions` order (:func:`value_sums`;
        ``per_row``: their terms, ``[k, B]``)."""
        if logits.ndim != 2 or logits.shape[0] != self.n_rows:
            raise ValueError(
                f"the model returned logits of shape {list(logits.shape)} for a pass of "
                f"{self.n_rows} rows; expected one row of logits per input row, [rows, C]"
            )
        split = self.n_full * self.batch_size
        full = logits[:split]
        parts = [value_sums(full, targets, self.n_full, value, per_row)] if self.n_full else []
        if self.n_empty:
            empty = logits[split:].expand(self.batch_size, -1)  # the one row, every sample
            empty_sums = value_sums(empty, targets, 1, value, per_row)
            empty_sums = empty_sums.expand(self.n_empty, *empty_sums.shape[1:])
            parts.insert(0 if self.empty_first else len(parts), empty_sums)
        return parts[0] if len(parts) == 1 else torch.cat(parts)


@lru_cache(maxsize=128)
def _plan(
    chunk: Coalitions, batch_size: int, device: torch.device, one_row_for_empty: bool
) -> _Plan:
    return _Plan(chunk, batch_size, device, one_row_for_empty)


def _passes(
    coalitions: Coalitions,
    chunk_size: int | None,
    batch_size: int,
    device: torch.device,
    one_row_for_empty: bool,
) -> Iterator[tuple[int, _Plan]]:
    """``(first coalition index, plan)`` of each pass."""
    for rows in _chunks(coalitions, chunk_size, batch_size, device, one_row_for_empty):
        yield rows.start, _plan(coalitions[rows], batch_size, device, one_row_for_empty)


def mean_values(
    sums: list[Tensor], positions: list[int], batch_size: int, scalar: Tensor | None = None
) -> Tensor:
    """Mean values ``[K]`` (CPU float64) from the passes' sums and their coalition indices.

    ``scalar``: a one-element tensor read in the same transfer; then ``[K + 1]`` comes back,
    its float64 value last (what :func:`batch_values_and` splits off).
    """
    flat = sums[0] if len(sums) == 1 else torch.cat(sums)
    extra = None
    if scalar is not None:  # one transfer for both, widened to float64 on the host
        # packed on the device in their common dtype, at least float32: exact for int64 counts
        # (a bf16 pack would round them above 256), and MPS has no float64
        value = scalar.detach().reshape(1).to(flat.device)
        common = torch.promote_types(torch.promote_types(flat.dtype, value.dtype), torch.float32)
        packed = torch.cat([flat.to(common), value.to(common)])
        host = packed.to("cpu", torch.float64)
        flat, extra = host[:-1], host[-1:]
    values = _means(flat, batch_size)
    if positions != list(range(len(positions))):
        out = torch.empty_like(values)
        out[torch.tensor(positions)] = values
        values = out
    return values if extra is None else torch.cat([values, extra])


# --------------------------------------------------------------------------------------------
# coalition values


def _feature_sums(
    model: nn.Module,
    modalities: list[str],
    features: Mapping[str, Tensor],
    baseline_features: Mapping[str, Tensor],
    targets: Tensor,
    value: str,
    coalitions: Coalitions,
    chunk_size: int | None,
    per_row: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """Feature masking: per-pass sums and the coalition index of each (callers hold no_grad
    and eval mode).  Only ``model.fuse`` runs; with a head that is linear up to its first
    layer (:meth:`~msam_core.models.base.LateFusionModel.fusion_parts`: concat and sum
    fusion), shared baselines and 3 modalities or more, each modality's term of that layer is
    computed once and summed per coalition (:func:`_summed_parts`), and only the rest of the
    head runs."""
    batch_size = targets.shape[0]
    real = {m: features[m].detach() for m in modalities}
    base = {m: _checked_baseline(real[m], baseline_features[m], m) for m in modalities}
    # with shared baselines every sample of the empty coalition is the same: one row does
    shared = all(base[m].shape[0] == 1 for m in modalities)
    parts_of = getattr(model, "fusion_parts", None)
    # the terms' fixed cost (about 20 small operations) beats running the head on every
    # coalition's rows from 3 modalities on: at 2 it was 20 % slower, at 4 three times faster
    # (issue 14's MLP and the default model, one CPU thread)
    summed = shared and callable(parts_of) and len(modalities) >= 3
    parts = parts_of(real) if summed else None
    if parts is not None:
        base_parts, after = parts_of(base), model.after_fusion_parts
        return _summed_parts(
            after, modalities, parts, base_parts, targets, value, coalitions, chunk_size, per_row
        )
    device = real[modalities[0]].device
    if chunk_size is None and device.type == "cpu":
        chunk_size = max(1, CPU_FEATURE_ROWS // batch_size)
    sums, positions = [], []
    for start, plan in _passes(coalitions, chunk_size, batch_size, device, shared):
        stacked = {m: plan.stack(real[m], base[m], i) for i, m in enumerate(modalities)}
        sums.append(plan.sums(model.fuse(stacked, plan.row_mask), targets, value, per_row))
        positions += [start + k for k in plan.positions]
    return sums, positions


def _checked_baseline(real: Tensor, base: Tensor, m: str) -> Tensor:
    """Modality ``m``'s baseline features ``[1 or B, ...]`` on the features' device/dtype."""
    base = base.detach().to(real)
    batch_size = real.shape[0]
    if base.shape[1:] != real.shape[1:] or base.shape[0] not in (1, batch_size):
        raise ValueError(
            f"baseline_features[{m!r}] must have shape [1, ...] or [B, ...] matching the "
            f"features {list(real.shape[1:])} per sample (B = {batch_size}), "
            f"got {list(base.shape)}"
        )
    return base


def _input_sums(
    model: nn.Module,
    modalities: list[str],
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str,
    coalitions: Coalitions,
    baselines: Mapping[str, Tensor] | None,
    chunk_size: int | None,
    per_row: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """Input masking: per-pass sums and the coalition index of each (callers hold no_grad and
    eval mode).

    The empty coalition gets one row instead of B: every sample is then the same baseline
    input, so one row's logits are every sample's (rows never interact in eval mode).
    """
    batch_size = targets.shape[0]
    device = inputs[modalities[0]].device
    sums, positions = [], []
    for start, plan in _passes(coalitions, chunk_size, batch_size, device, True):
        stacked = {m: plan.repeat(inputs[m]) for m in modalities}
        if baselines is None:  # the model replaces absent inputs by its own baselines
            logits = model(stacked, plan.row_mask)
        else:  # the protocol: model(x, mask) == model(apply_input_mask(x, mask))
            logits = model(apply_input_mask(stacked, plan.row_mask, modalities, baselines))
        sums.append(plan.sums(logits, targets, value, per_row))
        positions += [start + k for k in plan.positions]
    return sums, positions


def _first_layer_sums(
    model: nn.Module,
    modalities: list[str],
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str,
    coalitions: Coalitions,
    baselines: Mapping[str, Tensor] | None,
    chunk_size: int | None,
    per_row: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """First-layer masking: per-pass sums and the coalition index of each (callers hold
    no_grad and eval mode).  The parts ``P_m = x_m W_mᵀ [B, H]`` and the baselines' are
    computed once and summed per coalition (:func:`_summed_parts`); only
    ``after_first_layer`` runs on the repeated rows."""
    parts = model.first_layer_parts(inputs)
    base = model.first_layer_parts(baseline_inputs(model, inputs, baselines))
    return _summed_parts(
        model.after_first_layer,
        modalities,
        parts,
        base,
        targets,
        value,
        coalitions,
        chunk_size,
        per_row,
    )


def _summed_parts(
    after: Callable[[Tensor], Tensor],
    modalities: list[str],
    parts: Mapping[str, Tensor],
    base: Mapping[str, Tensor],
    targets: Tensor,
    value: str,
    coalitions: Coalitions,
    chunk_size: int | None,
    per_row: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """Per-pass sums from each modality's linear term of a first layer, ``parts`` ``{m:
    [B, H]}``, and its baseline's, ``base`` ``{m: [1, H]}``: coalition S's first-layer output
    is ``Σ_m S_m P_m + (1 − S_m) b_m``, one small matmul with 0/1 coefficients per pass (each
    output is then the exact sum of its selected terms), and only ``after`` runs on the
    repeated rows.  The empty coalition is one row."""
    batch_size = targets.shape[0]
    device = parts[modalities[0]].device
    if chunk_size is None and device.type == "cpu":
        chunk_size = max(1, CPU_FIRST_LAYER_ROWS // batch_size)
    real = torch.stack([parts[m] for m in modalities])  # [M, B, H]
    dtype = real.dtype  # summed in float32 at least, so a bf16 sum rounds once, as one matmul
    width, wide = real.shape[-1], torch.promote_types(dtype, torch.float32)
    real = real.reshape(len(modalities), -1).to(wide)  # [M, B*H]
    base = torch.cat([base[m] for m in modalities]).to(wide)  # [M, H]
    sums, positions = [], []
    for start, plan in _passes(coalitions, chunk_size, batch_size, device, True):
        z = []
        if plan.n_full:
            present, absent = plan.coefficients(real.dtype)  # [k, M]
            chosen = (present @ real).view(plan.n_full, batch_size, width)
            z.append((chosen + (absent @ base).unsqueeze(1)).view(-1, width))
        if plan.n_empty:
            z.append(base.sum(0, keepdim=True))
        z = z[0] if len(z) == 1 else torch.cat(z)
        sums.append(plan.sums(after(z.to(dtype)), targets, value, per_row))
        positions += [start + k for k in plan.positions]
    return sums, positions


def coalition_sums(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    coalitions: Coalitions,
    value: str,
    masking: str,
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    features: Mapping[str, Tensor] | None = None,
    per_row: bool = False,
) -> tuple[list[Tensor], list[int]]:
    """The passes behind :func:`masked_values`, for callers that hold ``torch.no_grad()`` and
    :func:`eval_mode` themselves and add values of their own before the one transfer.

    Returns the per-pass sums over the batch (on the device, see :func:`value_sums`) and the index
    in ``coalitions`` of each summed value; :func:`mean_values` turns them into means.
    ``masking`` is ``"input"``, ``"feature"`` or ``"first_layer"`` (resolved); ``features``
    (feature masking) are the batch's features when the caller has them, else the encoders run
    here.
    """
    modalities = _modalities(model)
    if masking == "feature":
        if features is None:
            features = model.encode(inputs)
        if baselines is None:  # the model's own baselines: their rows are built once
            base = model.encode(_own_baseline_inputs(model, inputs))
        else:
            base = model.encode(baseline_inputs(model, inputs, baselines))
        return _feature_sums(
            model, modalities, features, base, targets, value, coalitions, chunk_size, per_row
        )
    masked = _first_layer_sums if masking == "first_layer" else _input_sums
    return masked(
        model, modalities, inputs, targets, value, coalitions, baselines, chunk_size, per_row
    )


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
    n = len(modalities)
    coalitions = all_coalitions(n) if masks is None else _check_masks(masks, n)
    with torch.no_grad(), eval_mode(model):
        sums, positions = _feature_sums(
            model, modalities, features, baseline_features, targets, value, coalitions, chunk_size
        )
    return mean_values(sums, positions, batch_size)


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
    coalitions = _check_masks(masks, len(_modalities(model)))
    return _values(model, inputs, targets, coalitions, value, masking, baselines, chunk_size)


def _values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    coalitions: Coalitions,
    value: str,
    masking: str,
    baselines: Mapping[str, Tensor] | None,
    chunk_size: int | None,
) -> Tensor:
    modalities = _modalities(model)
    check_value_kind(value)
    masking = resolve_masking(model, masking)
    batch_size = check_inputs(inputs, modalities)
    check_targets(targets, batch_size)
    with torch.no_grad(), eval_mode(model):
        sums, positions = coalition_sums(
            model, inputs, targets, coalitions, value, masking, baselines, chunk_size
        )
    return mean_values(sums, positions, batch_size)


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
    ``"accuracy"``, ``"prob"`` or ``"neg_loss"``; ``masking`` is ``"input"``, ``"feature"``,
    ``"first_layer"`` or ``"auto"`` (module docstring).  ``baselines`` replace absent inputs
    instead of the model's own (``{m: tensor broadcasting against one sample}``).  The
    coalitions go through batched no-grad eval-mode passes: all in one on an accelerator; on
    the CPU ~256 rows per pass for input masking (:data:`CPU_ROWS_PER_PASS`), ~1024 for feature
    masking (:data:`CPU_FEATURE_ROWS`) and first-layer masking; ``chunk_size`` sets
    the coalitions per pass instead (``chunk_size * B`` rows, to bound memory).  The empty
    coalition takes one row.  Each module's train/eval flag is restored afterwards.
    """
    coalitions = all_coalitions(len(_modalities(model)))
    return _values(model, inputs, targets, coalitions, value, masking, baselines, chunk_size)


# --------------------------------------------------------------------------------------------
# a training batch's values, reduced across ranks


def is_distributed() -> bool:
    """True under ``torch.distributed`` with more than one rank."""
    dist = torch.distributed
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def mean_over_ranks(
    values: Tensor, batch_size: int, device: torch.device | str | None = None
) -> Tensor:
    """Batch-size-weighted mean of per-rank ``values`` under ``torch.distributed`` (else as is).

    Every rank must see the same numbers (the same dominant modality, the same modulation
    coefficients), or the replicas drift apart.  ``device``: where the collective runs (the
    backend's device; default ``values``'s); the result comes back on ``values``'s device and
    dtype.
    """
    if not is_distributed():
        return values
    weight = values.new_tensor([batch_size], dtype=torch.float64)
    packed = torch.cat([values.double() * batch_size, weight.to(values.device)])
    packed = packed.to(values.device if device is None else device)
    torch.distributed.all_reduce(packed)
    return (packed[:-1] / packed[-1]).to(values.device, values.dtype)


def same_in_train_and_eval(model: nn.Module, training: list[nn.Module] | None = None) -> bool:
    """True when no module would compute differently in eval mode: no active dropout
    (p > 0) and no batch norm in training mode.  Then a training forward's outputs are the
    eval-mode outputs, and a step may reuse them as coalition values.  ``training``: the
    :func:`training_modules` of ``model`` when the caller already has them."""
    for module in training_modules(model) if training is None else training:
        if isinstance(module, _DropoutNd) and module.p > 0:
            return False
        if isinstance(module, _BatchNorm):
            return False
    return True


def eval_mode_features(model: nn.Module, training: list[nn.Module] | None = None) -> bool:
    """True when a training forward's features are the eval-mode ones, so feature masking may
    reuse them: no module of ``model.encoders`` (of the whole model when it has none) computes
    differently in eval mode (:func:`same_in_train_and_eval`).  A batch-norm encoder in
    training mode normalises with the batch's statistics, not the running ones the coalition
    values are defined with, so its features are encoded again in eval mode."""
    encoders = getattr(model, "encoders", None)
    if isinstance(encoders, nn.Module):
        return same_in_train_and_eval(encoders)
    return same_in_train_and_eval(model, training)


def batch_values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    *,
    logits: Tensor | None = None,
    features: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """``v(S)`` for every coalition of a training batch, averaged over ranks: ``[2**M]``, CPU
    float64, as :func:`coalition_values`, reusing what a training step already computed
    (:func:`batch_values_and`, which also reads one more scalar in the same transfer)."""
    args = (model, inputs, targets, value, masking, baselines, chunk_size)
    return batch_values_and(*args, logits=logits, features=features)[0]


def batch_values_and(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    *,
    logits: Tensor | None = None,
    features: Mapping[str, Tensor] | None = None,
    scalar: Tensor | None = None,
) -> tuple[Tensor, float | None]:
    """:func:`batch_values` and ``float(scalar)`` (None without one), read to the host in one
    transfer: a training step's loss at θ, checked after this pass instead of before it, costs
    no device-to-host read of its own.

    ``logits``: the step's first-pass logits ``[B, C]``; they are the full coalition's value
    when train and eval mode compute the same (:func:`same_in_train_and_eval`), so that
    coalition is not run again.  ``features``: the first pass's detached features, which
    feature masking uses instead of running the encoders when they are the eval-mode ones
    (:func:`eval_mode_features`): only ``fuse`` runs, and the baseline features are one
    eval-mode encoder pass on one sample.  Under ``torch.distributed`` the
    values are averaged over ranks, weighted by batch size, so every rank has the same ones.
    """
    check_value_kind(value)
    modalities = _modalities(model)
    resolved = resolve_masking(model, masking)
    if logits is None and features is None:  # the step checked these otherwise
        check_targets(targets, check_inputs(inputs, modalities))
    training = training_modules(model)  # one walk of the module tree serves both uses below
    reuse_full = logits is not None and same_in_train_and_eval(model, training)
    coalitions = all_coalitions(len(modalities))
    coalitions = coalitions[:-1] if reuse_full else coalitions  # the full one is the last
    reuse_features = resolved == "feature" and eval_mode_features(model, training)
    features = features if reuse_features else None
    with torch.no_grad(), eval_mode(model, training):
        sums, positions = coalition_sums(
            model, inputs, targets, coalitions, value, resolved, baselines, chunk_size, features
        )
    if reuse_full:
        sums.append(value_sums(logits.detach(), targets, 1, value))
        positions.append(len(coalitions))
    batch_size = int(targets.shape[0])
    values = mean_values(sums, positions, batch_size, scalar)  # the one device-to-host copy
    read = None if scalar is None else float(values[-1])
    values = values if scalar is None else values[:-1]
    return mean_over_ranks(values, batch_size, targets.device), read


def batch_row_values(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    rows: Tensor,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    *,
    logits: Tensor | None = None,
    features: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`batch_values` on the batch's rows ``rows`` only (int64 indices ``[n]``), with
    each row's own values: ``(v [2**M], per-row v [2**M, n])``, CPU float64, this rank's alone.

    ``v`` is the mean of the per-row values, summed on the device exactly as
    :func:`batch_values` sums them, so with every row it is the batch's ``v``.  One
    device-to-host copy.  The caller averages over ranks (``msam_core.shapley.batch_shapley``
    does, with φ's standard error over rows).
    """
    check_value_kind(value)
    modalities = _modalities(model)
    resolved = resolve_masking(model, masking)
    if logits is None and features is None:
        check_targets(targets, check_inputs(inputs, modalities))
    rows = rows.to(targets.device)
    inputs = {m: inputs[m].index_select(0, rows) for m in modalities}
    targets = targets.index_select(0, rows)
    training = training_modules(model)
    reuse_full = logits is not None and same_in_train_and_eval(model, training)
    coalitions = all_coalitions(len(modalities))
    coalitions = coalitions[:-1] if reuse_full else coalitions  # the full one is the last
    if resolved == "feature" and features is not None and eval_mode_features(model, training):
        features = {m: features[m].index_select(0, rows) for m in modalities}
    else:
        features = None
    with torch.no_grad(), eval_mode(model, training):
        terms, positions = coalition_sums(
            model,
            inputs,
            targets,
            coalitions,
            value,
            resolved,
            baselines,
            chunk_size,
            features,
            per_row=True,
        )
    if reuse_full:
        full = logits.detach().index_select(0, rows)
        terms.append(value_sums(full, targets, 1, value, per_row=True))
        positions.append(len(coalitions))
    terms = torch.cat(terms)  # [2**M, n] in positions order
    sums = terms.sum(1)  # as value_sums sums them: the same numbers with every row
    ordered = torch.cat([sums.double().unsqueeze(1), terms.double()], 1).cpu()
    if positions != list(range(len(positions))):  # bitmask order (the passes' usual one)
        ordered = ordered[torch.tensor(positions).argsort()]
    n = int(targets.shape[0])
    return ordered[:, 0] / n, ordered[:, 1:]
