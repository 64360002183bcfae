"""The modulation math of OGM-GE and AGM on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest
import torch

from msam_core.modulation import (
    agm_coefficients,
    agm_ratios,
    agm_scores,
    discrepancy_ratios,
    gaussian_enhancement,
    mono_modal_responses,
    ogm_coefficients,
    ogm_scores,
    running_mean,
    shapley_weight_matrix,
)

LN3 = math.log(3.0)


def _two_modality_logits():
    """Modality a: p(y) = 0.5 and 0.75; modality v: p(y) = 0.5 and 0.5 (targets both 0)."""
    a = torch.tensor([[0.0, 0.0], [LN3, 0.0]])
    v = torch.zeros(2, 2)
    return torch.stack([a, v]), torch.tensor([0, 0])


# -- OGM-GE ----------------------------------------------------------------------------------


def test_ogm_scores_sum_true_class_probability():
    logits, targets = _two_modality_logits()
    assert torch.allclose(ogm_scores(logits, targets), torch.tensor([1.25, 1.0]))


def test_discrepancy_ratio_two_modalities_is_the_papers_quotient():
    ratios = discrepancy_ratios(torch.tensor([1.25, 1.0]))
    assert torch.allclose(ratios, torch.tensor([1.25, 0.8]))


def test_discrepancy_ratio_three_modalities_divides_by_mean_of_others():
    ratios = discrepancy_ratios(torch.tensor([3.0, 1.0, 2.0]))
    # 3 / mean(1, 2), 1 / mean(3, 2), 2 / mean(3, 1)
    assert torch.allclose(ratios, torch.tensor([2.0, 0.4, 1.0]))


def test_ogm_coefficient_hand_computed():
    ratios = torch.tensor([1.25, 0.8])
    k = ogm_coefficients(ratios, alpha=1.0)
    assert torch.allclose(k, torch.tensor([1.0 - math.tanh(0.25), 1.0]))
    published = ogm_coefficients(ratios, alpha=1.0, form="published")
    assert torch.allclose(published, torch.tensor([1.0 - math.tanh(1.25), 1.0]))


def test_ogm_coefficient_is_continuous_at_ratio_one_and_off_for_alpha_zero():
    k = ogm_coefficients(torch.tensor([1.0, 1.0 + 1e-6, 5.0]), alpha=2.0)
    assert k[0] == 1.0 and abs(k[1] - 1.0) < 1e-5 and k[2] < 1.0
    assert torch.equal(ogm_coefficients(torch.tensor([3.0, 0.2]), alpha=0.0), torch.ones(2))


def test_gaussian_enhancement_scales_and_adds_noise_with_the_gradients_std():
    grad = torch.tensor([[1.0, -1.0], [3.0, 5.0]])
    std = grad.std()
    out = gaussian_enhancement(grad, 0.5, generator=torch.Generator().manual_seed(7))
    noise = torch.randn(grad.shape, generator=torch.Generator().manual_seed(7))
    assert torch.allclose(out, 0.5 * grad + noise * std)
    assert torch.equal(grad, torch.tensor([[1.0, -1.0], [3.0, 5.0]]))  # input untouched


def test_gaussian_enhancement_noise_has_zero_mean_and_the_gradients_spread():
    grad = torch.linspace(-3.0, 3.0, 20_000)
    noise = gaussian_enhancement(grad, 0.0, generator=torch.Generator().manual_seed(0))
    assert abs(noise.mean()) < 0.05
    assert abs(noise.std() / grad.std() - 1.0) < 0.03


def test_gaussian_enhancement_constant_or_scalar_gradient_gets_no_noise():
    assert torch.equal(gaussian_enhancement(torch.full((3,), 2.0), 0.25), torch.full((3,), 0.5))
    assert torch.equal(gaussian_enhancement(torch.tensor([4.0]), 0.5), torch.tensor([2.0]))


# -- AGM -------------------------------------------------------------------------------------


def test_shapley_weight_matrix_two_modalities():
    # coalitions in bitmask order: ∅, {a}, {v}, {a, v}
    expected = torch.tensor([[-0.5, 0.5, -0.5, 0.5], [-0.5, -0.5, 0.5, 0.5]], dtype=torch.float64)
    assert torch.equal(shapley_weight_matrix(2), expected)


def test_shapley_weight_matrix_rows_give_efficiency_for_three_modalities():
    w = shapley_weight_matrix(3)
    total = w.sum(0)  # Σ_m φ_m = v(all) − v(∅)
    expected = torch.zeros(8, dtype=torch.float64)
    expected[0], expected[7] = -1.0, 1.0
    assert torch.allclose(total, expected)


def test_mono_modal_responses_two_modalities_match_agm_formula():
    # outputs per coalition [∅, a, v, av], each a [B=1, C=2] logit row
    out = torch.tensor([[[0.4, 0.0]], [[2.0, 1.0]], [[0.0, 3.0]], [[5.0, 7.0]]])
    r = mono_modal_responses(out)
    assert torch.allclose(r[0], 0.5 * (out[3] - out[2] + out[1]))
    assert torch.allclose(r[1], 0.5 * (out[3] - out[1] + out[2]))
    assert torch.allclose(r.sum(0), out[3])


def test_mono_modal_responses_additive_game_three_modalities():
    # v(S) = c0 + Σ_{m in S} c_m: each response is c_m plus an equal share of c0
    c0, c = 0.6, torch.tensor([1.0, -2.0, 4.0])
    masks = torch.tensor([[(s >> m) & 1 for m in range(3)] for s in range(8)], dtype=torch.float)
    values = c0 + masks @ c
    assert torch.allclose(mono_modal_responses(values), c + c0 / 3)


def test_agm_scores_are_floored_cross_entropies():
    mono = torch.stack([torch.zeros(2, 2), torch.tensor([[-1000.0, 0.0], [-1000.0, 0.0]])])
    scores = agm_scores(mono, torch.tensor([0, 0]))
    assert torch.allclose(scores, torch.tensor([math.log(2.0), -math.log(1e-8)]))


def test_agm_ratios_hand_computed():
    assert torch.allclose(agm_ratios(torch.tensor([1.0, 2.0])), torch.exp(torch.tensor([1, -1.0])))
    # three modalities: mean of the others minus own score
    ratios = agm_ratios(torch.tensor([0.0, 3.0, 6.0]))
    assert torch.allclose(ratios, torch.exp(torch.tensor([4.5, 0.0, -4.5])))


def test_agm_coefficients_hand_computed_and_clamped():
    k = agm_coefficients(torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0]), alpha=0.5)
    assert torch.allclose(k, torch.tensor([math.exp(-0.5), math.exp(0.25)]))
    big = agm_coefficients(torch.tensor([0.0]), torch.tensor([20.0]), alpha=0.1, clamp=10.0)
    assert torch.allclose(big, torch.tensor([math.exp(1.0)]))
    assert torch.equal(
        agm_coefficients(torch.tensor([3.0]), torch.tensor([1.0]), 0.0), torch.ones(1)
    )


def test_running_mean():
    assert torch.allclose(running_mean(torch.tensor(2.0), torch.tensor(5.0), 3), torch.tensor(3.0))
    assert torch.equal(running_mean(torch.tensor(9.0), torch.tensor(4.0), 1), torch.tensor(4.0))


# -- bad input -------------------------------------------------------------------------------


def test_bad_input_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"\[M, B, C\]"):
        ogm_scores(torch.zeros(2, 3), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="targets must have shape"):
        ogm_scores(torch.zeros(2, 3, 4), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="M >= 2"):
        discrepancy_ratios(torch.tensor([1.0]))
    with pytest.raises(ValueError, match="alpha"):
        ogm_coefficients(torch.ones(2), alpha=-1.0)
    with pytest.raises(ValueError, match="continuous"):
        ogm_coefficients(torch.ones(2), alpha=1.0, form="paper")
    with pytest.raises(ValueError, match="2\\*\\*M rows"):
        mono_modal_responses(torch.zeros(3, 2))
    with pytest.raises(ValueError, match="same shape"):
        agm_coefficients(torch.ones(2), torch.ones(3), alpha=1.0)
    with pytest.raises(ValueError, match="count"):
        running_mean(torch.tensor(0.0), torch.tensor(1.0), 0)
