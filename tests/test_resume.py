"""Resume: a killed run continued from its last checkpoint equals the uninterrupted one."""

from __future__ import annotations

import pytest
import torch
from pandas.testing import assert_frame_equal

from msam_core.config import TrainConfig
from msam_core.record import load_run
from msam_core.rundir import load_checkpoint
from msam_core.train import train

SMALL = {"n_train": 192, "n_val": 48, "n_test": 48}
STEPS_PER_EPOCH = 6  # 192 / 32


def config(method: str, epochs: int) -> TrainConfig:
    # momentum and dropout: optimizer state and the global RNG both matter for equality
    return TrainConfig.from_dict(
        {
            "method": method,
            "epochs": epochs,
            "dataset_options": SMALL,
            "batch_size": 32,
            "device": "cpu",
            "momentum": 0.9,
            "model_options": {"dropout": 0.2},
            # probes every epoch: a 1-epoch run extended to 2 probes epoch 1 as its last
            "probe_every": 1,
        }
    )


def _params(path):
    return load_checkpoint(path / "checkpoints" / "last.pt")["model"]


def _records(frame):
    """Records without wall-clock timings, which differ between any two runs."""
    return frame[[c for c in frame.columns if not c.startswith("time/")]]


def _assert_same_run(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for key in pa:
        assert torch.equal(pa[key], pb[key]), key
    ra, rb = load_run(a), load_run(b)
    # exact equality (rtol=0, atol=0), NaN where both are NaN
    assert_frame_equal(_records(ra.iterations), _records(rb.iterations), rtol=0, atol=0)
    assert_frame_equal(_records(ra.epochs), _records(rb.epochs), rtol=0, atol=0)
    assert ra.summary["best"] == rb.summary["best"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """msam and joint, two epochs, uninterrupted."""
    root = tmp_path_factory.mktemp("reference")
    return {m: train(config(m, 2), out=root / m, quiet=True) for m in ("msam", "joint")}


@pytest.mark.parametrize("method", ["msam", "joint"])
def test_resume_after_a_finished_epoch_equals_the_uninterrupted_run(tmp_path, reference, method):
    path = train(config(method, 1), out=tmp_path / "run", quiet=True)
    train(out=path, resume=True, epochs=2, quiet=True)
    _assert_same_run(reference[method], path)
    assert load_run(path).summary["finished"] is True


@pytest.mark.parametrize("kill_at", [3, STEPS_PER_EPOCH + 3])  # mid epoch 1 / mid epoch 2
def test_resume_after_a_kill_mid_epoch_drops_and_redoes_the_lost_steps(
    tmp_path, reference, kill_at
):

    def killed(record):
        return record.get("step") != kill_at

    path = train(config("msam", 2), out=tmp_path / "run", callback=killed, quiet=True)
    with open(path / "iterations.jsonl", "a") as fh:
        fh.write('{"step": 10, "epoch": 2, "lo')  # and a line cut off mid-write
    with pytest.warns(RuntimeWarning, match=f"line {kill_at + 1}"):
        assert load_run(path).summary["finished"] is False

    train(out=path, resume=True, quiet=True)
    _assert_same_run(reference["msam"], path)
    steps = load_run(path).iterations["step"].tolist()
    assert steps == list(range(1, 2 * STEPS_PER_EPOCH + 1))  # none lost, none duplicated


def test_resume_refuses_to_change_what_makes_the_run(tmp_path):
    path = train(config("joint", 1), out=tmp_path / "run", quiet=True)
    with pytest.raises(ValueError, match=r"cannot change \['lr'\].*resumable keys"):
        train(out=path, resume=True, lr=0.5, quiet=True)
    with pytest.raises(ValueError, match=r"cannot change \['dataset_options'\]"):
        train(out=path, resume=True, **{"dataset_options.n_train": 64}, quiet=True)
    # the original command again, with --resume and more epochs: nothing really changes
    original = config("joint", 1).to_dict()
    train(out=path, resume=True, **{**original, "epochs": 2}, quiet=True)
    assert load_run(path).summary["epochs_done"] == 2


def test_resume_needs_an_existing_run(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run there"):
        train(out=tmp_path / "missing", resume=True, quiet=True)
