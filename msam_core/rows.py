"""The seeded subset of a batch's rows that coalition values are computed on (``shapley_rows``).

Coalition values cost ``2**M`` passes over the batch's rows (early fusion: the network after
its first layer per coalition), so a run may compute them on ``shapley_rows`` of the batch's
rows; φ is then an estimate of the batch's φ and carries its standard error over rows
(``msam_core.shapley.row_shapley``, recorded as ``phi_stderr/<m>``).  The subset depends only on
the run's seed and the step's index, so a resumed run draws the same rows bit for bit.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: odd 64-bit constant (the golden ratio's) spreading a run's seed over the steps' seeds
_SPREAD = 0x9E3779B97F4A7C15


def row_subset(
    n_rows: int,
    shapley_rows: int | None,
    global_batch: int,
    seed: int,
    step: int,
    device: torch.device | str = "cpu",
) -> Tensor | None:
    """Sorted int64 indices (on ``device``) of the rows of a batch of ``n_rows`` to compute
    coalition values on, or None for every row.

    ``shapley_rows`` counts rows of a full global batch of ``global_batch``; a rank's share of
    it, or a short last batch, takes the same fraction, rounded up.  The draw is uniform
    without replacement from a generator seeded by ``(seed, step)``: the same on every run
    with that seed, resumed or not.
    """
    if shapley_rows is None:
        return None
    take = min(n_rows, math.ceil(shapley_rows * n_rows / global_batch))
    if take >= n_rows:
        return None
    generator = torch.Generator().manual_seed((seed * _SPREAD + step) % 2**63)
    chosen = torch.randperm(n_rows, generator=generator)[:take].sort().values
    return chosen.to(device)
