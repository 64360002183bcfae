"""``msam train --nproc N``: one run on N processes, started by torch's own launcher.

The command checks what it can once (process count, config, run directory), then hands the
same command line, without ``--nproc``, to :mod:`torch.distributed.run` (what ``torchrun``
runs), which starts ``python -m msam_core train ...`` N times with ``RANK`` / ``WORLD_SIZE``
set; :func:`msam_core.train.train` joins the group from there.  When a rank dies, torch's
launcher stops the others; the error names the rank and the command that resumes the run.
Under ``torchrun --max-restarts K`` a restarted attempt resumes from the last checkpoint
(:func:`restarted_attempt`) instead of starting over.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from msam_core.config import resolve_config
from msam_core.executors import available_cpus
from msam_core.layout import CONFIG_FILE
from msam_core.runlock import (
    LAUNCHER_LOCK_ENV,
    check_writable,
    create_run_dir,
    holds_files,
    run_lock,
)


def launched_here() -> bool:
    """True inside a process that ``torchrun`` started (one rank of a run)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def restarted_attempt(out: str | os.PathLike | None) -> bool:
    """True in a ``torchrun --max-restarts`` retry of a run that has a checkpoint to continue."""
    retry = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
    return retry and out is not None and (Path(out) / "checkpoints" / "last.pt").is_file()


def process_limit(device: str) -> tuple[int, str]:
    """How many processes a run may have here: one per GPU on CUDA, one per CPU otherwise."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device} but CUDA is not available here; use --device cpu")
    if device.startswith("cuda") or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.device_count(), "CUDA device(s)"
    return available_cpus(), "CPU core(s) available to this process"


def _without_nproc(tokens: Sequence[str]) -> list[str]:
    out, skip = [], False
    for token in tokens:
        if skip:
            skip = False
        elif token == "--nproc":
            skip = True
        elif not token.startswith("--nproc="):
            out.append(token)
    return out


def run_processes(
    nproc: int,
    tokens: Sequence[str],
    *,
    config: Any,
    overrides: Mapping[str, Any],
    out: str | None,
    resume: bool,
    overwrite: bool,
) -> int:
    """Check, then launch ``nproc`` ranks of ``msam train <tokens>``; the exit status.

    Raises ValueError / FileExistsError / FileNotFoundError (bad input) before any process
    starts or anything is written.
    """
    if resume:
        if out is None or not (Path(out) / CONFIG_FILE).is_file():
            raise FileNotFoundError(f"cannot resume {out!r}: no run there (no {CONFIG_FILE})")
        from msam_core.config import read_config_file

        cfg = resolve_config(read_config_file(Path(out) / CONFIG_FILE))
        device = str(overrides.get("device", cfg.device))
    else:
        cfg = resolve_config(config, **overrides)  # bad keys or values: refused here, once
        device = cfg.device
        if out is None:
            out = str(Path("runs") / f"{cfg.method}_{cfg.dataset}_seed{cfg.seed}")
            tokens = [*tokens, "--out", out]
        if not overwrite and holds_files(Path(out)):
            raise FileExistsError(
                f"{out!r} already holds files; continue that run with --resume, or replace "
                "it with --overwrite"
            )
    _check_out_usable(Path(out))
    limit, what = process_limit(device)
    if nproc > limit:
        raise ValueError(
            f"--nproc {nproc} but this machine has {limit} {what}; use at most {limit} (several "
            "machines: torchrun --nnodes M --nproc_per_node K -m msam_core train ...)"
        )
    if nproc > cfg.batch_size:
        raise ValueError(
            f"--nproc {nproc} exceeds batch_size {cfg.batch_size} (the global batch each step "
            "shares out); give every process at least one sample"
        )
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as launch

    argv = ["--standalone", f"--nproc_per_node={nproc}", "--module", "msam_core", "train"]
    try:
        with _lock_for_ranks(Path(out), nproc):
            launch(get_args_parser().parse_args([*argv, *_without_nproc(tokens)]))
    except ChildFailedError as err:
        print(failure_message(err, out, nproc), file=sys.stderr)
        return 1
    except SignalException as err:  # SIGTERM or SIGHUP to the launcher: it ended the ranks,
        # and rank 0 has said where the run stands and how to resume it
        print(f"msam train: {err.sigval.name} ended all {nproc} ranks", file=sys.stderr)
        return 128 + int(err.sigval)
    return 0


def _check_out_usable(out: Path) -> None:
    """Refuse here, before any rank starts, a run directory rank 0 could not create or write
    (a file, a path under a file, a read-only folder): refused inside the ranks, the others
    would wait for rank 0 until the group's timeout.  Creates nothing."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(
            f"run directory {str(out)!r} exists and is a file; choose another --out"
        )
    if out.is_dir():
        check_writable(out)
        return
    parent = next((p for p in out.absolute().parents if p.exists()), None)
    if parent is None:
        return
    if not parent.is_dir():
        raise NotADirectoryError(
            f"cannot create run directory {str(out)!r}: {str(parent)!r} is a file; "
            "choose another --out"
        )
    try:
        check_writable(parent)
    except PermissionError as err:
        raise PermissionError(
            f"cannot create run directory {str(out)!r}: {str(parent)!r} is not writable; "
            "choose a writable --out"
        ) from err


@contextlib.contextmanager
def _lock_for_ranks(out: Path, nproc: int) -> Iterator[None]:
    """Hold ``out``'s writer lock from before the ranks start until they have ended; rank 0
    writes under it (:data:`~msam_core.runlock.LAUNCHER_LOCK_ENV` tells it so).  Taken by rank
    0 instead, another writer could start between these checks and rank 0's start and be
    found only inside the ranks.  Raises RunLocked naming the current writer."""
    create_run_dir(out)
    with run_lock(out, f"training on {nproc} processes"):
        os.environ[LAUNCHER_LOCK_ENV] = f"{os.getpid()}:{out.resolve()}"
        try:
            yield
        finally:
            os.environ.pop(LAUNCHER_LOCK_ENV, None)


def failure_message(err: Any, out: str, nproc: int) -> str:
    """Which rank ended the run, how, and what to run next."""
    rank, failure = err.get_first_failure()
    how = f"exit code {failure.exitcode}"
    if failure.exitcode < 0:
        try:
            how = f"killed by {signal.Signals(-failure.exitcode).name}"
        except ValueError:
            pass
    text = f"msam train: rank {rank} of {nproc} stopped ({how}); the other ranks were ended."
    if (Path(out) / "checkpoints" / "last.pt").is_file():
        text += (
            f" Records up to the last checkpoint are kept in {out!r}; continue with: "
            f"msam train --resume {out} --nproc {nproc}"
        )
    else:
        text += " It stopped before its first checkpoint; see the error above, then start again."
    return text
