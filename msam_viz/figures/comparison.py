"""Runs side by side: one panel per metric, one bar per method, seeds as error bars.

:func:`run_metrics` turns runs into a tidy table (one row per run and metric) that
:func:`compare_runs` (plotly bars, mean ± sd over seeds, each seed as a dot) and
:func:`summary_grid` (seaborn, per-epoch curves with a band over seeds, static) both draw.
Runs are grouped by a config key, ``method`` by default, so seeds of one method pool.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msam_core.derived import best_epoch
from msam_viz.figures._common import (
    ACC,
    as_run_list,
    config_value,
    empty_message,
    note_missing,
    present,
    run_dataset,
    run_labels,
    run_modalities,
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


def _data_options(run: Any) -> dict[str, str]:
    """The run's ``dataset_options`` as ``{key: compact JSON}``, without the split seed."""
    options = config_value(run, "dataset_options") or {}
    if not isinstance(options, Mapping):
        return {}
    return {
        str(k): json.dumps(v, sort_keys=True, separators=(",", ":"), default=str)
        for k, v in options.items()
        if k != "seed"
    }


def dataset_labels(runs: Any) -> list[str]:
    """The dataset each run is compared within, one label per run.

    Runs are only ever pooled within one label: the dataset's name, plus what tells runs of
    that name apart, when they differ: the modalities (``synthetic (audio+visual+text)``) and
    the ``dataset_options`` that differ (``synthetic (strengths=[8,1])``), so runs on
    different data never pass for seeds of one experiment.  A run that does not record its
    dataset is labelled ``unknown dataset``.
    """
    runs = as_run_list(runs)
    names = [run_dataset(run) or "unknown dataset" for run in runs]
    mods = ["+".join(run_modalities(run)) for run in runs]
    opts = [_data_options(run) for run in runs]
    members: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        members.setdefault(name, []).append(i)
    labels = list(names)
    for name, idx in members.items():
        keys = sorted({k for i in idx for k in opts[i]})
        differing = [k for k in keys if len({opts[i].get(k) for i in idx}) > 1]
        show_mods = len({mods[i] for i in idx}) > 1
        for i in idx:
            parts = [mods[i]] if show_mods else []
            parts += [f"{k}={opts[i].get(k, 'default')}" for k in differing]
            if parts:
                labels[i] = f"{name} ({', '.join(parts)})"
    return labels


def _by_dataset(runs: Sequence[Any]) -> dict[str, list[Any]]:
    """Runs per dataset label, datasets in the order they first appear."""
    out: dict[str, list[Any]] = {}
    for run, label in zip(runs, dataset_labels(runs), strict=True):
        out.setdefault(label, []).append(run)
    return out


def _applies(metric: str, dataset_runs: Sequence[Any], all_runs: Sequence[Any]) -> bool:
    """False for ``acc/<m>`` of a modality that belongs to another dataset only (not missing
    from this one, just not part of it); every other metric applies to every dataset."""
    if not metric.startswith(ACC):
        return True
    modality = metric[len(ACC) :]
    if any(modality in run_modalities(run) for run in dataset_runs):
        return True
    return not any(modality in run_modalities(run) for run in all_runs)


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
    best_epoch = _best_epoch(run)
    if best_epoch is None:
        return rows.sort_values("epoch").iloc[-1]
    chosen = rows.loc[rows["epoch"] == best_epoch]
    return chosen.iloc[-1] if len(chosen) else None


def _best_epoch(run: Any) -> int | None:
    """The epoch training selected (``summary.json``'s ``best_epoch``, the one in ``best.pt``);
    for a run without one (still running, or older), the same rule on its records: highest
    validation accuracy, then lowest validation loss, then the earliest, never epoch 0."""
    summary = getattr(run, "summary", None) or {}
    if summary.get("best_epoch") is not None:
        return int(summary["best_epoch"])
    epochs = run.epochs
    val = epochs.loc[epochs["split"] == "val"] if "split" in epochs else epochs
    if not present(val, "acc"):
        return None
    return best_epoch(val.to_dict("records"))


COLUMNS = ["run", "dataset", "group", "seed", "metric", "value"]


def run_metrics(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    at: str = "last",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy ``[run, dataset, group, seed, metric, value]``, one row per run and recorded metric.

    ``metrics``: epoch keys (``acc``, ``acc/<m>``, ``loss``, ``balance``, ``hessian/top_eig``)
    and the derived ``switches`` (dominance switches in the run) and ``sharpness`` (mean over
    the last epoch's steps).  ``at``: ``last`` epoch, or ``best`` by validation accuracy.
    ``by``: the config key that groups runs; only rows of one ``dataset`` (see
    :func:`dataset_labels`) and one group are seeds of the same thing.  ``run``: a label
    unique among ``runs`` (:func:`~msam_viz.figures._common.run_labels`).
    """
    runs = as_run_list(runs)
    if at not in AT_CHOICES:
        raise ValueError(f"at must be one of {AT_CHOICES}, got {at!r}")
    metrics = list(metrics) if metrics is not None else default_metrics(runs)
    records = []
    for run, label, dataset in zip(runs, run_labels(runs), dataset_labels(runs), strict=True):
        row = _epoch_row(run, split, at)
        group = str(config_value(run, by, "unknown"))
        for metric in metrics:
            value = _metric_value(run, row, metric)
            if value is None or (isinstance(value, float) and math.isnan(value)):
                continue
            records.append(
                {
                    "run": label,
                    "dataset": dataset,
                    "group": group,
                    "seed": config_value(run, "seed"),
                    "metric": metric,
                    "value": float(value),
                }
            )
    return pd.DataFrame(records, columns=COLUMNS)


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


#: most panels side by side in one dataset's row before it wraps, one dataset / several
MAX_COLS_ONE, MAX_COLS_MANY = 3, 5
ROW_PX, GAP_PX = 300, 100  # height of one row of panels, and the gap above each row (titles)


def _panels(
    runs: Sequence[Any], table: pd.DataFrame, metrics: Sequence[str] | None
) -> tuple[dict[str, list[str]], list[str]]:
    """Per dataset the metrics it has values for (in the asked order), and the notes for the
    metrics asked for (or default) that a dataset lacks."""
    groups = _by_dataset(runs)
    shown: dict[str, list[str]] = {}
    lacking: dict[str, list[str]] = {}
    for dataset, members in groups.items():
        wanted = list(metrics) if metrics is not None else default_metrics(members)
        wanted = [m for m in wanted if _applies(m, members, runs)]
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
    datasets = list(_by_dataset(runs))
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
        if metric == "acc" or metric.startswith(ACC):
            fig.update_yaxes(tickformat=".0%", row=row, col=col)
        if metric == "switches" and part["value"].max() <= 8:
            # Counts: whole ticks from 0 (all-zero counts would otherwise span -1..1).
            top = max(1.0, float(part["value"].max()))
            fig.update_yaxes(dtick=1, range=[0, top * 1.05], row=row, col=col)
    if many:
        for dataset, row in first_row.items():
            _dataset_heading(fig, dataset, row, _by_dataset(runs)[dataset])
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
    for group in _group_order(part["group"].tolist()):
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


def epoch_table(
    runs: Any,
    metrics: Sequence[str] | None = None,
    *,
    split: str = "val",
    by: str = "method",
) -> pd.DataFrame:
    """Tidy per-epoch ``[run, dataset, group, seed, epoch, metric, value]`` of epoch keys on
    ``split`` (``run`` and ``dataset`` as in :func:`run_metrics`)."""
    runs = as_run_list(runs)
    metrics = list(metrics) if metrics is not None else None
    parts = []
    for run, label, dataset in zip(runs, run_labels(runs), dataset_labels(runs), strict=True):
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
        long.insert(0, "dataset", dataset)
        long.insert(0, "run", label)
        parts.append(long)
    if not parts:
        return pd.DataFrame(columns=["run", "dataset", "group", "seed", "epoch", "metric", "value"])
    return pd.concat(parts, ignore_index=True)


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
    groups = _by_dataset(runs)
    applies = [d for d, members in groups.items() if _applies(metric, members, runs)]
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
        for group in _group_order(part["group"].tolist()):
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
    groups = _by_dataset(runs)
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
    order = _group_order(table["group"].tolist())
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
