"""``pmr``: Prototypical Modal Rebalance (Fan et al., CVPR 2023, "PMR: Prototypical Modal
Rebalance for Multimodal Learning").

Each modality m keeps one prototype per class, c_{m,k}: the mean ``encode`` feature of the
class's training samples, re-measured at the start of every epoch on a seeded sample of train
(``pmr_proto_fraction``) and averaged with the previous prototypes,
c ← (1 − μ)·c_new + μ·c_old (μ = ``pmr_momentum``; the first epoch takes c_new).  Each step:

1. prototype logits s_{m,k} = −‖h_m − c_{m,k}‖ (Euclidean distance), prototype cross-entropy
   PCE_m = CE(s_m, y) and prototype entropy PER_m = mean_b H(softmax(s_m[b]));
2. scores ρ_m = mean_b softmax(s_m[b])[y_b] (how well the prototypes already classify);
3. coefficients: the slow modalities are accelerated by their gap to the leader,
   β_m = clip(max_k ρ_k / ρ_m − 1, 0, 1), and the fast ones held back by their lead over the
   slowest, γ_m = clip(ρ_m / min_k ρ_k − 1, 0, 1);
4. loss ℓ + α Σ_m β_m PCE_m − μ_e Σ_m γ_m PER_m (raising the entropy of the leader's
   prototype predictions slows it), inside the ``pmr_start`` .. ``pmr_end`` window; the
   entropy term only in its first ``pmr_per_epochs`` epochs (None: all).

With two modalities a, v and ρ_a ≥ ρ_v this is the paper's rule: β_a = 0, β_v = γ_a =
clip(ρ_a/ρ_v − 1, 0, 1), γ_v = 0 (BalanceBenchmark's PMR trainer writes it so); for M
modalities every modality behind the leader is accelerated and every one ahead of the slowest
held back, each by its own ratio.  With α = μ_e = 0 the step is plain joint training.

From the authors' code (fanyunfeng-bit/Modal-Imbalance-PMR) and BalanceBenchmark's.
Differences: scores and PER are batch means, not sums (the ratios are the same; the entropy
term no longer grows with the batch size); a class absent from the prototype sample keeps its
previous prototype (the authors divide by its zero count); the prototype sample is drawn anew
each epoch from a seeded generator (the authors take the first tenth of a shuffled loader), so
a resumed run draws the same one.  Defaults: α = 1 (authors), μ = 0.2 (authors'
``momentum_coef``), μ_e = 0.01, fraction 0.1.

Options: ``pmr_alpha``, ``pmr_mu`` (μ_e), ``pmr_momentum``, ``pmr_proto_fraction``,
``pmr_per_epochs``, ``pmr_start`` / ``pmr_end``.  Records: ``score/<m>`` (ρ),
``coef/<m>`` (β), ``entropy_coef/<m>`` (γ), ``proto_loss/<m>`` (PCE); 0 coefficients outside
the window.  The prototypes are method state (resume is exact).  Under ``torch.distributed``
every rank measures the same prototypes, the scores and the gradients are averaged over ranks.
Early fusion is refused: it has no per-modality features to take prototypes of.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.coalitions import mean_over_ranks
from msam_core.methods._multihead import (
    MultiLossMethod,
    assign,
    average_over_ranks,
    check_fraction,
    gradients,
    require_late_fusion,
    seeded_permutation,
    split_features,
    subset,
    trainable,
)
from msam_core.methods._readouts import ModulationWindow
from msam_core.methods.registry import register_method
from msam_core.step import FirstPass


def prototype_logits(features: Tensor, prototypes: Tensor) -> Tensor:
    """``[B, C]`` negative Euclidean distances of features ``[B, F]`` to prototypes ``[C, F]``."""
    return -torch.cdist(features, prototypes.to(features))


def rebalance_coefficients(scores: Tensor) -> tuple[Tensor, Tensor]:
    """``(β, γ)``, each ``[M]``: acceleration of the slow and slowing of the fast modalities."""
    scores = scores.double().clamp(min=1e-12)
    beta = (scores.max() / scores - 1).clamp(0, 1)
    gamma = (scores / scores.min() - 1).clamp(0, 1)
    return beta, gamma


def entropy(logits: Tensor) -> Tensor:
    """Mean over the batch of the entropy of ``softmax(logits)`` (``[B, C]`` -> scalar)."""
    log_p = logits.log_softmax(dim=1)
    return -(log_p.exp() * log_p).sum(1).mean()


@register_method("pmr")
class PmrMethod(MultiLossMethod):
    """PMR around the base optimizer (module docstring)."""

    OPTIONS = (
        "pmr_alpha",
        "pmr_mu",
        "pmr_momentum",
        "pmr_proto_fraction",
        "pmr_per_epochs",
        "pmr_start",
        "pmr_end",
    )

    def __init__(self, model: nn.Module, config: Any) -> None:
        super().__init__(model, config)
        core = require_late_fusion(
            model, self.name, "takes class prototypes of each modality's encoder features"
        )
        self.alpha = _non_negative(self.name, "pmr_alpha", self.option("pmr_alpha", 1.0))
        self.mu = _non_negative(self.name, "pmr_mu", self.option("pmr_mu", 0.01))
        self.momentum = check_fraction(
            self.name, "pmr_momentum", self.option("pmr_momentum", 0.2), allow_zero=True
        )
        fraction = self.option("pmr_proto_fraction", 0.1)
        self.fraction = (
            1.0
            if float(fraction) == 1.0
            else check_fraction(self.name, "pmr_proto_fraction", fraction)
        )
        per_epochs = self.option("pmr_per_epochs", None)
        self.per_epochs = None if per_epochs is None else int(per_epochs)
        if self.per_epochs is not None and self.per_epochs < 0:
            raise ValueError(f"pmr_per_epochs must be >= 0 or None, got {per_epochs}")
        self.window = ModulationWindow(
            self.name, self.option("pmr_start", None), self.option("pmr_end", None)
        )
        self.params = trainable(core.parameters())
        self.train: Dataset | None = None
        self.prototypes: Tensor | None = None  # [M, C, F]
        self.epoch: int | None = None

    def training_split(self, train: Dataset) -> Dataset:
        """Keep train for the prototypes; the loop trains on all of it."""
        self.train = train
        return train

    @torch.no_grad()
    def measure_prototypes(self, epoch: int) -> Tensor:
        """``[M, C, F]`` class-mean features on this epoch's seeded sample of train."""
        if self.train is None:
            raise RuntimeError(
                "pmr takes its prototypes from the training split: call training_split(train) "
                "and set_epoch(epoch) before the first step (the msam loop does both)"
            )
        n = len(self.train)
        count = max(1, round(self.fraction * n))
        seed = int(self.config.seed) * 1_000_003 + int(epoch)
        sample = subset(self.train, seeded_permutation(n, seed)[:count])
        batch = int(getattr(self.config, "eval_batch_size", 256) or 256)
        features, targets = split_features(self.model, sample, batch)
        classes = int(self.model.num_classes)
        counts = torch.bincount(targets, minlength=classes).to(torch.float64)
        means = []
        for m in self.modalities:
            sums = torch.zeros(
                classes, features[m].shape[1], dtype=torch.float64, device=features[m].device
            )
            sums.index_add_(0, targets, features[m].double())
            means.append(sums / counts.clamp(min=1).unsqueeze(1).to(sums.device))
        new = torch.stack(means).to(features[self.modalities[0]].dtype)
        seen = (counts > 0).to(new.device).view(1, -1, 1)
        if self.prototypes is None:
            return new
        blended = (1 - self.momentum) * new + self.momentum * self.prototypes
        return torch.where(seen, blended, self.prototypes)

    def set_epoch(self, epoch: int) -> None:
        """Re-measure the prototypes before the epoch's first step."""
        self.epoch = int(epoch)
        self.prototypes = self.measure_prototypes(self.epoch)

    def step(self, model: nn.Module, inputs: Mapping[str, Tensor], targets: Tensor) -> dict:
        if self.prototypes is None:
            raise RuntimeError(
                "pmr has no prototypes yet: call training_split(train) and set_epoch(epoch) "
                "before the first step (the msam loop does both)"
            )
        return super().step(model, inputs, targets)

    def update(
        self, core: nn.Module, first: FirstPass, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict[str, float]:
        """One step of the base optimizer on the rebalanced objective."""
        logits = {
            m: prototype_logits(first.features[m], self.prototypes[i])
            for i, m in enumerate(self.modalities)
        }
        with torch.no_grad():
            true_class = targets.view(-1, 1)
            scores = torch.stack(
                [logits[m].softmax(1).gather(1, true_class).mean() for m in self.modalities]
            )
        scores = mean_over_ranks(scores.double().cpu(), int(targets.shape[0]))
        beta, gamma = rebalance_coefficients(scores)
        active = self.window.active(self.epoch)
        start_epoch = self.window.start or 1
        per_on = self.per_epochs is None or (
            self.epoch is not None and self.epoch < start_epoch + self.per_epochs
        )
        total = first.loss
        fields: dict[str, float] = {}
        for i, m in enumerate(self.modalities):
            pce = F.cross_entropy(logits[m], targets)
            fields[f"proto_loss/{m}"] = float(pce.detach())
            b = self.alpha * float(beta[i]) if active else 0.0
            g = self.mu * float(gamma[i]) if active and per_on else 0.0
            if b:
                total = total + b * pce
            if g:
                total = total - g * entropy(logits[m])
            fields[f"score/{m}"] = float(scores[i])
            fields[f"coef/{m}"] = float(beta[i]) if active else 0.0
            fields[f"entropy_coef/{m}"] = float(gamma[i]) if active and per_on else 0.0
        self.checked(total, "of PMR's rebalanced objective", core, inputs)
        grads = gradients(total, self.params, retain_graph=False)
        assign(self.params, average_over_ranks(grads))
        self.optimizer.step()
        return fields

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The prototypes ``[M, C, F]`` (None before the first epoch)."""
        return {"prototypes": None if self.prototypes is None else self.prototypes.detach().cpu()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if set(state) != {"prototypes"}:
            raise ValueError(f"pmr state must hold ['prototypes'], got keys {sorted(state)}")
        value = state["prototypes"]
        if value is None:
            self.prototypes = None
            return
        value = torch.as_tensor(value)
        expected = (len(self.modalities), int(self.model.num_classes))
        if value.ndim != 3 or tuple(value.shape[:2]) != expected:
            raise ValueError(
                f"pmr state has prototypes of shape {list(value.shape)}, expected "
                f"[{expected[0]}, {expected[1]}, F]; was the checkpoint written for another model?"
            )
        self.prototypes = value.to(next(self.model.parameters()).device)


def _non_negative(method: str, key: str, value: Any) -> float:
    value = float(value)
    if not (value >= 0 and value < float("inf")):
        raise ValueError(f"{method}: {key} must be a finite number >= 0, got {value}")
    return value
