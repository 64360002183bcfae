"""Plumbing shared by the dashboards: figures kept live in place, and work off the kernel thread.

- :func:`sync_figure` makes a ``go.FigureWidget`` match a freshly drawn ``go.Figure`` by
  updating its traces and layout in one ``batch_update`` (one message to the browser); the
  widget object is never re-created, so a displayed figure keeps its place, zoom and view.
- :class:`LiveFigure` pairs a figure function of :mod:`msam_viz.figures` with its widget, so
  every dashboard draws with the same code as the static figures.
- :class:`RecordBuffer` collects step and epoch records as training emits them (any thread) and
  hands out a :class:`~msam_viz.io.Run` snapshot that every figure function accepts.
- :class:`BackgroundJob` runs a function in a daemon thread and keeps its result or error,
  so a notebook cell returns at once and the kernel stays responsive.

Widget updates may come from a worker thread: ipywidgets sends comm messages through the
kernel's IOPub thread, which is thread-safe; a per-figure lock keeps two threads from
interleaving updates of one figure.
"""

from __future__ import annotations

import json
import math
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.utils import PlotlyJSONEncoder

# One tidy-frame builder for files and live records alike, so live figures equal reloaded ones.
from msam_core.record import records_frame
from msam_viz.figures import MissingRecordsWarning
from msam_viz.io import Run

__all__ = ["BackgroundJob", "LiveFigure", "RecordBuffer", "json_safe", "sync_figure"]


def _same(a: Any, b: Any) -> bool:
    """Equal as plotly would serialise them (handles numpy arrays inside dicts)."""
    if a is b:
        return True
    try:
        return json.dumps(a, cls=PlotlyJSONEncoder, sort_keys=True) == json.dumps(
            b, cls=PlotlyJSONEncoder, sort_keys=True
        )
    except (TypeError, ValueError):
        return False


def json_safe(value: Any) -> Any:
    """``value`` with every NaN / inf replaced by None (a gap in plotly), ready for the wire.

    Widget state travels as strict JSON, which has no NaN: plotly sends 1-D numeric numpy
    arrays as binary buffers (NaN survives), but lists and 2-D arrays (a contour's ``z``) as
    JSON, where one NaN makes the browser drop the whole message.
    """
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        if value.ndim == 1 and value.dtype.kind in "uif":
            return value  # sent as a binary buffer (floats) or holds no NaN (integers)
        return json_safe(value.tolist())
    if isinstance(value, float | np.floating) and not math.isfinite(value):
        return None
    return value


def _update_props(target: Any, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """Assign changed top-level properties of ``new`` onto ``target``; clear ones ``new`` lacks.

    Whole sub-objects are replaced (``xaxis``, ``line``, …), so nested keys left over from an
    earlier drawing (an axis hidden while the figure was empty) cannot linger.
    """
    for key in old:
        if key not in new and key != "uid":
            target[key] = None
    for key, value in new.items():
        if key in ("uid", "type"):
            continue
        if key not in old or not _same(old[key], value):
            target[key] = value


def _signature(traces: Any) -> list[tuple[str, Any]]:
    return [(t.type, t.name) for t in traces]


def sync_figure(widget: go.FigureWidget, fig: go.Figure) -> go.FigureWidget:
    """Make ``widget`` show what ``fig`` shows, in place, with one batched update.

    Traces are updated property by property when ``fig`` has the same traces (types and
    names, in order) as ``widget``; otherwise they are replaced.  Layout keys ``fig`` lacks
    are cleared.  Returns ``widget``.
    """
    if not isinstance(widget, go.FigureWidget):
        raise TypeError(f"widget must be a plotly FigureWidget, got {type(widget).__name__}")
    # Per object, not fig.to_plotly_json(): that base64-encodes arrays, and the widget's
    # Python side would then hold encoded dicts instead of the arrays users read back.
    traces = [json_safe(trace.to_plotly_json()) for trace in fig.data]
    new_layout = json_safe(fig.layout.to_plotly_json())
    old_layout = widget.layout.to_plotly_json()
    with widget.batch_update():
        if _signature(widget.data) == _signature(fig.data):
            for target, source in zip(widget.data, traces, strict=True):
                _update_props(target, target.to_plotly_json(), source)
        else:
            widget.data = ()
            widget.add_traces(traces)
        _update_props(widget.layout, old_layout, new_layout)
    return widget


class LiveFigure:
    """A ``FigureWidget`` drawn by ``make(run, **options)`` and redrawn in place on :meth:`update`.

    ``make`` is a figure function of :mod:`msam_viz.figures` (or any ``Run -> go.Figure``).
    Updates are serialised by a lock, so a worker thread and the kernel thread may both call
    :meth:`update`.  Missing-record warnings are silenced here: while a run is young most
    records are missing, and the figure already says so in its annotation.
    """

    def __init__(self, make: Callable[..., go.Figure], run: Any = None, **options: Any):
        self.make = make
        self.options = options
        self._lock = threading.RLock()
        self.widget = go.FigureWidget()
        self.updates = 0
        if run is not None:
            self.update(run)

    def draw(self, run: Any) -> go.Figure:
        """The figure for ``run`` (a Run or a list of runs); not displayed, widget untouched."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingRecordsWarning)
            return self.make(run, **self.options)

    def update(self, run: Any, **options: Any) -> go.FigureWidget:
        """Redraw for ``run`` into the existing widget; ``options`` change the figure's options."""
        self.options.update(options)
        fig = self.draw(run)
        with self._lock:
            sync_figure(self.widget, fig)
            self.updates += 1
        return self.widget


class RecordBuffer:
    """Step and epoch records of one run, appended from any thread, read as a :class:`Run`.

    ``config`` is the run's config dict (``method``, ``dataset``, ``seed`` …, and
    ``run.modalities`` for the modality order) — the same content as ``config.json``.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, path: str | Path = "live"):
        self.config = dict(config or {})
        self.path = Path(path)
        self._iterations: list[dict[str, Any]] = []
        self._epochs: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self.version = 0  # bumped on every append: readers redraw only when it moved

    def add_iteration(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._iterations.append(dict(record))
            self.version += 1

    def add_epoch(self, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._epochs.append(dict(record))
            self.version += 1

    def set_config(self, config: Mapping[str, Any]) -> None:
        with self._lock:
            self.config = dict(config)
            self.version += 1

    @property
    def n_iterations(self) -> int:
        return len(self._iterations)

    @property
    def n_epochs(self) -> int:
        return len(self._epochs)

    def last_iteration(self) -> dict[str, Any] | None:
        with self._lock:
            return dict(self._iterations[-1]) if self._iterations else None

    def snapshot(self) -> Run:
        """A :class:`Run` holding the records so far (copies; safe to read while training)."""
        with self._lock:
            iterations = list(self._iterations)
            epochs = list(self._epochs)
            config = dict(self.config)
        return Run(
            path=self.path,
            config=config,
            iterations=records_frame(iterations, ("step", "epoch")),
            epochs=records_frame(epochs, ("epoch", "split")),
        )


class BackgroundJob:
    """``target()`` in a daemon thread; ``result`` / ``error`` once it ends.

    ``on_done(job)`` runs in the worker thread after ``target`` returns or raises.
    """

    def __init__(
        self,
        target: Callable[[], Any],
        *,
        name: str = "msam-job",
        on_done: Callable[[BackgroundJob], None] | None = None,
    ) -> None:
        self.target = target
        self.on_done = on_done
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_text: str | None = None
        self._done = threading.Event()  # set before on_done runs, so it sees the job ended
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> BackgroundJob:
        self._thread.start()
        return self

    def _run(self) -> None:
        try:
            self.result = self.target()
        except BaseException as err:  # reported through .error and the dashboard's status
            self.error = err
            self.error_text = "".join(traceback.format_exception(err))
        finally:
            self._done.set()
            if self.on_done is not None:
                self.on_done(self)

    @property
    def started(self) -> bool:
        return self._thread.ident is not None

    @property
    def running(self) -> bool:
        """True from :meth:`start` until ``target`` has returned or raised."""
        return self.started and not self._done.is_set()

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the job; True when it has finished."""
        if self.started:
            self._thread.join(timeout)
        return not self._thread.is_alive()
