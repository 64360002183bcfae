"""Runs side by side: one panel per metric, one bar per method, seeds as error bars.

:func:`run_metrics` turns runs into a tidy table (one row per run and metric) that
:func:`compare_runs` (plotly bars, mean ± sd over seeds, each seed as a dot) and
:func:`summary_grid` (seaborn, per-epoch curves with a band over seeds, static) both draw.
Runs are grouped by a config key, ``method`` by default, so seeds of one method pool.
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
    config_value,
    note_missing,
    present,
    run_modalities,
    run_name,
)
from msam_viz.figures.balance import dominant_switches
from msam_viz.style import DEFAULT_STYLE, METHOD_COLORS, Style, rgba

#: metrics computed from iteration records rather than read from an epoch row
DERIVED = ("switches", "sharpness")
AT_CHOICES = ("last", "best")

LABELS = {
    "acc": "accuracy",
    "loss": "loss (nats)",
    "balance": "balance",
    "switches": "dominance switches",
    "sharpness": "mean sharpness, last epoch",
    "hessian/top_eig": "Hessian λ_max",
}


def metric_label(metric: str) -> str:
    if metric.startswith(ACC):
        return f"{metric[len(ACC) :]}-only accuracy"
    return LABELS.get(metric, metric)


def default_metrics(runs: Sequence[Any]) -> list[str]:
    """Fused accuracy, each modality's accuracy, balance and switches, where recorded."""
    names: list[str] = ["acc"]
    for run in runs:
        names += [ACC + m for m in run_modalities(run) if present(run.epochs, ACC + m)]
    if any(present(run.epochs, "balance") for run in runs):
        names.append("balance")
    names.append("switches")
    return list(dict.fromkeys(names))


def _epoch_row(run: Any, split: str, at: str) -> pd.Series | None:
    """The epoch record a run is summarised by: the last one, or the best-val-accuracy one.

    ``best`` always picks the epoch on validation accuracy (never on the reported split)."""
    epochs = run.epochs
    if epochs is None or epochs.empty or "epoch" not in epochs:
        return None
    rows = epochs.loc[epochs["split"] == split] if "split" in epochs else epochs
    if rows.empty:
        return None
    if at == "last":
        return rows.sort_values("epoch").iloc[-1]
    val = epochs.loc[epochs["split"] == "val"] if "split" in epochs else epochs
    if not present(val, "acc"):
        return rows.sort_values("epoch").iloc[-1]
    best_epoch = val.loc[val["acc"].idxmax(), "epoch"]
    chosen = rows.loc[rows["epoch"] == best_epoch]
    return chosen.iloc[-1] if len(chosen) else None


def run_metrics(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    at: str = "last",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy ``[run, group, seed, metric, value]``, one row per run and recorded metric.

    ``metrics``: epoch keys (``acc``, ``acc/<m>``, ``loss``, ``balance``, ``hessian/top_eig``)
    and the derived ``switches`` (dominance switches in the run) and ``sharpness`` (mean over
    the last epoch's steps).  ``at``: ``last`` epoch, or ``best`` by validation accuracy.
    ``by``: the config key that groups runs (seeds of one group are pooled).
    """
    runs = as_run_list(runs)
    if at not in AT_CHOICES:
        raise ValueError(f"at must be one of {AT_CHOICES}, got {at!r}")
    metrics = list(metrics) if metrics is not None else default_metrics(runs)
    records = []
    for run in runs:
        row = _epoch_row(run, split, at)
        group = str(config_value(run, by, "unknown"))
        for metric in metrics:
            value = _metric_value(run, row, metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            records.append(
                {
                    "run": run_name(run),
                    "group": group,
                    "seed": config_value(run, "seed"),
                    "metric": metric,
                    "value": float(value),
                }
            )
    return pd.DataFrame(records, columns=["run", "group", "seed", "metric", "value"])


def _metric_value(run: Any, row: pd.Series | None, metric: str) -> float | None:
    if metric == "switches":
        return float(len(dominant_switches(run))) if present(run.iterations, "step") else None
    if metric == "sharpness":
        frame = run.iterations
        if not present(frame, "sharpness") or "epoch" not in frame:
            return None
        last = frame.loc[frame["epoch"] == frame["epoch"].max(), "sharpness"]
        return float(last.mean())
    if row is None or metric not in row.index:
        return None
    value = row[metric]
    return None if pd.isna(value) else float(value)


def _group_order(groups: Sequence[str]) -> list[str]:
    """Methods in the style's order (msam first, baselines after), then others alphabetically."""
    known = [m for m, _ in METHOD_COLORS]
    unique = list(dict.fromkeys(groups))
    return [g for g in known if g in unique] + sorted(g for g in unique if g not in known)


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

    See :func:`run_metrics` for ``metrics``, ``split``, ``at`` and ``by``.
    """
    style = style or DEFAULT_STYLE
    runs = as_run_list(runs)
    table = run_metrics(runs, metrics, split=split, at=at, by=by)
    wanted = list(metrics) if metrics is not None else default_metrics(runs)
    shown = [m for m in wanted if (table["metric"] == m).any()]
    absent = [m for m in wanted if m not in shown]
    cols = min(len(shown), 3) or 1
    nrows = max(1, math.ceil(len(shown) / cols))
    fig = make_subplots(
        rows=nrows,
        cols=cols,
        subplot_titles=[metric_label(m) for m in shown] or None,
        horizontal_spacing=0.08,
        vertical_spacing=0.18 if nrows > 1 else 0.1,
    )
    n_groups = table["group"].nunique()
    style.apply(
        fig,
        f"Runs compared ({split} split, {at} epoch)",
        f"{len(runs)} runs · {n_groups} {by}s · bars: mean over seeds, error bars: ±1 sd",
        height=max(style.height, 330 * nrows + 120),
    )
    order = _group_order(table["group"].tolist())
    for k, metric in enumerate(shown):
        r, c = divmod(k, cols)
        part = table.loc[table["metric"] == metric]
        for group in order:
            values = part.loc[part["group"] == group]
            if values.empty:
                continue
            colour = style.method_color(group)
            n = len(values)
            mean = float(values["value"].mean())
            sd = float(values["value"].std(ddof=1)) if n > 1 else float("nan")
            fig.add_trace(
                go.Bar(
                    x=[group],
                    y=[mean],
                    error_y={"type": "data", "array": [sd], "visible": n > 1, "thickness": 1.5},
                    name=group,
                    legendgroup=group,
                    showlegend=k == 0,
                    marker={"color": rgba(colour, 0.8), "line": {"color": colour, "width": 1}},
                    customdata=[[n, sd]],
                    hovertemplate=(
                        f"{group}<br>mean %{{y:.4g}} ± %{{customdata[1]:.3g}} (sd)"
                        "<br>%{customdata[0]} seeds<extra>" + metric + "</extra>"
                    ),
                ),
                row=r + 1,
                col=c + 1,
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
                    marker={"color": "#222222", "size": 6, "opacity": 0.75},
                    customdata=np.stack([values["run"], values["seed"].astype(str)], axis=1),
                    hovertemplate="%{customdata[0]} (seed %{customdata[1]}): %{y:.4g}"
                    "<extra></extra>",
                ),
                row=r + 1,
                col=c + 1,
            )
        if metric == "acc" or metric.startswith(ACC):
            fig.update_yaxes(tickformat=".0%", row=r + 1, col=c + 1)
        if metric == "switches" and part["value"].max() <= 8:
            fig.update_yaxes(dtick=1, row=r + 1, col=c + 1)
    # The x tick labels already name each method: no legend, and room under the subtitle
    # for the panel titles.
    fig.update_layout(barmode="group", bargap=0.35, showlegend=False, margin={"t": 120})
    if not shown:
        fig.add_annotation(text="no metric recorded in these runs", showarrow=False)
    if absent:
        note_missing(fig, [f"{metric_label(m)} ({m})" for m in absent])
    return fig


def epoch_table(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy per-epoch ``[run, group, seed, epoch, metric, value]`` of epoch keys on ``split``."""
    runs = as_run_list(runs)
    metrics = list(metrics) if metrics is not None else None
    parts = []
    for run in runs:
        epochs = run.epochs
        if epochs is None or epochs.empty or "epoch" not in epochs:
            continue
        rows = epochs.loc[epochs["split"] == split] if "split" in epochs else epochs
        chosen = metrics or [m for m in default_metrics([run]) if m not in DERIVED]
        cols = [m for m in chosen if m in rows.columns]
        if not cols:
            continue
        long = rows.melt(id_vars=["epoch"], value_vars=cols, var_name="metric").dropna()
        long.insert(0, "seed", config_value(run, "seed"))
        long.insert(0, "group", str(config_value(run, by, "unknown")))
        long.insert(0, "run", run_name(run))
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "group", "seed", "epoch", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


def compare_curves(
    runs: Any,
    metric: str = "acc",
    *,
    split: str = "val",
    by: str = "method",
    style: Style | None = None,
) -> go.Figure:
    """One epoch curve per method: mean over seeds, shaded ±1 sd band when ≥ 2 seeds."""
    style = style or DEFAULT_STYLE
    table = epoch_table(runs, [metric], split=split, by=by)
    fig = go.Figure()
    style.apply(
        fig, f"{metric_label(metric)} per epoch ({split})", f"mean ± sd over seeds, by {by}"
    )
    for group in _group_order(table["group"].tolist()):
        part = table.loc[table["group"] == group]
        stats = part.groupby("epoch")["value"].agg(["mean", "std", "count"]).reset_index()
        colour = style.method_color(group)
        if (stats["count"] > 1).any():
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
                )
            )
        fig.add_trace(
            go.Scatter(
                x=stats["epoch"],
                y=stats["mean"],
                mode="lines+markers",
                name=group,
                legendgroup=group,
                line={"color": colour, "width": 2.4},
                customdata=np.stack([stats["std"].fillna(0), stats["count"]], axis=1),
                hovertemplate=(
                    f"{group}: %{{y:.4g}} ± %{{customdata[0]:.3g}}"
                    "<extra>epoch %{x}, %{customdata[1]} seeds</extra>"
                ),
            )
        )
    if table.empty:
        note_missing(fig, [f"{metric} on split {split!r}"])
    n_epochs = table["epoch"].nunique()
    fig.update_xaxes(title_text="epoch", dtick=1 if 0 < n_epochs <= 20 else None)
    fig.update_yaxes(title_text=metric_label(metric))
    if metric == "acc" or metric.startswith(ACC):
        fig.update_yaxes(tickformat=".0%")
    return fig


def summary_grid(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    by: str = "method",
    style: Style | None = None,
    col_wrap: int = 3,
):
    """Static seaborn grid for papers: one panel per epoch metric, one line per method
    (mean over seeds, band = ±1 sd).  Returns a ``matplotlib.figure.Figure``, already
    closed in pyplot (nothing shows by itself; ``fig.savefig(...)`` or display it)."""
    import matplotlib

    matplotlib.use("Agg", force=False)  # no-op where a backend is already chosen
    import matplotlib.pyplot as plt
    import seaborn as sns

    style = style or DEFAULT_STYLE
    table = epoch_table(runs, metrics, split=split, by=by)
    if table.empty:
        raise ValueError(
            f"no epoch records on split {split!r} for metrics {metrics or 'default'}; "
            "check the runs' epochs.jsonl and the split name"
        )
    order = _group_order(table["group"].tolist())
    palette = {g: style.method_color(g) for g in order}
    metric_order = list(dict.fromkeys(table["metric"]))
    with sns.axes_style("whitegrid"), sns.plotting_context("paper", font_scale=1.2):
        grid = sns.relplot(
            data=table.assign(metric=table["metric"].map(metric_label)),
            x="epoch",
            y="value",
            hue="group",
            hue_order=order,
            palette=palette,
            col="metric",
            col_order=[metric_label(m) for m in metric_order],
            col_wrap=min(col_wrap, len(metric_order)),
            kind="line",
            errorbar="sd",
            marker="o",
            markersize=4,
            height=2.8,
            aspect=1.3,
            facet_kws={"sharey": False},
        )
        grid.set_titles("{col_name}")
        grid.set_axis_labels("epoch", "")
        if grid.legend is not None:
            grid.legend.set_title(by)
        grid.figure.suptitle(f"Summary over seeds ({split} split)", y=1.03, fontsize=13)
    fig = grid.figure
    plt.close(fig)
    return fig
