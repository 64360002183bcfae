"""Run comparer: pick runs, a metric, a split; bars and per-epoch curves redraw in place.

Both figures are the static ones of :mod:`msam_viz.figures.comparison` (``compare_runs``:
mean ± sd over seeds per method; ``compare_curves``: one curve per method over epochs), so
what the dashboard shows is exactly what a report or paper figure shows.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

import ipywidgets as W

from msam_viz.figures import compare_curves, compare_runs
from msam_viz.figures.comparison_table import AT_CHOICES, default_metrics, metric_label
from msam_viz.io import Run, load_run, load_runs
from msam_viz.style import Style
from msam_viz.widgets._live import LiveFigure

#: config keys runs can be grouped by (seeds of one group pool into one bar)
GROUP_KEYS = ("method", "fusion", "dataset", "rho", "optimizer", "name")


def _as_runs(runs: Any) -> list[Run]:
    """Runs, or paths / globs / a folder of runs (loaded with :func:`msam_viz.load_runs`)."""
    if isinstance(runs, Run):
        return [runs]
    if isinstance(runs, str | os.PathLike):
        return load_runs(runs)
    items = list(runs) if isinstance(runs, Iterable) else [runs]
    if not items:
        raise ValueError("no runs given: pass Run objects, run directories or a glob like 'runs/*'")
    out: list[Run] = []
    for item in items:
        out.extend([item] if isinstance(item, Run) else load_runs(item))
    return out


def _label(run: Run) -> str:
    seed = f" · seed {run.seed}" if run.seed is not None else ""
    return f"{run.name} ({run.method}{seed})"


class RunComparer(W.VBox):
    """Compare finished (or still running) runs side by side.

    ``runs``: Run objects, run directories, glob patterns or a folder of runs.
    Controls: which runs, the metrics of the bar panels, the metric of the curves, the split,
    ``last`` or ``best`` (by validation accuracy) epoch, and the config key runs are grouped
    by.  ``reload()`` (the Reload button) re-reads every run from disk.
    """

    def __init__(
        self,
        runs: Any,
        *,
        metrics: Sequence[str] | None = None,
        split: str = "val",
        at: str = "last",
        by: str = "method",
        style: Style | None = None,
    ) -> None:
        self.runs = _as_runs(runs)
        if at not in AT_CHOICES:
            raise ValueError(f"at must be one of {list(AT_CHOICES)}, got {at!r}")
        if by not in GROUP_KEYS:
            raise ValueError(f"by must be one of {list(GROUP_KEYS)}, got {by!r}")
        choices = default_metrics(self.runs)
        for extra in ("loss", "hessian/top_eig", "sharpness"):
            if extra not in choices:
                choices.append(extra)
        metrics = list(metrics) if metrics is not None else default_metrics(self.runs)
        unknown = [m for m in metrics if m not in choices]
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; choose from {choices}")
        splits = self._splits()
        if split not in splits:
            raise ValueError(f"split {split!r} is not recorded by these runs; choose from {splits}")
        style_opt = {"style": style} if style is not None else {}

        self.run_select = W.SelectMultiple(
            options=[(_label(r), i) for i, r in enumerate(self.runs)],
            value=tuple(range(len(self.runs))),
            description="runs",
            rows=min(8, max(3, len(self.runs))),
            layout=W.Layout(width="460px"),
        )
        self.metric_select = W.SelectMultiple(
            options=[(metric_label(m), m) for m in choices],
            value=tuple(metrics),
            description="bars",
            rows=min(8, len(choices)),
        )
        curve_choices = [m for m in choices if m not in ("switches", "sharpness")]
        self.curve_metric = W.Dropdown(
            options=[(metric_label(m), m) for m in curve_choices],
            value="acc" if "acc" in curve_choices else curve_choices[0],
            description="curve",
        )
        self.split = W.ToggleButtons(options=splits, value=split, description="split")
        self.at = W.ToggleButtons(options=list(AT_CHOICES), value=at, description="epoch")
        self.by = W.Dropdown(options=list(GROUP_KEYS), value=by, description="group by")
        self.reload_button = W.Button(description="Reload", icon="refresh")
        self.status = W.HTML()

        self.bars = LiveFigure(compare_runs, **style_opt)
        self.curves = LiveFigure(compare_curves, **style_opt)
        self.refresh()

        for control in (
            self.run_select,
            self.metric_select,
            self.curve_metric,
            self.split,
            self.at,
            self.by,
        ):
            control.observe(lambda _change: self.refresh(), names="value")
        self.reload_button.on_click(lambda _button: self.reload())
        controls = W.HBox(
            [
                W.VBox([self.run_select, self.metric_select]),
                W.VBox([self.curve_metric, self.split, self.at, self.by, self.reload_button]),
            ]
        )
        super().__init__([controls, self.status, self.bars.widget, self.curves.widget])
        self.add_class("msam-run-comparer")

    def _splits(self) -> list[str]:
        found: list[str] = []
        for run in self.runs:
            if "split" in run.epochs.columns:
                found += [s for s in run.epochs["split"].dropna().unique() if s not in found]
        return found or ["val"]

    @property
    def selected(self) -> list[Run]:
        """The runs ticked in the run list."""
        return [self.runs[i] for i in self.run_select.value]

    def refresh(self) -> None:
        """Redraw both figures from the current controls (figures are updated in place)."""
        runs = self.selected
        if not runs:
            self.status.value = "<i>select at least one run</i>"
            return
        metrics = list(self.metric_select.value) or None
        common = {"split": self.split.value, "by": self.by.value}
        self.bars.update(runs, metrics=metrics, at=self.at.value, **common)
        self.curves.update(runs, metric=self.curve_metric.value, **common)
        groups = sorted({str(r.config.get(self.by.value)) for r in runs})
        self.status.value = (
            f"{len(runs)} runs in {len(groups)} groups by <b>{self.by.value}</b>: "
            + ", ".join(groups)
        )

    def reload(self) -> None:
        """Re-read every run from its directory (for runs still being written), then redraw."""
        self.runs = [load_run(r.path) for r in self.runs]
        self.refresh()
