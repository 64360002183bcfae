"""``check_model(model, batch)``: does a model follow the protocol msam's measurements rely on?

Modality Shapley values, M-SAM's dominant modality and every balance figure read the model
through ``model(inputs, mask)``.  A model that ignores ``mask``, masks the wrong modality, or
whose ``encode`` / ``fuse`` fast path computes something else than input masking still trains,
but every φ it yields is meaningless.  :func:`check_model` runs the model on one batch (no grad,
eval mode, each module's mode restored) and returns a readable verdict, one line per check:

1. ``modalities``: a non-empty list of unique names, and the batch holds each of them;
2. shapes: ``model(inputs)`` is finite float logits ``[B, C]`` (and ``C`` covers the targets);
3. ``mask=None`` equals an all-present mask, and a per-sample ``[B, M]`` mask equals the
   same ``[M]`` mask on every row;
4. masking each modality changes the output (else its φ is 0 at every step);
5. the fast path, when the model has ``encode`` / ``fuse``: ``fuse(encode(x), None)`` equals
   ``model(x)``, and for every coalition, features with the absent modalities replaced by the
   encoding of their baselines give the logits input masking gives;
6. each modality owns some parameters (per-modality encoders, or ``modality_parameters()``):
   M-SAM's targeted ascent and the per-modality measures perturb them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from msam_core.coalitions import (
    all_coalitions,
    baseline_inputs,
    encode_baselines,
    eval_mode,
    has_feature_path,
    has_first_layer_path,
)
from msam_core.param_groups import modality_parameters

#: above this many modalities only single-modality and leave-one-out coalitions are compared
_ALL_COALITIONS_UP_TO = 6


@dataclass
class Check:
    """One check: its name, whether it passed (None: not applicable), and what was found."""

    name: str
    passed: bool | None
    detail: str


@dataclass
class ModelCheck:
    """The verdict of :func:`check_model`: ``ok`` when every applicable check passed."""

    model: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def add(self, name: str, passed: bool | None, detail: str) -> bool:
        self.checks.append(Check(name, passed, detail))
        return bool(passed)

    def __str__(self) -> str:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}
        head = (
            f"{self.model} follows the msam model protocol"
            if self.ok
            else f"{self.model} does NOT follow the msam model protocol "
            f"({len(self.failures)} of {len(self.checks)} checks failed)"
        )
        return "\n".join([head, *(f"  {mark[c.passed]} {c.name}: {c.detail}" for c in self.checks)])

    __repr__ = __str__


def _split_batch(batch) -> tuple[Mapping[str, Tensor], Tensor | None]:
    if isinstance(batch, Mapping):
        return batch, None
    if isinstance(batch, tuple | list) and len(batch) == 2 and isinstance(batch[0], Mapping):
        return batch[0], batch[1]
    raise TypeError(
        "batch must be the inputs {modality: tensor [B, ...]} or a pair (inputs, targets), "
        f"got {type(batch).__name__}"
    )


def _gap(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).abs().max()) if a.numel() else 0.0


def check_model(model: nn.Module, batch, *, atol: float = 1e-5, quiet: bool = False) -> ModelCheck:
    """Check ``model`` against the protocol on ``batch`` and print the verdict (``quiet``: don't).

    ``batch``: the inputs ``{modality: [B, ...]}`` or ``(inputs, targets)``; use at least two
    samples of real data (masking must change some logit by more than ``atol``).  Outputs are
    compared to ``atol`` (absolute, on the logits).  Returns a :class:`ModelCheck`; nothing
    raises for a failed check, so every problem is listed at once.
    """
    inputs, targets = _split_batch(batch)
    report = ModelCheck(type(model).__name__)
    with torch.no_grad(), eval_mode(model):
        _run_checks(model, inputs, targets, atol, report)
    if not quiet:
        print(report)
    return report


def _run_checks(model, inputs, targets, atol, report: ModelCheck) -> None:
    names = getattr(model, "modalities", None)
    ok = isinstance(names, list | tuple) and len(names) > 0 and len(set(names)) == len(names)
    missing = [m for m in names or [] if m not in inputs] if ok else []
    if not report.add(
        "modalities",
        ok and not missing,
        f"{list(names)} (mask column m and coalition bit m are modality m)"
        if ok and not missing
        else f"the batch lacks {missing}; it has {sorted(inputs)}"
        if ok
        else f"model.modalities must be a non-empty list of unique names, got {names!r}",
    ):
        return
    names = list(names)
    n = len(names)
    try:
        out = model(inputs)
    except Exception as err:  # the verdict says what broke instead of a traceback
        report.add("shapes", False, f"model(inputs) raised {type(err).__name__}: {err}")
        return
    batch_size = int(inputs[names[0]].shape[0])
    problems = []
    if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != batch_size:
        shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
        problems.append(f"model(inputs) must return logits [B, C] = [{batch_size}, C], got {shape}")
    elif not out.is_floating_point() or not bool(out.isfinite().all()):
        problems.append("the logits must be finite floats")
    elif targets is not None and int(targets.max()) >= out.shape[1]:
        problems.append(
            f"targets go up to {int(targets.max())} but there are {out.shape[1]} logits"
        )
    if not report.add(
        "shapes",
        not problems,
        "; ".join(problems) or f"logits {list(out.shape)} for a batch of {batch_size}",
    ):
        return

    def run(mask) -> Tensor | str:
        try:
            return model(inputs, mask)
        except Exception as err:
            return f"model(inputs, mask) raised {type(err).__name__}: {err}"

    everyone = torch.ones(n, dtype=torch.bool, device=out.device)
    full = run(everyone)
    if isinstance(full, str):
        report.add("mask", False, full)
        return
    rows = run(everyone.expand(batch_size, n).clone())
    gaps = [_gap(full, out)] + ([_gap(rows, out)] if isinstance(rows, Tensor) else [])
    detail = (
        "mask=None, an all-present [M] mask and an all-present [B, M] mask agree"
        if isinstance(rows, Tensor)
        else f"an [M] mask works but a per-sample [B, M] mask fails: {rows}"
    )
    if max(gaps) > atol:
        detail = f"mask=None and an all-present mask differ by {max(gaps):.3g} (> {atol:g})"
    report.add("mask", isinstance(rows, Tensor) and max(gaps) <= atol, detail)

    changes = {}
    for i, m in enumerate(names):
        without = everyone.clone()
        without[i] = False
        masked = run(without)
        changes[m] = _gap(masked, out) if isinstance(masked, Tensor) else masked
    bad = [m for m, c in changes.items() if isinstance(c, str) or c <= atol]
    shown = ", ".join(
        f"{m} {c:.3g}" if not isinstance(c, str) else f"{m}: {c}" for m, c in changes.items()
    )
    report.add(
        "masking changes the output",
        not bad,
        f"largest logit change when one modality is masked: {shown}"
        if not bad
        else f"masking {bad} does not change the output (changes: {shown}): the model ignores "
        "`mask` for them, so their φ is 0 at every step. Replace an absent modality's input "
        "by its baseline inside forward (msam_core.models.base.MultimodalModel does this)",
    )
    _check_fast_path(model, inputs, out, names, atol, report)
    _check_parameters(model, report)


def _check_parameters(model, report: ModelCheck) -> None:
    try:
        parts = modality_parameters(model, "M-SAM's targeted ascent")
    except ValueError as err:
        report.add("modality parameters", False, str(err))
        return
    sizes = {
        m: sum(int(p.numel() if mask is None else mask.sum()) for p, mask in entries)
        for m, entries in parts.items()
    }
    empty = [m for m, n in sizes.items() if n == 0]
    shown = ", ".join(f"{m} {n:,}" for m, n in sizes.items())
    report.add(
        "modality parameters",
        not empty,
        f"trainable parameters per modality (M-SAM's targeted ascent moves these): {shown}"
        if not empty
        else f"modalities {empty} own no trainable parameters ({shown})",
    )


def _check_fast_path(model, inputs, out, names, atol, report: ModelCheck) -> None:
    if has_first_layer_path(model) and not has_feature_path(model):
        _check_first_layer_path(model, inputs, names, atol, report)
        return
    if not has_feature_path(model):
        report.add(
            "fast path",
            None,
            "no encode/fuse: coalitions use input masking (correct, one full pass each)",
        )
        return
    try:
        features = dict(model.encode(inputs))
        fused = model.fuse(features, None)
        base = encode_baselines(model, inputs)
    except Exception as err:
        report.add("fast path", False, f"encode/fuse raised {type(err).__name__}: {err}")
        return
    n = len(names)
    missing = [m for m in names if m not in features]
    if missing:
        report.add("fast path", False, f"encode(inputs) lacks features for {missing}")
        return
    if n <= _ALL_COALITIONS_UP_TO:
        coalitions = [torch.tensor(c) for c in all_coalitions(n)]
    else:
        eye = torch.eye(n, dtype=torch.bool)
        coalitions = [*eye, *~eye, torch.zeros(n, dtype=torch.bool)]
    worst, where = _gap(fused, out), "fuse(encode(x), None) vs model(x)"
    for mask in coalitions:
        mask = mask.to(out.device)
        stacked = {
            m: features[m] if mask[i] else base[m].expand_as(features[m])
            for i, m in enumerate(names)
        }
        gap = _gap(model.fuse(stacked, mask), model(inputs, mask))
        if gap > worst:
            present = [m for i, m in enumerate(names) if mask[i]]
            worst, where = gap, f"coalition {present}"
    widths = ", ".join(f"{m} {list(features[m].shape[1:])}" for m in names)
    report.add(
        "fast path",
        worst <= atol,
        f"feature masking equals input masking on {len(coalitions)} coalitions "
        f"(largest gap {worst:.2g}); features: {widths}"
        if worst <= atol
        else f"feature masking differs from input masking by {worst:.3g} at {where}: encode "
        "must see each modality alone, and fuse must treat an absent modality as the encoding "
        "of its baseline; else drop encode/fuse and input masking is used",
    )


def _check_first_layer_path(model, inputs, names, atol, report: ModelCheck) -> None:
    """``after_first_layer(Σ_m parts)`` with absent modalities' parts taken on their baselines
    must equal input masking on every coalition (the first-layer masking path's promise)."""
    try:
        parts = model.first_layer_parts(inputs)
        base = model.first_layer_parts(baseline_inputs(model, inputs))
    except Exception as err:
        report.add("fast path", False, f"first_layer_parts raised {type(err).__name__}: {err}")
        return
    n = len(names)
    if n <= _ALL_COALITIONS_UP_TO:
        coalitions = [torch.tensor(c) for c in all_coalitions(n)]
    else:
        eye = torch.eye(n, dtype=torch.bool)
        coalitions = [*eye, *~eye, torch.ones(n, dtype=torch.bool)]
    worst, where = 0.0, ""
    for mask in coalitions:
        z = sum(parts[m] if mask[i] else base[m] for i, m in enumerate(names))
        gap = _gap(model.after_first_layer(z), model(inputs, mask.to(z.device)))
        if gap > worst:
            worst, where = gap, f"coalition {[m for i, m in enumerate(names) if mask[i]]}"
    report.add(
        "fast path",
        worst <= atol,
        f"first-layer masking equals input masking on {len(coalitions)} coalitions "
        f"(largest gap {worst:.2g})"
        if worst <= atol
        else f"first-layer masking differs from input masking by {worst:.3g} at {where}: "
        "first_layer_parts must split the first layer's output by modality (no bias) and "
        "after_first_layer must apply the bias and the rest of the network",
    )
