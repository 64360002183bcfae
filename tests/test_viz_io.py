"""msam_viz.load_run / load_runs: one parser (msam_core's), many runs, clear errors."""

from __future__ import annotations

import json

import pytest
import viz_fixtures as vf

import msam_core.record
import msam_viz
from msam_viz import Run, load_run, load_runs


def test_load_run_is_msam_core_reader_not_a_second_parser() -> None:
    assert msam_viz.load_run is msam_core.record.load_run
    assert msam_viz.Run is msam_core.record.Run


def test_load_run_reads_fixture_records(tmp_path) -> None:
    path = vf.write_run(tmp_path, "a", epochs=2, steps_per_epoch=10, every=5)
    run = load_run(path)
    assert isinstance(run, Run)
    assert run.modalities == ["audio", "visual"]
    assert list(run.iterations["step"]) == list(range(20))
    expected = [vf.phi(s, 20, ("audio", "visual"))["audio"] for s in range(20)]
    assert run.iterations["phi/audio"].tolist() == pytest.approx(expected)
    # Sparse records are absent (NaN) between measurements, never zeros.
    eig = run.iterations["hessian/top_eig"]
    assert eig.notna().tolist() == [s % 5 == 0 for s in range(20)]
    assert set(run.epochs["split"]) == {"train", "val", "test"}


def test_run_killed_mid_line_loads_complete_records_with_warning(tmp_path) -> None:
    path = vf.write_run(tmp_path, "killed", epochs=1, steps_per_epoch=8, truncate_last_line=True)
    with pytest.warns(RuntimeWarning, match="skipping unreadable last line"):
        run = load_run(path)
    assert list(run.iterations["step"]) == list(range(8))


def test_load_runs_glob_folder_and_list_keep_order_without_duplicates(tmp_path) -> None:
    a = vf.write_run(tmp_path, "msam_s0", epochs=1, steps_per_epoch=4, with_landscape=False)
    b = vf.write_run(tmp_path, "msam_s1", seed=1, epochs=1, steps_per_epoch=4)
    c = vf.write_sparse_run(tmp_path, "joint_s0")
    (tmp_path / "notes").mkdir()  # a non-run folder beside the runs is ignored

    by_glob = load_runs(str(tmp_path / "msam_*"))
    assert [r.name for r in by_glob] == ["msam_s0", "msam_s1"]

    by_folder = load_runs(tmp_path)
    assert [r.name for r in by_folder] == ["joint_s0", "msam_s0", "msam_s1"]

    mixed = load_runs([b, a, str(tmp_path / "msam_*"), c])
    assert [r.name for r in mixed] == ["msam_s1", "msam_s0", "joint_s0"]
    assert mixed[0].path == b  # the path as given, not a rewritten one


def test_load_runs_finds_runs_at_any_depth_as_compare_writes_them(tmp_path) -> None:
    for method in ("joint", "msam"):
        for seed in (0, 1):
            vf.write_run(tmp_path / method, f"seed{seed}", seed=seed, epochs=1, steps_per_epoch=2)
    (tmp_path / "results.csv").write_text("method\n")  # compare's tables beside the runs
    runs = load_runs(tmp_path)
    assert [str(r.path.relative_to(tmp_path)) for r in runs] == [
        "joint/seed0",
        "joint/seed1",
        "msam/seed0",
        "msam/seed1",
    ]


def test_nonexistent_run_directory_is_a_clear_error(tmp_path) -> None:
    missing = tmp_path / "no_such_run"
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_run(missing)
    with pytest.raises(FileNotFoundError, match="no_such_run"):
        load_runs([missing])


def test_empty_run_directory_is_a_clear_error(tmp_path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="not an msam run directory"):
        load_run(empty)
    with pytest.raises(ValueError, match="not an msam run directory"):
        load_runs(empty)


def test_glob_without_runs_and_empty_list_are_clear_errors(tmp_path) -> None:
    (tmp_path / "x_not_a_run").mkdir()
    with pytest.raises(FileNotFoundError, match="matches no run directory"):
        load_runs(str(tmp_path / "x_*"))
    with pytest.raises(ValueError, match="no run paths given"):
        load_runs([])


def test_run_just_started_has_config_and_no_records(tmp_path) -> None:
    path = tmp_path / "fresh"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"method": "msam", "seed": 3}))
    run = load_run(path)
    assert run.iterations.empty and run.epochs.empty
    assert run.method == "msam"
