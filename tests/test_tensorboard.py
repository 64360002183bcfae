"""``log_to: [tensorboard]`` (``msam train --tensorboard``): the run's scalars, read back with
TensorBoard's own reader, equal the run directory's records."""

from __future__ import annotations

import math
import warnings

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from msam_core import load_run, train
from msam_core.cli import main
from msam_core.sinks import IgnoredMaskWatch

SMALL = {"epochs": 2, "batch_size": 64, "dataset_options": {"n_train": 128, "n_val": 64}}


def _events(run_dir) -> EventAccumulator:
    files = list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1, files
    acc = EventAccumulator(str(files[0]), size_guidance={"scalars": 0})  # 0: keep every event
    acc.Reload()
    return acc


def test_tensorboard_scalars_equal_the_records(tmp_path):
    out = train(SMALL, out=tmp_path / "run", quiet=True, log_to=["tensorboard"])
    run = load_run(out)
    acc = _events(out)
    tags = set(acc.Tags()["scalars"])
    steps = run.iterations
    for key in ["loss", "sharpness", "lr", "phi/audio", "phi/visual", "weight/audio"]:
        assert key in tags, key
        events = acc.Scalars(key)
        assert [e.step for e in events] == list(steps["step"])
        # TensorBoard stores float32: equal to the record to float32 rounding
        for event, value in zip(events, steps[key], strict=True):
            assert math.isclose(event.value, value, rel_tol=1e-6, abs_tol=1e-7)
    epochs = run.epochs
    for split in ("train", "val", "test"):
        rows = epochs[epochs["split"] == split]
        for key in ("acc", "acc/audio", "acc/visual", "loss", "balance"):
            measured = rows[rows[key].notna()]  # balance is absent while no φ is positive
            events = acc.Scalars(f"{split}/{key}")
            assert [e.step for e in events] == list(measured["epoch"])
            for event, value in zip(events, measured[key], strict=True):
                assert math.isclose(event.value, value, rel_tol=1e-6, abs_tol=1e-7)
    assert run.config["log_to"] == ["tensorboard"]


def test_cli_tensorboard_flag(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--quiet", "--epochs", "1", "--tensorboard"]
    args += ["--dataset_options.n_train", "64", "--dataset_options.n_val", "32"]
    assert main(args) == 0
    assert "val/acc" in _events(out).Tags()["scalars"]
    # an unknown target is refused before anything is written
    bad = ["train", "--out", str(tmp_path / "bad"), "--log_to", "tensorbord"]
    assert main(bad) == 2
    assert "(did you mean 'tensorboard'?)" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_without_log_to_no_event_file_is_written(tmp_path):
    out = train({**SMALL, "epochs": 1}, out=tmp_path / "run", quiet=True)
    assert not (out / "tensorboard").exists()


def test_the_watch_warns_once_after_identical_phi_for_many_steps():
    watch = IgnoredMaskWatch(["audio", "visual"], steps=3)
    same = {"phi/audio": 0.0, "phi/visual": 0.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.log_iteration({"step": 1, **same})
        watch.log_iteration({"step": 2, **same})
        watch.log_iteration({"step": 3, "phi/audio": 0.1, "phi/visual": 0.0})  # resets
        watch.log_iteration({"step": 4, **same})
        watch.log_iteration({"step": 5, "loss": 1.0})  # φ not recorded: no evidence
        watch.log_iteration({"step": 6, **same})
    with pytest.warns(RuntimeWarning, match=r"identical \(0\) for 3 steps .* step 7"):
        watch.log_iteration({"step": 7, **same})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        watch.log_iteration({"step": 8, **same})  # once
