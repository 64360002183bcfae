"""The names in a run directory and which checkpoint file is which (torch-free).

Layout (docs/design.md, "The run directory")::

    RUN/config.json        the training config, plus ``"run"``: versions, git commit, device,
                           modality names (written once, atomically, when the run starts)
    RUN/iterations.jsonl   one JSON object per optimisation step, appended and flushed
    RUN/epochs.jsonl       one JSON object per (epoch, split) evaluation
    RUN/summary.json       best-val epoch and its metrics (rewritten atomically each epoch)
    RUN/landscapes/*.npz   loss-landscape grids
    RUN/checkpoints/       epoch_0003.pt per kept epoch, last.pt for resume, best.pt (weights
                           of the best-val epoch)

:mod:`msam_core.record` reads and writes the JSON records, :mod:`msam_core.rundir` the
checkpoints and landscapes; both take their names from here, and this module imports neither
torch nor pandas, so a figure can list a run's checkpoints cheaply.
"""

from __future__ import annotations

import os
from pathlib import Path

CONFIG_FILE = "config.json"
ITERATIONS_FILE = "iterations.jsonl"
EPOCHS_FILE = "epochs.jsonl"
SUMMARY_FILE = "summary.json"
LANDSCAPES_DIR = "landscapes"
CHECKPOINTS_DIR = "checkpoints"
#: what a run directory holds; --overwrite deletes these and nothing else
RUN_ENTRIES = (
    CONFIG_FILE,
    ITERATIONS_FILE,
    EPOCHS_FILE,
    SUMMARY_FILE,
    CHECKPOINTS_DIR,
    LANDSCAPES_DIR,
)
#: the splits evaluated at an epoch's end, in the order their records are written
SPLITS = ("train", "val", "test")
#: the checkpoint a resume reads first (the newest)
LAST_CHECKPOINT = "last.pt"
#: the best-validation epoch's weights
BEST_CHECKPOINT = "best.pt"
#: named checkpoints besides the epoch numbers
NAMED_CHECKPOINTS = ("best", "last")


def epoch_checkpoint_name(epoch: int) -> str:
    """``epoch_0003.pt``: the file of the checkpoint taken at the end of ``epoch``."""
    return f"epoch_{epoch:04d}.pt"


def checkpoint_epochs(run_dir: str | os.PathLike) -> dict[int, Path]:
    """``{epoch: path}`` of the run's ``checkpoints/epoch_XXXX.pt`` files, sorted by epoch."""
    folder = Path(run_dir) / CHECKPOINTS_DIR
    found = {}
    for path in folder.glob("epoch_*.pt"):
        suffix = path.stem.removeprefix("epoch_")
        if suffix.isdigit():
            found[int(suffix)] = path
    return dict(sorted(found.items()))


def epoch_checkpoints(run_dir: str | os.PathLike, purpose: str = "use") -> dict[int, Path]:
    """:func:`checkpoint_epochs`, or FileNotFoundError when the run kept none (saying why)."""
    found = checkpoint_epochs(run_dir)
    if not found:
        raise FileNotFoundError(
            f"run {str(run_dir)!r} has no checkpoints/epoch_XXXX.pt; train it with "
            f"checkpoint_every >= 1 to {purpose} the weights of its epochs"
        )
    return found


def checkpoint_path(run_dir: str | os.PathLike, which: str | int = "best") -> Path:
    """The file of checkpoint ``which``: ``"best"`` (best validation epoch), ``"last"``, or an
    epoch number.  Errors name what the run has."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"no run directory at {str(run_dir)!r}")
    if isinstance(which, str) and not which.isdigit():
        if which not in NAMED_CHECKPOINTS:
            raise ValueError(
                f"checkpoint must be one of {list(NAMED_CHECKPOINTS)} or an epoch number, "
                f"got {which!r}"
            )
        path = run_dir / CHECKPOINTS_DIR / f"{which}.pt"
        if not path.is_file():
            hint = (
                "no epoch after 0 has been evaluated yet"
                if which == "best"
                else "it was killed before its first checkpoint"
            )
            raise FileNotFoundError(f"run {str(run_dir)!r} has no checkpoints/{which}.pt: {hint}")
        return path
    epoch = int(which)
    available = epoch_checkpoints(run_dir)
    if epoch not in available:
        raise ValueError(
            f"run {str(run_dir)!r} has no checkpoint for epoch {epoch}; "
            f"available epochs: {list(available)}"
        )
    return available[epoch]
