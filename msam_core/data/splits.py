"""Deterministic stratified splits and train-fitted standardisation, shared by the real loaders.

Every shipped real dataset is split the same way: per class, a seeded permutation is cut
into train / val / test by the requested fractions, so each split keeps the class balance
and the same seed always gives the same samples.  Standardisation statistics are computed
on the train split only and then applied to all three splits, so nothing about val or test
leaks into training.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from msam_core.data.base import TensorSplit

SPLIT_NAMES = ("train", "val", "test")
DEFAULT_FRACTIONS = (0.6, 0.2, 0.2)


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
    """Validate split fractions: positive, summing to 1 (the loop selects on val, reports test).

    Raises ValueError naming the fractions received and what is expected.
    """
    fractions = tuple(float(f) for f in fractions)
    if len(fractions) not in (2, 3):
        raise ValueError(f"fractions must be (train, val, test) or (train, test), got {fractions}")
    if any(f <= 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(
            f"fractions must be positive and sum to 1, got {fractions}: training needs train, "
            "model selection val and the report test samples"
        )
    return fractions


def _class_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Split ``n`` samples of one class by ``fractions`` (largest remainder, then >= 1 each).

    Every split with a positive fraction gets at least one sample of the class when the class
    has enough samples, so small data sets (e.g. 20 series per class) keep every class in
    every split.
    """
    fractions = np.asarray(fractions, dtype=float)
    exact = n * fractions
    counts = np.floor(exact).astype(int)
    remainder = n - counts.sum()
    # Largest fractional parts first; ties go to the earlier split (train before val).
    order = sorted(range(len(counts)), key=lambda k: (-(exact[k] - counts[k]), k))
    for k in order[:remainder]:
        counts[k] += 1
    wanted = fractions > 0
    if n >= wanted.sum():
        for k in np.flatnonzero(wanted & (counts == 0)):
            counts[np.argmax(counts)] -= 1
            counts[k] += 1
    return counts


def stratified_split(
    labels: np.ndarray | Tensor | Sequence[int],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
) -> tuple[np.ndarray, ...]:
    """Indices of a stratified split, one sorted int64 array per fraction.

    ``labels`` is ``[N]``; ``fractions`` is (train, val, test) or (train, test) summing to 1.
    Per class, a permutation drawn from ``numpy.random.default_rng(seed)`` (classes visited
    in sorted order) is cut by the fractions.  The splits are disjoint, cover all samples,
    and depend only on (labels, fractions, seed).
    """
    fractions = check_fractions(fractions)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D [N], got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        members = members[rng.permutation(len(members))]
        bounds = np.cumsum(_class_counts(len(members), fractions))[:-1]
        for k, chunk in enumerate(np.split(members, bounds)):
            parts[k].append(chunk)
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


def _reduce_axes(kind: str, ndim: int) -> tuple[int, ...]:
    """Axes (of ``[N, *shape]``) averaged over when fitting one modality's statistics.

    Vectors: per feature (reduce N).  Sequences ``[C, T]``, images ``[C, H, W]`` and
    spectrograms: per channel (reduce N and every axis after the channel), which keeps the
    shape of a signal or an image intact and never divides by a near-empty pixel's std.
    """
    if kind == "vector":
        return (0,)
    return (0, *range(2, ndim))


@dataclass(frozen=True)
class Standardizer:
    """Per-modality ``(x - mean) / std`` with statistics fitted on the train split.

    ``mean[m]`` and ``std[m]`` broadcast against one batch ``[N, *shape]`` of modality m.
    A feature that is constant on train gets std 1 (it becomes 0, not NaN).
    """

    mean: dict[str, Tensor]
    std: dict[str, Tensor]

    @classmethod
    def fit(cls, inputs: Mapping[str, Tensor], kinds: Mapping[str, str]) -> Standardizer:
        """Fit on ``inputs[m]`` ``[N, *shape]`` (the train split) per the modality ``kinds``."""
        mean, std = {}, {}
        for name, x in inputs.items():
            axes = _reduce_axes(kinds[name], x.ndim)
            x64 = x.double()
            mu = x64.mean(dim=axes, keepdim=True)
            sd = x64.std(dim=axes, keepdim=True, unbiased=False)
            sd = torch.where(sd > 1e-12 * (1 + mu.abs()), sd, torch.ones_like(sd))
            mean[name], std[name] = mu.to(x.dtype), sd.to(x.dtype)
        return cls(mean, std)

    def __call__(self, inputs: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Standardise a batch of every fitted modality (others pass through)."""
        return {
            m: (x - self.mean[m]) / self.std[m] if m in self.mean else x for m, x in inputs.items()
        }


def make_tensor_splits(
    inputs: Mapping[str, np.ndarray | Tensor],
    labels: np.ndarray | Tensor,
    kinds: Mapping[str, str],
    fractions: Sequence[float] = DEFAULT_FRACTIONS,
    seed: int = 0,
    standardize: bool = True,
    indices: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> tuple[TensorSplit, TensorSplit, TensorSplit]:
    """Cut in-memory arrays into stratified train / val / test :class:`TensorSplit` s.

    ``inputs[m]`` is ``[N, *shape]`` (cast to float32), ``labels`` is ``[N]``.  ``indices``
    overrides the stratified split (e.g. a data set's official split).  With ``standardize``,
    a :class:`Standardizer` fitted on the train split is applied to all three splits.
    """
    labels_t = torch.as_tensor(np.asarray(labels)).long()
    if indices is None:
        fr = check_fractions(fractions)
        if len(fr) == 2:
            raise ValueError(f"need (train, val, test) fractions, got {fr}")
        indices = stratified_split(labels_t.numpy(), fr, seed)
    tensors = {m: torch.as_tensor(np.asarray(x)).float() for m, x in inputs.items()}
    parts = []
    for idx in indices:
        idx_t = torch.as_tensor(idx, dtype=torch.long)
        parts.append(({m: x[idx_t] for m, x in tensors.items()}, labels_t[idx_t]))
    if standardize:
        scaler = Standardizer.fit(parts[0][0], kinds)
        parts = [(scaler(x), y) for x, y in parts]
    return tuple(TensorSplit(x, y) for x, y in parts)  # type: ignore[return-value]
