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
``w_m`` that M-SAM uses to split its loss (docs/design.md, "M-SAM step"), so the balance
plotted per epoch is the balance the method acts on; it is scale-free and defined for any
number of modalities; and unlike a ratio of unimodal accuracies it measures what the *fused*
model relies on, not what each modality could do alone (a weak modality can sit above chance
alone yet contribute nothing to the fused prediction).  When no modality contributes
positively (e.g. at initialisation) the shares are undefined and ``balance`` is absent from
the record.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.batches import iterate_batches
from msam_core.derived import shares


def balance_entropy(phi: Sequence[float] | Tensor) -> float | None:
    """Normalised entropy of the positive Shapley shares (module docstring); None if undefined."""
    values = [float(v) for v in (phi.tolist() if isinstance(phi, Tensor) else phi)]
    total = sum(max(v, 0.0) for v in values)
    if len(values) < 2:
        return 1.0 if total > 0 else None
    if not total > 0 or not math.isfinite(total):
        return None
    entropy = -sum(w * math.log(w) for w in shares(values) if w > 0)
    return max(0.0, entropy / math.log(len(values)))  # max: no -0.0 for a single share


def _batches(split: Dataset, batch_size: int, device: torch.device, num_workers: int):
    return iterate_batches(split, torch.arange(len(split)), batch_size, device, num_workers)


#: permutations per batch when a model has more modalities than exact Shapley enumerates
EVAL_PERMUTATIONS = 64


@torch.no_grad()
def evaluate_split(
    model: nn.Module,
    split: Dataset,
    *,
    batch_size: int = 1024,
    value: str = "accuracy",
    device: torch.device | str | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> dict[str, Any]:
    """Evaluate ``model`` on every sample of ``split`` (eval mode, no grad; mode restored).

    Returns ``n`` (samples), ``loss`` (mean cross-entropy of the fused model), ``acc``,
    ``acc/<m>`` (modality m alone), ``phi/<m>`` (Shapley value of the coalition value
    ``value``: accuracy, prob or neg_loss, see :mod:`msam_core.coalitions`) and ``balance``
    (absent when undefined).  Up to 10 modalities φ is exact; beyond, it is estimated by
    antithetic permutation sampling (``EVAL_PERMUTATIONS`` per batch, seeded by ``seed``) and
    ``phi_stderr/<m>`` is added.  ``num_workers`` reads a file-backed split's items in that
    many worker processes (:func:`msam_core.batches.iterate_batches`).
    """
    from msam_core.coalitions import check_value_kind, coalition_values, masked_values
    from msam_core.shapley import MAX_EXACT_PLAYERS, exact_shapley, permutation_shapley

    check_value_kind(value)
    modalities: list[str] = list(model.modalities)
    n_mod = len(modalities)
    exact = n_mod <= MAX_EXACT_PLAYERS
    device = torch.device(device) if device is not None else next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)  # never the global RNG: resume stays exact
    # accuracy of the full coalition (last row) and of each modality alone (rows 0..M-1)
    probes = torch.cat([torch.eye(n_mod, dtype=torch.bool), torch.ones(1, n_mod, dtype=torch.bool)])
    was_training = model.training
    model.eval()
    n_total, loss_sum = 0, 0.0
    acc_sum = torch.zeros(n_mod + 1, dtype=torch.float64)
    phi_sum = torch.zeros(n_mod, dtype=torch.float64)
    var_sum = torch.zeros(n_mod, dtype=torch.float64)
    try:
        for inputs, targets in _batches(split, batch_size, device, num_workers):
            n = int(targets.shape[0])
            logits = model(inputs)
            loss_sum += float(F.cross_entropy(logits.float(), targets, reduction="sum"))
            if exact:
                acc = coalition_values(model, inputs, targets, "accuracy", masking="auto")
                v = (
                    acc
                    if value == "accuracy"
                    else coalition_values(model, inputs, targets, value, masking="auto")
                )
                acc_sum += n * acc[[1 << m for m in range(n_mod)] + [-1]]
                phi_sum += n * exact_shapley(v)
            else:
                acc_sum += n * masked_values(
                    model, inputs, targets, probes.to(device), "accuracy", masking="auto"
                )
                phi, stderr = permutation_shapley(
                    lambda masks, x=inputs, y=targets: masked_values(
                        model, x, y, masks.to(device), value, masking="auto"
                    ),
                    n_mod,
                    EVAL_PERMUTATIONS,
                    generator=generator,
                )
                phi_sum += n * phi
                var_sum += (n * stderr) ** 2
            n_total += n
    finally:
        model.train(was_training)
    if n_total == 0:
        raise ValueError("cannot evaluate an empty split")
    acc = acc_sum / n_total
    phi = phi_sum / n_total
    record: dict[str, Any] = {"n": n_total, "loss": loss_sum / n_total, "acc": float(acc[-1])}
    for m, name in enumerate(modalities):
        record[f"acc/{name}"] = float(acc[m])
    for m, name in enumerate(modalities):
        record[f"phi/{name}"] = float(phi[m])
    if not exact:
        for m, name in enumerate(modalities):
            record[f"phi_stderr/{name}"] = float(var_sum[m].sqrt() / n_total)
    balance = balance_entropy(phi)
    if balance is not None:
        record["balance"] = balance
    return record


def unimodal_gap(record: Mapping[str, Any], modalities: Sequence[str]) -> float:
    """Largest minus smallest unimodal accuracy in an evaluation record (0 = equal)."""
    accs = [float(record[f"acc/{m}"]) for m in modalities]
    return max(accs) - min(accs)
