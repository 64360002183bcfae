"""Loss landscapes: 1-D curves, 2-D contour, 3-D surface with the training trajectory on it.

A landscape (:class:`msam_core.landscape.Landscape`, stored as ``RUN/landscapes/<name>.npz``)
is the loss and accuracy at ``θ + α·d₁ (+ β·d₂)`` over a grid.  Directions are filter-
normalised random ones (``α = 1`` is a step as large as the weights, filter by filter), one
modality's encoder only (``subspace`` = that modality), or the PCA of the checkpoint
trajectory, whose projection is drawn on the contour and on the surface.

Every function takes a Run (and a landscape name, the file stem) or a ``Landscape`` computed
in memory (e.g. by a notebook explorer), and returns a ``go.Figure``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import plotly.graph_objects as go
from scipy.interpolate import RegularGridInterpolator

from msam_viz.figures._common import check_run, empty_message, note_missing, run_subtitle
from msam_viz.style import DEFAULT_STYLE, Style

METRICS = ("loss", "acc")
METRIC_LABEL = {"loss": "loss (nats)", "acc": "accuracy"}


def _is_landscape(obj: Any) -> bool:
    return hasattr(obj, "alphas") and hasattr(obj, "loss") and hasattr(obj, "subspace")


def run_landscapes(run: Any) -> dict[str, Any]:
    """Every stored landscape of ``run`` by file stem, read by msam_core's reader (sorted)."""
    check_run(run)
    paths = list(getattr(run, "landscapes", None) or [])
    if not paths:
        return {}
    from msam_core.landscape import load_landscape  # torch import only when drawing them

    return {p.stem: load_landscape(p) for p in paths}


def _pick(source: Any, name: str | None, dims: int) -> tuple[str, Any, Any]:
    """``(name, landscape, run or None)`` for a Run + name, or a Landscape given directly.

    Default for a run: the latest-epoch ``dims``-D landscape, PCA first when there is one
    (it carries the trajectory)."""
    if _is_landscape(source):
        return getattr(source, "name", None) or source.default_name(), source, None
    run = check_run(source)
    stored = run_landscapes(run)
    if name is not None:
        if name not in stored:
            raise KeyError(
                f"no landscape {name!r} in run {run.name!r}; choose one of {sorted(stored)}"
            )
        return name, stored[name], run
    candidates = {k: v for k, v in stored.items() if v.dims == dims}
    if not candidates:
        return "", None, run

    def rank(item: tuple[str, Any]) -> tuple:
        key, ls = item
        epoch = ls.epoch if ls.epoch is not None else -1
        return (ls.subspace == "pca", epoch, key)

    key, landscape = max(candidates.items(), key=rank)
    return key, landscape, run


def _values(landscape: Any, metric: str) -> np.ndarray:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return np.asarray(getattr(landscape, metric), dtype=float)


#: what one grid unit along a random direction is, by the directions' normalisation
UNITS = {"filter": "filter-normalised", "layer": "layer-normalised", "none": "raw parameter units"}
PCA_UNIT = "±1 = farthest checkpoint"


def _unit(landscape: Any) -> str:
    """What one grid unit is: the farthest checkpoint (PCA) or the directions' normalisation."""
    if landscape.subspace == "pca":
        return PCA_UNIT
    return UNITS.get(str(landscape.norm), f"{landscape.norm}-normalised")


def _axis_titles(landscape: Any) -> tuple[str, str]:
    """Axis titles: principal components with their variance, or the random directions."""
    if landscape.subspace == "pca":
        var = landscape.explained_variance
        if var is not None and len(var) >= 2:
            return (f"PC1 ({var[0]:.0%} of trajectory variance; {PCA_UNIT})", f"PC2 ({var[1]:.0%})")
        return (f"PC1 (trajectory; {PCA_UNIT})", "PC2 (trajectory)")
    where = "" if landscape.subspace in ("all", "custom") else f", {landscape.subspace} only"
    return (f"α (direction 1{where}, {_unit(landscape)})", f"β (direction 2{where})")


def _describe(landscape: Any, name: str) -> str:
    parts = [name or landscape.subspace]
    if landscape.epoch is not None:
        parts.append(f"epoch {landscape.epoch}")
    if landscape.split and landscape.n_eval:
        parts.append(f"{landscape.n_eval} {landscape.split} samples")
    return " · ".join(parts)


def _subtitle(run: Any, landscape: Any, name: str) -> str:
    head = run_subtitle(run) + " · " if run is not None else ""
    return head + _describe(landscape, name)


def subspace_label(subspace: str) -> str:
    """Legend text of a direction subspace: whole model, fusion head, or one encoder."""
    return {
        "all": "whole model",
        "custom": "custom directions",
        "pca": "trajectory PCA",
        "fusion": "fusion head only",
    }.get(subspace, f"{subspace} encoder only")


def _subspace_colour(subspace: str, style: Style, modalities: list[str]) -> str:
    if subspace in ("all", "custom", "pca"):
        return style.fused_color
    if subspace == "fusion":
        return style.fusion_color
    return style.modality_colors([*modalities, subspace])[subspace]


def landscape_curves(
    source: Any,
    names: list[str] | None = None,
    *,
    metric: str = "loss",
    epoch: int | None = None,
    style: Style | None = None,
) -> go.Figure:
    """1-D landscapes as curves, one per subspace (whole model, each modality, fusion head).

    ``source``: a Run (its 1-D landscapes; ``names`` picks file stems, ``epoch`` an epoch,
    default the latest epoch holding any), or one ``Landscape``.  A modality's curve takes
    that modality's colour, so a flatter visual curve beside a sharp audio one reads at a
    glance.  The dot marks the weights themselves (α = 0).
    """
    style = style or DEFAULT_STYLE
    fig = go.Figure()
    if _is_landscape(source):
        chosen, run = {_pick(source, None, 1)[0]: source}, None
    else:
        run = check_run(source)
        stored = run_landscapes(run)
        chosen = {k: v for k, v in stored.items() if v.dims == 1}
        if names is not None:
            unknown = sorted(set(names) - set(stored))
            if unknown:
                raise KeyError(f"no landscape {unknown} in run; choose from {sorted(stored)}")
            chosen = {k: stored[k] for k in names}
        elif chosen:
            epochs = [v.epoch for v in chosen.values() if v.epoch is not None]
            wanted = epoch if epoch is not None else (max(epochs) if epochs else None)
            if wanted is not None:
                chosen = {k: v for k, v in chosen.items() if v.epoch in (wanted, None)}
            if epoch is not None and not chosen:
                raise ValueError(f"no 1-D landscape at epoch {epoch}; epochs: {sorted(epochs)}")
    title = f"1-D {'loss' if metric == 'loss' else 'accuracy'} landscape"
    subtitle = run_subtitle(run) if run is not None else None
    style.apply(fig, title, subtitle)
    if not chosen:
        empty_message(fig, "no 1-D landscapes in this run")
        note_missing(fig, ["1-D landscapes (landscapes/*_1d.npz)"], run)
        return fig
    modalities = list(getattr(run, "modalities", None) or []) if run is not None else []
    for key, ls in chosen.items():
        if ls.dims != 1:
            raise ValueError(f"landscape {key!r} is {ls.dims}-D; curves need 1-D landscapes")
        y = _values(ls, metric)
        colour = _subspace_colour(ls.subspace, style, modalities)
        label = subspace_label(ls.subspace)
        label = label if ls.epoch is None else f"{label} (epoch {ls.epoch})"
        fig.add_trace(
            go.Scatter(
                x=ls.alphas,
                y=y,
                mode="lines",
                name=label,
                legendgroup=ls.subspace,
                line={"color": colour, "width": 2.4},
                hovertemplate=f"{label}<br>α %{{x:.3f}}: %{{y:.4g}}<extra></extra>",
            )
        )
        centre = ls.center_loss if metric == "loss" else ls.center_acc
        if np.isfinite(centre):
            fig.add_trace(
                go.Scatter(
                    x=[0.0],
                    y=[centre],
                    mode="markers",
                    name=f"{label}: weights",
                    legendgroup=ls.subspace,
                    showlegend=False,
                    marker={"color": colour, "size": 9, "line": {"color": "white", "width": 1}},
                    hovertemplate=f"{label}, weights (α = 0): %{{y:.4g}}<extra></extra>",
                )
            )
    units = sorted({_unit(ls) for ls in chosen.values()})
    fig.update_xaxes(title_text=f"α (step along the direction; {'; '.join(units)})")
    fig.update_yaxes(title_text=METRIC_LABEL[metric])
    if metric == "acc":
        fig.update_yaxes(tickformat=".0%")
    return fig


def _grid(ls: Any, metric: str, log: bool) -> np.ndarray:
    """``z[j, i]`` at ``(alphas[i], betas[j])`` (plotly's row = y), log10 on request."""
    z = _values(ls, metric).T
    if log:
        if metric != "loss":
            raise ValueError("log scale applies to the loss only")
        z = np.log10(np.clip(z, 1e-12, None))
    return z


def _trajectory(ls: Any, z: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Trajectory ``(x, y, z on the surface)``; points outside the grid get z = NaN."""
    if ls.trajectory is None or len(ls.trajectory) == 0 or ls.dims != 2:
        return None
    path = np.asarray(ls.trajectory, dtype=float)[:, :2]
    interp = RegularGridInterpolator(
        (ls.betas, ls.alphas), z, bounds_error=False, fill_value=np.nan
    )
    heights = interp(np.stack([path[:, 1], path[:, 0]], axis=1))
    return path[:, 0], path[:, 1], heights


def _trajectory_labels(ls: Any, n: int) -> list[str]:
    epochs = ls.trajectory_epochs
    if epochs is not None and len(epochs) == n:
        return [f"epoch {int(e)}" for e in epochs]
    return [f"checkpoint {k}" for k in range(n)]


def landscape_contour(
    source: Any,
    name: str | None = None,
    *,
    metric: str = "loss",
    log: bool = False,
    style: Style | None = None,
) -> go.Figure:
    """2-D landscape as filled contours, the weights at the origin, the PCA trajectory on top.

    ``source``: a Run (``name`` = file stem; default its latest 2-D landscape, PCA first) or
    a ``Landscape``.  ``log``: colour by log10(loss), for landscapes spanning decades.
    """
    style = style or DEFAULT_STYLE
    key, ls, run = _pick(source, name, 2)
    fig = go.Figure()
    if ls is None:
        style.apply(fig, "2-D loss landscape", run_subtitle(run))
        empty_message(fig, "no 2-D landscapes in this run")
        note_missing(fig, ["2-D landscapes (landscapes/*_2d.npz)"], run)
        return fig
    if ls.dims != 2:
        raise ValueError(f"landscape {key!r} is {ls.dims}-D; contour and surface need 2-D")
    z = _grid(ls, metric, log)
    label = ("log10 " if log else "") + METRIC_LABEL[metric]
    style.apply(
        fig,
        f"2-D {'loss' if metric == 'loss' else 'accuracy'} landscape",
        _subtitle(run, ls, key),
        height=640,
    )
    fig.add_trace(
        go.Contour(
            x=ls.alphas,
            y=ls.betas,
            z=z,
            name=metric,
            colorscale=style.landscape_colorscale,
            reversescale=metric == "acc",
            contours={"coloring": "heatmap", "showlabels": True, "labelfont": {"size": 10}},
            line={"width": 0.5, "color": "rgba(255,255,255,0.5)"},
            colorbar={"title": {"text": label, "side": "right"}},
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>" + label + ": %{z:.4g}<extra></extra>",
        )
    )
    traj = _trajectory(ls, z)
    if traj is not None:
        x, y, _ = traj
        labels = _trajectory_labels(ls, len(x))
        fig.add_trace(
            go.Scatter(
                x=x,
                y=y,
                mode="lines+markers",
                name="training trajectory",
                line={"color": style.trajectory_color, "width": 2.5},
                marker={"size": 7, "color": style.trajectory_color},
                text=labels,
                hovertemplate="%{text}<br>(%{x:.3f}, %{y:.3f})<extra></extra>",
            )
        )
    fig.add_trace(
        go.Scatter(
            x=[0.0],
            y=[0.0],
            mode="markers",
            name="weights (origin)",
            marker={"symbol": "star", "size": 14, "color": "white", "line": {"width": 1}},
            hovertemplate="the weights the landscape is taken at<extra></extra>",
        )
    )
    x_title, y_title = _axis_titles(ls)
    fig.update_xaxes(title_text=x_title, range=[ls.alphas[0], ls.alphas[-1]])
    fig.update_yaxes(
        title_text=y_title, range=[ls.betas[0], ls.betas[-1]], scaleanchor="x", scaleratio=1
    )
    fig.update_layout(width=min(style.width, 760))
    return fig


def landscape_surface(
    source: Any,
    name: str | None = None,
    *,
    metric: str = "loss",
    log: bool = False,
    style: Style | None = None,
) -> go.Figure:
    """2-D landscape as a 3-D surface with the PCA training trajectory drawn on it.

    Trajectory heights are the surface itself at each checkpoint's coordinates (bilinear
    interpolation of the grid), lifted by 1 % of the height range so the path stays visible;
    checkpoints outside the grid are left out of the 3-D path (the contour shows them).
    """
    style = style or DEFAULT_STYLE
    key, ls, run = _pick(source, name, 2)
    fig = go.Figure()
    if ls is None:
        style.apply(fig, "Loss surface", run_subtitle(run))
        empty_message(fig, "no 2-D landscapes in this run")
        note_missing(fig, ["2-D landscapes (landscapes/*_2d.npz)"], run)
        return fig
    if ls.dims != 2:
        raise ValueError(f"landscape {key!r} is {ls.dims}-D; contour and surface need 2-D")
    z = _grid(ls, metric, log)
    label = ("log10 " if log else "") + METRIC_LABEL[metric]
    style.apply(
        fig,
        "Loss surface" if metric == "loss" else "Accuracy surface",
        _subtitle(run, ls, key),
        height=680,
    )
    fig.add_trace(
        go.Surface(
            x=ls.alphas,
            y=ls.betas,
            z=z,
            name=metric,
            colorscale=style.landscape_colorscale,
            reversescale=metric == "acc",
            opacity=0.92,
            colorbar={"title": {"text": label, "side": "right"}, "len": 0.7},
            contours={"z": {"show": True, "usecolormap": True, "project": {"z": True}}},
            hovertemplate="(%{x:.3f}, %{y:.3f})<br>" + label + ": %{z:.4g}<extra></extra>",
        )
    )
    traj = _trajectory(ls, z)
    if traj is not None:
        x, y, heights = traj
        inside = np.isfinite(heights)
        lift = 0.01 * float(np.nanmax(z) - np.nanmin(z))
        labels = np.asarray(_trajectory_labels(ls, len(x)))
        fig.add_trace(
            go.Scatter3d(
                x=x[inside],
                y=y[inside],
                z=heights[inside] + lift,
                mode="lines+markers",
                name="training trajectory",
                line={"color": style.trajectory_color, "width": 6},
                marker={"size": 4, "color": style.trajectory_color},
                text=labels[inside],
                hovertemplate="%{text}<br>" + label + " %{z:.4g}<extra></extra>",
            )
        )
        if not inside.all():
            note_missing(
                fig,
                [f"{int((~inside).sum())} checkpoint(s) outside the grid (widen the span)"],
                run,
            )
    x_title, y_title = _axis_titles(ls)
    fig.update_layout(
        scene={
            "xaxis": {"title": {"text": x_title}},
            "yaxis": {"title": {"text": y_title}},
            "zaxis": {"title": {"text": label}},
            "camera": {"eye": {"x": 1.5, "y": -1.5, "z": 0.9}},
            "aspectmode": "manual",
            "aspectratio": {"x": 1, "y": 1, "z": 0.6},
        },
        legend={"y": 0.98, "yanchor": "top"},
    )
    return fig


def landscape_figures(run: Any, *, style: Style | None = None) -> dict[str, go.Figure]:
    """All landscape figures of a run for a report: the 1-D curves (latest epoch), and a
    contour and a surface per stored 2-D landscape, keyed ``landscape_<stem>_<kind>``."""
    check_run(run)
    stored = run_landscapes(run)
    figures: dict[str, go.Figure] = {}
    if any(ls.dims == 1 for ls in stored.values()):
        figures["landscape_1d"] = landscape_curves(run, style=style)
    for key, ls in stored.items():
        if ls.dims == 2:
            figures[f"landscape_{key}_contour"] = landscape_contour(run, key, style=style)
            figures[f"landscape_{key}_surface"] = landscape_surface(run, key, style=style)
    return figures
