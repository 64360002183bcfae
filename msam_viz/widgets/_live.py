"""Plumbing shared by the dashboards: figures that always show their current state, and work
off the kernel thread.

- :class:`FigureView` is a widget whose synced state *is* the whole figure: one notebook output
  of plotly's own mime type, drawn by the front end's plotly renderer (the one that draws every
  static figure).  A view created late, re-created or rebuilt after a page reload renders from
  that state, so it always shows the current figure.
- :class:`LiveFigure` pairs a figure function of :mod:`msam_viz.figures` with its view, so
  every dashboard draws with the same code as the static figures.
- :class:`RecordBuffer` collects step and epoch records as training emits them (any thread) and
  hands out a :class:`~msam_viz.io.Run` snapshot that every figure function accepts.
- :class:`BackgroundJob` runs a function in a daemon thread and keeps its result or error,
  so a notebook cell returns at once and the kernel stays responsive.

Why not plotly's ``FigureWidget``: it sends its state once, at creation, and every later change
as a one-shot delta.  A delta that reaches the browser before the widget's front end has loaded
is dropped, and a view made after a reload renders the creation-time state, so figures stayed
blank under load.  Each ``FigureWidget`` also stores its own 4.8 MB copy of plotly.js in the
notebook's widget state.

Widget updates may come from a worker thread: ipywidgets sends comm messages through the
kernel's IOPub thread, which is thread-safe; a per-figure lock keeps two threads from
interleaving updates of one figure.
"""

from __future__ import annotations

import json
import threading
import traceback
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go
import plotly.io as pio

# One tidy-frame builder for files and live records alike, so live figures equal reloaded ones.
from msam_core.record import records_frame
from msam_viz.figures import MissingRecordsWarning
from msam_viz.io import Run

__all__ = ["BackgroundJob", "FigureView", "LiveFigure", "RecordBuffer", "figure_output"]

#: plotly's mime type; JupyterLab, Notebook 7 and VS Code draw it with their plotly renderer
PLOTLY_MIME = "application/vnd.plotly.v1+json"


def figure_output(fig: go.Figure) -> dict[str, Any]:
    """``fig`` as one notebook output (``display_data``) in plotly's mime type.

    Strict JSON: NaN and inf become null (a gap), numeric arrays travel base64-encoded; no
    plotly.js inside, the front end brings its own.
    """
    spec = json.loads(pio.to_json(fig, validate=False, remove_uids=False))
    title = fig.layout.title.text or "plotly figure"
    return {
        "output_type": "display_data",
        "data": {PLOTLY_MIME: spec, "text/plain": f"<figure: {title}>"},
        "metadata": {},
    }


class FigureView(W.Output):
    """A plotly figure as a widget whose synced state is the whole figure.

    :meth:`set_figure` replaces that state (one message); the browser redraws every view of it
    from the state, so there is no delta to lose.  ``figure`` is the ``go.Figure`` shown
    (read its ``data`` and ``layout`` in Python).
    """

    def __init__(self, figure: go.Figure | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.figure = go.Figure()
        self.set_figure(figure if figure is not None else go.Figure())

    def set_figure(self, figure: go.Figure) -> FigureView:
        """Show ``figure`` in every view, present and future; returns ``self``."""
        if not isinstance(figure, go.Figure):
            raise TypeError(f"figure must be a plotly go.Figure, got {type(figure).__name__}")
        output = figure_output(figure)
        self.figure = figure
        self.outputs = (output,)
        return self


class LiveFigure:
    """A :class:`FigureView` drawn by ``make(run, **options)`` and redrawn on :meth:`update`.

    ``make`` is a figure function of :mod:`msam_viz.figures` (or any ``Run -> go.Figure``).
    Updates are serialised by a lock, so a worker thread and the kernel thread may both call
    :meth:`update`.  Missing-record warnings are silenced here: while a run is young most
    records are missing, and the figure already says so in its annotation.
    """

    def __init__(self, make: Callable[..., go.Figure], run: Any = None, **options: Any):
        self.make = make
        self.options = options
        self._lock = threading.RLock()
        self.widget = FigureView()
        self.updates = 0
        if run is not None:
            self.update(run)

    def draw(self, run: Any) -> go.Figure:
        """The figure for ``run`` (a Run or a list of runs); not displayed, widget untouched."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MissingRecordsWarning)
            return self.make(run, **self.options)

    def update(self, run: Any, **options: Any) -> FigureView:
        """Redraw for ``run`` into the existing view; ``options`` change the figure's options."""
        self.options.update(options)
        fig = self.draw(run)
        with self._lock:
            self.widget.set_figure(fig)
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
