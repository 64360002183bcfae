"""Bayes limits of the synthetic set (closed form, caps, a fitted classifier) and its presets."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

from msam_core.config import TrainConfig
from msam_core.data import load_synthetic
from msam_core.data.bayes import bayes_accuracy
from msam_core.data.synthetic import PRESETS
from msam_core.train import train


def _phi(x: float) -> float:
    return 0.5 * (1.0 + math.erf(x / math.sqrt(2.0)))


@pytest.mark.parametrize(("strength", "noise"), [(1.5, 1.2), (0.6, 1.0), (3.0, 2.5)])
def test_two_classes_one_gaussian_modality_match_the_closed_form(strength, noise):
    # prototypes s·b0, s·b1 with orthonormal b: distance s·sqrt(2); the Bayes rule splits it
    # in half, so accuracy = Phi(s·sqrt(2) / (2σ)) = Phi(s / (σ·sqrt(2)))
    data = load_synthetic(
        n_classes=2, modalities=1, private_pairs=0, strengths=strength, noise=noise, n_train=8
    )
    limits = data.info["bayes_limits"]
    exact = _phi(strength / (noise * math.sqrt(2.0)))
    assert limits["audio"]["acc"] == pytest.approx(exact, abs=4 * limits["audio"]["se"])
    assert limits["audio"]["se"] < 0.002
    assert limits["all"] == limits["audio"]


def test_a_modality_alone_is_capped_by_the_pairs_it_cannot_tell_apart():
    # 8 classes, one private pair per modality: with huge strengths a modality alone gets
    # every class but must guess on the other's pair (7/8); together they get all
    visible = np.array([[0, 1, 2, 2, 4, 5, 6, 7], [0, 0, 2, 3, 4, 5, 6, 7]])
    acc, se = bayes_accuracy(visible[:1], [60.0], [1.0], n_samples=20_000)
    # how many draws fall on the guessed pair is random: within the reported s.e.
    assert acc == pytest.approx(7 / 8, abs=4 * se) and se < 3e-3
    assert bayes_accuracy(visible, [60.0, 60.0], [1.0, 1.0], n_samples=20_000)[0] == pytest.approx(
        1.0
    )


def test_the_same_seed_gives_the_same_estimate_and_another_a_close_one():
    visible = np.array([[0, 1, 2, 2]])
    a = bayes_accuracy(visible, [1.0], [1.0], n_samples=50_000, seed=1)
    assert bayes_accuracy(visible, [1.0], [1.0], n_samples=50_000, seed=1) == a
    b = bayes_accuracy(visible, [1.0], [1.0], n_samples=50_000, seed=2)
    assert a != b and abs(a[0] - b[0]) < 5 * math.hypot(a[1], b[1])


def test_a_classifier_fitted_on_plenty_of_data_reaches_but_does_not_beat_the_limit():
    # LDA is the Bayes rule for Gaussians sharing one covariance: on a large sample it must come
    # within sampling error of the limit, from below up to that error
    data = load_synthetic(n_train=20_000, n_val=8, n_test=20_000, dims=16, seed=4)
    limits = data.info["bayes_limits"]
    for m in ("audio", "visual"):
        x_tr, y_tr = data.train.inputs[m].numpy(), data.train.targets.numpy()
        x_te, y_te = data.test.inputs[m].numpy(), data.test.targets.numpy()
        acc = LinearDiscriminantAnalysis().fit(x_tr, y_tr).score(x_te, y_te)
        sampling = math.sqrt(limits[m]["acc"] * (1 - limits[m]["acc"]) / len(y_te))
        assert acc == pytest.approx(limits[m]["acc"], abs=4 * sampling + 0.01), m
    assert limits["all"]["acc"] > max(limits["audio"]["acc"], limits["visual"]["acc"])


def test_presets_set_their_options_and_given_options_win():
    headroom = load_synthetic(preset="headroom", n_train=16, n_val=8, n_test=8)
    assert headroom.info["strengths"] == {"audio": 8.0, "visual": 3.0}
    assert headroom.info["preset"] == "headroom"
    room = load_synthetic(preset="fused_room", n_val=8, n_test=8)
    assert len(room.train) == PRESETS["fused_room"]["n_train"]
    assert room.train.inputs["audio"].shape[1] == PRESETS["fused_room"]["dims"]
    mine = load_synthetic(preset="headroom", strengths=[5.0, 1.0], n_train=16, n_val=8, n_test=8)
    assert mine.info["strengths"] == {"audio": 5.0, "visual": 1.0}
    default = load_synthetic(n_train=16, n_val=8, n_test=8)
    same = load_synthetic(preset="default", n_train=16, n_val=8, n_test=8)
    assert torch.equal(default.test.inputs["visual"], same.test.inputs["visual"])


def test_an_unknown_preset_lists_the_presets():
    with pytest.raises(ValueError, match=r"no preset 'huge'.*'default', 'headroom', 'fused_room'"):
        load_synthetic(preset="huge")


def test_the_run_summary_stores_the_limits(tmp_path):
    cfg = TrainConfig.from_dict(
        {
            "method": "joint",
            "epochs": 1,
            "batch_size": 32,
            "device": "cpu",
            "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
        }
    )
    run = train(cfg, out=tmp_path / "run", quiet=True)
    summary = json.loads((run / "summary.json").read_text())
    assert set(summary["bayes_limits"]) == {"audio", "visual", "all"}
    assert 0.5 < summary["bayes_limits"]["visual"]["acc"] < summary["bayes_limits"]["all"]["acc"]
