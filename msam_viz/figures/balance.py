"""Modality balance: who contributes, who dominates, and what each modality alone can do.

- :func:`shapley_shares`: each modality's share of the Shapley contribution per iteration
  (stacked area summing to 1) over a band coloured by the dominant modality.
- :func:`dominance`: the dominant modality over time as a timeline, with switches per epoch.
- :func:`accuracy_curves`: fused and unimodal (others masked) accuracy per epoch.

Shares follow M-SAM (docs/design.md, "Modality Shapley"): ``s_m = max(φ_m, 0) / Σ_k max(φ_k, 0)``,
and ``1/M`` each when no modality contributes positively, so the area is the weight M-SAM
would give each modality, whatever method trained the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msam_core.derived import shares
from msam_viz.figures._common import (
    ACC,
    PHI,
    bin_mean,
    check_run,
    empty_message,
    note_missing,
    present,
    run_modalities,
    run_subtitle,
    smooth,
)
from msam_viz.style import DEFAULT_STYLE, Style, rgba


def shapley_share_table(run: Any) -> pd.DataFrame:
    """Per-iteration shares ``[step, <modality>…]`` (rows sum to 1) from the ``phi/<m>`` records.

    Rows without any φ are dropped; a modality whose φ is missing on a row counts as 0.
    """
    check_run(run)
    modalities = [m for m in run_modalities(run) if present(run.iterations, PHI + m)]
    frame = run.iterations
    cols = [PHI + m for m in modalities]
    if not cols:
        return pd.DataFrame(columns=["step"])
    rows = frame.loc[frame[cols].notna().any(axis=1)]
    # msam_core's rule: no positive contribution (e.g. at initialisation) gives equal shares
    table = [shares(phi) for phi in rows[cols].to_numpy(dtype=float)]
    out = pd.DataFrame(table, columns=modalities, index=rows.index, dtype=float)
    out.insert(0, "step", rows["step"].to_numpy() if "step" in rows else np.arange(len(rows)))
    return out.reset_index(drop=True)


def dominant_series(run: Any) -> pd.DataFrame:
    """``[step, epoch, dominant]`` per iteration, names as in ``run_modalities``.

    Uses the recorded ``dominant`` key (name or index); rows lacking it fall back to
    argmax φ with ties to the lowest modality index, exactly as M-SAM picks it.
    """
    check_run(run)
    frame = run.iterations
    modalities = run_modalities(run)
    cols = [PHI + m for m in modalities if PHI + m in frame.columns]
    dominant = pd.Series(pd.NA, index=frame.index, dtype="object")
    if "dominant" in frame.columns:
        recorded = frame["dominant"]
        as_index = pd.to_numeric(recorded, errors="coerce")
        by_name = recorded.where(as_index.isna())
        by_index = as_index.dropna().astype(int).map(lambda i: modalities[i])
        dominant = by_name.astype("object")
        dominant.loc[by_index.index] = by_index
    if cols and dominant.isna().any():
        phi = frame[cols]
        derived = phi.fillna(-np.inf).to_numpy().argmax(axis=1)
        fallback = pd.Series([cols[i][len(PHI) :] for i in derived], index=frame.index)
        fallback = fallback.where(phi.notna().any(axis=1))
        dominant = dominant.fillna(fallback)
    out = pd.DataFrame(
        {
            "step": frame["step"] if "step" in frame else np.arange(len(frame)),
            "epoch": frame["epoch"] if "epoch" in frame else np.nan,
            "dominant": dominant,
        }
    )
    return out.dropna(subset=["dominant"]).sort_values("step").reset_index(drop=True)


def dominant_switches(run: Any) -> pd.DataFrame:
    """Every change of dominant modality: ``[step, epoch, from, to]`` (step of the new one)."""
    series = dominant_series(run)
    changed = series["dominant"].ne(series["dominant"].shift()) & series.index.to_series().gt(0)
    rows = series.loc[changed]
    return pd.DataFrame(
        {
            "step": rows["step"].to_numpy(),
            "epoch": rows["epoch"].to_numpy(),
            "from": series["dominant"].shift().loc[changed].to_numpy(),
            "to": rows["dominant"].to_numpy(),
        }
    )


def shapley_shares(
    run: Any,
    *,
    smooth_steps: int | None = None,
    max_points: int | None = None,
    style: Style | None = None,
) -> go.Figure:
    """Stacked area of each modality's Shapley share per iteration, dominant modality below.

    ``smooth_steps``: centred rolling mean over that many iterations (per-batch φ is noisy);
    ``max_points``: cap on drawn points per modality (bin means; default ``style.max_points``).
    The band under the area is coloured by the recorded dominant modality at every step.
    """
    check_run(run)
    style = style or DEFAULT_STYLE
    fig = make_subplots(
        rows=2, cols=1, shared_xaxes=True, row_heights=[0.86, 0.14], vertical_spacing=0.03
    )
    style.apply(fig, "Shapley share of each modality", run_subtitle(run))
    table = shapley_share_table(run)
    modalities = [c for c in table.columns if c != "step"]
    if not modalities:
        empty_message(fig, "no Shapley records (phi/<modality>) in this run")
        note_missing(fig, ["phi/<modality>"], run)
        return fig
    colours = style.modality_colors(run_modalities(run))
    for m in modalities:
        table[m] = smooth(table[m], smooth_steps)
    drawn = bin_mean(table, "step", modalities, max_points or style.max_points)
    for m in modalities:
        fig.add_trace(
            go.Scatter(
                x=drawn["step"],
                y=drawn[m],
                name=m,
                legendgroup=m,
                mode="lines",
                stackgroup="share",
                line={"width": 0.6, "color": colours[m]},
                fillcolor=rgba(colours[m], style.area_opacity),
                hovertemplate=f"{m}: %{{y:.1%}}<extra>step %{{x:.0f}}</extra>",
            ),
            row=1,
            col=1,
        )
    _dominant_band(fig, run, colours, style)
    fig.update_yaxes(title_text="share of Σ max(φ, 0)", tickformat=".0%", range=[0, 1], row=1)
    fig.update_yaxes(showticklabels=False, title_text="dominant", title_font_size=11, row=2)
    fig.update_xaxes(title_text="iteration (optimiser step)", row=2, col=1)
    fig.update_layout(hovermode="x unified")
    return fig


def dominant_segments(run: Any) -> pd.DataFrame:
    """Runs of one dominant modality: ``[start, end, dominant]``, ``end`` exclusive (the next
    run's first step; after the last step, one median step gap later)."""
    series = dominant_series(run)
    if series.empty:
        return pd.DataFrame(columns=["start", "end", "dominant"])
    steps = series["step"].to_numpy()
    starts = np.flatnonzero(series["dominant"].ne(series["dominant"].shift()).to_numpy())
    gap = float(np.median(np.diff(steps))) if len(steps) > 1 else 1.0
    ends = np.r_[steps[starts[1:]], steps[-1] + gap]
    return pd.DataFrame(
        {
            "start": steps[starts],
            "end": ends,
            "dominant": series["dominant"].to_numpy()[starts],
        }
    )


def _dominant_band(fig: go.Figure, run: Any, colours: dict[str, str], style: Style) -> None:
    """One-row heatmap under the area: the dominant modality at every step, exactly.

    Cells are the runs of one dominant modality (x = their edges), so the band stays small
    for 10^4+ steps without averaging any switch away.
    """
    segments = dominant_segments(run)
    if segments.empty:
        note_missing(fig, ["dominant (and no phi/<m> to derive it)"], run)
        return
    names = list(colours)
    codes = segments["dominant"].map({m: i for i, m in enumerate(names)})
    unknown = segments.loc[codes.isna(), "dominant"].unique()
    if len(unknown):
        raise ValueError(
            f"run records dominant modality {sorted(map(str, unknown))} not among its modalities "
            f"{names}"
        )
    k = len(names)
    # Discrete colour scale: code i -> colour of modality i, flat over [i/k, (i+1)/k].
    scale = [[pos, colours[m]] for i, m in enumerate(names) for pos in (i / k, (i + 1) / k)]
    last = segments["end"].to_numpy() - 1
    fig.add_trace(
        go.Heatmap(
            x=np.r_[segments["start"].to_numpy(), segments["end"].iloc[-1]],  # cell edges
            y=["dominant"],
            z=[codes.to_numpy(dtype=float)],
            customdata=[np.stack([segments["dominant"], segments["start"], last], axis=1)],
            colorscale=scale,
            zmin=-0.5,
            zmax=k - 0.5,
            showscale=False,
            name="dominant",
            hovertemplate=(
                "dominant: %{customdata[0]}<br>steps %{customdata[1]}–%{customdata[2]}"
                "<extra></extra>"
            ),
        ),
        row=2,
        col=1,
    )


def dominance(run: Any, *, style: Style | None = None) -> go.Figure:
    """When each modality dominated (timeline, one lane per modality) and switches per epoch."""
    check_run(run)
    style = style or DEFAULT_STYLE
    series = dominant_series(run)
    switches = dominant_switches(run)
    fig = make_subplots(
        rows=2, cols=1, row_heights=[0.6, 0.4], vertical_spacing=0.16, shared_xaxes=False
    )
    style.apply(
        fig,
        f"Dominant modality: {len(switches)} switches over {len(series)} iterations",
        run_subtitle(run),
    )
    if series.empty:
        empty_message(fig, "no dominant-modality records in this run")
        note_missing(fig, ["dominant", "phi/<modality>"], run)
        return fig
    modalities = run_modalities(run)
    colours = style.modality_colors(modalities)
    segments = dominant_segments(run)
    for m in modalities:
        mine = segments.loc[segments["dominant"] == m]
        # One line per run of dominance [start, end), None-separated: one trace per lane.
        xs: list[float | None] = []
        for start, end in zip(mine["start"], mine["end"], strict=True):
            xs += [float(start), float(end), None]
        total = int((series["dominant"] == m).sum())
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=[m if x is not None else None for x in xs],
                mode="lines",
                name=m,
                legendgroup=m,
                line={"color": colours[m], "width": 16},
                hovertemplate=f"{m} dominant from step %{{x}}<extra>{total} steps in all</extra>",
            ),
            row=1,
            col=1,
        )
    per_epoch = _switches_per_epoch(series, switches)
    fractions = (
        series.groupby("epoch")["dominant"].value_counts(normalize=True).unstack(fill_value=0.0)
    ).reindex(per_epoch["epoch"], fill_value=0.0)
    for m in modalities:
        if m not in fractions.columns:
            continue
        fig.add_trace(
            go.Bar(
                x=fractions.index,
                y=fractions[m],
                name=f"{m} share of steps",
                legendgroup=m,
                showlegend=False,
                marker_color=colours[m],
                hovertemplate=f"epoch %{{x}}: {m} dominant in %{{y:.0%}} of steps<extra></extra>",
            ),
            row=2,
            col=1,
        )
    # Switches per epoch written above each stack.
    fig.add_trace(
        go.Scatter(
            x=per_epoch["epoch"],
            y=[1.0] * len(per_epoch),
            # Labels only while they fit; the hover always has the count.
            mode="text" if len(per_epoch) <= 25 else "none",
            text=[f"{n} sw." for n in per_epoch["switches"]],
            textposition="top center",
            textfont={"size": 11, "color": "#444444"},
            customdata=per_epoch["switches"],
            name="switches",
            showlegend=False,
            hovertemplate="epoch %{x}: %{customdata} switches<extra></extra>",
        ),
        row=2,
        col=1,
    )
    fig.update_layout(barmode="stack", bargap=0.25)
    # Lanes half a category from the edges, so two modalities do not sit at the panel's rims.
    fig.update_yaxes(
        title_text="dominant",
        categoryorder="array",
        categoryarray=modalities[::-1],
        range=[-0.6, len(modalities) - 0.4],
        row=1,
    )
    fig.update_xaxes(title_text="iteration (optimiser step)", row=1, col=1)
    fig.update_yaxes(
        title_text="share of steps", tickformat=".0%", range=[0, 1.18], dtick=0.25, row=2
    )
    fig.update_xaxes(title_text="epoch", dtick=1 if len(per_epoch) <= 30 else None, row=2, col=1)
    return fig


def _switches_per_epoch(series: pd.DataFrame, switches: pd.DataFrame) -> pd.DataFrame:
    epochs = pd.Series(series["epoch"].dropna().unique()).sort_values()
    counts = switches.groupby("epoch").size() if len(switches) else pd.Series(dtype=int)
    return pd.DataFrame(
        {"epoch": epochs.to_numpy(), "switches": [int(counts.get(e, 0)) for e in epochs]}
    )


def accuracy_curves(
    run: Any, *, splits: tuple[str, ...] | None = None, style: Style | None = None
) -> go.Figure:
    """Fused accuracy and each modality's unimodal accuracy (others masked) per epoch.

    One colour per modality (fused: ``style.fused_color``), one dash per split
    (train dotted, val solid, test dashed).  ``splits`` selects splits; default every
    recorded split but ``test`` (watching the test set while training invites choosing on
    it; pass ``splits=("val", "test")`` to draw it).  A run that knows its Bayes limits (the
    synthetic set's, in its summary) gets them as dotted horizontal lines in the same colours:
    the ceiling no method can pass, fused and per modality.
    """
    check_run(run)
    style = style or DEFAULT_STYLE
    fig = go.Figure()
    style.apply(fig, "Fused and unimodal accuracy", run_subtitle(run))
    epochs = run.epochs
    if epochs is None or epochs.empty or not present(epochs, "acc"):
        empty_message(fig, "no epoch evaluations with accuracy in this run")
        note_missing(fig, ["epochs.jsonl acc"], run)
        return fig
    available = list(epochs["split"].dropna().unique()) if "split" in epochs else [None]
    if splits is None:
        chosen = [s for s in available if s != "test"] or available
    else:
        chosen = [s for s in available if s in splits]
    if splits is not None and not chosen:
        raise ValueError(f"none of splits {list(splits)} recorded; this run has {available}")
    modalities = run_modalities(run)
    colours = style.modality_colors(modalities)
    series = [("acc", "fused", style.fused_color, 3.0)]
    series += [(ACC + m, m, colours[m], 2.0) for m in modalities if present(epochs, ACC + m)]
    percent_scale = float(epochs["acc"].max()) > 1.0 + 1e-9
    for split in chosen:
        rows = epochs if split is None else epochs.loc[epochs["split"] == split]
        rows = rows.sort_values("epoch")
        for col, label, colour, width in series:
            part = rows[["epoch", col]].dropna()
            if part.empty:
                continue
            fig.add_trace(
                go.Scatter(
                    x=part["epoch"],
                    y=part[col],
                    mode="lines+markers",
                    name=label if len(chosen) == 1 else f"{label} ({split})",
                    legendgroup=label,
                    line={"color": colour, "width": width, "dash": style.dash(split or "val")},
                    marker={"size": 5},
                    hovertemplate=f"{label} {split or ''}: %{{y:.3f}}<extra>epoch %{{x}}</extra>",
                )
            )
    limits = (getattr(run, "summary", None) or {}).get("bayes_limits") or {}
    scale = 100.0 if percent_scale else 1.0
    for col, label, colour, _ in series:
        limit = limits.get("all" if col == "acc" else col[len(ACC) :])
        if limit:
            fig.add_hline(
                y=scale * float(limit["acc"]),
                line={"color": colour, "dash": "dot", "width": 1.2},
                annotation_text=f"Bayes limit {label}",
                annotation_font_color=colour,
                annotation_position="bottom right",
            )
    missing = [ACC + m for m in modalities if not present(epochs, ACC + m)]
    if missing:
        note_missing(fig, [f"unimodal accuracy {', '.join(missing)}"], run)
    n_epochs = epochs["epoch"].nunique()
    fig.update_xaxes(title_text="epoch", dtick=1 if n_epochs <= 20 else None)
    if percent_scale:
        fig.update_yaxes(title_text="accuracy (%)", rangemode="tozero")
    else:
        fig.update_yaxes(title_text="accuracy", tickformat=".0%", range=[0, 1.02])
    return fig
