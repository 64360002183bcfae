"""Helpers shared by the method studies (``imbalance_study.py``, ``real_data_study.py``).

Scripts in ``benchmarks/`` run as ``python benchmarks/<name>.py``, so this module is imported
as ``_study`` (the script's folder is first on ``sys.path``).
"""

from __future__ import annotations

import math

from msam_core.methods import method_names

#: the methods users compare, in the order the tables list them (others registered follow)
ORDER = ("joint", "sam", "asam", "ogm_ge", "agm", "msam")


def ordered_methods() -> list[str]:
    """Every registered method: those of :data:`ORDER` first, in that order, then the rest."""
    registered = method_names()
    return [m for m in ORDER if m in registered] + [m for m in registered if m not in ORDER]


def pm(mean: float, std: float) -> str:
    """A fraction as ``"mean ± sd"`` in percent, one decimal; ``–`` for a missing mean."""
    if not math.isfinite(mean):
        return "–"
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if math.isfinite(std) else f"{100 * mean:.1f}"
