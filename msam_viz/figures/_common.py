"""What every figure needs from a run: its label, modalities, columns, and honest gaps.

Figures read a :class:`~msam_viz.io.Run` through these helpers only, so a run lacking a
record (no Hessian, no landscape, a method without weights) draws what it has and says what
is missing, both on the figure (an annotation) and as a :class:`MissingRecordsWarning`.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go

PHI = "phi/"
ACC = "acc/"
SHARP = "sharpness/"


class MissingRecordsWarning(UserWarning):
    """A figure was drawn without some records the run does not hold."""


def as_run_list(runs: Any) -> list[Any]:
    """One run or an iterable of runs -> a non-empty list of runs."""
    if hasattr(runs, "iterations") and hasattr(runs, "epochs"):
        return [runs]
    if isinstance(runs, str | bytes | os.PathLike) or not isinstance(runs, Iterable):
        check_run(runs)  # raises the TypeError that says how to load a run
    out = list(runs)
    if not out:
        raise ValueError("no runs given: pass at least one Run (see msam_viz.load_runs)")
    return [check_run(run) for run in out]


def check_run(run: Any) -> Any:
    """``run`` itself when it is a loaded run; a clear TypeError for a path or anything else."""
    if hasattr(run, "iterations") and hasattr(run, "epochs"):
        return run
    if isinstance(run, str | bytes | os.PathLike):
        raise TypeError(
            f"figures take a loaded Run, got the path {os.fspath(run)!r}; "
            "load it first: run = msam_viz.load_run(path)"
        )
    raise TypeError(f"expected a Run (from msam_viz.load_run), got {type(run).__name__}")


def config_value(run: Any, key: str, default: Any = None) -> Any:
    """``run.config[key]``, also looking one level into nested sections (``train.method``)."""
    config = getattr(run, "config", None) or {}
    if key in config:
        return config[key]
    for value in config.values():
        if isinstance(value, dict) and key in value:
            return value[key]
    return default


def run_group(run: Any, by: str) -> str:
    """What a run is a seed of: ``config[by]``; for ``by="method"`` a run ``msam compare`` named
    ``<spec>/seed<k>`` belongs to its spec (``msam[rho=0.5]``, ``alone/visual``), so specs of
    one method and the modality-alone runs are never pooled with it."""
    if by == "method":
        name = str(config_value(run, "name") or "")
        head, _, tail = name.rpartition("/seed")
        if head and tail.isdigit():
            return head
    return str(config_value(run, by, "unknown"))


def run_name(run: Any) -> str:
    """A short name for legends: the run's own name, else its directory name."""
    name = getattr(run, "name", None)
    if name:
        return str(name)
    path = getattr(run, "path", None)
    return str(getattr(path, "name", path) or "run")


def run_method(run: Any) -> str:
    """The training method of a run (``msam``, ``joint``, …), ``"unknown"`` when not recorded."""
    return str(config_value(run, "method", "unknown"))


def run_seed(run: Any) -> Any:
    return config_value(run, "seed")


def run_dataset(run: Any) -> str | None:
    """The dataset a run trained on (``synthetic``, ``mfeat``, …), ``None`` when not recorded."""
    dataset = config_value(run, "dataset")
    if isinstance(dataset, dict):
        dataset = dataset.get("name")
    return str(dataset) if dataset else None


def _tokens(text: str) -> list[str]:
    return [t for t in re.split(r"[^a-z0-9.]+", text.lower()) if t]


def _name_is_redundant(name: str, run: Any) -> bool:
    """True when every word of ``name`` already says method, dataset or seed: ``msam``,
    ``synthetic/msam``, ``msam/seed0``, ``joint_s1`` (so a subtitle need not repeat it)."""
    known = set(_tokens(run_method(run))) | set(_tokens(run_dataset(run) or ""))
    seed = run_seed(run)
    if seed is not None:
        known |= {"seed", f"seed{seed}", f"s{seed}", str(seed)}
    words = _tokens(name)
    return bool(words) and all(w in known for w in words)


def run_subtitle(run: Any, label: str | None = None) -> str:
    """``name · method · dataset · seed`` for figure subtitles.

    ``label``: the name to show (e.g. a report's unique label), default :func:`run_name`.  It
    is left out when it only repeats the others (a directory named after its method or seed),
    so ``msam`` of the demo reads ``msam · synthetic · seed 0``, not ``msam · msam · …``.
    """
    name = label if label is not None else run_name(run)
    parts = [] if _name_is_redundant(name, run) else [name]
    parts.append(run_method(run))
    dataset = run_dataset(run)
    if dataset:
        parts.append(dataset)
    seed = run_seed(run)
    if seed is not None:
        parts.append(f"seed {seed}")
    return " · ".join(parts)


def run_labels(runs: Sequence[Any]) -> list[str]:
    """One label per run, unique among ``runs``, for legends, section titles and file names.

    A run keeps its :func:`run_name` when no other run has that name or a folder of it;
    otherwise it is labelled by the shortest suffix of its path (below the runs' common
    parent) that appears in no other run's path: ``synthetic/msam`` beside ``mfeat/msam``,
    ``msam/seed0`` beside ``joint/seed0``, and ``mfeat/joint`` (not a bare ``joint``) beside
    ``joint/seed0``.  Runs that still clash (no path, the same run twice) get `` (2)``, ….
    """
    names = [run_name(run) for run in runs]
    parts = _relative_parts([_path_parts(run) for run in runs])
    labels = []
    for i, name in enumerate(names):
        others = [p for j, p in enumerate(parts) if j != i]
        other_names = names[:i] + names[i + 1 :]
        if not parts[i] or (
            name not in other_names and not any(_holds(p, (name,)) for p in others)
        ):
            labels.append(name)
            continue
        label = "/".join(parts[i])  # the whole path: distinct unless the same run twice
        for k in range(1, len(parts[i]) + 1):
            suffix = parts[i][-k:]
            if not any(_holds(p, suffix) for p in others):
                label = "/".join(suffix)
                break
        labels.append(label)
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return out


def _holds(path: tuple[str, ...], part: tuple[str, ...]) -> bool:
    """True when ``part`` is a run of consecutive folders somewhere in ``path``."""
    n = len(part)
    return any(path[j : j + n] == part for j in range(len(path) - n + 1))


def _relative_parts(paths: list[tuple[str, ...]]) -> list[tuple[str, ...]]:
    """Each path's parts below the common parent of all the (non-empty) paths."""
    known = [p for p in paths if p]
    common = 0
    while known and all(len(p) > common + 1 for p in known):
        if len({p[common] for p in known}) > 1:
            break
        common += 1
    return [p[common:] for p in paths]


def _path_parts(run: Any) -> tuple[str, ...]:
    """The parts of the run's absolute directory path, ``()`` when it has no path."""
    path = getattr(run, "path", None)
    if path is None:
        return ()
    return Path(os.path.abspath(os.fspath(path))).parts


def run_modalities(run: Any) -> list[str]:
    """Modality names in the model's order: the run's own list, the config's, else the columns."""
    names = getattr(run, "modalities", None) or config_value(run, "modalities")
    if names:
        return [m if isinstance(m, str) else str(m.get("name", m)) for m in names]
    seen: dict[str, None] = {}
    for frame in (run.iterations, run.epochs):
        for col in getattr(frame, "columns", ()):
            for prefix in (PHI, ACC, "weight/"):
                if isinstance(col, str) and col.startswith(prefix):
                    seen.setdefault(col[len(prefix) :], None)
    return list(seen)


def present(frame: pd.DataFrame | None, column: str) -> bool:
    """True when ``column`` exists and holds at least one value."""
    return frame is not None and column in frame.columns and bool(frame[column].notna().any())


def rows_with(frame: pd.DataFrame, columns: Sequence[str], x: str = "step") -> pd.DataFrame:
    """The rows where any of ``columns`` is recorded (every-k-steps records), sorted by ``x``."""
    cols = [c for c in columns if c in frame.columns]
    if not cols:
        return frame.iloc[0:0]
    out = frame.loc[frame[cols].notna().any(axis=1)]
    return out.sort_values(x) if x in out.columns else out


def smooth(values: pd.Series, window: int | None) -> pd.Series:
    """Centred rolling mean over ``window`` records (``None``/1: unchanged); gaps stay gaps."""
    if window is None:
        return values
    if window < 1:
        raise ValueError(f"smooth window must be a positive number of steps, got {window}")
    if window == 1:
        return values
    return values.rolling(int(window), center=True, min_periods=1).mean()


def bin_mean(frame: pd.DataFrame, x: str, columns: Sequence[str], max_points: int) -> pd.DataFrame:
    """At most ``max_points`` rows: consecutive rows averaged in equal bins (x and values).

    Keeps figures of 10^4+ steps light in the browser; a no-op below ``max_points``.
    """
    n = len(frame)
    if max_points <= 0 or n <= max_points:
        return frame[[x, *columns]]
    bins = np.arange(n) * max_points // n
    return frame[[x, *columns]].groupby(bins).mean()


def note_missing(fig: go.Figure, what: Sequence[str], run: Any | None = None) -> None:
    """Say on ``fig`` (annotation under the title) and as a warning what the run lacks."""
    if not what:
        return
    who = f"run {run_name(run)!r}: " if run is not None else ""
    text = "not in this run: " + "; ".join(what)
    warnings.warn(who + text, MissingRecordsWarning, stacklevel=3)
    existing = [a.text for a in fig.layout.annotations if a.name == "missing"]
    if text in existing:
        return
    fig.add_annotation(
        name="missing",
        text=text,
        xref="paper",
        yref="paper",
        x=0.0,
        y=0.0,
        # Pixels below the x-axis title, one line per note, with room made in the margin.
        yshift=-48 - 18 * len(existing),
        xanchor="left",
        yanchor="top",
        showarrow=False,
        font={"size": 11, "color": "#8a1c1c"},
        align="left",
    )
    fig.update_layout(margin={"b": 80 + 18 * len(existing)})


def empty_message(fig: go.Figure, text: str) -> go.Figure:
    """A centred message on an otherwise empty figure (nothing to draw)."""
    fig.add_annotation(
        name="empty",
        text=text,
        xref="paper",
        yref="paper",
        x=0.5,
        y=0.5,
        showarrow=False,
        font={"size": 14, "color": "#555555"},
    )
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    return fig
