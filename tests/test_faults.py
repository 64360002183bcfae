"""Faults around a run directory: crafted checkpoints, two writers, gaps, lost or damaged
checkpoints, full disks, read-only folders, signals, bad data, edited configs, and kill -9
at random moments.  Each test reproduces one fault and checks what msam promises instead.

Every test adds a row to a table (fault | tried | survived | records lost), printed at the
end of the module and written to ``$MSAM_FAULT_TABLE`` when that is set.  "Survived": the run
ends whole (bit-identical to an uninterrupted run where it resumes), or the fault is refused
with a one-line error and nothing changed.  "Records lost": step records of the reference
run missing or different at the end (or, for a refusal, records that were there before and
are not after).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch

import msam_core.rundir as rundir
from msam_core.cli import main
from msam_core.config import TrainConfig
from msam_core.data import load_dataset
from msam_core.data.base import MultimodalDataset, TensorSplit
from msam_core.record import load_run
from msam_core.rundir import load_checkpoint, load_trained
from msam_core.train import train

# names new with the fault handling are imported inside the tests, so that against the code
# before it each test fails on its own fault rather than all of them on an import

ROOT = Path(__file__).resolve().parents[1]
STEPS_PER_EPOCH = 6  # 96 training samples, batches of 16
EPOCHS = 3
BASE = {
    "method": "msam",
    "epochs": EPOCHS,
    "dataset_options": {"n_train": 96, "n_val": 32, "n_test": 32},
    "batch_size": 16,
    "device": "cpu",
    "momentum": 0.9,
    "model_options": {"dropout": 0.2},  # the global RNG matters for equality
    "eval_batch_size": 64,
    "probe_size": 16,
}

# fault -> [tried, survived, records lost]
RESULTS: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])


def note(fault: str, *, survived: bool, lost: int = 0, tried: int = 1) -> None:
    row = RESULTS[fault]
    row[0] += tried
    row[1] += tried if survived else 0
    row[2] += lost


@pytest.fixture(scope="module", autouse=True)
def one_intra_op_thread():
    """Children here are forked from a process that ran torch: GNU OpenMP's worker pool does not
    survive fork, so a child entering a parallel region (a QR, a matmul) waits forever.  With one
    intra-op thread every region runs in the calling thread.  Set before every run of this module
    (the reference included), so the runs compared bit for bit share one thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module", autouse=True)
def fault_table():
    yield
    lines = ["| fault | tried | survived | records lost |", "|---|---:|---:|---:|"]
    lines += [f"| {fault} | {t} | {s} | {lost} |" for fault, (t, s, lost) in RESULTS.items()]
    table = "\n".join(lines)
    print("\n" + table)
    target = os.environ.get("MSAM_FAULT_TABLE")
    if target:
        Path(target).write_text(table + "\n", encoding="utf-8")


def config(**changes) -> TrainConfig:
    return TrainConfig.from_dict({**BASE, **changes})


def _timeless(records):
    return [{k: v for k, v in r.items() if not k.startswith("time/")} for r in records]


def _records(path: Path, name: str) -> list[dict]:
    text = (path / name).read_text(encoding="utf-8") if (path / name).exists() else ""
    return _timeless(json.loads(line) for line in text.splitlines() if line.strip())


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path / "checkpoints" / "last.pt")["model"]


def lost_steps(reference: Path, path: Path) -> int:
    """Reference step records missing or different in ``path`` (0: bit-identical)."""
    ours = {r["step"]: r for r in _records(path, "iterations.jsonl")}
    return sum(ours.get(r["step"]) != r for r in _records(reference, "iterations.jsonl"))


def assert_same_run(reference: Path, path: Path) -> None:
    """Records (timings aside) and final weights exactly equal; steps 1..N exactly once."""
    ours, theirs = _records(path, "iterations.jsonl"), _records(reference, "iterations.jsonl")
    assert [r["step"] for r in ours] == list(range(1, len(theirs) + 1))
    assert ours == theirs
    assert _records(path, "epochs.jsonl") == _records(reference, "epochs.jsonl")
    a, b = _weights(reference), _weights(path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    summary = json.loads((path / "summary.json").read_text())
    assert summary["finished"] is True and summary["steps"] == len(theirs)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The uninterrupted run every resumed one must equal."""
    return train(config(), out=tmp_path_factory.mktemp("reference") / "run", quiet=True)


@pytest.fixture(scope="module")
def reference_mid_epoch(tmp_path_factory) -> Path:
    """The same run with mid-epoch checkpoints every 4 steps (the numbers must not change)."""
    out = tmp_path_factory.mktemp("reference_steps") / "run"
    return train(config(checkpoint_every_steps=4), out=out, quiet=True)


def stopped_at(step: int):
    """A callback stopping the run after ``step`` (as a kill there would, but cleanly)."""
    return lambda record: record.get("split") is not None or record["step"] < step


def fork_cli(args: list[str], stderr: Path, before=None) -> int:
    """``msam ARGS`` in a forked child (no interpreter start-up), its stderr into a file;
    ``before()`` runs first in the child (e.g. a file-size limit).  Returns the PID."""

    def child():
        if before is not None:
            before()
        fd = os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        os.dup2(fd, 2)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        status = main(args)
        sys.stderr.flush()
        os._exit(status)

    return _fork(child)


def run_cli(args: list[str], tmp_path: Path, before=None) -> tuple[int, str]:
    """``msam ARGS`` in a forked child, to its end: (exit status, stderr)."""
    err = tmp_path / "stderr.txt"
    _, status = os.waitpid(fork_cli(args, err, before), 0)
    return os.waitstatus_to_exitcode(status), err.read_text()


def cli_args(out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--out",
        str(out),
        "--quiet",
        "--device",
        "cpu",
        "--batch_size",
        "16",
        "--dataset_options",
        "{n_train: 96, n_val: 32, n_test: 32}",
        *extra,
    ]


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in text, text
    return lines[0]


# --------------------------------------------------------------------------------------------
# 1. a crafted checkpoint must not run code


class _Payload:
    """Unpickling this calls ``Path.touch(marker)``: code run by merely loading the file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _plant(path: Path, marker: Path, keep_checksum: bool) -> None:
    """Replace a checkpoint with a crafted one (keeping a matching checksum, as an attacker
    who can write the folder could)."""
    state = load_checkpoint(path)
    state["extra"] = _Payload(marker)
    torch.save(state, path)
    sums = rundir.checksum_file(path)
    if keep_checksum:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        sums.write_text(f"{digest}  {path.name}\n")
    else:
        sums.unlink(missing_ok=True)


@pytest.mark.parametrize("keep_checksum", [True, False])
def test_a_crafted_checkpoint_is_refused_by_every_entry_point(tmp_path, keep_checksum):
    from msam_core.landscape import landscape_for_run

    run = train(config(epochs=1), out=tmp_path / "run", quiet=True)
    marker = tmp_path / "pwned"
    before = _records(run, "iterations.jsonl")
    entries = {
        "last.pt": lambda: train(out=run, resume=True, quiet=True),
        "epoch_0001.pt": lambda: landscape_for_run(run, epoch=1, steps=3, n_eval=16),
        "best.pt": lambda: load_trained(run, "best"),
    }
    for name, entry in entries.items():
        _plant(run / "checkpoints" / name, marker, keep_checksum)
        with pytest.raises(
            rundir.CheckpointError, match=rf"refusing to load .*{name}.*could run code"
        ):
            entry()
        assert not marker.exists(), f"loading {name} ran code"
    # the unpickler never ran the payload, and nothing in the run changed
    survived = not marker.exists() and _records(run, "iterations.jsonl") == before
    note("crafted checkpoint (last / epoch / best)", survived=survived, tried=3)


# --------------------------------------------------------------------------------------------
# 2. one writer per run directory


def _fork(target) -> int:
    """Run ``target()`` in a forked child (torch already imported: starts in milliseconds)."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        status = 1
        try:
            target()
            status = 0
        except BaseException:
            import traceback

            traceback.print_exc()
        finally:
            os._exit(status)
    return pid


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.02)


def _lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_a_second_writer_is_refused_naming_the_live_one(tmp_path, reference):
    from msam_core.landscape import landscape_for_run
    from msam_core.runlock import RunLocked

    run = tmp_path / "run"
    gate = tmp_path / "go"

    def slow_training():
        # a run that waits at its 4th step until the test lets it go on
        def wait_at_four(record):
            while record.get("step") == 4 and not gate.exists():
                time.sleep(0.01)

        train(config(), out=run, callback=wait_at_four, quiet=True)

    pid = _fork(slow_training)
    try:
        _wait_for(lambda: _lines(run / "iterations.jsonl") >= 4)
        for attempt in (
            lambda: train(out=run, resume=True, quiet=True),
            lambda: train(config(), out=run, overwrite=True, quiet=True),
            lambda: landscape_for_run(run, epoch=0, steps=3, n_eval=16),
        ):
            with pytest.raises(RunLocked, match=rf"being written by process {pid} \(training\)"):
                attempt()
        gate.touch()
        _, status = os.waitpid(pid, 0)
    finally:
        if not gate.exists():
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    # the live run was never disturbed: the same records and weights as the reference
    assert_same_run(reference, run)
    note("second writer (resume / overwrite / landscape)", survived=True, tried=3)


def test_a_lock_left_by_a_killed_writer_is_taken_over(tmp_path, reference):
    from msam_core.runlock import LOCK_FILE

    run = tmp_path / "run"
    pid = _fork(lambda: train(config(), out=run, quiet=True))
    _wait_for(lambda: _lines(run / "iterations.jsonl") >= 3)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    assert (run / LOCK_FILE).exists()  # the dead writer's lock file, naming it
    assert f"pid={pid}" in (run / LOCK_FILE).read_text()
    with pytest.warns(RuntimeWarning, match=rf"taking over the writer lock of process {pid}"):
        train(out=run, resume=True, quiet=True)
    assert_same_run(reference, run)
    assert not (run / LOCK_FILE).exists()  # released on a clean exit
    note("stale lock of a killed writer", survived=True, lost=lost_steps(reference, run))


# --------------------------------------------------------------------------------------------
# 3. gaps and repeats in the records


def _killed_run(tmp_path: Path, at_step: int, **changes) -> Path:
    return train(config(**changes), out=tmp_path / "run", callback=stopped_at(at_step), quiet=True)


def _edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(edit(lines)))


def test_a_gap_cut_mid_line_is_reported_and_redone_from_an_earlier_checkpoint(tmp_path, reference):
    run = _killed_run(tmp_path, at_step=2 * STEPS_PER_EPOCH + 3)  # in epoch 3
    # steps 4..9 lost, step 3's line cut mid-way: the middle of the file, not its end
    _edit_lines(run / "iterations.jsonl", lambda ls: [*ls[:2], ls[2][:25] + "\n", *ls[9:]])
    with pytest.warns(RuntimeWarning, match=r"iterations.jsonl line 3: unreadable"):
        report = load_run(run).problems
    assert report and "line 3" in report[0]
    # last.pt (epoch 2, step 12) is past the gap: the resume starts at epoch_0000.pt
    with pytest.warns(RuntimeWarning, match=r"from checkpoints/epoch_0000.pt .*redoing"):
        train(out=run, resume=True, quiet=True)
    assert_same_run(reference, run)
    assert not load_run(run).problems
    note("gap in iterations.jsonl (cut mid-line)", survived=True, lost=lost_steps(reference, run))


def test_repeated_records_are_reported_and_dropped(tmp_path, reference):
    run = _killed_run(tmp_path, at_step=STEPS_PER_EPOCH + 2)
    _edit_lines(run / "iterations.jsonl", lambda ls: [*ls[:4], ls[3], *ls[4:]])
    _edit_lines(run / "epochs.jsonl", lambda ls: [*ls, ls[-1]])
    with pytest.warns(RuntimeWarning, match=r"line 5: step 4 repeats line 4"):
        assert len(load_run(run).problems) == 2
    with pytest.warns(RuntimeWarning, match=r"repeats line"):
        train(out=run, resume=True, quiet=True)
    assert_same_run(reference, run)
    note("repeated records", survived=True, lost=lost_steps(reference, run))


def test_a_gap_no_checkpoint_can_bridge_is_refused_naming_file_and_line(tmp_path):
    # checkpoint_every=0: last.pt only, so nothing before the gap to restart from
    run = _killed_run(tmp_path, at_step=STEPS_PER_EPOCH + 3, checkpoint_every=0)
    _edit_lines(run / "iterations.jsonl", lambda ls: [*ls[:2], *ls[4:]])
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"iterations.jsonl line 3: steps 3..4 missing") as err:
        train(out=run, resume=True, quiet=True)
    assert "overwrite" not in str(err.value)
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    before.pop(".msam.lock", None)
    assert after == before  # nothing changed
    note("gap no checkpoint can bridge (refused)", survived=True)


# --------------------------------------------------------------------------------------------
# 4. a lost or damaged last.pt: fall back, never advise deleting


@pytest.mark.parametrize("damage", ["deleted", "truncated", "garbage", "bit flip"])
def test_a_lost_or_damaged_last_checkpoint_falls_back_to_the_newest_intact_one(
    tmp_path, reference, damage
):
    run = _killed_run(tmp_path, at_step=2 * STEPS_PER_EPOCH + 2)
    last = run / "checkpoints" / "last.pt"
    data = last.read_bytes()
    if damage == "deleted":
        last.unlink()
    elif damage == "truncated":
        last.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        last.write_bytes(os.urandom(len(data)))
    else:  # one bit in the middle: the zip still opens, only the checksum notices
        flipped = bytearray(data)
        flipped[len(data) // 2] ^= 0x01
        last.write_bytes(bytes(flipped))
    with pytest.warns(RuntimeWarning, match=r"from checkpoints/epoch_0002.pt") as caught:
        train(out=run, resume=True, quiet=True)
    assert not any("overwrite" in str(w.message) for w in caught)
    assert_same_run(reference, run)
    note(f"last.pt {damage}", survived=True, lost=lost_steps(reference, run))


def test_no_checkpoint_at_all_is_a_clear_error_that_deletes_nothing(tmp_path):
    run = _killed_run(tmp_path, at_step=3)
    shutil.rmtree(run / "checkpoints")
    with pytest.raises(ValueError, match=r"no checkpoint it can continue from") as err:
        train(out=run, resume=True, quiet=True)
    assert "overwrite" not in str(err.value) and "another --out" in str(err.value)
    assert len(_records(run, "iterations.jsonl")) == 3
    note("no checkpoint at all (refused)", survived=True)


# --------------------------------------------------------------------------------------------
# 5. durable checkpoints


def test_checkpoints_their_folder_and_the_records_before_them_are_fsynced(tmp_path, monkeypatch):
    synced: list[str] = []
    real = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    run = train(config(epochs=1), out=tmp_path / "run", quiet=True)  # fsync option: off
    folder = str(run / "checkpoints")
    # each checkpoint's temporary file, then the folder holding the rename
    assert any(Path(p).name.startswith(".last.pt.") for p in synced)
    assert any(Path(p).name.startswith(".epoch_0001.pt.") for p in synced)
    assert folder in synced
    # the records a checkpoint refers to reach the disk before it does
    first_ckpt = next(i for i, p in enumerate(synced) if Path(p).name.startswith(".epoch_0001"))
    assert str(run / "iterations.jsonl") in synced[:first_ckpt]
    note("power loss (fsync of checkpoints, folder, records)", survived=True)


# --------------------------------------------------------------------------------------------
# 6. full disk, read-only folder, clean-up that must not hide the first error


def _limit_file_size(limit: int):
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_is_one_line_and_leaves_no_partial_files(tmp_path):
    run = tmp_path / "run"
    status, err = run_cli(cli_args(run, "--epochs", "2"), tmp_path, _limit_file_size(20_000))
    assert status == 2
    line = one_line(err)
    assert "cannot write" in line and "File too large" in line and "intact" in line
    leftovers = [p.name for p in run.rglob("*") if p.name.endswith((".tmp", ".copy"))]
    assert leftovers == []
    # every record line is whole, and the files hold what was written before the failure
    from msam_core.integrity import check_records

    check = check_records(run)
    assert not check.problems and not check.cut
    note("full disk (checkpoint write)", survived=True)


def test_a_failed_record_write_leaves_no_half_line_and_the_first_error_wins(tmp_path, monkeypatch):
    """The disk fills up mid-record (half the line reaches the file, then ENOSPC), and
    summary.json cannot be written either: the error raised is the first one."""
    _inject_enospc_at(monkeypatch, record_number=6)
    run = tmp_path / "run"
    from msam_core.atomic import RunWriteError

    with pytest.raises(RunWriteError, match=r"iterations.jsonl.*No space left") as err:
        train(config(), out=run, quiet=True)
    assert "summary.json was not updated either" in " ".join(getattr(err.value, "__notes__", []))
    text = (run / "iterations.jsonl").read_text()
    assert text.endswith("\n")
    assert [r["step"] for r in _records(run, "iterations.jsonl")] == [1, 2, 3, 4, 5]
    note("full disk mid-record (+ summary write)", survived=True)


def _inject_enospc_at(monkeypatch, record_number: int) -> None:
    """From the ``record_number``-th record on, every write to a record file writes half its
    bytes and then fails with ENOSPC; every atomic write (summary.json) fails too."""
    import msam_core.record as record

    real_open = record.RunWriter._open_logs
    seen = {"n": 0}

    class FullDisk:
        def __init__(self, fh):
            self._fh = fh

        def __getattr__(self, name):
            return getattr(self._fh, name)

        def write(self, data):
            seen["n"] += 1
            if seen["n"] < record_number:
                return self._fh.write(data)
            self._fh.write(data[: len(data) // 2])
            record.write_bytes_atomic = _full_atomic
            raise OSError(errno.ENOSPC, "No space left on device")

    def open_logs(self):
        real_open(self)
        self._iterations = FullDisk(self._iterations)

    monkeypatch.setattr(record.RunWriter, "_open_logs", open_logs)
    monkeypatch.setattr(record, "write_bytes_atomic", record.write_bytes_atomic)


def _full_atomic(path, data):
    import msam_core.record as record

    raise record.write_error(Path(path), OSError(errno.ENOSPC, "No space left on device"))


_RUN_COMMANDS = """
import json, sys
from msam_core.cli import main
for args in json.loads(sys.argv[1]):
    print("---", main(args), file=sys.stderr, flush=True)
"""


def _read_only(folders: list[Path], commands: list[list[str]]) -> list[tuple[int, str]]:
    """Run each ``msam`` command (one interpreter) with ``folders`` read-only: a read-only
    bind mount in a private mount namespace (root ignores permission bits), or plain
    permissions for other users.  Returns (exit status, stderr) per command."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    python = [sys.executable, "-c", _RUN_COMMANDS, json.dumps(commands)]
    if os.geteuid() != 0:
        for folder in folders:
            folder.chmod(0o555)
        try:
            result = subprocess.run(python, capture_output=True, text=True, env=env, timeout=600)
        finally:
            for folder in folders:
                folder.chmod(0o755)
    else:
        if shutil.which("unshare") is None:
            pytest.skip("running as root without unshare: cannot make a folder read-only")
        mounts = " && ".join(
            f'mount --bind "{f}" "{f}" && mount -o remount,bind,ro "{f}"' for f in folders
        )
        script = f'{mounts} && echo mounted-read-only >&2 && exec "$@"'
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", *python],
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if "mounted-read-only" not in result.stderr:
            pytest.skip(f"cannot make a folder read-only here: {result.stderr.strip()[-300:]}")
    outputs, text = [], ""
    for line in result.stderr.splitlines(keepends=True):
        if line.startswith("mounted-read-only"):
            continue
        if line.startswith("--- "):
            outputs.append((int(line.split()[1]), text))
            text = ""
        else:
            text += line
    return outputs


def test_a_read_only_out_a_read_only_resume_and_report_are_one_line(tmp_path, reference):
    locked = tmp_path / "locked"
    locked.mkdir()
    run = tmp_path / "copy"
    shutil.copytree(reference, run)
    before = sorted((p.name, p.stat().st_size) for p in run.rglob("*"))
    fresh, resumed, report, fresh_ranks, resumed_ranks = _read_only(
        [locked, run],
        [
            cli_args(locked / "run", "--epochs", "1"),
            ["train", "--resume", str(run), "--epochs", "4", "--quiet"],
            ["report", str(run), "--out", str(locked / "r.html")],
            # many processes: refused before the ranks start, not by rank 0 after they have
            [*cli_args(locked / "run", "--epochs", "1"), "--nproc", "2"],
            ["train", "--resume", str(run), "--epochs", "4", "--quiet", "--nproc", "2"],
        ],
    )
    assert fresh[0] == 2 and "writable" in one_line(fresh[1])
    assert resumed[0] == 2 and "not writable" in one_line(resumed[1])
    assert report[0] == 2 and "r.html" in one_line(report[1])
    assert fresh_ranks[0] == 2 and "writable" in one_line(fresh_ranks[1])
    assert "rank" not in fresh_ranks[1]
    assert resumed_ranks[0] == 2 and "not writable" in one_line(resumed_ranks[1])
    assert sorted((p.name, p.stat().st_size) for p in run.rglob("*")) == before
    note("read-only folder (train / resume / report)", survived=True, tried=3)


def test_yaml_errors_in_overrides_are_one_line(tmp_path, capsys):
    assert main(cli_args(tmp_path / "run", "--model_options.hidden", "[1,")) == 2
    line = one_line(capsys.readouterr().err)
    assert "--model_options.hidden '[1,' is not a valid YAML value" in line
    assert not (tmp_path / "run").exists()
    note("YAML error in an override", survived=True)


def test_a_corrupt_checkpoint_for_analysis_is_a_one_line_error(tmp_path, reference, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / "checkpoints" / "epoch_0002.pt").write_bytes(b"not a checkpoint")
    args = ["landscape", str(run), "--epoch", "2", "--steps", "3", "--n-eval", "16"]
    assert main(args) == 2
    assert "epoch_0002.pt' is damaged" in one_line(capsys.readouterr().err)
    note("corrupt checkpoint (landscape)", survived=True)


# --------------------------------------------------------------------------------------------
# 7. non-finite data is the data's fault


def _dataset_with(value: float, *, lazy: bool) -> MultimodalDataset:
    data = load_dataset("synthetic", seed=0, n_train=96, n_val=32, n_test=32)
    modality = data.modality_names[1]
    inputs = dict(data.train.inputs)
    inputs[modality] = inputs[modality].clone()
    inputs[modality][37, 0] = value
    in_memory = TensorSplit(inputs, data.train.targets)

    class Items(torch.utils.data.Dataset):  # a file-backed split: no .inputs, item by item
        def __len__(self):
            return len(in_memory)

        def __getitem__(self, i):
            return in_memory[i]

    train_split = Items() if lazy else in_memory
    return MultimodalDataset(
        data.name, data.modalities, data.num_classes, train_split, data.val, data.test
    )


@pytest.mark.parametrize(("value", "lazy"), [(float("nan"), False), (float("inf"), True)])
def test_non_finite_data_is_named_by_sample_and_modality_not_blamed_on_lr(tmp_path, value, lazy):
    data = _dataset_with(value, lazy=lazy)
    modality = data.modality_names[1]
    what = "NaN" if np.isnan(value) else "inf"
    with pytest.raises(ValueError, match=rf"sample 37, modality '{modality}'.* holds {what}") as e:
        train(config(epochs=1), out=tmp_path / "run", data=data, quiet=True)
    assert "lr" not in str(e.value) and "rho" not in str(e.value)
    if not lazy:  # caught before anything was written
        assert not (tmp_path / "run").exists()
    note(f"{what} in the data ({'file-backed' if lazy else 'in memory'})", survived=True)


# --------------------------------------------------------------------------------------------
# 8. an edited config.json


def test_an_edited_config_json_is_an_error_listing_each_key(tmp_path):
    run = _killed_run(tmp_path, at_step=STEPS_PER_EPOCH + 2)
    path = run / "config.json"
    doc = json.loads(path.read_text())
    doc["lr"], doc["rho"] = 0.5, 0.2
    path.write_text(json.dumps(doc))
    with pytest.raises(ValueError, match=r"config.json was edited") as err:
        train(out=run, resume=True, quiet=True)
    trained = load_checkpoint(run / "checkpoints" / "last.pt")["config"]
    assert f"lr: 0.5 in config.json, {trained['lr']!r} trained" in str(err.value)
    assert f"rho: 0.2 in config.json, {trained['rho']!r} trained" in str(err.value)
    assert json.loads(path.read_text())["lr"] == 0.5  # nothing rewritten
    note("edited config.json (refused)", survived=True)


# --------------------------------------------------------------------------------------------
# 9. signals, mid-epoch checkpoints, best.pt after last.pt


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_stop_like_ctrl_c(tmp_path, sig):
    run = tmp_path / "run"
    pid = fork_cli(cli_args(run, "--epochs", "200"), tmp_path / "stderr.txt")
    try:
        _wait_for(lambda: _lines(run / "iterations.jsonl") >= STEPS_PER_EPOCH + 2)
        os.kill(pid, getattr(signal, sig))
        _, status = os.waitpid(pid, 0)
    except BaseException:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise
    assert os.waitstatus_to_exitcode(status) == 128 + getattr(signal, sig)
    line = one_line((tmp_path / "stderr.txt").read_text())
    assert f"stopped by {sig} at step" in line and f"msam train --resume {run}" in line
    summary = json.loads((run / "summary.json").read_text())
    assert summary["stopped"].startswith(f"interrupted ({sig})") and not summary["finished"]
    note(f"{sig}", survived=True)


@pytest.mark.parametrize("stop_at", [5, STEPS_PER_EPOCH + 4, 2 * STEPS_PER_EPOCH + 1])
def test_mid_epoch_checkpoints_resume_bit_for_bit(tmp_path, reference_mid_epoch, stop_at):
    run = tmp_path / "run"
    train(config(checkpoint_every_steps=4), out=run, callback=stopped_at(stop_at), quiet=True)
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["loop"]["step"] == stop_at - stop_at % 4 or state["loop"]["batch"] == 0
    train(out=run, resume=True, quiet=True)
    assert_same_run(reference_mid_epoch, run)
    note("stop mid-epoch (checkpoint_every_steps)", survived=True)


def test_mid_epoch_checkpoints_change_no_number(reference, reference_mid_epoch):
    assert _records(reference, "iterations.jsonl") == _records(
        reference_mid_epoch, "iterations.jsonl"
    )


def test_best_is_written_after_last(tmp_path, monkeypatch):
    order: list[str] = []
    real = rundir.write_checkpoint_bytes

    def spy(data, path):
        order.append(Path(path).name)
        return real(data, path)

    monkeypatch.setattr(rundir, "write_checkpoint_bytes", spy)
    train(config(epochs=2), out=tmp_path / "run", quiet=True)
    for i, name in enumerate(order):
        if name == "best.pt":
            assert order[i - 1] == "last.pt"
    assert order.count("best.pt") >= 1


# --------------------------------------------------------------------------------------------
# 10. kill -9 at random moments and around every rename


def test_kill_9_at_random_moments_resumes_bit_identical(tmp_path, reference_mid_epoch):
    """At least 20 SIGKILLs across one run: at random times, and just before or after a
    random ``os.replace`` (every checkpoint, checksum, summary and config write goes through
    one), with mid-epoch checkpoints every 4 steps.  The run that finally completes equals
    the uninterrupted one bit for bit."""
    rng = random.Random(13)
    run = tmp_path / "run"
    cfg = config(checkpoint_every_steps=4)
    started = time.monotonic()
    train(cfg, out=tmp_path / "timing", quiet=True)
    duration = time.monotonic() - started

    def attempt(kill_at_replace: int | None, after: bool):
        def child():
            if kill_at_replace is not None:
                real, count = os.replace, [0]

                def replace(src, dst):
                    count[0] += 1
                    if count[0] == kill_at_replace and not after:
                        os.kill(os.getpid(), signal.SIGKILL)
                    real(src, dst)
                    if count[0] == kill_at_replace and after:
                        os.kill(os.getpid(), signal.SIGKILL)

                os.replace = replace
            if (run / "config.json").exists():
                try:
                    train(out=run, resume=True, quiet=True)
                except ValueError as err:  # killed before its first checkpoint: no steps yet
                    assert "no checkpoint it can continue from" in str(err)
                    assert "its 0 step records" in str(err)
                    train(cfg, out=run, overwrite=True, quiet=True)
            else:
                shutil.rmtree(run, ignore_errors=True)  # killed before config.json: nothing
                train(cfg, out=run, quiet=True)

        return _fork(child)

    kills = attempts = 0
    while attempts < 120:
        attempts += 1
        by_replace = attempts % 2 == 0
        pid = attempt(rng.randint(1, 40) if by_replace else None, rng.random() < 0.5)
        if not by_replace:
            time.sleep(rng.uniform(0.05, 0.6) * duration)
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            kills += 1
            continue
        assert os.waitstatus_to_exitcode(status) == 0, "a resumed child failed"
        summary = json.loads((run / "summary.json").read_text())
        if summary.get("finished") and kills >= 20:
            break
        if summary.get("finished"):  # finished too early: go again on a fresh run
            shutil.move(run, tmp_path / f"done{attempts}")
            assert_same_run(reference_mid_epoch, tmp_path / f"done{attempts}")
    assert kills >= 20, f"only {kills} kills landed in {attempts} attempts"
    assert_same_run(reference_mid_epoch, run)
    note(
        "kill -9 (random time / around os.replace)",
        survived=True,
        tried=kills,
        lost=lost_steps(reference_mid_epoch, run),
    )
