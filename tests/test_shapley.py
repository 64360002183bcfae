"""Shapley values: the axioms on random games, closed forms, shap's exact explainer, sampling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from msam_core.masking import coalition_masks, mask_to_index
from msam_core.shapley import (
    balance_weights,
    dominant_index,
    exact_shapley,
    permutation_shapley,
)


def random_game(n_players: int, seed: int) -> torch.Tensor:
    return torch.randn(
        2**n_players, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )


def game_from(fn, n_players: int) -> torch.Tensor:
    """Coalition values of ``fn(mask [M] bool) -> float`` for every bitmask."""
    return torch.tensor([fn(mask) for mask in coalition_masks(n_players)], dtype=torch.float64)


def table_value_fn(values: torch.Tensor):
    """value_fn for permutation_shapley reading a table indexed by bitmask."""
    return lambda masks: values[mask_to_index(masks)]


@pytest.mark.parametrize("n_players", range(1, 9))
def test_efficiency(n_players):
    v = random_game(n_players, seed=n_players)
    phi = exact_shapley(v)
    assert phi.shape == (n_players,)
    assert float(phi.sum()) == pytest.approx(float(v[-1] - v[0]), abs=1e-12)


@pytest.mark.parametrize("n_players", range(2, 9))
def test_symmetry(n_players):
    i, j = 0, n_players - 1
    base = random_game(n_players, seed=10 + n_players)
    masks = coalition_masks(n_players)
    swapped = masks.clone()
    swapped[:, [i, j]] = masks[:, [j, i]]
    v = 0.5 * (base + base[mask_to_index(swapped)])  # players i and j are interchangeable
    phi = exact_shapley(v)
    assert float(phi[i]) == pytest.approx(float(phi[j]), abs=1e-12)


@pytest.mark.parametrize("n_players", range(1, 9))
def test_null_player(n_players):
    null = n_players // 2
    base = random_game(n_players, seed=20 + n_players)
    masks = coalition_masks(n_players)
    without = masks.clone()
    without[:, null] = False
    v = base[mask_to_index(without)]  # v(S) = base(S \ {null}): the player changes nothing
    phi = exact_shapley(v)
    assert float(phi[null]) == pytest.approx(0.0, abs=1e-12)
    assert float(phi.sum()) == pytest.approx(float(v[-1] - v[0]), abs=1e-12)


@pytest.mark.parametrize("n_players", range(1, 9))
def test_linearity(n_players):
    u, v = random_game(n_players, 30 + n_players), random_game(n_players, 40 + n_players)
    a, b = 1.7, -0.3
    combined = exact_shapley(a * u + b * v)
    torch.testing.assert_close(combined, a * exact_shapley(u) + b * exact_shapley(v))


def test_closed_forms_additive_and_unanimity_games():
    n_players = 5
    c = torch.tensor([0.5, -1.0, 2.0, 0.0, 0.25], dtype=torch.float64)
    additive = game_from(lambda mask: float(c[mask].sum()), n_players)
    torch.testing.assert_close(exact_shapley(additive), c)  # φ_m = c_m
    carriers = torch.tensor([True, False, True, True, False])
    unanimity = game_from(lambda mask: float(bool(mask[carriers].all())), n_players)
    expected = carriers.double() / 3  # each of the |T| = 3 carriers gets 1/|T|
    torch.testing.assert_close(exact_shapley(unanimity), expected)


@pytest.mark.parametrize("n_players", range(2, 7))
def test_agrees_with_shap_exact_explainer(n_players):
    shap = pytest.importorskip("shap")
    v = random_game(n_players, seed=50 + n_players)
    table = v.numpy()
    powers = 2 ** np.arange(n_players)

    def model(rows: np.ndarray) -> np.ndarray:  # rows are masked copies of x = ones
        return table[(rows.astype(np.int64) * powers).sum(1)]

    def masker(mask: np.ndarray, x: np.ndarray) -> np.ndarray:
        return (x * mask).reshape(1, n_players)

    masker.shape = (1, n_players)
    explanation = shap.explainers.Exact(model, masker)(np.ones((1, n_players)))
    np.testing.assert_allclose(exact_shapley(v).numpy(), explanation.values[0], rtol=0, atol=1e-9)


def test_dtype_and_device_follow_the_input():
    v = random_game(3, seed=1)
    assert exact_shapley(v.float()).dtype == torch.float32
    assert exact_shapley(torch.tensor([0, 1, 1, 3])).dtype == torch.float64


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        (torch.zeros(3), "power of two"),
        (torch.zeros(12), "power of two"),
        (torch.zeros(1), "power of two"),
        (torch.zeros(2, 4), "1-D"),
        (torch.zeros(2**11), "permutation_shapley"),
    ],
)
def test_bad_values_are_named(values, needle):
    with pytest.raises(ValueError, match=needle):
        exact_shapley(values)


# --------------------------------------------------------------------------------------------
# permutation sampling


def test_permutation_sampler_within_three_standard_errors_for_m6():
    v = random_game(6, seed=7)
    exact = exact_shapley(v)
    phi, stderr = permutation_shapley(
        table_value_fn(v), 6, 400, generator=torch.Generator().manual_seed(0)
    )
    assert (stderr > 0).all()
    assert ((phi - exact).abs() <= 3 * stderr).all(), (phi, exact, stderr)


def test_permutation_stderr_shrinks_as_one_over_sqrt_n():
    v = random_game(6, seed=8)
    errors = []
    for n in (100, 1600):  # 16x the permutations -> 1/4 the standard error
        _, stderr = permutation_shapley(
            table_value_fn(v), 6, n, generator=torch.Generator().manual_seed(n)
        )
        errors.append(stderr)
    ratio = (errors[1] / errors[0]).mean().item()
    assert 0.25 * 0.8 < ratio < 0.25 * 1.25, ratio


def test_permutation_is_exact_where_the_sample_covers_the_game():
    # additive game: every permutation gives the same marginals -> exact, zero error
    c = torch.tensor([0.3, -0.2, 1.0, 0.0], dtype=torch.float64)
    additive = game_from(lambda mask: float(c[mask].sum()), 4)
    phi, stderr = permutation_shapley(table_value_fn(additive), 4, 8)
    torch.testing.assert_close(phi, c)
    assert stderr.abs().max() < 1e-12
    # two players: a permutation and its reverse are the whole game
    v = random_game(2, seed=3)
    phi, stderr = permutation_shapley(table_value_fn(v), 2, 5)
    torch.testing.assert_close(phi, exact_shapley(v))


def test_permutation_calls_value_fn_once_on_distinct_coalitions():
    v = random_game(5, seed=4)
    calls = []

    def value_fn(masks):
        calls.append(masks.clone())
        return table_value_fn(v)(masks)

    permutation_shapley(value_fn, 5, 50, generator=torch.Generator().manual_seed(1))
    assert len(calls) == 1
    masks = calls[0]
    assert masks.dtype == torch.bool and masks.shape[1] == 5
    assert len(set(mask_to_index(masks).tolist())) == masks.shape[0]  # no repeats


def test_permutation_handles_more_players_than_exact():
    n_players = 12
    c = torch.linspace(-1, 1, n_players, dtype=torch.float64)
    phi, _ = permutation_shapley(lambda masks: (masks.double() * c).sum(1), n_players, 4)
    torch.testing.assert_close(phi, c)


def test_permutation_bad_arguments():
    with pytest.raises(ValueError, match="n_permutations"):
        permutation_shapley(lambda m: m.sum(1).double(), 3, 1)
    with pytest.raises(ValueError, match="n_players"):
        permutation_shapley(lambda m: m.sum(1).double(), 0, 4)
    with pytest.raises(ValueError, match="value_fn must map"):
        permutation_shapley(lambda m: torch.zeros(3), 3, 4)


# --------------------------------------------------------------------------------------------
# weights and the dominant modality


@pytest.mark.parametrize(
    ("phi", "expected"),
    [
        ([0.3, 0.1], [0.75, 0.25]),
        ([-0.1, 0.2, 0.2], [0.0, 0.5, 0.5]),
        ([0.0, 0.0], [0.5, 0.5]),
        ([-0.2, -0.1, -0.3], [1 / 3, 1 / 3, 1 / 3]),
        ([0.4], [1.0]),
    ],
)
def test_balance_weights(phi, expected):
    w = balance_weights(torch.tensor(phi, dtype=torch.float64))
    torch.testing.assert_close(w, torch.tensor(expected, dtype=torch.float64))
    assert math.isclose(float(w.sum()), 1.0)


def test_dominant_ties_go_to_the_lowest_index():
    assert dominant_index(torch.tensor([0.1, 0.3, 0.3])) == 1
    assert dominant_index(torch.tensor([0.0, 0.0])) == 0
    assert dominant_index(torch.tensor([float("nan"), -1.0])) == 1
