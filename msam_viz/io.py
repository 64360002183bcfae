"""Run directories -> :class:`Run` objects, the one input every msam_viz figure takes.

The reader itself lives in :mod:`msam_core.record` (one parser for the run-directory format,
shared with training and resume); this module re-exports it and adds :func:`load_runs` for
many runs at once: explicit paths, glob patterns, or a folder whose sub-folders are runs.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable
from pathlib import Path

from msam_core.record import CONFIG_FILE, EPOCHS_FILE, ITERATIONS_FILE, Run, load_run

__all__ = ["Run", "load_run", "load_runs"]

_GLOB_CHARS = frozenset("*?[")
_MARKERS = (CONFIG_FILE, ITERATIONS_FILE, EPOCHS_FILE)


def _is_run_dir(path: Path) -> bool:
    return path.is_dir() and any((path / name).exists() for name in _MARKERS)


def _runs_below(folder: Path) -> list[Path]:
    """Run directories under ``folder`` at any depth, sorted; a run's own folders are not searched.

    So ``msam compare --out DIR`` (``DIR/<method>/seed<k>``) loads as one folder.
    """
    found: list[Path] = []
    for child in sorted(p for p in folder.iterdir() if p.is_dir()):
        found.extend([child] if _is_run_dir(child) else _runs_below(child))
    return found


def _expand(item: str | os.PathLike) -> list[Path]:
    """One argument -> run directories: a glob's matches, a run, or a folder of runs."""
    text = os.fspath(item)
    if _GLOB_CHARS & set(text):
        matches = sorted(Path(p) for p in glob.glob(os.path.expanduser(text)))
        runs = [p for p in matches if _is_run_dir(p)]
        if not runs:
            raise FileNotFoundError(
                f"pattern {text!r} matches no run directory ({len(matches)} paths matched, "
                f"none holding {' / '.join(_MARKERS)})"
            )
        return runs
    path = Path(text).expanduser()
    if path.is_dir() and not _is_run_dir(path):
        below = _runs_below(path)
        if below:
            return below
    # A single run; load_run gives the precise error for a missing or empty directory.
    return [path]


def load_runs(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Run]:
    """Load several runs, in the order given (globs sorted), each directory once.

    ``paths``: a path, a glob pattern (``"runs/msam_seed*"``), a folder holding runs at any depth
    (as ``msam compare --out DIR`` writes ``DIR/<method>/seed<k>``), or a list mixing these.
    Raises FileNotFoundError / ValueError naming the first path that is not a run.
    """
    items = [paths] if isinstance(paths, str | os.PathLike) else list(paths)
    if not items:
        raise ValueError("no run paths given: pass run directories or a glob like 'runs/*'")
    unique: dict[Path, Path] = {}  # resolved -> as given, so Run.path keeps the user's spelling
    for item in items:
        for path in _expand(item):
            unique.setdefault(path.resolve(), path)
    return [load_run(path) for path in unique.values()]
