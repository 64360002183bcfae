"""Many runs at once: ``msam compare --jobs N`` (local processes) and ``--executor ray``.

Whatever runs the jobs, the table is the sequential one; a run that raises is a row of the
table and the others finish; what cannot run is refused before anything is written.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap

import pandas as pd
import pytest

from msam_core.cli import main
from msam_core.compare import compare
from msam_core.executors import start_workers, threads_per_job

compare_module = importlib.import_module("msam_core.compare")

TINY = {
    "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
    "batch_size": 32,
    "epochs": 1,
    "device": "cpu",
}
#: columns that differ between two trainings of the same run (wall-clock time) or place
UNTIMED = ("sec_per_step", "path")


def _tables(out):
    runs = pd.read_csv(out / "runs.csv")
    results = pd.read_csv(out / "results.csv")
    runs = runs[[c for c in runs.columns if not c.startswith(UNTIMED)]]
    results = results[[c for c in results.columns if not c.startswith(UNTIMED)]]
    return runs, results


def _same_tables(a, b) -> None:
    for left, right in zip(_tables(a), _tables(b), strict=True):
        pd.testing.assert_frame_equal(left, right, check_exact=False, rtol=1e-6, atol=1e-9)


@pytest.mark.slow
def test_two_local_processes_give_the_sequential_table(tmp_path):
    compare("synthetic", "joint,msam", 1, tmp_path / "seq", **TINY)
    compare("synthetic", "joint,msam", 1, tmp_path / "par", jobs=2, **TINY)
    _same_tables(tmp_path / "seq", tmp_path / "par")
    # and re-running in parallel reuses every finished run
    stamp = (tmp_path / "par" / "msam" / "seed0" / "iterations.jsonl").stat().st_mtime_ns
    compare("synthetic", "joint,msam", 1, tmp_path / "par", jobs=2, **TINY)
    assert (tmp_path / "par" / "msam" / "seed0" / "iterations.jsonl").stat().st_mtime_ns == stamp


@pytest.mark.slow
def test_workers_resolve_relative_paths_in_the_callers_directory(tmp_path, monkeypatch):
    # forked workers start in the fork server's directory, here started elsewhere first
    start_workers("local", 2, preload=["msam_core.compare"])
    monkeypatch.chdir(tmp_path)
    compare("synthetic", "joint", 1, "relative", jobs=2, **TINY)
    assert (tmp_path / "relative" / "alone" / "audio" / "seed0" / "summary.json").exists()


def test_a_failed_run_is_a_row_and_the_others_finish(tmp_path):
    # a settings error compare cannot see (it is refused before writing when the method is
    # built); holding out all 64 training samples is found by the run itself, on its data
    out = tmp_path / "cmp"
    spec = "gblending[gb_holdout=0.999]"
    table = compare("synthetic", f"joint,{spec}", 1, out, alone=False, **TINY)
    runs = pd.read_csv(out / "runs.csv")
    joint, bad = (runs.loc[runs["method"] == m].iloc[0] for m in ("joint", spec))
    assert joint["failed"] == 0 and joint["test_acc"] > 0
    assert bad["failed"] == 1 and "gb_holdout" in bad["error"]
    assert pd.isna(bad["test_acc"])
    assert table.set_index("method").loc[spec, "failed"] == 1
    assert f"| {spec} | 0 (1 failed) |" in (out / "results.md").read_text()


@pytest.mark.slow
def test_a_run_failing_in_a_worker_process_is_reported_by_the_cli(tmp_path, capsys):
    methods = "joint,gblending[gb_holdout=0.999]"  # the second fails in its run (see above)
    argv = ["compare", "--methods", methods, "--seeds", "1", "--out", str(tmp_path / "c")]
    argv += ["--epochs", "1", "--batch_size", "32", "--device", "cpu", "--no-alone"]
    argv += ["--dataset_options.n_train", "64", "--dataset_options.n_val", "32"]
    argv += ["--dataset_options.n_test", "32", "--jobs", "2"]
    assert main(argv) == 1
    captured = capsys.readouterr()
    assert "| joint | 1 |" in captured.out and "1 run(s) failed" in captured.err


def test_the_fork_server_ends_with_the_process_that_started_it():
    # Left alone, the server outlives its parent (it sees the end only after it, then unloads
    # torch) and holds the parent's stdout and stderr meanwhile, so `msam compare --jobs 2 |
    # tee log` waited for it.  Here the parent's exit handlers run and the server must then be
    # gone, ended by SIGTERM; without them it would wait for this process for ever (the
    # subprocess's timeout is only a guard against that hang).
    script = textwrap.dedent(
        """
        import atexit, os, signal
        from multiprocessing import forkserver
        from msam_core.executors import start_workers
        start_workers("local", 2)
        pid = forkserver._forkserver._forkserver_pid
        atexit._run_exitfuncs()
        _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300, check=True
    )
    assert done.stdout.strip() == "True", done.stderr


def test_threads_are_shared_out_between_jobs(monkeypatch):
    monkeypatch.setattr("msam_core.executors.available_cpus", lambda: 8)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert [threads_per_job(n) for n in (1, 2, 3, 8, 16)] == [8, 4, 2, 1, 1]
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's cap holds
    assert threads_per_job(2) == 1


def test_what_cannot_run_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    out = tmp_path / "cmp"
    with pytest.raises(ValueError, match="at least 1"):
        compare("synthetic", "joint", 1, out, jobs=0, **TINY)
    with pytest.raises(ValueError, match=r"^--gpus-per-run needs --executor ray"):
        compare("synthetic", "joint", 1, out, gpus_per_run=1, **TINY)
    with pytest.raises(ValueError, match=r"^--ray-address and --gpus-per-run need --executor"):
        compare("synthetic", "joint", 1, out, ray_address="x:1", gpus_per_run=1, **TINY)
    with pytest.raises(ValueError, match=r"no Ray cluster at '127\.0\.0\.1:9'"):
        compare("synthetic", "joint", 1, out, executor="ray", ray_address="127.0.0.1:9", **TINY)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(ValueError, match=r"pip install 'msam\[ray\]'"):
        compare("synthetic", "joint", 1, out, executor="ray", **TINY)
    assert not out.exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.raises(PermissionError, match="cannot write into the comparison folder"):
        compare("synthetic", "joint", 1, blocked / "cmp", **TINY)


@pytest.mark.slow
def test_ray_tasks_on_a_local_instance_give_the_sequential_table(tmp_path):
    import ray  # the ray extra, which make test installs

    compare("synthetic", "joint,msam", 1, tmp_path / "seq", **TINY)
    compare("synthetic", "joint,msam", 1, tmp_path / "ray", executor="ray", jobs=2, **TINY)
    assert not ray.is_initialized()  # the local instance it started is shut down
    _same_tables(tmp_path / "seq", tmp_path / "ray")
