"""The run directory: strict JSON lines, crash tolerance, refusal to clobber, tidy loading."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from msam_core.record import RunWriter, load_run, read_jsonl


def _write_run(path, n_steps=3):
    with RunWriter(path) as writer:
        writer.write_config({"method": "msam", "seed": 7}, run_info={"modalities": ["a", "b"]})
        for step in range(1, n_steps + 1):
            writer.log_iteration({"step": step, "epoch": 0, "loss": 1.0 / step, "phi/a": 0.1})
        writer.log_epoch({"epoch": 0, "split": "val", "acc": 0.5, "acc/a": 0.4})
    return path


def test_records_round_trip_and_config_has_versions(tmp_path):
    run = load_run(_write_run(tmp_path / "run"))
    assert list(run.iterations["step"]) == [1, 2, 3]
    assert run.iterations["loss"].tolist() == pytest.approx([1.0, 0.5, 1 / 3])
    assert run.epochs.loc[0, "acc/a"] == 0.4
    assert run.config["seed"] == 7 and run.method == "msam" and run.seed == 7
    assert set(run.config["run"]["versions"]) == {"python", "torch", "numpy", "msam"}
    assert run.modalities == ["a", "b"]
    assert run.name == "run"
    assert (run.path / "checkpoints").is_dir() and (run.path / "landscapes").is_dir()


def test_non_finite_is_null_and_missing_is_absent(tmp_path):
    path = tmp_path / "run"
    with RunWriter(path) as writer:
        writer.write_config({})
        writer.log_iteration({"step": 1, "loss": float("nan"), "sharpness": float("inf")})
        writer.log_iteration({"step": 2, "loss": 0.5, "phi/a": np.float32(0.25)})
    lines = (path / "iterations.jsonl").read_text().splitlines()
    first, second = (json.loads(line) for line in lines)  # strict JSON: parses
    assert first == {"step": 1, "loss": None, "sharpness": None}
    assert "phi/a" not in first and second["phi/a"] == 0.25
    frame = load_run(path).iterations
    assert math.isnan(frame.loc[0, "loss"]) and frame["loss"].dtype == float


def test_truncated_last_line_is_skipped_with_a_warning(tmp_path):
    path = _write_run(tmp_path / "run")
    with open(path / "iterations.jsonl", "a") as fh:
        fh.write('{"step": 4, "epoch": 0, "lo')  # killed mid-write
    with pytest.warns(RuntimeWarning, match=r"iterations\.jsonl.*line 4"):
        run = load_run(path)
    assert list(run.iterations["step"]) == [1, 2, 3]


def test_reads_a_run_still_being_written(tmp_path):
    path = tmp_path / "run"
    writer = RunWriter(path)
    writer.write_config({"method": "joint"})
    writer.log_iteration({"step": 1, "loss": 2.0})
    assert len(load_run(path).iterations) == 1  # flushed, visible before close
    writer.log_iteration({"step": 2, "loss": 1.0})
    assert len(load_run(path).iterations) == 2
    writer.close()


def test_existing_run_is_refused_unless_resume_or_overwrite(tmp_path):
    path = _write_run(tmp_path / "run")
    before = (path / "iterations.jsonl").read_text()
    with pytest.raises(FileExistsError, match=r"--resume.*--overwrite"):
        RunWriter(path)
    assert (path / "iterations.jsonl").read_text() == before  # nothing lost
    (path / "checkpoints").mkdir(exist_ok=True)
    leftover = path / "checkpoints" / ".last.pt.abc123.tmp"  # a kill during torch.save
    leftover.write_bytes(b"half")
    with RunWriter(path, resume=True) as writer:
        writer.log_iteration({"step": 4})
    assert len(read_jsonl(path / "iterations.jsonl")) == 4
    assert not leftover.exists()
    RunWriter(path, overwrite=True).close()
    assert read_jsonl(path / "iterations.jsonl") == []


def test_overwrite_refuses_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="not an msam run"):
        RunWriter(tmp_path, overwrite=True)
    assert (tmp_path / "notes.txt").read_text() == "precious"


def test_overwrite_goes_by_msam_s_own_files_not_any_config_json(tmp_path):
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "config.json").write_text('{"editor": "vim"}')  # someone else's config.json
    (project / "src" / "thesis.tex").write_text("precious")
    with pytest.raises(FileExistsError, match="not an msam run"):
        RunWriter(project, overwrite=True)
    assert (project / "src" / "thesis.tex").read_text() == "precious"
    # a real run that also holds the user's notes: the run is replaced, the notes stay
    path = _write_run(tmp_path / "run")
    (path / "notes.txt").write_text("keep me")
    RunWriter(path, overwrite=True).close()
    assert read_jsonl(path / "iterations.jsonl") == []
    assert not (path / "config.json").exists() and (path / "notes.txt").read_text() == "keep me"


def test_written_files_have_the_mode_plain_files_get(tmp_path):
    import os
    import stat

    from msam_core.config import TrainConfig
    from msam_core.train import train

    mask = os.umask(0)
    os.umask(mask)
    config = TrainConfig(
        epochs=1,
        dataset_options={"n_train": 64, "n_val": 32, "n_test": 32},
        landscape_epochs=[1],
        landscape_options={"steps": 3, "dims": 1},
    )
    path = train(config, out=tmp_path / "run", quiet=True)
    train(out=path, resume=True, epochs=2, quiet=True)  # rewrites the logs through temp files
    expected = 0o666 & ~mask
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"config.json", "summary.json", "last.pt", "best.pt"}
    assert [p.suffix for p in files].count(".npz") == 1  # landscapes too (they were 0600)
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in files} == {
        p.name: expected for p in files
    }


def test_unwritable_location_is_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=r"choose .*--out"):
        RunWriter(blocker / "run")
    with pytest.raises(NotADirectoryError, match="is a file"):
        RunWriter(blocker)


def test_truncate_after_drops_records_past_a_checkpoint(tmp_path):
    path = _write_run(tmp_path / "run", n_steps=5)
    with RunWriter(path, resume=True) as writer:
        writer.log_epoch({"epoch": 1, "split": "val", "acc": 0.6})
        writer.truncate_after(step=2, epoch=0)
        writer.log_iteration({"step": 3, "epoch": 1})
    run = load_run(path)
    assert list(run.iterations["step"]) == [1, 2, 3]
    assert list(run.epochs["epoch"]) == [0]


def test_load_run_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match="no run directory"):
        load_run(tmp_path / "missing")
    with pytest.raises(ValueError, match="not an msam run directory"):
        load_run(tmp_path)


def test_landscapes_and_checkpoints_are_listed(tmp_path):
    path = _write_run(tmp_path / "run")
    np.savez(path / "landscapes" / "epoch_0001.npz", alphas=np.arange(3.0), loss=np.ones(3))
    (path / "checkpoints" / "epoch_0001.pt").write_bytes(b"")
    run = load_run(path)
    assert [p.name for p in run.checkpoints] == ["epoch_0001.pt"]
    assert [p.name for p in run.landscapes] == ["epoch_0001.npz"]
