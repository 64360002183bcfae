"""Derived values written once (msam_core.derived): shares, best epoch, run path, SAM family."""

from __future__ import annotations

import math

import pytest
import torch

from msam_core.config import TrainConfig
from msam_core.data.base import ModalitySpec
from msam_core.derived import SAM_FAMILY, best_epoch, default_run_dir, selection_key, shares
from msam_core.methods import build_method, method_names
from msam_core.models import build_model
from msam_core.shapley import balance_weights


@pytest.mark.parametrize(
    ("phi", "expected"),
    [
        ([0.3, 0.1], [0.75, 0.25]),
        ([0.3, -0.2, 0.1], [0.75, 0.0, 0.25]),
        ([0.0, 0.0], [0.5, 0.5]),  # nothing positive: equal shares
        ([-0.1, -0.3, 0.0], [1 / 3] * 3),
        ([math.nan, 0.2], [0.0, 1.0]),  # a missing φ counts as 0
    ],
)
def test_shares_and_the_engines_weights_agree(phi, expected):
    assert shares(phi) == pytest.approx(expected)
    finite = [0.0 if math.isnan(v) else v for v in phi]
    weights = balance_weights(torch.tensor(finite, dtype=torch.float64))
    assert weights.tolist() == pytest.approx(shares(finite))


def test_shares_of_nothing_measured_are_missing_not_equal():
    assert all(math.isnan(w) for w in shares([math.nan, math.nan]))


def test_best_epoch_is_the_rule_training_applies():
    records = [
        {"epoch": 0, "acc": 0.99, "loss": 0.1},  # the initial weights are never selected
        {"epoch": 1, "acc": 0.8, "loss": 0.5},
        {"epoch": 2, "acc": 0.9, "loss": 0.4},
        {"epoch": 3, "acc": 0.9, "loss": 0.3},  # same accuracy, lower loss: wins
        {"epoch": 4, "acc": 0.9, "loss": 0.3},  # a tie: the earlier epoch stays
        {"epoch": 5, "acc": math.nan, "loss": 0.0},
    ]
    assert best_epoch(records) == 3
    # the loop keeps an epoch when its key is strictly greater: the same choice
    kept, key = None, None
    for r in records:
        if r["epoch"] > 0 and (key is None or selection_key(r) > key):
            kept, key = r["epoch"], selection_key(r)
    assert kept == 3
    assert best_epoch([{"epoch": 1, "acc": None}]) is None


def test_default_run_dir():
    assert str(default_run_dir("msam", "synthetic", 3)) == "runs/msam_synthetic_seed3"


def test_sam_family_is_the_methods_that_measure_sharpness():
    specs = [ModalitySpec("a", "vector", (3,)), ModalitySpec("b", "vector", (3,))]
    model = build_model(specs, 3, fusion="concat")
    builtin = {"joint", "sam", "asam", "msam", "ogm_ge", "agm"}
    for name in sorted(builtin & set(method_names())):
        method = build_method(name, model, TrainConfig(method=name))
        assert method.measures_sharpness == (name in SAM_FAMILY), name
