"""msam_viz: read msam run directories; draw modality-balance, sharpness and landscape figures.

Names are imported on first use (PEP 562), so ``msam report --help`` loads neither plotly,
pandas nor torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

#: public name -> the module that defines it (add new exports here)
_EXPORTS: dict[str, str] = {
    "MissingRecordsWarning": "msam_viz.figures",
    "accuracy_curves": "msam_viz.figures",
    "compare_curves": "msam_viz.figures",
    "compare_runs": "msam_viz.figures",
    "dominance": "msam_viz.figures",
    "dominant_switches": "msam_viz.figures",
    "landscape_contour": "msam_viz.figures",
    "landscape_curves": "msam_viz.figures",
    "landscape_surface": "msam_viz.figures",
    "run_metrics": "msam_viz.figures",
    "shapley_shares": "msam_viz.figures",
    "sharpness_curves": "msam_viz.figures",
    "summary_grid": "msam_viz.figures",
    "Run": "msam_viz.io",
    "load_run": "msam_viz.io",
    "load_runs": "msam_viz.io",
    "write_report": "msam_viz.report",
    "DEFAULT_STYLE": "msam_viz.style",
    "Style": "msam_viz.style",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'msam_viz' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
