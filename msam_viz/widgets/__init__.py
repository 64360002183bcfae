"""Dashboards for notebooks: ipywidgets controls over plotly FigureWidgets.

Every dashboard draws with the figure functions of :mod:`msam_viz.figures` and updates its
figures in place (``batch_update``), so a displayed figure is never re-created:

- :class:`TrainingMonitor`: start / pause / stop a training run, figures grow live;
- :class:`ImbalanceLab`: per-modality strength sliders, joint vs M-SAM on synthetic data;
- :class:`LandscapeExplorer`: checkpoint, modality subspace, span, resolution, 1-D/2-D/3-D;
- :class:`RunComparer`: runs side by side, by method, with seeds as error bars.

Each dashboard is an ``ipywidgets.VBox``: put it last in a cell to display it.
"""

from msam_viz.widgets._live import LiveFigure, RecordBuffer, sync_figure
from msam_viz.widgets.imbalance_lab import ImbalanceLab, strength_preview
from msam_viz.widgets.landscape_explorer import LandscapeExplorer
from msam_viz.widgets.monitor import TrainingMonitor, loss_curve
from msam_viz.widgets.run_comparer import RunComparer

__all__ = [
    "ImbalanceLab",
    "LandscapeExplorer",
    "LiveFigure",
    "RecordBuffer",
    "RunComparer",
    "TrainingMonitor",
    "loss_curve",
    "strength_preview",
    "sync_figure",
]
