"""``gblending``: Gradient-Blending (Wang, Tran & Feiszli, CVPR 2020, "What Makes Training
Multi-modal Classification Networks Hard?").

The fused loss ℓ_0 and one unimodal loss ℓ_m per modality (linear heads over the modality's
``encode`` features, owned by the method: :mod:`msam_core.models.auxiliary`) are blended,
L = Σ_k w_k ℓ_k, with weights from each head's overfitting-to-generalisation ratio:
G_k = L^V_k(N) − L^V_k(N+n) (how much the held-out loss fell over the last super-epoch of n
epochs), O_k = L^V_k − L^T_k (held-out minus train loss), w_k ∝ G_k / (ΔO_k)², Σ w_k = 1
(the paper's online G-Blend).  V is a part of the *training* split held out by this method
(``gb_holdout``, seeded by the run's seed): the loop trains on the rest, and val and test are
never read.  L^T is measured on as many samples of the trained part (fixed, seeded) as V holds.

Schedule: before the first epoch, every head's losses are taken on V and T and the weights are
equal; at the start of each later super-epoch (epochs 1 + n, 1 + 2n, ...) the losses are taken
again and the weights re-estimated.  A head whose held-out loss did not fall (G ≤ 0) gets weight
0; if no head improved, the previous weights are kept.  ``gb_weights`` fixes the weights instead
(a list, fused head first, then the modalities in model order): with every weight 1 the step is
the base optimizer on the plain sum of the losses.

From BalanceBenchmark's G-Blending (GeWu-Lab/BalanceBenchmark): it re-trains a copy of the model
per modality for a super-epoch on train and measures on the *validation* loader; here the heads
are measured as they train (the paper's online estimate with one shared trunk), which costs two
no-grad passes over |V| samples per super-epoch instead of M + 1 extra trainings, and V comes
from train so model selection on val stays clean.

Options: ``gb_holdout`` (fraction of train held out, default 0.1), ``gb_super_epoch`` (n,
default 1), ``gb_weights`` (fixed weights; skips the estimate and the hold-out).
Records: ``coef_fused`` and ``coef/<m>`` (the weights used), ``loss/<m>`` (unimodal losses);
the weights, the last measured losses and the heads are method state (resume is exact).
Under ``torch.distributed`` every rank measures the same V (the split is seeded) and the
gradients are averaged over ranks.  Early fusion is refused: it has no per-modality features
for the unimodal heads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from msam_core.coalitions import eval_mode
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
from msam_core.methods.registry import register_method
from msam_core.models.auxiliary import unimodal_heads_for
from msam_core.step import FirstPass


def blend_weights(before: Tensor, after: Tensor, previous: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(weights, G, ΔO)`` from per-head losses ``[2, K]`` (rows: held-out V, train T) taken
    one super-epoch apart; ``previous`` weights are kept when no head generalised better."""
    gain = before[0] - after[0]
    overfit = (after[0] - after[1]) - (before[0] - before[1])
    raw = gain.clamp(min=0) / overfit.pow(2).clamp(min=1e-12)
    total = float(raw.sum())
    if not (total > 0 and math.isfinite(total)):
        return previous.clone(), gain, overfit
    return raw / total, gain, overfit


@register_method("gblending")
class GBlendingMethod(MultiLossMethod):
    """G-Blending around the base optimizer (module docstring)."""

    OPTIONS = ("gb_holdout", "gb_super_epoch", "gb_weights")

    def __init__(self, model: nn.Module, config: Any) -> None:
        core = require_late_fusion(
            model, self.name, "blends the fused loss with unimodal losses of each modality"
        )
        self.heads = unimodal_heads_for(core)
        super().__init__(model, config)
        self.super_epoch = int(self.option("gb_super_epoch", 1))
        if self.super_epoch < 1:
            raise ValueError(f"gb_super_epoch must be at least 1 epoch, got {self.super_epoch}")
        fixed = self.option("gb_weights", None)
        n_heads = len(self.modalities) + 1
        self.fixed = fixed is not None
        if self.fixed:
            weights = _fixed_weights(fixed, n_heads, self.modalities)
        else:
            weights = torch.full((n_heads,), 1.0 / n_heads, dtype=torch.float64)
        self.holdout = check_fraction(self.name, "gb_holdout", self.option("gb_holdout", 0.1))
        self.weights = weights
        self.losses: Tensor | None = None  # [2, K] at the last estimate
        self.held_out: Dataset | None = None
        self.train_sample: Dataset | None = None
        self.params = [*trainable(core.parameters()), *trainable(self.heads.parameters())]

    # -- the held-out part of train ----------------------------------------------------------

    def training_split(self, train: Dataset) -> Dataset:
        """Hold out ``gb_holdout`` of train (seeded); the loop trains on the rest."""
        if self.fixed:
            return train
        n = len(train)
        n_held = round(self.holdout * n)
        if n_held < 1 or n - n_held < 1:
            raise ValueError(
                f"gblending: gb_holdout={self.holdout} of {n} training samples leaves "
                f"{n_held} held out and {n - n_held} to train on; both need at least one. "
                "Change gb_holdout or use more training data"
            )
        order = seeded_permutation(n, int(self.config.seed))
        held, kept = order[:n_held], order[n_held:]
        self.held_out = subset(train, held)
        self.train_sample = subset(train, kept[:n_held])
        return subset(train, kept)

    def head_losses(self) -> Tensor:
        """``[2, M + 1]`` float64 mean losses of every head (fused, then each modality) on the
        held-out part (row 0) and the train sample (row 1); no grad, eval mode."""
        if self.held_out is None or self.train_sample is None:
            raise RuntimeError(
                "gblending estimates its weights on a held-out part of train: call "
                "training_split(train) before training (the msam loop does), or give gb_weights"
            )
        rows = []
        batch = int(getattr(self.config, "eval_batch_size", 256) or 256)
        for split in (self.held_out, self.train_sample):
            features, targets = split_features(self.model, split, batch)
            with torch.no_grad(), eval_mode(self.model):  # the heads are linear
                fused = self.model.fuse(features, None)
                losses = [F.cross_entropy(fused, targets)]
                logits = self.heads(features)
                losses += [F.cross_entropy(logits[m], targets) for m in self.modalities]
            rows.append(torch.stack(losses).double().cpu())
        return torch.stack(rows)

    def set_epoch(self, epoch: int) -> None:
        """Re-estimate the weights at the start of each super-epoch (first epoch: measure)."""
        if self.fixed:
            return
        if self.losses is None:
            self.losses = self.head_losses()
        elif (int(epoch) - 1) % self.super_epoch == 0:
            now = self.head_losses()
            self.weights, _, _ = blend_weights(self.losses, now, self.weights)
            self.losses = now

    # -- the step ----------------------------------------------------------------------------

    def update(
        self, core: nn.Module, first: FirstPass, inputs: Mapping[str, Tensor], targets: Tensor
    ) -> dict[str, float]:
        """One step of the base optimizer on the blended loss."""
        logits = self.heads(first.features)
        fields: dict[str, float] = {"coef_fused": float(self.weights[0])}
        total = float(self.weights[0]) * first.loss
        for i, m in enumerate(self.modalities, start=1):
            loss = F.cross_entropy(logits[m], targets)
            where = f"of modality {m!r}'s unimodal head"
            fields[f"loss/{m}"] = self.checked(loss, where, core, inputs)
            fields[f"coef/{m}"] = float(self.weights[i])
            total = total + float(self.weights[i]) * loss
        grads = gradients(total, self.params, retain_graph=False)
        assign(self.params, average_over_ranks(grads))
        self.optimizer.step()
        return fields

    # -- checkpoints -------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The heads, the weights and the losses of the last estimate."""
        losses = None if self.losses is None else self.losses.tolist()
        heads = self.heads.state_dict()
        return {"heads": heads, "weights": self.weights.tolist(), "losses": losses}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.per_modality_heads(state, ("heads", "weights", "losses"))
        weights = torch.as_tensor(state["weights"], dtype=torch.float64)
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"gblending state has {list(weights.shape)} weights for "
                f"{len(self.modalities) + 1} heads; was the checkpoint written for another model?"
            )
        self.weights = weights
        losses = state["losses"]
        self.losses = None if losses is None else torch.as_tensor(losses, dtype=torch.float64)


def _fixed_weights(value: Any, n_heads: int, modalities: Sequence[str]) -> Tensor:
    """``gb_weights`` as a float64 tensor; ValueError naming what is wrong."""
    try:
        weights = torch.as_tensor([float(v) for v in value], dtype=torch.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"gb_weights must be a list of {n_heads} numbers (fused head, then "
            f"{list(modalities)}), got {value!r}"
        ) from err
    if weights.shape != (n_heads,) or not bool(torch.isfinite(weights).all()):
        raise ValueError(
            f"gb_weights must be {n_heads} finite numbers (fused head, then {list(modalities)}), "
            f"got {value!r}"
        )
    if bool((weights < 0).any()):
        raise ValueError(f"gb_weights must not be negative, got {value!r}")
    return weights
