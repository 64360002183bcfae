"""Evaluation of a split: fused and unimodal accuracy, modality Shapley values, balance.

Everything comes from the coalition values of :mod:`msam_core.coalitions` accumulated over
the split, so ``acc`` is ``v_acc(all)``, ``acc/<m>`` is ``v_acc({m})`` (every other modality
replaced by its baseline) and ``phi/<m>`` is the exact Shapley value of the split-level
``v`` (Shapley values are linear in ``v``, and ``v`` of a split is the sample-weighted mean of
its batches' ``v``, so batching changes nothing).

Balance measure (the ``balance`` key): the normalised entropy of the positive Shapley shares,

    w_m = max(φ_m, 0) / Σ_k max(φ_k, 0),      balance = −Σ_m w_m log w_m / log M,

in [0, 1]: 1 when every modality contributes equally to the fused model, 0 when one modality
carries all the positive contribution.  Why this one: it is computed from the same shares
``w_m`` that M-SAM uses to split its loss (DESIGN.md), so the balance plotted per epoch is the
balance the method acts on; it is scale-free and defined for any number of modalities; and
unlike a ratio of unimodal accuracies it measures what the *fused* model relies on, not what
each modality could do alone (a weak modality can sit above chance alone yet contribute
nothing to the fused prediction).  When no modality contributes positively (e.g. at
initialisation) the shares are undefined and ``balance`` is absent from the record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset


def balance_entropy(phi: Sequence[float] | Tensor) -> float | None:
    """Normalised entropy of the positive Shapley shares (module docstring); None if undefined."""
    values = [max(float(v), 0.0) for v in (phi.tolist() if isinstance(phi, Tensor) else phi)]
    total = sum(values)
    if len(values) < 2:
        return 1.0 if total > 0 else None
    if not total > 0 or not math.isfinite(total):
        return None
    shares = [v / total for v in values]
    entropy = -sum(w * math.log(w) for w in shares if w > 0)
    return max(0.0, entropy / math.log(len(values)))  # max: no -0.0 for a single share


def _batches(split: Dataset, batch_size: int, device: torch.device):
    from msam_core.train import iterate_batches  # shared batch gathering, no import cycle

    return iterate_batches(split, torch.arange(len(split)), batch_size, device)


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Dataset,
    *,
    batch_size: int = 1024,
    value: str = "accuracy",
    device: torch.device | str | None = None,
) -> dict[str, Any]:
    """Evaluate ``model`` on every sample of ``split`` (eval mode, no grad; mode restored).

    Returns ``loss`` (mean cross-entropy of the fused model), ``acc``, ``acc/<m>``,
    ``phi/<m>`` (Shapley value of coalition value ``value``: accuracy, probability or
    neg_loss), ``balance`` (absent when undefined) and ``n`` (samples).
    """
    from msam_core.coalitions import coalition_values
    from msam_core.shapley import modality_shapley

    modalities: list[str] = list(model.modalities)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_total = 0
    loss_sum = 0.0
    acc_sum: Tensor | None = None
    value_sum: Tensor | None = None
    try:
        for inputs, targets in _batches(split, batch_size, device):
            n = int(targets.shape[0])
            logits = model(inputs)
            loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            acc = coalition_values(model, inputs, targets, value="accuracy").double().cpu()
            acc_sum = acc * n if acc_sum is None else acc_sum + acc * n
            if value != "accuracy":
                v = coalition_values(model, inputs, targets, value=value).double().cpu()
                value_sum = v * n if value_sum is None else value_sum + v * n
            n_total += n
    finally:
        model.train(was_training)
    if n_total == 0:
        raise ValueError("cannot evaluate an empty split")
    acc_v = acc_sum / n_total
    values = acc_v if value == "accuracy" else value_sum / n_total
    phi = modality_shapley(values)
    record: dict[str, Any] = {"n": n_total, "loss": loss_sum / n_total}
    record["acc"] = float(acc_v[-1])  # the full coalition: every bit set
    for m, name in enumerate(modalities):
        record[f"acc/{name}"] = float(acc_v[1 << m])
    for m, name in enumerate(modalities):
        record[f"phi/{name}"] = float(phi[m])
    balance = balance_entropy(phi)
    if balance is not None:
        record["balance"] = balance
    return record


def unimodal_gap(record: Mapping[str, Any], modalities: Sequence[str]) -> float:
    """Largest minus smallest unimodal accuracy in an evaluation record (0 = equal)."""
    accs = [float(record[f"acc/{m}"]) for m in modalities]
    return max(accs) - min(accs)
