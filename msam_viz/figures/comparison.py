"""Runs side by side in plotly: one panel per metric, one bar per method, seeds as error bars.

:func:`compare_runs` draws :func:`~msam_viz.figures.comparison_table.run_metrics` (mean ± sd
over seeds, each seed as a dot); :func:`compare_curves` draws per-epoch curves of
:func:`~msam_viz.figures.comparison_table.epoch_table`.  The static seaborn version is
:mod:`msam_viz.figures.summary_grid`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msam_viz.figures._common import (
    ACC,
    as_run_list,
    empty_message,
    note_missing,
    run_modalities,
)
from msam_viz.figures.comparison_table import (
    MAX_COLS_MANY,
    MAX_COLS_ONE,
    default_metrics,
    epoch_table,
    group_order,
    metric_applies,
    metric_label,
    run_metrics,
    runs_by_dataset,
)
from msam_viz.style import DEFAULT_STYLE, Style, rgba

ROW_PX, GAP_PX = 300, 100  # height of one row of panels, and the gap above each row (titles)


def _panels(
    runs: Sequence[Any], table: pd.DataFrame, metrics: Sequence[str] | None
) -> tuple[dict[str, list[str]], list[str]]:
    """Per dataset the metrics it has values for (in the asked order), and the notes for the
    metrics asked for (or default) that a dataset lacks."""
    groups = runs_by_dataset(runs)
    shown: dict[str, list[str]] = {}
    lacking: dict[str, list[str]] = {}
    for dataset, members in groups.items():
        wanted = list(metrics) if metrics is not None else default_metrics(members)
        wanted = [m for m in wanted if metric_applies(m, members, runs)]
        have = table.loc[table["dataset"] == dataset, "metric"]
        shown[dataset] = [m for m in wanted if (have == m).any()]
        for m in wanted:
            if m not in shown[dataset]:
                lacking.setdefault(m, []).append(dataset)
    notes = []
    for m, where in lacking.items():
        text = f"{metric_label(m)} ({m})"
        # Naming the datasets only says something when others do have the metric.
        if len(where) < len(groups):
            text += " on " + ", ".join(where)
        notes.append(text)
    return {d: ms for d, ms in shown.items() if ms}, notes


def compare_runs(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    at: str = "last",
    by: str = "method",
    style: Style | None = None,
) -> go.Figure:
    """One panel per metric; per method a bar at the mean over seeds with ±1 sd error bar
    (sample sd, drawn when a method has ≥ 2 seeds) and each seed as a dot.

    Runs on different datasets are never pooled: each dataset gets its own row of panels
    (headed by its name), with its own modalities' accuracies.  Each bar's ``meta`` holds
    its ``dataset``, ``group`` and ``metric``.  See :func:`run_metrics` for ``metrics``,
    ``split``, ``at`` and ``by``.
    """
    style = style or DEFAULT_STYLE
    runs = as_run_list(runs)
    table = run_metrics(runs, metrics, split=split, at=at, by=by)
    shown, notes = _panels(runs, table, metrics)
    datasets = list(runs_by_dataset(runs))
    many = len(datasets) > 1
    widest = max((len(ms) for ms in shown.values()), default=1)
    cols = min(widest, MAX_COLS_MANY if many else MAX_COLS_ONE)
    # Each dataset starts a new row; cells after its last metric stay empty (no axes).
    specs: list[list[dict | None]] = []
    where: dict[tuple[str, str], tuple[int, int]] = {}
    first_row: dict[str, int] = {}
    for dataset, ms in shown.items():
        first_row[dataset] = len(specs) + 1
        for start in range(0, len(ms), cols):
            chunk = ms[start : start + cols]
            for c, m in enumerate(chunk):
                where[(dataset, m)] = (len(specs) + 1, c + 1)
            specs.append([{} if c < len(chunk) else None for c in range(cols)])
    if not specs:
        specs = [[{}]]
    nrows = len(specs)
    height = max(style.height, ROW_PX * nrows + GAP_PX * (nrows - 1) + 170)
    fig = make_subplots(
        rows=nrows,
        cols=len(specs[0]),
        specs=specs,
        subplot_titles=[metric_label(m) for ms in shown.values() for m in ms] or None,
        horizontal_spacing=0.24 / len(specs[0]) if len(specs[0]) > 1 else 0.0,
        vertical_spacing=GAP_PX / height if nrows > 1 else 0.0,
    )
    n_groups = table["group"].nunique()
    on = f" · {len(datasets)} datasets" if many else f" on {datasets[0]}"
    style.apply(
        fig,
        f"Runs compared ({split} split, {at} epoch)",
        f"{len(runs)} runs{on} · {n_groups} {by}s · bars: mean over seeds, error bars: ±1 sd",
        height=height,
    )
    if many:
        fig.update_layout(width=max(style.width, 190 * cols + 110))
    for (dataset, metric), (row, col) in where.items():
        part = table.loc[(table["dataset"] == dataset) & (table["metric"] == metric)]
        _draw_bars(fig, part, dataset, metric, row, col, style)
        if metric.startswith(ACC):
            members = runs_by_dataset(runs)[dataset]
            _draw_ceilings(fig, part, members, metric[len(ACC) :], row, col)
        if metric == "acc" or metric.startswith(ACC):
            fig.update_yaxes(tickformat=".0%", row=row, col=col)
        if metric == "switches" and part["value"].max() <= 8:
            # Counts: whole ticks from 0 (all-zero counts would otherwise span -1..1).
            top = max(1.0, float(part["value"].max()))
            fig.update_yaxes(dtick=1, range=[0, top * 1.05], row=row, col=col)
    if many:
        for dataset, row in first_row.items():
            _dataset_heading(fig, dataset, row, runs_by_dataset(runs)[dataset])
    # The x tick labels already name each method: no legend, and room under the subtitle
    # for the panel titles (and the first dataset's heading).
    fig.update_layout(
        barmode="group", bargap=0.35, showlegend=False, margin={"t": 150 if many else 120}
    )
    if not shown:
        fig.add_annotation(text="no metric recorded in these runs", showarrow=False)
    if notes:
        note_missing(fig, notes)
    return fig


def _draw_bars(
    fig: go.Figure, part: pd.DataFrame, dataset: str, metric: str, row: int, col: int, style: Style
) -> None:
    """One bar (mean, ±1 sd) and one dot per seed for each group of one dataset and metric."""
    for group in group_order(part["group"].tolist()):
        values = part.loc[part["group"] == group]
        colour = style.method_color(group)
        n = len(values)
        mean = float(values["value"].mean())
        # a spread over seeds only when every run is a different seed; runs repeating a seed
        # (or without one) are shown as dots, but their spread is not called a seed's
        seeds_differ = values["seed"].nunique() == n
        sd = float(values["value"].std(ddof=1)) if n > 1 and seeds_differ else float("nan")
        meta = {"dataset": dataset, "group": group, "metric": metric}
        fig.add_trace(
            go.Bar(
                x=[group],
                y=[mean],
                error_y={"type": "data", "array": [sd], "visible": sd == sd, "thickness": 1.5},
                name=group,
                legendgroup=group,
                showlegend=False,
                meta=meta,
                marker={"color": rgba(colour, 0.8), "line": {"color": colour, "width": 1}},
                customdata=[[n, sd]],
                hovertemplate=(
                    f"{group} on {dataset}<br>mean %{{y:.4g}} ± %{{customdata[1]:.3g}} (sd)"
                    "<br>%{customdata[0]} "
                    + ("seeds" if seeds_differ else "runs, seeds repeat")
                    + "<extra>"
                    + metric
                    + "</extra>"
                ),
            ),
            row=row,
            col=col,
        )
        # Each seed as a dot on its method's bar, so the spread behind the error bar shows.
        fig.add_trace(
            go.Scatter(
                x=[group] * n,
                y=values["value"],
                mode="markers",
                name=f"{group} seeds",
                legendgroup=group,
                showlegend=False,
                meta=meta,
                marker={"color": "#222222", "size": 6, "opacity": 0.75},
                customdata=np.stack([values["run"], values["seed"].astype(str)], axis=1),
                hovertemplate="%{customdata[0]} (seed %{customdata[1]}): %{y:.4g}<extra></extra>",
            ),
            row=row,
            col=col,
        )


def _draw_ceilings(
    fig: go.Figure, part: pd.DataFrame, members: Sequence[Any], modality: str, row: int, col: int
) -> None:
    """Dashed lines on a modality's accuracy panel: its ceiling when trained alone (the mean
    of the ``alone/<m>`` bar, when those runs are shown) and its Bayes limit (synthetic runs)."""
    alone = part.loc[part["group"] == f"alone/{modality}", "value"]
    if len(alone):
        fig.add_hline(
            y=float(alone.mean()),
            line={"dash": "dash", "color": "#444444", "width": 1.5},
            annotation_text=f"{modality} alone",
            annotation_position="top left",
            row=row,
            col=col,
        )
    limits = [
        ((getattr(run, "summary", None) or {}).get("bayes_limits") or {}).get(modality)
        for run in members
    ]
    limits = [limit["acc"] for limit in limits if limit]
    if limits:
        fig.add_hline(
            y=float(np.mean(limits)),
            line={"dash": "dot", "color": "#b22222", "width": 1.5},
            annotation_text="Bayes limit",
            annotation_position="bottom right",
            row=row,
            col=col,
        )


def _dataset_heading(fig: go.Figure, dataset: str, row: int, members: Sequence[Any]) -> None:
    """A bold heading above a dataset's row of panels: its name, modalities and run count."""
    axis = fig.get_subplot(row, 1).yaxis
    modalities = list(dict.fromkeys(m for run in members for m in run_modalities(run)))
    fig.add_annotation(
        name="dataset",
        text=f"<b>{dataset}</b> · {', '.join(modalities)} · {len(members)} runs",
        xref="paper",
        yref="paper",
        x=0.0,
        y=axis.domain[1],
        yshift=32,  # above the panel titles
        xanchor="left",
        yanchor="bottom",
        showarrow=False,
        font={"size": 15},
    )


def compare_curves(
    runs: Any,
    metric: str = "acc",
    *,
    split: str = "val",
    by: str = "method",
    style: Style | None = None,
) -> go.Figure:
    """One epoch curve per method: mean over seeds, shaded ±1 sd band when ≥ 2 seeds.

    Runs on different datasets get one panel each (titled by the dataset), never one curve;
    a method keeps its colour and one legend entry across panels.  Traces carry
    ``meta={"dataset": …, "group": …}``.
    """
    style = style or DEFAULT_STYLE
    runs = as_run_list(runs)
    table = epoch_table(runs, [metric], split=split, by=by)
    groups = runs_by_dataset(runs)
    applies = [d for d, members in groups.items() if metric_applies(metric, members, runs)]
    datasets = [d for d in applies if (table["dataset"] == d).any()]
    many = len(groups) > 1
    cols = min(len(datasets), 2) or 1
    nrows = max(1, math.ceil(len(datasets) / cols))
    height = style.height if nrows == 1 else 360 * nrows + 170
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        subplot_titles=datasets if many else None,
        horizontal_spacing=0.1,
        vertical_spacing=GAP_PX / height if nrows > 1 else 0.0,
    )
    subtitle = f"mean ± sd over seeds, by {by}"
    if datasets and not many:
        subtitle += f" · {datasets[0]}"
    style.apply(fig, f"{metric_label(metric)} per epoch ({split})", subtitle, height=height)
    legend_done: set[str] = set()
    for k, dataset in enumerate(datasets):
        row, col = divmod(k, cols)
        part = table.loc[table["dataset"] == dataset]
        for group in group_order(part["group"].tolist()):
            _draw_curve(fig, part, dataset, group, style, row + 1, col + 1, group in legend_done)
            legend_done.add(group)
    if not datasets:
        note_missing(fig, [f"{metric} on split {split!r}"])
        empty_message(fig, f"no run records {metric_label(metric)} on split {split!r}")
    elif len(datasets) < len(applies):
        lacking = ", ".join(d for d in applies if d not in datasets)
        note_missing(fig, [f"{metric} on split {split!r} on {lacking}"])
    n_epochs = table["epoch"].nunique()
    fig.update_xaxes(title_text="epoch", dtick=1 if 0 < n_epochs <= 20 else None)
    fig.update_yaxes(title_text=metric_label(metric), col=1)
    if metric == "acc" or metric.startswith(ACC):
        fig.update_yaxes(tickformat=".0%")
    if many:
        # The legend goes above the panel titles (the plot area's top is at y = 1).
        area = height - 150 - 60
        fig.update_layout(margin={"t": 150}, legend={"y": 1.0 + 34 / area})
    return fig


def _draw_curve(
    fig: go.Figure,
    part: pd.DataFrame,
    dataset: str,
    group: str,
    style: Style,
    row: int,
    col: int,
    legend_done: bool,
) -> None:
    """The mean curve of one group on one dataset, with its ±1 sd band when ≥ 2 seeds."""
    rows = part.loc[part["group"] == group]
    stats = rows.groupby("epoch")["value"].agg(["mean", "std", "count"]).reset_index()
    colour = style.method_color(group)
    meta = {"dataset": dataset, "group": group}
    seeds_differ = bool(
        (rows.groupby("epoch")["seed"].nunique() == stats.set_index("epoch")["count"]).all()
    )
    if (stats["count"] > 1).any() and seeds_differ:
        upper = stats["mean"] + stats["std"].fillna(0)
        lower = stats["mean"] - stats["std"].fillna(0)
        fig.add_trace(
            go.Scatter(
                x=np.r_[stats["epoch"], stats["epoch"][::-1]],
                y=np.r_[upper, lower[::-1]],
                fill="toself",
                mode="lines",  # plotly's default adds markers below 20 points
                fillcolor=rgba(colour, 0.18),
                line={"width": 0},
                hoverinfo="skip",
                legendgroup=group,
                showlegend=False,
                name=f"{group} ±1 sd",
                meta=meta,
            ),
            row=row,
            col=col,
        )
    fig.add_trace(
        go.Scatter(
            x=stats["epoch"],
            y=stats["mean"],
            mode="lines+markers",
            name=group,
            legendgroup=group,
            showlegend=not legend_done,
            meta=meta,
            line={"color": colour, "width": 2.4},
            customdata=np.stack([stats["std"].fillna(0), stats["count"]], axis=1),
            hovertemplate=(
                f"{group} on {dataset}: %{{y:.4g}} ± %{{customdata[0]:.3g}}"
                "<extra>epoch %{x}, %{customdata[1]} seeds</extra>"
            ),
        ),
        row=row,
        col=col,
    )
