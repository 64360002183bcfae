"""Shapley values of the modalities from coalition values (docs/design.md, "Modality Shapley").

A game over ``M`` players (modalities) is given by its coalition values ``v(S)``, stored in a
tensor of length ``2**M`` indexed by bitmask (bit ``m`` set = modality ``m`` present, modality
order = ``model.modalities``; see :mod:`msam_core.masking`).  Then

    φ_m = Σ_{S ⊆ N∖{m}} |S|!(M−|S|−1)!/M! · (v(S ∪ {m}) − v(S)),

which satisfies efficiency: Σ_m φ_m = v(N) − v(∅).

* :func:`exact_shapley` evaluates that sum for ``M <= 10`` as one matrix-vector product with a
  cached ``[M, 2**M]`` weight matrix.
* :func:`permutation_shapley` estimates φ for any ``M`` by antithetic permutation sampling
  (each permutation paired with its reverse), unbiased, with a standard error.
* :func:`balance_weights` turns φ into M-SAM's loss shares ``w_m``.
* :func:`modality_shapley` does it all for a model and a batch and returns a
  :class:`ShapleyResult` (coalition values from :mod:`msam_core.coalitions`);
  :func:`batch_shapley` is the same for a training step's batch, reusing its first pass and
  the same on every ``torch.distributed`` rank.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Protocol

import torch
from torch import Tensor, nn

from msam_core.coalitions import (
    batch_row_values,
    batch_values_and,
    coalition_values,
    is_distributed,
    masked_values,
    mean_over_ranks,
    unwrap,
)
from msam_core.derived import shares
from msam_core.masking import coalition_masks, mask_to_index

#: Largest number of players :func:`exact_shapley` enumerates (2**10 = 1024 coalitions).
MAX_EXACT_PLAYERS = 10


# --------------------------------------------------------------------------------------------
# exact enumeration


@lru_cache(maxsize=2 * MAX_EXACT_PLAYERS)
def _weight_matrix(n_players: int, device: str) -> Tensor:
    """``W [M, 2**M]`` (float64) with ``φ = W @ v``.

    For coalition T and player m: T contains m -> +w(|T|−1) (T = S ∪ {m}); otherwise
    −w(|T|) (T = S), where w(s) = s!(M−s−1)!/M!.  Built without a loop over coalitions.
    """
    masks = coalition_masks(n_players)  # [2**M, M]
    size = masks.sum(1)  # [2**M]
    fact = torch.tensor([math.factorial(k) for k in range(n_players + 1)], dtype=torch.float64)
    total = float(math.factorial(n_players))
    with_m = fact[(size - 1).clamp(min=0)] * fact[n_players - size] / total  # |S| = |T| − 1
    without_m = fact[size] * fact[(n_players - size - 1).clamp(min=0)] / total  # |S| = |T|
    weights = torch.where(masks, with_m.unsqueeze(1), -without_m.unsqueeze(1))  # [2**M, M]
    return weights.T.contiguous().to(device)


def n_players_of(values: Tensor) -> int:
    """Number of players ``M`` of a coalition-value vector of length ``2**M``.

    Raises ValueError when ``values`` is not 1-D or its length is not a power of two >= 2.
    """
    if values.ndim != 1:
        raise ValueError(
            f"coalition values must be a 1-D tensor of length 2**M indexed by bitmask, "
            f"got shape {list(values.shape)}"
        )
    length = int(values.shape[0])
    if length < 2 or length & (length - 1):
        raise ValueError(
            f"coalition values must have length a power of two 2**M (one value per coalition, "
            f"M >= 1 modalities), got length {length}"
        )
    return length.bit_length() - 1


def exact_shapley(values: Tensor) -> Tensor:
    """Exact Shapley values ``φ [M]`` from coalition values ``v [2**M]`` (bitmask-indexed).

    Computed in float64 and returned in ``values``' floating dtype (float64 for integer input),
    on ``values``' device.  ``M`` may be at most 10; for more players use
    :func:`permutation_shapley`.
    """
    values = torch.as_tensor(values)
    n_players = n_players_of(values)
    if n_players > MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact Shapley enumerates 2**M coalitions and is limited to M <= "
            f"{MAX_EXACT_PLAYERS} players; got M = {n_players}. Use "
            f"msam_core.shapley.permutation_shapley (antithetic sampling) for more players"
        )
    out_dtype = values.dtype if values.is_floating_point() else torch.float64
    weights = _weight_matrix(n_players, str(values.device))
    return (weights @ values.to(torch.float64)).to(out_dtype)


# --------------------------------------------------------------------------------------------
# permutation sampling


def _marginals(perms: Tensor, prefix_values: Tensor) -> Tensor:
    """Per-permutation marginal contributions ``[P, M]``.

    ``perms [P, M]`` lists players in arrival order; ``prefix_values [P, M+1]`` holds v of the
    first k arrivals (k = 0..M).  Player ``perms[p, k]`` gets ``v_{k+1} − v_k``.
    """
    gains = prefix_values[:, 1:] - prefix_values[:, :-1]
    return torch.zeros_like(gains).scatter_(1, perms, gains)


def permutation_shapley(
    value_fn: Callable[[Tensor], Tensor],
    n_players: int,
    n_permutations: int,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Estimate Shapley values by antithetic permutation sampling: ``(φ [M], stderr [M])``.

    ``n_permutations`` uniform random permutations are drawn and each is paired with its
    reverse; φ is the mean over pairs of the pair's average marginal contributions, so it is
    unbiased, and ``stderr`` is the standard error of that mean (sample std over pairs, ddof=1,
    divided by sqrt(n_permutations)).

    ``value_fn`` maps a bool coalition mask ``[K, M]`` (CPU, or the generator's device) to ``K``
    values.  It is called once, on every distinct coalition the sampled permutations visit
    (all prefixes of all permutations and their reverses, de-duplicated).  float64 results.
    """
    if n_players < 1:
        raise ValueError(f"need at least one player, got n_players = {n_players}")
    if n_permutations < 2:
        raise ValueError(
            f"n_permutations must be >= 2 so a standard error can be estimated, "
            f"got {n_permutations}"
        )
    device = generator.device if generator is not None else torch.device("cpu")
    # uniform random permutations as argsort of iid uniforms (float64: ties are negligible)
    keys = torch.rand(
        n_permutations, n_players, generator=generator, device=device, dtype=torch.float64
    )
    perms = keys.argsort(dim=1)
    perms = torch.cat([perms, perms.flip(1)])  # [2P, M]: rows P.. are the reverses
    n_rows = perms.shape[0]
    # prefix masks [2P, M+1, M]: prefix k holds the first k players of the permutation
    rank = torch.empty_like(perms).scatter_(
        1, perms, torch.arange(n_players, device=device).expand(n_rows, -1)
    )
    steps = torch.arange(n_players + 1, device=device).view(1, -1, 1)
    prefixes = rank.unsqueeze(1) < steps  # [2P, M+1, M]
    flat = prefixes.reshape(-1, n_players)
    if n_players <= 62:  # coalitions fit an int64 bitmask: evaluate each distinct one once
        unique, inverse = torch.unique(mask_to_index(flat), return_inverse=True)
        bits = torch.arange(n_players, device=device)
        queries = (unique.unsqueeze(1) >> bits).bitwise_and(1).bool()
    else:
        queries, inverse = flat, torch.arange(flat.shape[0], device=device)
    answers = torch.as_tensor(value_fn(queries))
    if answers.shape != (queries.shape[0],):
        raise ValueError(
            f"value_fn must map a mask [K, M] = {list(queries.shape)} to K = {queries.shape[0]} "
            f"values, returned shape {list(answers.shape)}"
        )
    answers = answers.to(device=device, dtype=torch.float64)
    prefix_values = answers[inverse].view(n_rows, n_players + 1)
    marginals = _marginals(perms, prefix_values)  # [2P, M]
    pairs = 0.5 * (marginals[:n_permutations] + marginals[n_permutations:])  # [P, M]
    phi = pairs.mean(0)
    stderr = pairs.std(0, correction=1) / math.sqrt(n_permutations)
    return phi, stderr


# --------------------------------------------------------------------------------------------
# from φ to M-SAM's shares


def balance_weights(phi: Tensor) -> Tensor:
    """M-SAM's shares ``w_m = max(φ_m, 0) / Σ_k max(φ_k, 0)`` (docs/design.md, "Modality Shapley").

    When no modality contributes positively (the sum is 0, e.g. at initialisation) every
    modality gets ``1/M``.  Returns ``[M]`` in ``phi``'s dtype (float64 for integer input).
    """
    phi = torch.as_tensor(phi)
    if phi.ndim != 1 or phi.shape[0] < 1:
        raise ValueError(f"phi must be a 1-D tensor [M] with M >= 1, got {list(phi.shape)}")
    if not phi.is_floating_point():
        phi = phi.to(torch.float64)
    if not bool(phi.isfinite().any()):  # nothing usable: uniform, as at initialisation
        return torch.full_like(phi, 1.0 / phi.shape[0])
    return phi.new_tensor(shares(phi.tolist()))


def dominant_index(phi: Tensor) -> int:
    """Index of the dominant modality: argmax φ, ties broken by the lowest index."""
    phi = torch.as_tensor(phi)
    if phi.ndim != 1 or phi.shape[0] < 1:
        raise ValueError(f"phi must be a 1-D tensor [M] with M >= 1, got {list(phi.shape)}")
    phi = phi.double()
    # torch.argmax returns the first maximal index; a NaN never wins
    return int(torch.where(phi.isnan(), -math.inf, phi).argmax())


# --------------------------------------------------------------------------------------------
# one result object for a model and a batch


@dataclass(frozen=True)
class ShapleyResult:
    """Modality Shapley values on one batch (or split), with what M-SAM derives from them.

    ``modalities`` (``model.modalities`` order); ``phi [M]``; ``values [2**M]`` the coalition
    values by bitmask (None when φ was sampled); ``stderr [M]`` of sampled φ (None when exact).
    Derived: ``dominant_index`` / ``dominant`` (argmax φ, ties -> lowest index) and
    ``weights`` (:func:`balance_weights`).
    """

    modalities: list[str]
    phi: Tensor
    values: Tensor | None = None
    stderr: Tensor | None = None

    def __post_init__(self) -> None:
        if self.phi.shape != (len(self.modalities),):
            raise ValueError(
                f"phi has shape {list(self.phi.shape)} but there are {len(self.modalities)} "
                f"modalities {self.modalities}"
            )

    @classmethod
    def from_values(cls, modalities: Sequence[str], values: Tensor) -> ShapleyResult:
        """Exact result from coalition values ``[2**M]`` (M = ``len(modalities)``)."""
        values = torch.as_tensor(values)
        if n_players_of(values) != len(modalities):
            raise ValueError(
                f"{values.shape[0]} coalition values describe {n_players_of(values)} "
                f"modalities, but {len(modalities)} are named: {list(modalities)}"
            )
        return cls(list(modalities), exact_shapley(values), values)

    # φ is read to the host once per result and what derives from it is kept: a step asks for
    # the dominant modality, its weight and the record, each of which would read φ again

    @cached_property
    def phi_floats(self) -> list[float]:
        """φ as Python floats (read from φ's device once)."""
        return self.phi.tolist()

    @cached_property
    def dominant_index(self) -> int:
        """:func:`dominant_index` of φ: argmax, ties to the lowest index, NaN never wins."""
        keys = [-math.inf if math.isnan(v) else v for v in self.phi_floats]
        return keys.index(max(keys))

    @property
    def dominant(self) -> str:
        return self.modalities[self.dominant_index]

    @cached_property
    def weight_floats(self) -> list[float]:
        """:attr:`weights` as Python floats."""
        phi = self.phi_floats
        if not any(math.isfinite(v) for v in phi):  # as balance_weights: uniform
            found = [1.0 / len(phi)] * len(phi)
        else:
            found = shares(phi)
        if self._weight_dtype != torch.float64:  # the weights tensor's floats, rounded as it is
            found = torch.tensor(found, dtype=self._weight_dtype).tolist()
        return found

    @property
    def _weight_dtype(self) -> torch.dtype:
        return self.phi.dtype if self.phi.is_floating_point() else torch.float64

    @property
    def weights(self) -> Tensor:
        """:func:`balance_weights` of φ: ``[M]`` on φ's device, in φ's floating dtype."""
        return torch.tensor(self.weight_floats, dtype=self._weight_dtype, device=self.phi.device)

    def to_record(self) -> dict[str, float | str]:
        """Iteration keys ``dominant``, ``phi/<m>``, ``weight/<m>`` and, when φ is an estimate
        (a row subset, or sampled permutations), ``phi_stderr/<m>`` (docs/design.md, "The run
        directory")."""
        record: dict[str, float | str] = {"dominant": self.dominant}
        for name, phi in zip(self.modalities, self.phi_floats, strict=True):
            record[f"phi/{name}"] = phi
        for name, weight in zip(self.modalities, self.weight_floats, strict=True):
            record[f"weight/{name}"] = weight
        if self.stderr is not None:
            for m, name in enumerate(self.modalities):
                record[f"phi_stderr/{name}"] = float(self.stderr[m])
        return record


#: Permutations :func:`modality_shapley` samples when there are too many modalities to enumerate.
DEFAULT_PERMUTATIONS = 64


def modality_shapley(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    value: str = "accuracy",
    masking: str = "input",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    n_permutations: int | None = None,
    generator: torch.Generator | None = None,
) -> ShapleyResult:
    """Shapley value of each modality of ``model`` on the batch ``(inputs, targets)``.

    Coalition values as in :func:`msam_core.coalitions.coalition_values` (same ``value``,
    ``masking``, ``baselines``, ``chunk_size``).  Exact for ``M <= 10`` unless
    ``n_permutations`` is given; otherwise antithetic permutation sampling with
    ``n_permutations`` (default 64) pairs, and the result carries ``stderr``.
    """
    modalities = list(getattr(model, "modalities", None) or [])
    if n_permutations is None and len(modalities) <= MAX_EXACT_PLAYERS:
        values = coalition_values(model, inputs, targets, value, masking, baselines, chunk_size)
        return ShapleyResult.from_values(modalities, values)

    def value_fn(masks: Tensor) -> Tensor:
        return masked_values(model, inputs, targets, masks, value, masking, baselines, chunk_size)

    phi, stderr = permutation_shapley(
        value_fn, len(modalities), n_permutations or DEFAULT_PERMUTATIONS, generator
    )
    return ShapleyResult(modalities, phi, None, stderr)


class FirstPassOutputs(Protocol):
    """What a training step's first forward left behind (``msam_core.step.FirstPass``):
    ``logits [B, C]`` and, for a late-fusion model run as ``fuse(encode(x))``, ``features``.
    A ``msam_core.step.FirstPass`` whose ``loss_value`` is None (not read yet) gets it from
    :func:`batch_shapley`'s own transfer of the coalition values."""

    logits: Tensor
    features: dict[str, Tensor] | None


def batch_shapley(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    first: FirstPassOutputs | None = None,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
    reuse_first_pass: bool = True,
    *,
    rows: Tensor | None = None,
) -> ShapleyResult:
    """Shapley values of a training batch, the same on every ``torch.distributed`` rank.

    ``model`` may be wrapped (DDP); ``first`` is the step's first pass, reused where the model
    allows (:func:`~msam_core.coalitions.batch_values`: its features for feature masking, its
    logits as the full coalition's value when train and eval mode agree);
    ``reuse_first_pass=False`` (or ``first=None``) runs every coalition afresh.  Exact for
    ``M <= 10`` (coalition values averaged over ranks); above, sampled as
    :func:`modality_shapley` with φ averaged over ranks.

    ``rows``: int64 indices of the batch's rows to compute the coalition values on (the config's
    ``shapley_rows``, drawn by :func:`msam_core.rows.row_subset`); the result then carries
    ``stderr``, φ's standard error as an estimate of the whole batch's φ (:func:`row_shapley`).
    """
    core = unwrap(model)
    modalities = list(core.modalities)
    batch_size = int(targets.shape[0])
    if rows is not None and len(modalities) <= MAX_EXACT_PLAYERS:
        return row_shapley(
            core,
            inputs,
            targets,
            rows,
            first if reuse_first_pass else None,
            value,
            masking,
            baselines,
            chunk_size,
        )
    if rows is not None:  # sampled φ: on the rows, its stderr that of the permutations
        inputs = {m: x.index_select(0, rows.to(x.device)) for m, x in inputs.items()}
        targets = targets.index_select(0, rows.to(targets.device))
        batch_size = int(targets.shape[0])
    if len(modalities) > MAX_EXACT_PLAYERS:  # sampled; φ averaged over ranks instead
        result = modality_shapley(core, inputs, targets, value, masking, baselines, chunk_size)
        phi = mean_over_ranks(result.phi, batch_size, targets.device)
        return ShapleyResult(modalities, phi, None, result.stderr)
    reuse = reuse_first_pass and first is not None
    # a first pass whose loss was not read yet (run_step checks it after this pass) has it
    # read with the values: one device-to-host transfer for both
    unread = first is not None and getattr(first, "loss_value", 0.0) is None
    values, loss_value = batch_values_and(
        core,
        inputs,
        targets,
        value,
        masking,
        baselines,
        chunk_size,
        logits=first.logits if reuse else None,
        features=(first.features or None) if reuse else None,
        scalar=first.loss if unread else None,
    )
    if unread:
        first.loss_value = loss_value
    return ShapleyResult.from_values(modalities, values)


def row_shapley(
    model: nn.Module,
    inputs: Mapping[str, Tensor],
    targets: Tensor,
    rows: Tensor,
    first: FirstPassOutputs | None = None,
    value: str = "accuracy",
    masking: str = "auto",
    baselines: Mapping[str, Tensor] | None = None,
    chunk_size: int | None = None,
) -> ShapleyResult:
    """φ of a training batch from the coalition values of its rows ``rows`` (n of the batch's
    B), with ``stderr``: φ's standard error as an estimate of the whole batch's φ.

    φ is linear in the values, so it is the mean of the rows' own φ_i = W v_i; drawn without
    replacement, its variance is ``(1 − n/B) s²/n`` with ``s²`` the rows' sample variance of
    φ_i (0 when every row is taken; undefined, NaN, for one row of several).  Under
    ``torch.distributed`` the values are averaged over ranks weighted by n (every rank gets the
    same φ) and the variances combine as ``Σ n_r² var_r / (Σ n_r)²``.
    """
    modalities = list(model.modalities)
    logits = None if first is None else first.logits
    features = None if first is None else (first.features or None)
    values, per_row = batch_row_values(
        model,
        inputs,
        targets,
        rows,
        value,
        masking,
        baselines,
        chunk_size,
        logits=logits,
        features=features,
    )
    n, batch_size = per_row.shape[1], int(targets.shape[0])
    row_phi = _weight_matrix(len(modalities), "cpu") @ per_row  # [M, n]
    spread = row_phi.var(1, correction=1) if n > 1 else torch.full((len(modalities),), math.nan)
    variance = (1.0 - n / batch_size) * spread / n
    if n == batch_size:
        variance = torch.zeros_like(variance)
    values, variance = _rows_over_ranks(values, variance, n, targets.device)
    return ShapleyResult(modalities, exact_shapley(values), values, variance.sqrt())


def _rows_over_ranks(
    values: Tensor, variance: Tensor, n: int, device: torch.device
) -> tuple[Tensor, Tensor]:
    """Values averaged over ranks weighted by their row counts ``n``, and the variance of that
    average, ``Σ n_r² var_r / (Σ n_r)²`` (as is without ``torch.distributed``)."""
    if not is_distributed():
        return values, variance
    k = values.shape[0]
    packed = torch.cat([values * n, variance * n * n, values.new_tensor([n])]).to(device)
    torch.distributed.all_reduce(packed)
    packed = packed.cpu()
    total = packed[-1]
    return packed[:k] / total, packed[k:-1] / total**2
