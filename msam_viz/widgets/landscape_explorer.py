"""Landscape explorer: pick a checkpoint, a direction subspace, span and resolution; look.

The loss around the weights is computed by :func:`msam_core.landscape.landscape_for_run` (in
a background thread: a 41 x 41 grid takes seconds to minutes) and saved in the run's
``landscapes/`` folder, named after its settings, so asking again for the same settings
reads the file instead of recomputing.  Views and metric switch instantly; they are the
figures of :mod:`msam_viz.figures.landscape` (curve, contour, surface with the trajectory).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import ipywidgets as W

from msam_core.layout import LANDSCAPES_DIR, epoch_checkpoints
from msam_viz.figures.landscape import (
    landscape_contour,
    landscape_curves,
    landscape_surface,
    subspace_label,
)
from msam_viz.io import Run, load_run
from msam_viz.style import Style
from msam_viz.widgets._live import BackgroundJob, LiveFigure

#: view name -> (dims computed, figure function)
VIEWS = {
    "1-D curve": (1, landscape_curves),
    "2-D contour": (2, landscape_contour),
    "3-D surface": (2, landscape_surface),
}


def _draw(landscape: Any, *, view: str, metric: str, log: bool, style: Style | None) -> Any:
    """The figure of ``landscape`` in ``view`` (the explorer's one drawing entry point)."""
    dims, make = VIEWS[view]
    options: dict[str, Any] = {"metric": metric}
    if style is not None:
        options["style"] = style
    if dims == 2:
        options["log"] = log
    return make(landscape, **options)


class LandscapeExplorer(W.VBox):
    """Compute and view loss landscapes of one run's checkpoints.

    ``run``: a :class:`~msam_viz.io.Run` or its directory; it needs ``checkpoints/epoch_*.pt``
    (``checkpoint_every >= 1``).  ``steps`` / ``span``: initial grid resolution and extent
    (``α ∈ [-span, span]`` in filter-normalised units).  ``n_eval``: evaluation samples.
    ``model`` / ``data``: for a run of your own model or data (a fresh instance of the
    architecture and the dataset, as ``load_trained(run, model=..., data=...)`` takes them).

    In code: set ``explorer.epoch.value``, ``.subspace.value``, ``.span.value``,
    ``.steps.value``, ``.view.value`` then ``explorer.compute(wait=True)``;
    ``explorer.landscape`` is the :class:`~msam_core.landscape.Landscape` shown.
    """

    def __init__(
        self,
        run: Run | str | os.PathLike,
        *,
        steps: int = 21,
        span: float = 1.0,
        view: str = "2-D contour",
        n_eval: int = 512,
        seed: int = 0,
        style: Style | None = None,
        model: Any = None,
        data: Any = None,
    ) -> None:
        self.run = run if isinstance(run, Run) else load_run(run)
        # a run of your own model or data (msam_core.Recorder, train(model=, data=)) is rebuilt
        # from these, as load_trained(run, model=..., data=...) does
        self.model, self.data = model, data
        self.epochs = epoch_checkpoints(self.run.path, purpose="explore the landscapes of")
        if view not in VIEWS:
            raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
        self.n_eval = n_eval
        self.seed = seed
        self.style = style
        self.landscape: Any = None
        self.path: Path | None = None
        self.job: BackgroundJob | None = None
        self._lock = threading.Lock()

        subspaces = ["all", *self.run.modalities, "fusion"]
        if len(self.epochs) >= 3:  # PCA of the trajectory needs dims + 1 checkpoints
            subspaces.append("pca")
        epochs = list(self.epochs)
        self.epoch = W.Dropdown(options=epochs, value=epochs[-1], description="checkpoint")
        self.subspace = W.Dropdown(
            options=[(subspace_label(s), s) for s in subspaces], value="all", description="subspace"
        )
        self.span = W.FloatSlider(
            value=span, min=0.05, max=3.0, step=0.05, description="span", continuous_update=False
        )
        self.steps = W.IntSlider(
            value=steps, min=5, max=81, step=2, description="resolution", continuous_update=False
        )
        self.view = W.ToggleButtons(options=list(VIEWS), value=view, description="view")
        self.metric = W.ToggleButtons(
            options=[("loss", "loss"), ("accuracy", "acc")], value="loss", description="metric"
        )
        self.log_scale = W.Checkbox(value=False, description="log colour scale")
        self.compute_button = W.Button(description="Compute", icon="cogs", button_style="primary")
        self.status = W.HTML("<i>choose settings and press Compute</i>")
        self.figure = LiveFigure(_draw, view=view, metric="loss", log=False, style=style)
        self.figure.widget.add_class("msam-landscape-view")

        self.compute_button.on_click(lambda _b: self.compute())
        for control in (self.view, self.metric, self.log_scale):
            control.observe(lambda _c: self.redraw(), names="value")
        grid = W.VBox(
            [
                W.HBox([self.epoch, self.subspace]),
                W.HBox([self.span, self.steps]),
                self.view,
                W.HBox([self.metric, self.log_scale]),
                W.HBox([self.compute_button, self.status]),
            ]
        )
        super().__init__([grid, self.figure.widget])
        self.add_class("msam-landscape-explorer")

    # -- computing -------------------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """The arguments of :func:`~msam_core.landscape.landscape_for_run` for the controls."""
        dims = VIEWS[self.view.value][0]
        subspace = self.subspace.value
        return {
            "epoch": int(self.epoch.value),
            "steps": int(self.steps.value),
            "span": float(self.span.value),
            "dims": dims,
            "modality": None if subspace in ("all", "pca") else subspace,
            "pca": subspace == "pca",
            "n_eval": self.n_eval,
            "seed": self.seed,
        }

    @staticmethod
    def file_name(settings: dict[str, Any]) -> str:
        """File stem a setting is stored under: ``explore_e0003_audio_2d_21x1.5``."""
        subspace = "pca" if settings["pca"] else settings["modality"] or "all"
        return (
            f"explore_e{settings['epoch']:04d}_{subspace}_{settings['dims']}d_"
            f"{settings['steps']}x{settings['span']:g}_n{settings['n_eval']}_s{settings['seed']}"
        )

    def compute(self, wait: bool = False) -> None:
        """Compute (or read back) the landscape for the controls, then draw it.

        Runs in a background thread; a second press while one runs is ignored.  ``wait``
        blocks until the landscape is drawn and raises a computation error here.
        """
        if self.job is not None and self.job.running:
            if not wait:
                return
            self.job.join()  # then compute for the current settings (a cached file is cheap)
        settings = self.settings()
        name = self.file_name(settings)
        self.compute_button.disabled = True
        self.status.value = f"computing <code>{name}</code> …"
        self.job = BackgroundJob(
            lambda: self._compute(settings, name), name="msam-landscape", on_done=self._computed
        ).start()
        if wait:
            self.job.join()
            if self.job.error is not None:
                raise self.job.error

    def _compute(self, settings: dict[str, Any], name: str) -> Path:
        from msam_core.landscape import landscape_for_run, load_landscape

        path = self.run.path / LANDSCAPES_DIR / f"{name}.npz"
        if not path.exists():
            path = landscape_for_run(
                self.run.path, **settings, name=name, model=self.model, data=self.data
            )
        landscape = load_landscape(path)
        with self._lock:
            self.landscape, self.path = landscape, path
        return path

    def _computed(self, job: BackgroundJob) -> None:
        self.compute_button.disabled = False
        if job.error is not None:
            self.status.value = (
                f"<b style='color:#b00020'>failed</b>: {type(job.error).__name__}: {job.error}"
            )
            return
        ls = self.landscape
        self.status.value = (
            f"epoch {ls.epoch} · {subspace_label(ls.subspace)} · {ls.steps} points per axis · "
            f"loss at the weights {ls.center_loss:.4f} · <code>{job.result.name}</code>"
        )
        self.redraw()

    # -- drawing ---------------------------------------------------------------------------

    def redraw(self) -> None:
        """Draw the current landscape in the chosen view (recomputes only when dims change)."""
        with self._lock:
            landscape = self.landscape
        if landscape is None:
            return
        dims = VIEWS[self.view.value][0]
        if landscape.dims != dims:
            self.compute()  # a 2-D grid cannot show as a curve, nor a curve as a surface
            return
        self.figure.update(
            landscape, view=self.view.value, metric=self.metric.value, log=self.log_scale.value
        )
