"""load_trained: a run's model rebuilt from its directory scores what the run recorded."""

from __future__ import annotations

import pytest
import torch

from msam_core import TrainConfig, evaluate_split, load_trained, train
from msam_core.models import build_model
from msam_core.record import load_run
from msam_core.train import build_dataset

SMALL = {"n_train": 192, "n_val": 64, "n_test": 64}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    config = TrainConfig.from_dict(
        {"dataset_options": SMALL, "batch_size": 32, "epochs": 3, "device": "cpu"}
    )
    return train(config, out=tmp_path_factory.mktemp("trained") / "run", quiet=True)


def _recorded(run_dir, epoch: int, split: str = "val") -> dict:
    frame = load_run(run_dir).epochs
    return frame[(frame["epoch"] == epoch) & (frame["split"] == split)].iloc[0].to_dict()


@pytest.mark.parametrize("which", ["best", "last", 1, "2"])
def test_rebuilt_model_scores_what_the_run_recorded(run_dir, which):
    trained = load_trained(run_dir, which)
    summary = load_run(run_dir).summary
    expected_epoch = {"best": summary["best_epoch"], "last": 3, 1: 1, "2": 2}[which]
    assert trained.epoch == expected_epoch
    assert trained.step == 6 * expected_epoch  # 192 samples / batch 32
    assert not trained.model.training
    result = evaluate_split(trained.model, trained.dataset.val)
    recorded = _recorded(run_dir, expected_epoch)
    assert result["acc"] == recorded["acc"]
    assert result["loss"] == pytest.approx(recorded["loss"], rel=1e-6)
    for m in trained.dataset.modality_names:
        assert result[f"acc/{m}"] == recorded[f"acc/{m}"]


def test_accepts_a_run_object_and_a_device(run_dir):
    trained = load_trained(load_run(run_dir), "last", device=torch.device("cpu"))
    assert (
        trained.checkpoint.name == "last.pt" and trained.step == load_run(run_dir).summary["steps"]
    )
    assert next(trained.model.parameters()).device.type == "cpu"


def test_bad_requests_say_what_the_run_has(run_dir, tmp_path):
    with pytest.raises(
        ValueError, match=r"no checkpoint for epoch 9; available epochs: \[0, 1, 2, 3\]"
    ):
        load_trained(run_dir, 9)
    with pytest.raises(ValueError, match=r"one of \['best', 'last'\] or an epoch number"):
        load_trained(run_dir, "final")
    with pytest.raises(FileNotFoundError, match="no run directory"):
        load_trained(tmp_path / "missing")
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/best\.pt"):
        load_trained(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match=r"no checkpoints/epoch_XXXX\.pt"):
        load_trained(tmp_path / "empty", 0)


def test_a_run_with_its_own_model_is_named(tmp_path):
    config = TrainConfig.from_dict(
        {"dataset_options": SMALL, "batch_size": 64, "epochs": 1, "device": "cpu"}
    )
    dataset = build_dataset(config)
    own = build_model(dataset.modalities, dataset.num_classes, feature_dim=5)  # not the config's
    path = train(config, out=tmp_path / "run", data=dataset, model=own, quiet=True)
    with pytest.raises(ValueError, match=r"trained on your own data .* load_trained\(run, data="):
        load_trained(path, "last")
    with pytest.raises(
        ValueError, match=r"do not fit the model its config builds.*load_trained\(run, model="
    ):
        load_trained(path, "last", data=dataset)
    # given the same architecture and data again, the run's model comes back
    fresh = build_model(dataset.modalities, dataset.num_classes, feature_dim=5)
    trained = load_trained(path, "last", model=fresh, data=dataset)
    assert trained.model is fresh and trained.dataset is dataset and trained.epoch == 1
    saved = torch.load(path / "checkpoints" / "best.pt", weights_only=True)["model"]  # = last
    assert all(torch.equal(v, saved[k]) for k, v in fresh.state_dict().items())
