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
FUSION = "fusion"  # the block name msam_core records for the fusion head
PROBE = "probe"  # the whole model's sharpness on the fixed probe batch


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
    # Block colours: each modality its own, the fusion head (recorded as "fusion") grey.
    blocks = [
        *per_modality,
        *[b for b in (FUSION, PROBE) if b not in modalities and present(frame, SHARP + b)],
    ]
    block_colour = {**colours, FUSION: style.fusion_color, PROBE: style.fused_color}
    block_label = {**{m: m for m in modalities}, FUSION: "fusion head", PROBE: "whole model"}
    eig_columns = [TOP_EIG] + [f"{TOP_EIG}/{b}" for b in (*modalities, FUSION)]
    eig = _curvature(run, eig_columns)
    missing: list[str] = []
    if not has_overall:
        missing.append("per-batch sharpness (the method takes no SAM step)")
    if not per_modality:
        missing.append("per-modality sharpness (sharpness/<modality>)")
    if eig is None:
        missing.append("Hessian top eigenvalue (hessian/top_eig)")

    # Only panels with data: an empty subplot would draw no axes at all, just a blank gap.
    top = has_overall or bool(blocks)
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

    for b in blocks:
        rows = rows_with(frame, [SHARP + b])[["step", SHARP + b]].dropna()
        # Sparse (every k steps) and less noisy: drawn as measured, smoothed only on request.
        rows = rows.assign(**{SHARP + b: smooth(rows[SHARP + b], smooth_steps)})
        rows = bin_mean(rows, "step", [SHARP + b], cap)
        fig.add_trace(
            go.Scatter(
                x=rows["step"],
                y=rows[SHARP + b],
                mode="lines+markers" if len(rows) <= 200 else "lines",
                name=block_label[b],
                legendgroup=b,
                line={"color": block_colour[b], "width": 2},
                marker={"size": 5},
                hovertemplate=f"{block_label[b]}: %{{y:.4g}}<extra>step %{{x:.0f}}</extra>",
            ),
            row=1,
            col=1,
        )

    if eig is not None:
        for column in [c for c in eig_columns if c in eig.columns]:
            part = bin_mean(eig[["step", column]].dropna(), "step", [column], cap)
            block = column[len(TOP_EIG) + 1 :] or None
            overall = block is None
            label = "Hessian λ_max" if overall else f"λ_max, {block_label[block]} block"
            fig.add_trace(
                go.Scatter(
                    x=part["step"],
                    y=part[column],
                    mode="lines+markers" if len(part) <= 200 else "lines",
                    name=label,
                    legendgroup=block or "hessian",
                    showlegend=overall,  # block curves share their modality's legend entry
                    line={
                        "color": style.fused_color if overall else block_colour[block],
                        "width": 2 if overall else 1.6,
                        "dash": "dot",
                    },
                    marker={"size": 6 if overall else 5, "symbol": "diamond"},
                    hovertemplate=f"{label}: %{{y:.4g}}<extra>step %{{x:.0f}}</extra>",
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


def _curvature(run: Any, columns: list[str]) -> pd.DataFrame | None:
    """``[step, *columns]`` of Hessian measures: from the iteration records where measured,
    else from the epoch records, at their recorded ``step`` (or the epoch's last step)."""
    frame = run.iterations
    found = [c for c in columns if present(frame, c)]
    if found:
        return rows_with(frame, found)[["step", *found]]
    epochs = run.epochs
    found = [c for c in columns if present(epochs, c)]
    if not found:
        return None
    rows = epochs.loc[epochs[found].notna().any(axis=1)]
    if "split" in rows:
        # One value per epoch: prefer the validation measurement when several splits hold one.
        order = rows["split"].map({"val": 0, "train": 1}).fillna(2)
        rows = rows.assign(_order=order).sort_values(["epoch", "_order"])
        rows = rows.drop_duplicates("epoch")
    if present(rows, "step"):
        steps = rows["step"]
    elif present(frame, "epoch"):
        steps = rows["epoch"].map(frame.groupby("epoch")["step"].max())
    else:
        return None
    out = rows[found].assign(step=steps.to_numpy()).dropna(subset=["step"])
    return out[["step", *found]].sort_values("step").reset_index(drop=True)
