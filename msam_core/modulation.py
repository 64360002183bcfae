"""The modulation math of the balancing baselines: pure functions, tensors in, tensors out.

Every function here is small enough to check by hand; the methods that use them
(:mod:`msam_core.methods.ogm_ge`, :mod:`msam_core.methods.agm`) only gather the inputs
(unimodal readouts, coalition outputs) and apply the coefficients to gradients.

Shapes: ``M`` modalities (in ``model.modalities`` order), ``B`` samples, ``C`` classes.

OGM-GE (Peng et al., CVPR 2022, "Balanced Multimodal Learning via On-the-fly Gradient
Modulation")
    score_m = Σ_b softmax(u_m[b])[y_b], the summed true-class probability of modality m's
    unimodal readout ``u_m``; discrepancy ratio ρ_m = score_m / mean_{k≠m} score_k (for two
    modalities this is the paper's score_a / score_v); coefficient
    k_m = 1 − tanh(α · relu(ρ_m − 1)), so only a modality ahead of the others' mean is slowed
    and k is continuous at ρ = 1.  The authors' code uses 1 − tanh(α · ρ) when ρ > 1 (a jump
    from 1 to 1 − tanh(α) at ρ = 1); ``form="published"`` gives that.  Gaussian enhancement
    (GE) adds zero-mean noise with the standard deviation of the unmodulated gradient.

AGM (Li et al., ICCV 2023, "Boosting Multi-modal Model Performance with Adaptive Gradient
Modulation")
    mono-modal response r_m = Shapley value of the model's logits with the empty coalition
    valued 0 (r_m = φ_m(logits) + logits(∅) / M, so Σ_m r_m = logits(all), as in the authors'
    two- and three-modality formulas); score s_m = mean_b −log max(softmax(r_m[b])[y_b], 1e-8)
    (lower = stronger); ratio ρ_m = exp(mean_{k≠m} s_k − s_m) = exp(M/(M−1) · (s̄ − s_m))
    (for two modalities the paper's exp(s_v − s_a)); target ratio η_m from the running
    averages of the scores; coefficient exp(α · min(η_m − ρ_m, clamp)).
"""

from __future__ import annotations

import torch
from torch import Tensor

from msam_core.shapley import MAX_EXACT_PLAYERS, exact_shapley

OGM_FORMS = ("continuous", "published")


# --------------------------------------------------------------------------------------------
# checks


def _check_logits(logits: Tensor, targets: Tensor, what: str) -> None:
    if logits.ndim != 3:
        raise ValueError(
            f"{what} must have shape [M, B, C] (modalities, batch, classes), "
            f"got {list(logits.shape)}"
        )
    if targets.ndim != 1 or targets.shape[0] != logits.shape[1]:
        raise ValueError(
            f"targets must have shape [B] = [{logits.shape[1]}] to match {what} "
            f"{list(logits.shape)}, got {list(targets.shape)}"
        )


def _check_scores(scores: Tensor) -> None:
    if scores.ndim != 1 or scores.shape[0] < 2:
        raise ValueError(
            "a discrepancy ratio compares a modality with the others: scores must have shape "
            f"[M] with M >= 2, got {list(scores.shape)}"
        )


def _as_float(values: Tensor) -> Tensor:
    """Floating tensors as they are (float64 stays float64); others as float32."""
    return values if values.is_floating_point() else values.float()


def _true_class_probability(logits: Tensor, targets: Tensor) -> Tensor:
    """softmax(logits)[..., y] for ``[M, B, C]`` logits: ``[M, B]``."""
    # at least float32 (bf16 logits under autocast), float64 kept
    probs = logits.softmax(dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))
    index = targets.to(logits.device).long().view(1, -1, 1).expand(probs.shape[0], -1, 1)
    return probs.gather(-1, index).squeeze(-1)


def _mean_of_others(values: Tensor) -> Tensor:
    """``[M]`` -> ``[M]``: entry m is the mean of every entry except m."""
    n = values.shape[0]
    return (values.sum() - values) / (n - 1)


# --------------------------------------------------------------------------------------------
# OGM-GE


def ogm_scores(unimodal_logits: Tensor, targets: Tensor) -> Tensor:
    """Each modality's confidence on the batch: ``Σ_b softmax(u_m[b])[y_b]``.

    Args:
        unimodal_logits: ``[M, B, C]``, modality m's unimodal readout (logits).
        targets: ``[B]`` class indices.

    Returns:
        ``[M]`` float scores, each in ``[0, B]``.
    """
    _check_logits(unimodal_logits, targets, "unimodal_logits")
    return _true_class_probability(unimodal_logits, targets).sum(dim=1)


def discrepancy_ratios(scores: Tensor) -> Tensor:
    """OGM's discrepancy ratio for M modalities: ``ρ_m = score_m / mean_{k≠m} score_k``.

    With two modalities this is the paper's ``score_a / score_v`` (and its inverse for v);
    a modality is "ahead" (ρ > 1) when it is more confident than the others on average.
    A zero denominator gives ``inf`` (that modality is infinitely ahead).

    Args:
        scores: ``[M]``, M >= 2, non-negative.

    Returns:
        ``[M]`` ratios.
    """
    _check_scores(scores)
    scores = _as_float(scores)
    return scores / _mean_of_others(scores)


def ogm_coefficients(ratios: Tensor, alpha: float, form: str = "continuous") -> Tensor:
    """OGM's gradient coefficients ``k_m`` from discrepancy ratios ``ρ_m``.

    ``form="continuous"``: ``k = 1 − tanh(α · relu(ρ − 1))`` (k = 1 for ρ <= 1, continuous).
    ``form="published"``: the authors' code, ``k = 1 − tanh(α · ρ)`` where ρ > 1, else 1.

    Args:
        ratios: ``[M]`` discrepancy ratios (see :func:`discrepancy_ratios`).
        alpha: modulation strength α >= 0 (0 turns modulation off).
        form: ``continuous`` or ``published``.

    Returns:
        ``[M]`` coefficients in ``(0, 1]``.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if form not in OGM_FORMS:
        raise ValueError(f"unknown OGM form {form!r}; choose one of {list(OGM_FORMS)}")
    ratios = _as_float(ratios)
    if form == "continuous":
        return 1.0 - torch.tanh(alpha * torch.relu(ratios - 1.0))
    return torch.where(ratios > 1.0, 1.0 - torch.tanh(alpha * ratios), torch.ones_like(ratios))


def gaussian_enhancement(
    grad: Tensor, coefficient: float | Tensor, generator: torch.Generator | None = None
) -> Tensor:
    """OGM-GE's enhanced gradient: ``k · g + n`` with ``n ~ N(0, std(g)²)`` elementwise.

    ``std(g)`` is the (unbiased) standard deviation over the elements of the *unmodulated*
    gradient tensor ``g``, as in the paper's GE: the noise restores the gradient's
    stochasticity that the coefficient takes away.  A tensor of one element has no spread
    and gets no noise.

    Args:
        grad: any shape; not modified.
        coefficient: the modality's ``k`` (a float or a 0-d tensor).
        generator: random source for the noise (on ``grad``'s device); None uses torch's global
            generator.

    Returns:
        A new tensor shaped like ``grad``.
    """
    out = grad * coefficient
    if grad.numel() < 2:
        return out
    std = grad.detach().float().std()
    noise = torch.randn(grad.shape, generator=generator, device=grad.device, dtype=grad.dtype)
    return out + noise * std.to(grad.dtype)


# --------------------------------------------------------------------------------------------
# AGM


def shapley_weight_matrix(n_modalities: int, device: torch.device | str | None = None) -> Tensor:
    """The linear map from coalition values to Shapley values: ``φ = W @ v``, ``W`` ``[M, 2**M]``.

    Coalition ``S`` is the bitmask index into ``v`` (bit m set = modality m present), as in
    :mod:`msam_core.masking`.  ``W[m, S ∪ {m}] = w(|S|)`` and ``W[m, S] = −w(|S|)`` for every
    ``S`` without ``m``, where ``w(s) = s! (M − s − 1)! / M!``.  Column ``S`` is the Shapley
    value of the game that is 1 on ``S`` and 0 elsewhere, so the one definition in
    :func:`msam_core.shapley.exact_shapley` is reused.
    """
    if not 1 <= n_modalities <= MAX_EXACT_PLAYERS:
        raise ValueError(
            f"exact Shapley responses need 1 <= M <= {MAX_EXACT_PLAYERS} modalities, "
            f"got {n_modalities}"
        )
    unit_games = torch.eye(2**n_modalities, dtype=torch.float64)
    return torch.stack([exact_shapley(game) for game in unit_games], dim=1).to(device)


def mono_modal_responses(coalition_outputs: Tensor) -> Tensor:
    """AGM's mono-modal responses: Shapley values of the outputs with ``v(∅) := 0``.

    Equivalently ``φ_m(outputs) + outputs(∅) / M``: the output with every modality at its
    baseline is shared equally, so the responses add up to the fused output exactly
    (``Σ_m r_m = outputs(all)``).  For two modalities ``r_a = (out(av) − out(v) + out(a)) / 2``.

    Args:
        coalition_outputs: ``[2**M, ...]``, the model's output (e.g. logits ``[B, C]``) for
            every coalition, indexed by bitmask.

    Returns:
        ``[M, ...]`` responses.
    """
    size = coalition_outputs.shape[0]
    n = size.bit_length() - 1
    if size < 2 or size != 2**n:
        raise ValueError(
            f"coalition_outputs must have 2**M rows (one per coalition, bitmask order), got {size}"
        )
    values = coalition_outputs.clone()
    values[0] = 0
    weights = shapley_weight_matrix(n, device=values.device).to(values.dtype)
    return torch.einsum("ms,s...->m...", weights, values)


def agm_scores(mono_logits: Tensor, targets: Tensor, floor: float = 1e-8) -> Tensor:
    """AGM's per-modality score: mean cross-entropy of the mono-modal responses (lower = stronger).

    ``s_m = mean_b −log max(softmax(r_m[b])[y_b], floor)``; the floor keeps a confidently wrong
    response from giving ``inf``.

    Args:
        mono_logits: ``[M, B, C]`` mono-modal responses (:func:`mono_modal_responses`).
        targets: ``[B]`` class indices.
        floor: smallest probability taken into the log.

    Returns:
        ``[M]`` scores, each in ``[0, −log floor]``.
    """
    _check_logits(mono_logits, targets, "mono_logits")
    if not 0 < floor < 1:
        raise ValueError(f"floor must be in (0, 1), got {floor}")
    prob = _true_class_probability(mono_logits, targets).clamp_min(floor)
    return -prob.log().mean(dim=1)


def agm_ratios(scores: Tensor) -> Tensor:
    """AGM's ratio ``ρ_m = exp(mean_{k≠m} s_k − s_m) = exp(M/(M−1) · (mean(s) − s_m))``.

    Scores are losses, so ``ρ_m > 1`` means modality m is stronger than the others on average.
    For two modalities this is the paper's ``exp(s_v − s_a)`` for audio.

    Args:
        scores: ``[M]``, M >= 2 (:func:`agm_scores`, or their running averages for the target).

    Returns:
        ``[M]`` positive ratios.
    """
    _check_scores(scores)
    scores = _as_float(scores)
    return torch.exp(_mean_of_others(scores) - scores)


def agm_coefficients(
    ratios: Tensor, target_ratios: Tensor, alpha: float, clamp: float = 10.0
) -> Tensor:
    """AGM's coefficients ``exp(α · min(η_m − ρ_m, clamp))``.

    A modality whose ratio is above its target (stronger now than its running average says)
    gets a coefficient below 1, one below its target a coefficient above 1.  ``clamp`` bounds
    the exponent's argument from above, as the authors' code does, so no coefficient exceeds
    ``exp(α · clamp)``.

    Args:
        ratios: ``[M]`` current ratios ρ (:func:`agm_ratios` of this batch's scores).
        target_ratios: ``[M]`` target ratios η (:func:`agm_ratios` of the running averages).
        alpha: modulation strength α >= 0 (0 turns modulation off).
        clamp: upper bound on ``η − ρ``.

    Returns:
        ``[M]`` positive coefficients.
    """
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    if ratios.shape != target_ratios.shape:
        raise ValueError(
            f"ratios {list(ratios.shape)} and target_ratios {list(target_ratios.shape)} "
            "must have the same shape [M]"
        )
    gap = (_as_float(target_ratios) - _as_float(ratios)).clamp_max(clamp)
    return torch.exp(alpha * gap)


def running_mean(mean: Tensor, value: Tensor, count: int) -> Tensor:
    """The cumulative average after ``count`` values: ``mean · (t − 1)/t + value/t``, t = count.

    AGM's target ratio uses the running average of each modality's score over all steps so far.
    """
    if count < 1:
        raise ValueError(f"count must be >= 1 (the number of values averaged), got {count}")
    return mean * ((count - 1) / count) + value / count
