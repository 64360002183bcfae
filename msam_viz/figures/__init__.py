"""Plotly figures over loaded runs: each takes a Run (or runs) and returns a ``go.Figure``.

Nothing is shown or written: notebooks display the returned figure, widgets update it, and
:func:`msam_viz.write_report` collects them into one HTML page.
"""

from msam_viz.figures._common import MissingRecordsWarning
from msam_viz.figures.balance import (
    accuracy_curves,
    dominance,
    dominant_segments,
    dominant_series,
    dominant_switches,
    shapley_share_table,
    shapley_shares,
)
from msam_viz.figures.comparison import compare_curves, compare_runs
from msam_viz.figures.comparison_table import epoch_table, run_metrics
from msam_viz.figures.landscape import (
    landscape_contour,
    landscape_curves,
    landscape_figures,
    landscape_surface,
    run_landscapes,
)
from msam_viz.figures.sharpness import sharpness_curves
from msam_viz.figures.summary_grid import summary_grid

__all__ = [
    "MissingRecordsWarning",
    "accuracy_curves",
    "compare_curves",
    "compare_runs",
    "dominance",
    "dominant_segments",
    "dominant_series",
    "dominant_switches",
    "epoch_table",
    "landscape_contour",
    "landscape_curves",
    "landscape_figures",
    "landscape_surface",
    "run_landscapes",
    "run_metrics",
    "shapley_share_table",
    "shapley_shares",
    "sharpness_curves",
    "summary_grid",
]
