"""The run directory's records: append-only, crash-safe JSON of one training run.

The folder layout and its names are :mod:`msam_core.layout`'s.

Value conventions in the ``.jsonl`` files:

- a key that was not measured at a step is **absent** (never 0, never null);
- a measured value that is not finite (NaN, +inf, -inf) is written as ``null`` so every line
  stays strict JSON; :func:`load_run` reads it back as NaN.  So "absent" means "not
  measured" and "null" means "measured, but not a finite number" (e.g. a diverged loss).

:func:`load_run` tolerates a run that is still being written, or one killed mid-line: a line
that is not valid JSON is skipped with a :mod:`warnings` warning naming file and line number.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import subprocess
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

# the atomic writes live in msam_core.atomic (no pandas); importable from here as before
from msam_core.atomic import RunWriteError as RunWriteError
from msam_core.atomic import temp_file_beside as temp_file_beside
from msam_core.atomic import write_bytes_atomic, write_error
from msam_core.integrity import RecordsCheck, check_records, read_lines
from msam_core.layout import (
    CHECKPOINTS_DIR,
    CONFIG_FILE,
    EPOCHS_FILE,
    ITERATIONS_FILE,
    LANDSCAPES_DIR,
    RUN_ENTRIES,
    SUMMARY_FILE,
)
from msam_core.runlock import check_writable, create_run_dir, holds_files, run_lock
from msam_core.version import __version__

# --------------------------------------------------------------------------------------------
# JSON encoding


def to_jsonable(value: Any) -> Any:
    """Turn tensors, numpy scalars/arrays, paths and tuples into plain JSON values.

    Non-finite floats become ``None`` (written as ``null``), so the output is strict JSON.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    # torch tensors without importing torch here (record.py stays light for msam_viz)
    if hasattr(value, "detach") and hasattr(value, "tolist"):
        return to_jsonable(value.detach().cpu().tolist())
    raise TypeError(f"cannot record a value of type {type(value).__name__}: {value!r}")


def dumps_record(record: Mapping[str, Any]) -> str:
    """One record as one strict-JSON line (no trailing newline)."""
    try:  # fast path: a flat record of finite floats, ints and strings (every step's case)
        return json.dumps(record, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):  # tensors, numpy scalars, non-finite floats
        return json.dumps(to_jsonable(record), allow_nan=False, separators=(",", ":"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as JSON with :func:`write_bytes_atomic` (never half-written)."""
    text = json.dumps(to_jsonable(obj), indent=2, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode("utf-8"))


# --------------------------------------------------------------------------------------------
# Environment stamp


def git_commit(start: str | os.PathLike | None = None) -> str | None:
    """The commit of the source tree msam runs from (``None`` outside a git checkout)."""
    where = Path(start) if start is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=where,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and commit else None


def environment_info() -> dict[str, Any]:
    """Versions and host facts stored in ``config.json["run"]`` so a result can be traced."""
    import torch  # local: keep importing this module cheap

    return {
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "numpy": np.__version__,
            "msam": __version__,
        },
        "git_commit": git_commit(),
        "host": platform.node(),
        "platform": platform.platform(),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }


# --------------------------------------------------------------------------------------------
# Writing


def is_msam_run(path: Path) -> bool:
    """True for a directory msam wrote: records of its own, or a ``config.json`` that carries
    msam's environment stamp (a ``config.json`` alone is far too common a name to go by)."""
    if (path / ITERATIONS_FILE).is_file() or (path / EPOCHS_FILE).is_file():
        return True
    try:
        config = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    run = config.get("run") if isinstance(config, dict) else None
    return isinstance(run, dict) and "msam" in (run.get("versions") or {})


def _remove_run_files(path: Path) -> None:
    """Delete what a run wrote (:data:`RUN_ENTRIES`); anything else in ``path`` stays."""
    for name in RUN_ENTRIES:
        entry = path / name
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        elif entry.exists() or entry.is_symlink():
            entry.unlink()


class RunWriter:
    """Creates (or reopens) a run directory and appends records to it.

    ``resume=False, overwrite=False`` refuses a directory that already holds files, so nothing
    is ever lost silently; ``overwrite=True`` replaces a previous run (:func:`is_msam_run`):
    it deletes the run's own files (:data:`RUN_ENTRIES`), nothing else, and still refuses a
    non-empty directory that is not a run; ``resume=True`` reopens an existing run and
    appends to it.

    The writer holds the run directory's lock (:mod:`msam_core.runlock`) from its creation
    until :meth:`close`: a second writer (a resume or ``--overwrite`` of a run still
    training) is refused, naming this process, before it touches anything.

    Each record is one line handed to the OS in one unbuffered ``write`` as it is logged, so
    readers see it at once and a killed process loses at most the line being written.
    ``fsync=True`` forces every record to disk (~1 ms each on most file systems); without
    it, :meth:`sync` (called before each checkpoint) makes every record up to the checkpoint
    durable, so a power loss never leaves a checkpoint ahead of its records.  A failed write
    (full disk, quota) removes the partial line and raises :class:`~msam_core.atomic.RunWriteError`.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        resume: bool = False,
        overwrite: bool = False,
        fsync: bool = False,
    ) -> None:
        if resume and overwrite:
            raise ValueError("choose either resume or overwrite, not both")
        self.path = Path(path).expanduser()
        self.fsync = fsync
        self._lock = contextlib.ExitStack()
        self._iterations = self._epochs = None
        try:
            self._prepare(resume=resume, overwrite=overwrite)
            for folder in (self.checkpoints_dir, self.landscapes_dir):
                try:
                    folder.mkdir(exist_ok=True)
                except OSError as err:
                    raise write_error(folder, err) from err
            self._open_logs()
        except BaseException:
            self.close()
            raise

    # -- set-up ----------------------------------------------------------------------------

    def _prepare(self, *, resume: bool, overwrite: bool) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(
                f"run directory {str(path)!r} exists and is a file; choose another --out"
            )
        if resume:
            if not path.is_dir() or not (path / CONFIG_FILE).exists():
                raise FileNotFoundError(
                    f"cannot resume {str(path)!r}: no run there (no {CONFIG_FILE}); "
                    "start it without --resume"
                )
            self._take_lock("resuming")
            check_writable(self.path)
            # temporary files a killed process left half-written (never the real ones)
            for folder in (path, path / CHECKPOINTS_DIR):
                for stale in folder.glob(".*.tmp"):
                    stale.unlink(missing_ok=True)
            return
        # checked before anything is written, then again under the lock (another writer may
        # have started in between)
        self._check_fresh(overwrite)
        create_run_dir(path)
        self._take_lock("overwriting" if overwrite else "training")
        self._check_fresh(overwrite)
        check_writable(self.path)  # before anything is deleted
        if overwrite:
            _remove_run_files(path)

    def _check_fresh(self, overwrite: bool) -> None:
        path = self.path
        if not holds_files(path):
            return
        if not overwrite:
            raise FileExistsError(
                f"run directory {str(path)!r} already exists; pass --resume (resume=True) "
                "to continue it, --overwrite (overwrite=True) to replace it, or choose "
                "another --out"
            )
        if not is_msam_run(path):
            raise FileExistsError(
                f"{str(path)!r} is a non-empty directory that is not an msam run; "
                "refusing to overwrite it, choose another --out"
            )

    def _take_lock(self, purpose: str) -> None:
        self._lock.enter_context(run_lock(self.path, purpose))

    # -- paths -----------------------------------------------------------------------------

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / CHECKPOINTS_DIR

    @property
    def landscapes_dir(self) -> Path:
        return self.path / LANDSCAPES_DIR

    # -- writing ---------------------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any], *, run_info: Mapping | None = None) -> None:
        """Write ``config.json``: the config keys plus ``"run"`` (environment and data facts)."""
        doc = dict(config)
        info = environment_info()
        if run_info:
            info.update(run_info)
        doc["run"] = info
        write_json_atomic(self.path / CONFIG_FILE, doc)

    def write_summary(self, summary: Mapping[str, Any]) -> None:
        write_json_atomic(self.path / SUMMARY_FILE, summary)

    def _open_logs(self) -> None:
        # unbuffered binary appends: each record is one write() call of one whole line, handed
        # to the OS at once (nothing waits in a Python buffer), and cheaper than a text file
        try:
            self._iterations = open(self.path / ITERATIONS_FILE, "ab", buffering=0)
            self._epochs = open(self.path / EPOCHS_FILE, "ab", buffering=0)
        except OSError as err:
            raise write_error(self.path / ITERATIONS_FILE, err) from err

    def _append(self, fh, record: Mapping[str, Any]) -> None:
        data = (dumps_record(record) + "\n").encode("utf-8")
        start = fh.tell()
        try:
            written = 0
            while written < len(data):  # a short write (disk nearly full) is retried
                written += fh.write(data[written:])
            if self.fsync:
                os.fsync(fh.fileno())
        except OSError as err:
            # no half line stays behind: the file ends with the last whole record
            with contextlib.suppress(OSError):
                os.ftruncate(fh.fileno(), start)
            raise write_error(Path(fh.name), err) from err

    def log_iteration(self, record: Mapping[str, Any]) -> None:
        """Append one step record to ``iterations.jsonl``."""
        self._append(self._iterations, record)

    def log_epoch(self, record: Mapping[str, Any]) -> None:
        """Append one (epoch, split) record to ``epochs.jsonl``."""
        self._append(self._epochs, record)

    def sync(self) -> None:
        """Force every record written so far to disk (before a checkpoint refers to them)."""
        for fh in (self._iterations, self._epochs):
            try:
                os.fsync(fh.fileno())
            except OSError as err:
                raise write_error(Path(fh.name), err) from err

    def truncate_after(self, *, step: int, epoch: int, check: RecordsCheck | None = None) -> None:
        """Rewrite the records to the whole prefix up to a checkpoint, so a resumed run
        never duplicates or skips a step.

        Keeps the whole prefix (:func:`msam_core.integrity.check_records`; ``check`` if
        already made) with ``record["step"] <= step`` and ``record["epoch"] <= epoch``:
        a line cut mid-write, a repeated record and anything after a gap are dropped.  Each
        file is rewritten with :func:`write_bytes_atomic`.
        """
        check = check or check_records(self.path)
        self._close_logs()
        keep_steps = [ln.text for ln in check.iterations if ln.record["step"] <= step]
        keep_epochs = [ln.text for ln in check.epochs if ln.record["epoch"] <= epoch]
        write_bytes_atomic(self.path / ITERATIONS_FILE, "".join(keep_steps).encode("utf-8"))
        write_bytes_atomic(self.path / EPOCHS_FILE, "".join(keep_epochs).encode("utf-8"))
        self._open_logs()

    def _close_logs(self) -> None:
        for fh in (self._iterations, self._epochs):
            if fh is not None and not fh.closed:
                fh.close()

    def close(self) -> None:
        """Close the record files and release the run directory's lock."""
        self._close_logs()
        self._lock.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --------------------------------------------------------------------------------------------
# Reading


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a ``.jsonl`` file; a line that is not valid JSON is skipped with a warning.

    A missing file gives ``[]`` (a run that has not logged anything yet).
    """
    path = Path(path)
    records = []
    for line in read_lines(path, advice="fix or remove that line"):
        if line.record is None:
            where = "last line" if not line.text.endswith("\n") else "line"
            warnings.warn(
                f"{path}: skipping unreadable {where} {line.number} (truncated or corrupt "
                f"record, e.g. a run killed mid-write): {line.text[:60]!r}",
                RuntimeWarning,
                stacklevel=3,
            )
            continue
        records.append(line.record)
    return records


def records_frame(records: list[dict[str, Any]], first: Iterable[str]) -> pd.DataFrame:
    """Tidy DataFrame, one row per record; leading columns in ``first`` order; null -> NaN."""
    frame = pd.DataFrame.from_records(records) if records else pd.DataFrame()
    lead = [c for c in first if c in frame.columns]
    frame = frame[lead + [c for c in frame.columns if c not in lead]]
    for column in frame.columns:
        # a column that is numeric apart from nulls (non-finite values) becomes float with NaN
        if frame[column].dtype == object:
            values = frame[column].dropna()
            if len(values) and all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values
            ):
                frame[column] = frame[column].astype(float)
    return frame


@dataclass
class Run:
    """One run directory, loaded: config dict and tidy DataFrames for plotting.

    ``iterations``: one row per step (columns = record keys: step, epoch, loss, lr, dominant,
    phi/<m>, weight/<m>, sharpness, ...).  ``epochs``: one row per (epoch, split).
    """

    path: Path
    config: dict[str, Any]
    iterations: pd.DataFrame
    epochs: pd.DataFrame
    summary: dict[str, Any] = field(default_factory=dict)
    landscapes: list[Path] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    #: gaps, conflicting repeats and repeated records found in the files, each naming file
    #: and line (:func:`msam_core.integrity.check_records`); empty for a whole run
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run's display name: ``config["name"]`` if set, else the directory name."""
        return str(self.config.get("name") or self.path.name)

    @property
    def method(self) -> str | None:
        return self.config.get("method")

    @property
    def dataset(self) -> str | None:
        return self.config.get("dataset")

    @property
    def seed(self) -> int | None:
        return self.config.get("seed")

    @property
    def modalities(self) -> list[str]:
        """Modality names in model order (coalition bit m = modality m)."""
        names = self.config.get("run", {}).get("modalities")
        if names:
            return list(names)
        columns = list(self.iterations.columns) + list(self.epochs.columns)
        seen: list[str] = []
        for c in columns:
            if c.startswith("phi/") and c[4:] not in seen:
                seen.append(c[4:])
        return seen

    @property
    def finished(self) -> bool:
        """True once the loop reached its last epoch (``summary["finished"]``)."""
        return bool(self.summary.get("finished", False))

    def reload(self) -> Run:
        """Read the directory again (for a run that is still being written)."""
        return load_run(self.path)

    def __repr__(self) -> str:
        return (
            f"Run({self.name!r}, method={self.method!r}, modalities={self.modalities}, "
            f"steps={len(self.iterations)}, epoch_rows={len(self.epochs)})"
        )


def _read_json_object(path: Path) -> dict[str, Any]:
    """The JSON object in ``path``; ValueError naming the file when it is not one."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is not valid JSON ({err}); it is broken or not msam's") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object {{...}}, found a {type(data).__name__}")
    return data


def load_run(path: str | os.PathLike) -> Run:
    """Load a run directory written by :func:`msam_core.train` (complete, live or killed).

    Raises FileNotFoundError for a missing path and ValueError for a directory that holds no
    run (no ``config.json`` and no records).
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"no run directory at {str(path)!r}")
    if not path.is_dir():
        raise NotADirectoryError(f"{str(path)!r} is a file, not a run directory")
    if not any((path / name).is_file() for name in (CONFIG_FILE, ITERATIONS_FILE, EPOCHS_FILE)):
        raise ValueError(
            f"{str(path)!r} is not an msam run directory (no {CONFIG_FILE}, "
            f"{ITERATIONS_FILE} or {EPOCHS_FILE}); pass the directory given to --out"
        )
    config: dict[str, Any] = {}
    if (path / CONFIG_FILE).exists():
        config = _read_json_object(path / CONFIG_FILE)
    summary: dict[str, Any] = {}
    if (path / SUMMARY_FILE).exists():
        try:
            summary = _read_json_object(path / SUMMARY_FILE)
        except ValueError as err:  # rewritten every epoch: the records are what counts
            warnings.warn(f"{err}; ignored", RuntimeWarning, 2)
    iterations = records_frame(read_jsonl(path / ITERATIONS_FILE), ("step", "epoch"))
    epochs = records_frame(read_jsonl(path / EPOCHS_FILE), ("epoch", "split"))
    landscapes = sorted((path / LANDSCAPES_DIR).glob("*.npz"))
    checkpoints = sorted((path / CHECKPOINTS_DIR).glob("epoch_*.pt"))
    eval_every = config.get("eval_every")
    every = eval_every if isinstance(eval_every, int) else None
    check = check_records(path, every, first_step=None)  # own loops may count from 0
    problems = [*check.problems, *check.repaired]
    for problem in problems:
        warnings.warn(f"{path}: {problem}", RuntimeWarning, 2)
    return Run(
        path=path,
        config=config,
        iterations=iterations,
        epochs=epochs,
        summary=summary,
        landscapes=landscapes,
        checkpoints=checkpoints,
        problems=problems,
    )
