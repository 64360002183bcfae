"""Linear probes of each modality's encoder: ``probe/<m>`` (``docs/design.md``, measuring balance).

The unimodal measure most imbalance papers report: freeze the trained model, take modality m's
encoder features of every training sample, fit a multinomial logistic regression on them, and
score it on validation and test.  Unlike the masked readout ``acc/<m>`` (the fused head with the
other modalities replaced by baselines), it asks what the encoder *knows*, whatever the head
makes of it.

Deterministic and cheap: the features of each split are computed once (eval mode, no grad),
standardised with train statistics, and the probe is the exact minimiser of the L2-regularised
mean cross-entropy found by full-batch L-BFGS from zero in float64.  The penalty is
scikit-learn's default (``C = 1``: ``‖W‖² / (2·C·N)`` on the mean loss, intercept free), so
the probe is the one ``sklearn.linear_model.LogisticRegression()`` fits.  Models without
``encode`` (early fusion) have no per-modality features and get no probe.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.batches import iterate_batches

PROBE_SPLITS = ("train", "val", "test")


def has_encoders(model: nn.Module) -> bool:
    """True when ``model`` exposes per-modality features (late fusion's ``encode``)."""
    return callable(getattr(model, "encode", None))


@torch.no_grad()
def encoder_features(
    model: nn.Module,
    split: Dataset,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> tuple[dict[str, Tensor], Tensor]:
    """``({m: [N, F]} float64 on CPU, targets [N])`` of every sample, in eval mode (restored)."""
    was_training = model.training
    model.eval()
    chunks: dict[str, list[Tensor]] = {}
    labels = []
    try:
        order = torch.arange(len(split))  # type: ignore[arg-type]
        for inputs, targets in iterate_batches(split, order, batch_size, device, num_workers):
            for m, h in model.encode(inputs).items():
                chunks.setdefault(m, []).append(h.detach().to("cpu", torch.float64))
            labels.append(targets.cpu())
    finally:
        model.train(was_training)
    return {m: torch.cat(parts) for m, parts in chunks.items()}, torch.cat(labels)


def fit_linear_probe(
    x: Tensor, y: Tensor, num_classes: int, *, c: float = 1.0, max_iter: int = 100
) -> tuple[Tensor, Tensor]:
    """Weights ``[F, C]`` and bias ``[C]`` of the L2 logistic regression on ``x`` ``[N, F]``.

    Minimises ``mean CE + ‖W‖² / (2·c·N)`` (scikit-learn's objective divided by ``c·N``), to
    scikit-learn's default budget (100 iterations; gradient tolerance 1e-6 on this scale).
    """
    x = x.to(torch.float64)
    n, dim = x.shape
    weight = torch.zeros(dim, num_classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * c * n)
    solver = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def objective() -> Tensor:
        solver.zero_grad()
        loss = F.cross_entropy(x @ weight + bias, y) + penalty * (weight**2).sum()
        loss.backward()
        return loss

    solver.step(objective)
    return weight.detach(), bias.detach()


def probe_accuracies(
    features: Mapping[str, Mapping[str, Tensor]],
    targets: Mapping[str, Tensor],
    num_classes: int,
) -> dict[str, dict[str, float]]:
    """``{split: {"probe/<m>": accuracy}}``: a probe per modality fitted on ``train``.

    ``features[split][m]`` is ``[N, F]``; standardised with the training mean and sd (a
    constant feature is left centred).
    """
    out: dict[str, dict[str, float]] = {split: {} for split in features}
    for m, train_x in features["train"].items():
        mean = train_x.mean(0)
        sd = train_x.std(0)
        sd = torch.where(sd > 1e-12, sd, torch.ones_like(sd))
        weight, bias = fit_linear_probe((train_x - mean) / sd, targets["train"], num_classes)
        for split, per_modality in features.items():
            logits = ((per_modality[m] - mean) / sd) @ weight + bias
            hits = (logits.argmax(1) == targets[split]).to(torch.float64).mean()
            out[split][f"probe/{m}"] = float(hits)
    return out


def probe_model(
    model: nn.Module,
    splits: Mapping[str, Dataset],
    num_classes: int,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    num_workers: int = 0,
) -> dict[str, dict[str, float]]:
    """:func:`probe_accuracies` of ``model``'s encoders on ``splits`` (which must hold
    ``train``); ``{}`` for a model without ``encode`` (early fusion)."""
    if not has_encoders(model):
        return {}
    features, targets = {}, {}
    for name, split in splits.items():
        features[name], targets[name] = encoder_features(
            model, split, batch_size=batch_size, device=device, num_workers=num_workers
        )
    return probe_accuracies(features, targets, num_classes)
