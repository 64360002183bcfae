"""Values derived from what a run records, each rule written once (no torch, no pandas).

The engine, the comparison tables and the figures all need the same few rules; they live here
so msam_viz reads them instead of keeping copies (docs/design.md, "Layers"):

* :func:`shares`: M-SAM's modality shares from Shapley values;
* :func:`selection_key` / :func:`best_epoch`: which epoch training keeps as ``best.pt``;
* :func:`default_run_dir`: where ``msam train`` writes a run when no ``--out`` is given;
* :data:`SAM_FAMILY`: the methods whose step takes a sharpness-aware ascent.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

#: Methods whose step takes a sharpness-aware ascent: they read ``rho`` and record
#: ``sharpness`` = ℓ(θ+ε) − ℓ(θ) at every step (a test holds the method classes to it).
SAM_FAMILY = ("sam", "asam", "msam")


def shares(phi: Sequence[float]) -> list[float]:
    """M-SAM's shares ``w_m = max(φ_m, 0) / Σ_k max(φ_k, 0)``, which sum to 1.

    When no modality contributes positively (the sum is 0, e.g. at initialisation) every
    modality gets ``1/M``.  A missing (NaN / inf) φ_m counts as 0; when every φ is missing
    nothing was measured and every share is NaN, not ``1/M``.
    """
    values = [float(v) for v in phi]
    if not values:
        raise ValueError("shares need at least one modality's φ")
    finite = [math.isfinite(v) for v in values]
    if not any(finite):
        return [math.nan] * len(values)
    positive = [max(v, 0.0) if ok else 0.0 for v, ok in zip(values, finite, strict=True)]
    total = sum(positive)
    if not total > 0:
        return [1.0 / len(values)] * len(values)
    return [v / total for v in positive]


def _number(value: Any, missing: float) -> float:
    value = missing if value is None else float(value)
    return missing if math.isnan(value) else value


#: how a run's best epoch is chosen (summary.json "selection"); :func:`selection_key` is the rule
SELECTION = "best val accuracy (ties: lower val loss, then earlier epoch); never test"


def selection_key(val: Mapping[str, Any]) -> tuple[float, float]:
    """How one epoch's validation record ranks: higher ``acc``, then lower ``loss`` (a missing
    value ranks last).  Training keeps the first epoch > 0 with the greatest key."""
    return (_number(val.get("acc"), -math.inf), -_number(val.get("loss"), math.inf))


def best_epoch(val_records: Iterable[Mapping[str, Any]]) -> int | None:
    """The epoch training selects from its validation records (``epoch``, ``acc``, ``loss``):
    the greatest :func:`selection_key`, the earliest on ties, never epoch 0 (the initial
    weights).  None when no epoch after 0 has a validation accuracy."""
    best: tuple[tuple[float, float], int] | None = None
    for record in val_records:
        epoch = int(record["epoch"])
        if epoch <= 0 or not math.isfinite(_number(record.get("acc"), math.nan)):
            continue
        key = selection_key(record)
        if best is None or key > best[0] or (key == best[0] and epoch < best[1]):
            best = (key, epoch)
    return None if best is None else best[1]


def default_run_dir(method: str, dataset: str, seed: int, root: str | os.PathLike = "runs") -> Path:
    """``runs/<method>_<dataset>_seed<seed>``: where a run goes when no ``out`` is given."""
    return Path(root) / f"{method}_{dataset}_seed{int(seed)}"
