"""msam_viz: read msam run directories; draw modality-balance, sharpness and landscape figures."""

__version__ = "0.1.0"

from msam_viz.figures import (
    MissingRecordsWarning,
    accuracy_curves,
    compare_curves,
    compare_runs,
    dominance,
    dominant_switches,
    landscape_contour,
    landscape_curves,
    landscape_surface,
    run_metrics,
    shapley_shares,
    sharpness_curves,
    summary_grid,
)
from msam_viz.io import Run, load_run, load_runs
from msam_viz.report import write_report
from msam_viz.style import DEFAULT_STYLE, Style

__all__ = [
    "DEFAULT_STYLE",
    "MissingRecordsWarning",
    "Run",
    "Style",
    "accuracy_curves",
    "compare_curves",
    "compare_runs",
    "dominance",
    "dominant_switches",
    "landscape_contour",
    "landscape_curves",
    "landscape_surface",
    "load_run",
    "load_runs",
    "run_metrics",
    "shapley_shares",
    "sharpness_curves",
    "summary_grid",
    "write_report",
]
