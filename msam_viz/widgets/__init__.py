"""Dashboards for notebooks: ipywidgets controls over live plotly figures.

Every dashboard draws with the figure functions of :mod:`msam_viz.figures` into
:class:`FigureView` widgets, whose synced state is the whole current figure, so any view of
them (late, re-created, after a page reload) shows what Python holds:

- :class:`TrainingMonitor`: start / pause / stop a training run, figures grow live;
- :class:`ImbalanceLab`: per-modality strength sliders, joint vs M-SAM on synthetic data;
- :class:`LandscapeExplorer`: checkpoint, modality subspace, span, resolution, 1-D/2-D/3-D;
- :class:`RunComparer`: runs side by side, by method, with seeds as error bars.

Each dashboard is an ``ipywidgets.VBox``: put it last in a cell to display it.
"""

from msam_viz.widgets._live import FigureView, LiveFigure, RecordBuffer
from msam_viz.widgets.imbalance_lab import ImbalanceLab, strength_preview
from msam_viz.widgets.landscape_explorer import LandscapeExplorer
from msam_viz.widgets.monitor import TrainingMonitor, loss_curve
from msam_viz.widgets.run_comparer import RunComparer

__all__ = [
    "FigureView",
    "ImbalanceLab",
    "LandscapeExplorer",
    "LiveFigure",
    "RecordBuffer",
    "RunComparer",
    "TrainingMonitor",
    "loss_curve",
    "strength_preview",
]
