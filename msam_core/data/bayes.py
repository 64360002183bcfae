"""Bayes-optimal accuracy of the synthetic set, alone per modality and all together.

The synthetic generator (``msam_core/data/synthetic.py``) draws ``x_m = s_m·B_m[:, g_m(y)] +
σ_m·ε`` with orthonormal prototype columns ``B_m``.  Projecting on those columns loses nothing
(the orthogonal rest is noise independent of ``y``), and ``z_m = B_mᵀx_m`` is
``s_m·e_{g_m(y)} + σ_m·ξ`` with ``ξ ~ N(0, I_K)`` whatever the kind or size of the modality.  So
the class log-likelihood is ``Σ_m (s_m/σ_m²)·z_m[g_m(c)]`` up to a constant, and the Bayes
accuracy ``E[max_c p(c | x)]`` depends only on the strengths, the noise and which classes each
modality tells apart.  It is estimated by seeded Monte Carlo, averaging the maximum posterior
(lower variance than counting correct argmaxes, same expectation), with its standard error.

No classifier of any modality subset can beat these numbers on average: they are the ceilings
``docs/design.md`` measures headroom against.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

#: Monte Carlo draws per estimate: standard errors of about 0.001 at these accuracies
DEFAULT_SAMPLES = 200_000


def bayes_accuracy(
    visible: np.ndarray,
    strengths: Sequence[float],
    noise: Sequence[float],
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
    chunk: int = 50_000,
) -> tuple[float, float]:
    """``(accuracy, standard error)`` of the Bayes classifier on the modalities given.

    Args:
        visible: ``[M, K]`` ints, entry ``(m, y)`` the prototype modality ``m`` shows for class
            ``y`` (two classes with one prototype cannot be told apart by that modality).
        strengths, noise: ``s_m`` and ``σ_m`` per row of ``visible``.
        n_samples: Monte Carlo draws (classes uniform, as the generator's splits are).
        seed: fixes the draws, so the same call gives the same numbers.
    """
    visible = np.asarray(visible, dtype=np.int64)
    n_mod, n_classes = visible.shape
    s = np.asarray(strengths, dtype=np.float64)
    sd = np.asarray(noise, dtype=np.float64)
    rng = np.random.default_rng(seed)
    sums = np.zeros(2)  # Σ max posterior, Σ its square
    done = 0
    while done < n_samples:
        n = min(chunk, n_samples - done)
        y = rng.integers(n_classes, size=n)
        scores = np.zeros((n, n_classes))
        for m in range(n_mod):
            z = sd[m] * rng.standard_normal((n, n_classes))
            z[np.arange(n), visible[m, y]] += s[m]
            scores += (s[m] / sd[m] ** 2) * z[:, visible[m]]
        scores -= scores.max(axis=1, keepdims=True)
        posterior = np.exp(scores)
        best = 1.0 / posterior.sum(axis=1)  # the max posterior: its exp-score is exp(0)
        sums += (best.sum(), (best**2).sum())
        done += n
    mean = sums[0] / n_samples
    var = max(sums[1] / n_samples - mean**2, 0.0)
    return float(mean), float(np.sqrt(var / n_samples))


def bayes_limits(
    names: Sequence[str],
    visible: np.ndarray,
    strengths: Sequence[float],
    noise: Sequence[float],
    *,
    n_samples: int = DEFAULT_SAMPLES,
    seed: int = 0,
) -> dict[str, dict[str, float]]:
    """``{m: {"acc", "se"}}`` for each modality alone and ``"all"`` for every one together.

    Cached on its arguments: every run of one setting asks for the same numbers.
    """
    key = (
        tuple(names),
        tuple(map(tuple, np.asarray(visible).tolist())),
        tuple(map(float, strengths)),
        tuple(map(float, noise)),
        int(n_samples),
        int(seed),
    )
    return {k: dict(v) for k, v in _cached_limits(*key).items()}


@functools.lru_cache(maxsize=64)
def _cached_limits(
    names: tuple[str, ...],
    visible_rows: tuple[tuple[int, ...], ...],
    strengths: tuple[float, ...],
    noise: tuple[float, ...],
    n_samples: int,
    seed: int,
) -> dict[str, dict[str, float]]:
    visible = np.asarray(visible_rows)
    out = {}
    for m, name in enumerate(names):
        acc, se = bayes_accuracy(
            visible[m : m + 1],
            strengths[m : m + 1],
            noise[m : m + 1],
            n_samples=n_samples,
            seed=seed,
        )
        out[name] = {"acc": acc, "se": se}
    acc, se = bayes_accuracy(visible, strengths, noise, n_samples=n_samples, seed=seed)
    out["all"] = {"acc": acc, "se": se}
    return out
