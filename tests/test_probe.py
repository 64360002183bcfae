"""Linear probes of the encoders: scikit-learn's logistic regression, in the loop, not early."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression

from msam_core.config import TrainConfig
from msam_core.probe import fit_linear_probe, probe_accuracies
from msam_core.record import load_run
from msam_core.train import train


def _clusters(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Overlapping Gaussian clusters of 4 classes in 12 dimensions: no probe gets them all."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 12, generator=torch.Generator().manual_seed(99), dtype=torch.float64)
    y = torch.arange(n) % 4
    x = centres[y] + 1.3 * torch.randn(n, 12, generator=gen, dtype=torch.float64)
    return x, y


def test_the_probe_is_scikit_learns_logistic_regression():
    x_tr, y_tr = _clusters(600, 1)
    x_te, y_te = _clusters(2000, 2)
    features = {"train": {"m": x_tr}, "test": {"m": x_te}}
    ours = probe_accuracies(features, {"train": y_tr, "test": y_te}, 4)["test"]["probe/m"]
    mean, sd = x_tr.mean(0), x_tr.std(0)
    scaled_tr, scaled_te = ((x_tr - mean) / sd).numpy(), ((x_te - mean) / sd).numpy()
    reference = LogisticRegression(max_iter=5000, tol=1e-10).fit(scaled_tr, y_tr.numpy())
    assert ours == pytest.approx(reference.score(scaled_te, y_te.numpy()), abs=0.01)
    assert 0.5 < ours < 0.99  # a test that can tell probes apart
    # the same minimiser, not only the same accuracy (sklearn centres the multinomial logits)
    weight, _ = fit_linear_probe(torch.as_tensor(scaled_tr), y_tr, 4)
    ours_w = (weight - weight.mean(1, keepdim=True)).numpy().T
    theirs_w = reference.coef_ - reference.coef_.mean(0, keepdims=True)
    np.testing.assert_allclose(ours_w, theirs_w, atol=2e-3)


def test_the_probe_is_deterministic():
    x, y = _clusters(300, 3)
    a = fit_linear_probe(x, y, 4)
    b = fit_linear_probe(x, y, 4)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def _config(**changes) -> TrainConfig:
    base = {
        "method": "joint",
        "epochs": 2,
        "batch_size": 32,
        "device": "cpu",
        "dataset_options": {"n_train": 128, "n_val": 64, "n_test": 64},
    }
    return TrainConfig.from_dict({**base, **changes})


def test_a_late_fusion_run_records_probes_at_the_best_and_last_epochs(tmp_path):
    path = train(_config(), out=tmp_path / "run", quiet=True)
    summary = json.loads((path / "summary.json").read_text())
    for split in ("val", "test"):
        for m in ("audio", "visual"):
            assert 0.0 <= summary["best"][split][f"probe/{m}"] <= 1.0
    epochs = load_run(path).epochs
    last = epochs[epochs["epoch"] == 2]
    assert last["probe/audio"].notna().all()
    assert epochs.loc[epochs["epoch"] < 2, "probe/audio"].isna().all()


def test_probe_every_k_epochs_and_off(tmp_path):
    epochs = load_run(train(_config(probe_every=1), out=tmp_path / "k", quiet=True)).epochs
    assert epochs.loc[epochs["epoch"] >= 1, "probe/visual"].notna().all()
    path = train(_config(probe=False), out=tmp_path / "off", quiet=True)
    assert "probe/visual" not in load_run(path).epochs
    assert "probe/visual" not in json.loads((path / "summary.json").read_text())["best"]["test"]


def test_early_fusion_has_no_probe(tmp_path):
    path = train(_config(fusion="early"), out=tmp_path / "early", quiet=True)
    assert "probe/audio" not in json.loads((path / "summary.json").read_text())["best"]["test"]
    assert "probe/audio" not in load_run(path).epochs
