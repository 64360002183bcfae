"""A static seaborn grid of per-epoch curves over seeds, for papers (matplotlib figure)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from msam_viz.figures._common import (
    as_run_list,
)
from msam_viz.figures.comparison_table import (
    MAX_COLS_MANY,
    epoch_table,
    group_order,
    metric_label,
    runs_by_dataset,
)
from msam_viz.style import DEFAULT_STYLE, Style


def summary_grid(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    by: str = "method",
    style: Style | None = None,
    col_wrap: int | None = None,
):
    """Static seaborn grid for papers: one panel per epoch metric, one line per method
    (mean over seeds, band = ±1 sd).  Runs on different datasets get their own panels
    (titled ``dataset · metric``, each dataset starting a new row).  ``col_wrap``: panels
    per row, default a dataset's metrics on one row, up to 5.  Returns a
    ``matplotlib.figure.Figure``, already closed in pyplot (nothing shows by itself;
    ``fig.savefig(...)`` or display it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no-op where a backend is already chosen
    import matplotlib.pyplot as plt
    import seaborn as sns
    from matplotlib.lines import Line2D

    style = style or DEFAULT_STYLE
    runs = as_run_list(runs)
    table = epoch_table(runs, metrics, split=split, by=by)
    if table.empty:
        raise ValueError(
            f"no epoch records on split {split!r} for metrics {metrics or 'default'}; "
            "check the runs' epochs.jsonl and the split name"
        )
    groups = runs_by_dataset(runs)
    many = len(groups) > 1
    per_dataset = [table.loc[table["dataset"] == d, "metric"].nunique() for d in groups]
    if col_wrap is None:
        col_wrap = min(max(per_dataset), MAX_COLS_MANY)
    if col_wrap < 1:
        raise ValueError(f"col_wrap must be a positive number of panels, got {col_wrap}")
    panels: list[list[tuple[str, str]]] = []  # rows of (dataset, metric)
    for dataset in groups:
        have = table.loc[table["dataset"] == dataset, "metric"]
        ms = list(dict.fromkeys(have))
        panels += [
            [(dataset, m) for m in ms[i : i + col_wrap]] for i in range(0, len(ms), col_wrap)
        ]
    cols = max(len(r) for r in panels)
    order = group_order(table["group"].tolist())
    palette = {g: style.method_color(g) for g in order}
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        fig, axes = plt.subplots(
            len(panels), cols, figsize=(3.64 * cols, 2.8 * len(panels)), squeeze=False
        )
        for r, row in enumerate(panels):
            for c in range(cols):
                ax = axes[r][c]
                if c >= len(row):
                    ax.remove()
                    continue
                dataset, metric = row[c]
                part = table.loc[(table["dataset"] == dataset) & (table["metric"] == metric)]
                sns.lineplot(
                    data=part,
                    x="epoch",
                    y="value",
                    hue="group",
                    hue_order=[g for g in order if (part["group"] == g).any()],
                    palette=palette,
                    errorbar="sd",
                    marker="o",
                    markersize=4,
                    legend=False,
                    ax=ax,
                )
                label = metric_label(metric)
                ax.set_title(f"{dataset} · {label}" if many else label)
                ax.set_xlabel("epoch" if r == len(panels) - 1 or c >= len(panels[r + 1]) else "")
                ax.set_ylabel("")
        handles = [Line2D([], [], color=palette[g], marker="o", markersize=4) for g in order]
        fig.legend(
            handles, order, title=by, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
        )
        fig.suptitle(f"Summary over seeds ({split} split)", fontsize=13)
        fig.tight_layout()
    plt.close(fig)
    return fig
