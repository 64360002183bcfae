"""Sharpness over training: the SAM-family sharpness, per-modality sharpness, Hessian λ_max.

Top panel: ``sharpness`` = ℓ(θ+ε) − ℓ(θ) on each batch (free for the SAM family) and, every
k steps, ``sharpness/<m>`` (perturbing one modality's parameters).  Bottom panel: the top
Hessian eigenvalue, from iteration records where measured, else from epoch records (drawn
at the epoch's last step).  Units are those of the loss (cross-entropy, nats).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from msam_viz.figures._common import (
    SHARP,
    bin_mean,
    check_run,
    empty_message,
    note_missing,
    present,
    rows_with,
    run_modalities,
    run_subtitle,
    smooth,
)
from msam_viz.style import DEFAULT_STYLE, Style, rgba

TOP_EIG = "hessian/top_eig"


def sharpness_curves(
    run: Any,
    *,
    smooth_steps: int | None = None,
    max_points: int | None = None,
    style: Style | None = None,
) -> go.Figure:
    """Sharpness per iteration (overall and per modality) over the Hessian top eigenvalue.

    ``smooth_steps``: centred rolling mean over that many records, drawn over the faint raw
    series; ``max_points``: cap on points per series (bin means; default ``style.max_points``).
    Records the run lacks are named under the figure and raised as a MissingRecordsWarning.
    """
    check_run(run)
    style = style or DEFAULT_STYLE
    cap = max_points or style.max_points
    frame = run.iterations
    modalities = run_modalities(run)
    colours = style.modality_colors(modalities)
    has_overall = present(frame, "sharpness")
    per_modality = [m for m in modalities if present(frame, SHARP + m)]
    eig = _top_eigenvalue(run)
    missing: list[str] = []
    if not has_overall:
        missing.append("sharpness (the method takes no SAM step)")
    if not per_modality:
        missing.append("per-modality sharpness (sharpness/<modality>)")
    if eig is None:
        missing.append("Hessian top eigenvalue (hessian/top_eig)")

    # Only panels with data: an empty subplot would draw no axes at all, just a blank gap.
    top = has_overall or bool(per_modality)
    panels = int(top) + int(eig is not None)
    if panels == 2:
        fig = make_subplots(
            rows=2, cols=1, shared_xaxes=True, row_heights=[0.62, 0.38], vertical_spacing=0.06
        )
    else:
        fig = make_subplots(rows=1, cols=1)
    style.apply(
        fig,
        "Sharpness of the loss landscape",
        run_subtitle(run),
        height=560 if panels == 2 else None,
    )
    if panels == 0:
        empty_message(fig, "no sharpness or Hessian records in this run")
        note_missing(fig, missing, run)
        return fig
    eig_row = 2 if panels == 2 else 1

    if has_overall:
        rows = rows_with(frame, ["sharpness"])[["step", "sharpness"]].dropna()
        raw = bin_mean(rows, "step", ["sharpness"], cap)
        fig.add_trace(
            go.Scatter(
                x=raw["step"],
                y=raw["sharpness"],
                mode="lines",
                name="overall" if not smooth_steps else "overall (raw)",
                legendgroup="overall",
                showlegend=not smooth_steps,
                line={
                    "color": rgba(style.fused_color, style.raw_opacity if smooth_steps else 0.9),
                    "width": 1,
                },
                hovertemplate="overall: %{y:.4g}<extra>step %{x:.0f}</extra>",
            ),
            row=1,
            col=1,
        )
        if smooth_steps:
            rows = rows.assign(sharpness=smooth(rows["sharpness"], smooth_steps))
            line = bin_mean(rows, "step", ["sharpness"], cap)
            fig.add_trace(
                go.Scatter(
                    x=line["step"],
                    y=line["sharpness"],
                    mode="lines",
                    name=f"overall (mean of {smooth_steps} steps)",
                    legendgroup="overall",
                    line={"color": style.fused_color, "width": 2.2},
                    hovertemplate="overall, smoothed: %{y:.4g}<extra>step %{x:.0f}</extra>",
                ),
                row=1,
                col=1,
            )

    for m in per_modality:
        rows = rows_with(frame, [SHARP + m])[["step", SHARP + m]].dropna()
        # Sparse (every k steps) and less noisy: drawn as measured, smoothed only on request.
        rows = rows.assign(**{SHARP + m: smooth(rows[SHARP + m], smooth_steps)})
        rows = bin_mean(rows, "step", [SHARP + m], cap)
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows[SHARP + m],
                mode="lines+markers" if len(rows) <= 200 else "lines",
                name=m,
                legendgroup=m,
                line={"color": colours[m], "width": 2},
                marker={"size": 5},
                hovertemplate=f"{m}: %{{y:.4g}}<extra>step %{{x:.0f}}</extra>",
            ),
            row=1,
            col=1,
        )

    if eig is not None:
        eig = bin_mean(eig, "step", [TOP_EIG], cap)
        fig.add_trace(
            go.Scatter(
                x=eig["step"],
                y=eig[TOP_EIG],
                mode="lines+markers" if len(eig) <= 200 else "lines",
                name="Hessian λ_max",
                line={"color": style.fused_color, "width": 2, "dash": "dot"},
                marker={"size": 6, "symbol": "diamond"},
                hovertemplate="λ_max: %{y:.4g}<extra>step %{x:.0f}</extra>",
            ),
            row=eig_row,
            col=1,
        )
        fig.update_yaxes(title_text="λ_max of ∇²ℓ", row=eig_row, col=1)
    if top:
        fig.update_yaxes(title_text="ℓ(θ+ε) − ℓ(θ)  (nats)", row=1, col=1)
    fig.update_xaxes(title_text="iteration (optimiser step)", row=panels, col=1)
    note_missing(fig, missing, run)
    return fig


def _top_eigenvalue(run: Any) -> pd.DataFrame | None:
    """``[step, hessian/top_eig]`` from iterations, else from epochs at each epoch's last step."""
    frame = run.iterations
    if present(frame, TOP_EIG):
        return rows_with(frame, [TOP_EIG])[["step", TOP_EIG]].dropna()
    epochs = run.epochs
    if not present(epochs, TOP_EIG) or not present(frame, "epoch"):
        return None
    last_step = frame.groupby("epoch")["step"].max()
    rows = epochs.loc[epochs[TOP_EIG].notna(), ["epoch", TOP_EIG]]
    if "split" in epochs:
        # One value per epoch: prefer the validation measurement when several splits hold one.
        order = epochs.loc[rows.index, "split"].map({"val": 0, "train": 1}).fillna(2)
        rows = rows.assign(_order=order).sort_values("_order").drop_duplicates("epoch")
    rows = rows.assign(step=rows["epoch"].map(last_step)).dropna(subset=["step"])
    return rows[["step", TOP_EIG]].sort_values("step").reset_index(drop=True)
