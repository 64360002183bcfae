"""``msam train --nproc 2`` (torch's launcher, gloo on the CPU) is the one-process run, and a
run that loses a rank continues from its checkpoint, by hand or by ``torchrun --max-restarts``.

Kept small for a 2-core machine: 2 ranks, a tiny model, 3 steps per epoch, no dropout (each
rank draws its own dropout masks, so only dropout-free runs can match across world sizes).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch

from msam_core.rundir import load_checkpoint
from msam_core.train import train

pytestmark = pytest.mark.slow

EPOCHS = 4
OPTIONS = [
    "--device", "cpu", "--epochs", str(EPOCHS), "--batch_size", "40", "--quiet",
    "--dataset_options.n_train", "96", "--dataset_options.n_val", "32",
    "--dataset_options.n_test", "32", "--model_options.dropout", "0",
]  # fmt: skip
CONFIG = {
    "device": "cpu",
    "epochs": EPOCHS,
    "batch_size": 40,  # 40 + 40 + 16: ranks take 20/20, then 8/8
    "dataset_options": {"n_train": 96, "n_val": 32, "n_test": 32},
    "model_options": {"dropout": 0.0},
}
TIMEOUT = 600  # generous: other processes load this machine


def _env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    path = os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}


def _msam(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    launcher = _start([sys.executable, "-m", "msam_core", "train", *args])
    with _ended(launcher):
        stdout, stderr = launcher.communicate(timeout=TIMEOUT)
    done = subprocess.CompletedProcess(launcher.args, launcher.returncode, stdout, stderr)
    if check:
        assert done.returncode == 0, done.stderr[-3000:]
    return done


def _start(command: list[str]) -> subprocess.Popen:
    """The launcher in a session of its own, so its ranks can be ended with it."""
    return subprocess.Popen(
        command,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@contextlib.contextmanager
def _ended(launcher: subprocess.Popen):
    """Whatever happens in the block, no rank outlives the test (a failed test left a hung
    launcher and its ranks behind once)."""
    try:
        yield launcher
    finally:
        if launcher.poll() is None:
            os.killpg(launcher.pid, signal.SIGKILL)
            launcher.communicate()


def _kill_rank_after_first_epoch(launcher: subprocess.Popen, run: Path, rank: int = 1) -> None:
    """SIGKILL rank ``rank`` once epoch 1's checkpoint is on disk (mid-run, not at its end)."""
    deadline = time.monotonic() + TIMEOUT
    while not (run / "checkpoints" / "epoch_0001.pt").is_file():
        assert launcher.poll() is None, launcher.communicate()[1][-3000:]
        assert time.monotonic() < deadline, "the run never wrote its first checkpoint"
        time.sleep(0.05)
    for child in psutil.Process(launcher.pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "msam_core" in child.cmdline():
                child.kill()
                return
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    raise AssertionError(f"no rank {rank} process found under the launcher")


def _records(run: Path, name: str) -> list[dict]:
    records = [json.loads(line) for line in (run / name).read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def _close(expected: list[dict], got: list[dict]) -> None:
    assert len(expected) == len(got)
    for a, b in zip(expected, got, strict=True):
        assert a.keys() == b.keys() and a.get("dominant") == b.get("dominant")
        for key, value in a.items():
            if isinstance(value, float):
                assert b[key] == pytest.approx(value, abs=1e-5), key


def _params(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "last.pt")["model"]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ddp") / "two"
    done = _msam("--nproc", "2", "--out", str(out), *OPTIONS)
    assert done.stdout.count("run written to") == 1  # rank 0 alone speaks and writes
    return out


def test_two_processes_are_the_one_process_run(tmp_path, two_process_run):
    one = train(CONFIG, out=tmp_path / "one", quiet=True)
    config = json.loads((two_process_run / "config.json").read_text())
    assert config["run"]["world_size"] == 2
    for key, value in _params(one).items():
        torch.testing.assert_close(_params(two_process_run)[key], value, rtol=0, atol=1e-4)
    assert len(_records(one, "iterations.jsonl")) == EPOCHS * 3
    for name in ("iterations.jsonl", "epochs.jsonl"):  # evaluation sharded, then reduced
        _close(_records(one, name), _records(two_process_run, name))


def test_a_killed_rank_is_named_and_resume_is_bit_for_bit(tmp_path, two_process_run):
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "msam_core", "train", "--nproc", "2", "--out", str(out)]
    with _ended(_start([*command, *OPTIONS])) as launcher:
        _kill_rank_after_first_epoch(launcher, out)
        _, stderr = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 1
    assert "rank 1 of 2 stopped (killed by SIGKILL)" in stderr
    assert f"msam train --resume {out} --nproc 2" in stderr
    assert not json.loads((out / "summary.json").read_text())["finished"]
    _msam("--resume", str(out), "--nproc", "2", "--quiet")
    for key, value in _params(two_process_run).items():
        assert torch.equal(_params(out)[key], value), key
    assert _records(out, "iterations.jsonl") == _records(two_process_run, "iterations.jsonl")


def test_sigterm_to_the_launcher_ends_every_rank_and_rank_zero_says_how_to_resume(tmp_path):
    out = tmp_path / "stopped"
    command = [sys.executable, "-m", "msam_core", "train", "--nproc", "2", "--out", str(out)]
    with _ended(_start([*command, *OPTIONS, "--epochs", "500"])) as launcher:
        deadline = time.monotonic() + TIMEOUT
        while not (out / "checkpoints" / "epoch_0001.pt").is_file():
            assert launcher.poll() is None and time.monotonic() < deadline
            time.sleep(0.05)
        # the launcher holds the run's writer lock for its ranks: a second launch is refused
        # before its own ranks start, however soon after the first it comes
        second = _msam("--resume", str(out), "--nproc", "2", "--quiet", check=False)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "(training on 2 processes)" in second.stderr, second.stderr[-2000:]
        launcher.send_signal(signal.SIGTERM)
        _, stderr = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 128 + signal.SIGTERM, stderr[-3000:]
    assert stderr.count("stopped by SIGTERM at step") == 1  # rank 0 alone, not once per rank
    assert f"msam train --resume {out} --nproc 2" in stderr and "Traceback" not in stderr
    assert "SIGTERM ended all 2 ranks" in stderr
    assert json.loads((out / "summary.json").read_text())["stopped"].startswith("interrupted")


def test_torchrun_max_restarts_continues_from_the_checkpoint(tmp_path, two_process_run):
    out = tmp_path / "restarted"
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    torchrun += ["--nproc_per_node", "2", "--max-restarts", "1", "-m", "msam_core", "train"]
    with _ended(_start([*torchrun, "--out", str(out), *OPTIONS])) as launcher:
        _kill_rank_after_first_epoch(launcher, out)
        _, stderr = launcher.communicate(timeout=TIMEOUT)
    assert launcher.returncode == 0, stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["finished"]
    for key, value in _params(two_process_run).items():
        assert torch.equal(_params(out)[key], value), key
    assert _records(out, "iterations.jsonl") == _records(two_process_run, "iterations.jsonl")


def test_bad_process_counts_are_refused_before_anything_is_written(tmp_path):
    out = tmp_path / "never"
    done = _msam("--nproc", "4096", "--out", str(out), *OPTIONS, check=False)
    assert done.returncode == 2 and "--nproc 4096 but this machine has" in done.stderr
    done = _msam("--nproc", "2", "--out", str(out), *OPTIONS, "--batch_size", "1", check=False)
    assert done.returncode == 2 and "exceeds batch_size 1" in done.stderr
    assert not out.exists()
    afile = tmp_path / "afile"
    afile.write_text("not a run")
    for where, said in ((afile, "exists and is a file"), (afile / "run", "is a file")):
        done = _msam("--nproc", "2", "--out", str(where), *OPTIONS, check=False)
        assert done.returncode == 2 and said in done.stderr, done.stderr[-2000:]
        assert "rank" not in done.stderr  # refused before any rank started
    # a lock file left by a killed process is not a run: the folder is still free to use
    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / ".msam.lock").write_text("pid=999999999 host=elsewhere purpose=checking\n")
    done = _msam("--nproc", "2", "--out", str(stale), *OPTIONS, "--batch_size", "1", check=False)
    assert done.returncode == 2 and "exceeds batch_size 1" in done.stderr, done.stderr[-2000:]
    if not torch.cuda.is_available():
        done = _msam("--nproc", "2", "--out", str(out), *OPTIONS, "--device", "cuda", check=False)
        assert done.returncode == 2 and "CUDA is not available here" in done.stderr, done.stderr
        assert not out.exists()


def test_a_best_epoch_before_the_last_is_probed_by_rank_zero(tmp_path):
    """With lr 1, this tiny run's val accuracy peaks at epoch 3 of 4, so the best epoch's
    weights are probed after training: by rank 0 alone (the other ranks have no writer; one of
    them read best.pt through it once and crashed the run)."""
    done = _msam("--nproc", "2", "--out", str(tmp_path / "two"), *OPTIONS, "--lr", "1.0")
    one = train({**CONFIG, "lr": 1.0}, out=tmp_path / "one", quiet=True)
    summaries = [json.loads((run / "summary.json").read_text()) for run in (tmp_path / "two", one)]
    assert summaries[0]["best_epoch"] == summaries[1]["best_epoch"] < EPOCHS, done.stderr[-2000:]
    probes = [
        {k: v for k, v in summary["best"]["test"].items() if k.startswith("probe/")}
        for summary in summaries
    ]
    assert probes[0] and probes[0].keys() == probes[1].keys()
    for key, value in probes[1].items():
        assert probes[0][key] == pytest.approx(value, abs=1e-6), key


def test_a_run_another_process_writes_is_refused_before_the_ranks_start(tmp_path, two_process_run):
    """Refused at once with exit status 2, the run untouched: inside the ranks, the others
    would wait for rank 0 until the group timed out.  (A read-only run: test_faults.)"""
    from msam_core.runlock import run_lock

    run = tmp_path / "run"
    shutil.copytree(two_process_run, run)
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    with run_lock(run, "a test holding it"):
        done = _msam("--resume", str(run), "--nproc", "2", "--epochs", "5", check=False)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "is being written by process" in done.stderr and "a test holding it" in done.stderr
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before


def test_resuming_on_another_number_of_processes_warns(tmp_path, two_process_run):
    copy = tmp_path / "copy"
    shutil.copytree(two_process_run, copy)
    with pytest.warns(UserWarning, match="trained on 2 process.*with 1"):
        train(out=copy, resume=True, epochs=EPOCHS + 1, quiet=True)
    assert json.loads((copy / "summary.json").read_text())["epochs_done"] == EPOCHS + 1
