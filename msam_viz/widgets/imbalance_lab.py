"""Imbalance lab: set how strong each synthetic modality is, then train joint vs M-SAM.

Sliders set each modality's signal strength ``s_m`` in the ``synthetic`` dataset (and one
noise level ``σ``); a bar chart previews how separable each modality makes the classes
(``s_m·√2/σ`` noise standard deviations between two class prototypes).  **Run** trains plain
joint training and the chosen method (M-SAM by default, with its ``ρ``) on the same data,
seed and model, one after the other in a background thread, and draws, live:

- each run's Shapley shares with the dominant modality (``shapley_shares``),
- the weak modality's unimodal accuracy per epoch for both runs (``compare_curves``),
- a table of final accuracies and dominance switches.
"""

from __future__ import annotations

import dataclasses
import html
import math
import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import plotly.graph_objects as go

from msam_core.config import TrainConfig, resolve_config
from msam_core.derived import SAM_FAMILY
from msam_viz.figures import compare_curves, run_metrics, shapley_shares
from msam_viz.figures.comparison_table import metric_label
from msam_viz.style import DEFAULT_STYLE, Style
from msam_viz.widgets._live import BackgroundJob, LiveFigure
from msam_viz.widgets.monitor import LiveRun, Ticker

COMPARED_METHODS = ("msam", "sam", "asam", "ogm_ge", "agm")
STRENGTH_RANGE = (0.0, 8.0)


def strength_preview(
    strengths: Mapping[str, float], noise: float = 1.0, *, style: Style | None = None
) -> go.Figure:
    """Bars: class separation ``s_m·√2/σ`` (in noise standard deviations) per modality."""
    style = style or DEFAULT_STYLE
    if noise <= 0:
        raise ValueError(f"noise must be > 0, got {noise}")
    names = list(strengths)
    colours = style.modality_colors(names)
    separation = [strengths[m] * math.sqrt(2.0) / noise for m in names]
    fig = go.Figure(
        go.Bar(
            x=names,
            y=separation,
            marker_color=[colours[m] for m in names],
            text=[f"{s:.2f} σ" for s in separation],
            textposition="outside",
            hovertemplate="%{x}: prototypes %{y:.2f} noise s.d. apart<extra></extra>",
            name="separation",
        )
    )
    strongest = max(separation) if separation else 0.0
    weakest = min(separation) if separation else 0.0
    ratio = "∞" if weakest == 0 else f"{strongest / weakest:.1f}×"
    style.apply(
        fig,
        "How separable each modality makes the classes",
        f"strongest / weakest = {ratio}; the stronger modality is learnt first",
        height=300,
    )
    fig.update_yaxes(
        title_text="separation (noise s.d.)",
        range=[0, max(STRENGTH_RANGE[1] * math.sqrt(2.0) / noise, strongest) * 1.1],
    )
    fig.update_layout(showlegend=False, width=min(style.width, 480))
    return fig


class ImbalanceLab(W.VBox):
    """Sliders for each synthetic modality's strength; train joint vs a method and compare.

    ``modalities``: number of modalities or their names; ``strengths`` one per modality
    (default 4.0 down to 2.0); ``noise``: σ of every modality.  ``method`` / ``rho``: the
    method compared with joint training.  ``dataset_options`` go to the ``synthetic`` loader
    (``n_train``, ``dims``, ``kinds`` …); ``config`` and ``overrides`` set any other
    training key (``lr``, ``batch_size``, ``fusion`` …).  Each press of **Run** writes a new
    ``<out>/trial_NNN/{joint,<method>}`` pair of run directories.

    In code: set the sliders' ``value``, then ``lab.run(wait=True)``; ``lab.runs`` holds the
    last trial's two :class:`~msam_viz.io.Run` s.
    """

    def __init__(
        self,
        *,
        modalities: int | Sequence[str] = 2,
        strengths: Sequence[float] | None = None,
        noise: float = 1.0,
        method: str = "msam",
        rho: float = 1.0,  # M-SAM's default (msam_core.methods.msam); SAM's is 0.05
        epochs: int = 10,
        seed: int = 0,
        out: str | os.PathLike = "runs/imbalance_lab",
        dataset_options: Mapping[str, Any] | None = None,
        config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        refresh_s: float = 0.5,
        style: Style | None = None,
        **overrides: Any,
    ) -> None:
        from msam_core.data.synthetic import default_modality_names, default_strengths

        names = (
            default_modality_names(modalities)
            if isinstance(modalities, int)
            else [str(m) for m in modalities]
        )
        if len(names) < 2:
            raise ValueError(f"an imbalance needs at least two modalities, got {names}")
        strengths = list(strengths) if strengths is not None else default_strengths(len(names))
        if len(strengths) != len(names):
            raise ValueError(
                f"{len(strengths)} strengths for {len(names)} modalities {names}; give one each"
            )
        for name, value in zip(names, strengths, strict=True):
            if not STRENGTH_RANGE[0] <= value <= STRENGTH_RANGE[1]:
                raise ValueError(
                    f"strength of {name!r} must be in {list(STRENGTH_RANGE)}, got {value}"
                )
        if method not in COMPARED_METHODS:
            raise ValueError(f"method must be one of {list(COMPARED_METHODS)}, got {method!r}")
        options = dict(dataset_options or {})
        clash = [k for k in ("modalities", "strengths", "noise") if k in options]
        if clash:
            raise ValueError(f"set {clash} with the lab's own arguments, not dataset_options")
        # Validated now, so a bad key fails when the lab is built, not when Run is pressed.
        self.base = resolve_config(config, **overrides).replace(dataset="synthetic", seed=seed)
        self.dataset_options = options
        self.names = names
        self.out = Path(out)
        self.refresh_s = refresh_s
        self.style = style or DEFAULT_STYLE
        # Two figures side by side fit a notebook's output area (about 1000 px) at 480 px.
        half = dataclasses.replace(self.style, width=480, height=400)
        self.lives: list[LiveRun] = []
        self.job: BackgroundJob | None = None
        self._ticker: Ticker | None = None
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.draw_error: Exception | None = None

        self.strength = {}
        for name, value in zip(names, strengths, strict=True):
            slider = W.FloatSlider(
                value=value,
                min=STRENGTH_RANGE[0],
                max=STRENGTH_RANGE[1],
                step=0.25,
                description=name,
                readout_format=".2f",
            )
            slider.add_class("msam-strength-slider")
            slider.observe(lambda _c: self._preview(), names="value")
            self.strength[name] = slider
        self.noise = W.FloatSlider(
            value=noise, min=0.25, max=3.0, step=0.25, description="noise σ", readout_format=".2f"
        )
        self.noise.observe(lambda _c: self._preview(), names="value")
        self.method = W.Dropdown(options=list(COMPARED_METHODS), value=method, description="vs")
        self.rho = W.FloatSlider(
            value=rho, min=0.0, max=2.0, step=0.05, description="ρ", readout_format=".2f"
        )
        self.method.observe(lambda _c: self._rho_enabled(), names="value")
        self.epochs = W.IntSlider(value=epochs, min=1, max=100, description="epochs")
        self.run_button = W.Button(description="Run", icon="play", button_style="success")
        self.stop_button = W.Button(
            description="Stop", icon="stop", button_style="danger", disabled=True
        )
        self.status = W.HTML("<i>set the strengths, then press Run</i>")
        self.summary = W.HTML()
        self.run_button.on_click(lambda _b: self.run())
        self.stop_button.on_click(lambda _b: self.stop())
        self._rho_enabled()

        self.preview = LiveFigure(strength_preview, self._strengths(), noise=noise, style=half)
        self.preview.widget.add_class("msam-strength-preview")
        self.shares = {
            "joint": LiveFigure(shapley_shares, style=half),
            "method": LiveFigure(shapley_shares, style=half),
        }
        weakest = min(names, key=lambda m: self.strength[m].value)
        self.curve_metric = W.Dropdown(
            options=[(metric_label(m), m) for m in ["acc", *[f"acc/{n}" for n in names]]],
            value=f"acc/{weakest}",
            description="compare",
        )
        self.curve_metric.observe(lambda _c: self.refresh(force=True), names="value")
        self.comparison = LiveFigure(compare_curves, metric=self.curve_metric.value)
        self._drawn = -1

        controls = W.HBox(
            [
                W.VBox([W.HTML("<b>modality strength s</b>"), *self.strength.values(), self.noise]),
                W.VBox(
                    [
                        W.HTML("<b>training</b>"),
                        self.method,
                        self.rho,
                        self.epochs,
                        W.HBox([self.run_button, self.stop_button]),
                    ]
                ),
            ]
        )
        super().__init__(
            [
                controls,
                self.preview.widget,
                self.status,
                W.HBox([self.shares["joint"].widget, self.shares["method"].widget]),
                self.curve_metric,
                self.comparison.widget,
                self.summary,
            ]
        )
        self.add_class("msam-imbalance-lab")

    # -- controls --------------------------------------------------------------------------

    def _strengths(self) -> dict[str, float]:
        return {name: float(slider.value) for name, slider in self.strength.items()}

    def _preview(self) -> None:
        self.preview.update(self._strengths(), noise=float(self.noise.value))

    def _rho_enabled(self) -> None:
        self.rho.disabled = self.method.value not in SAM_FAMILY

    def configs(self) -> dict[str, TrainConfig]:
        """The two training configs the sliders describe: ``joint`` and the chosen method."""
        options = {
            **self.dataset_options,
            "modalities": list(self.names),
            "strengths": [self._strengths()[n] for n in self.names],
            "noise": float(self.noise.value),
        }
        common = {"dataset_options": options, "epochs": int(self.epochs.value)}
        method = self.method.value
        return {
            "joint": self.base.replace(method="joint", name="joint", **common),
            method: self.base.replace(
                method=method, rho=float(self.rho.value), name=method, **common
            ),
        }

    def _next_trial(self) -> Path:
        taken = [p.name for p in self.out.glob("trial_*")] if self.out.is_dir() else []
        numbers = [int(n[6:]) for n in taken if n[6:].isdigit()]
        return self.out / f"trial_{max(numbers, default=0) + 1:03d}"

    # -- running ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def runs(self) -> list:
        """The current trial's runs so far (joint first), as :class:`~msam_viz.io.Run` s."""
        return [live.buffer.snapshot() for live in self.lives if live.buffer.n_iterations]

    @property
    def trial(self) -> Path | None:
        return self.lives[0].out.parent if self.lives else None

    def run(self, wait: bool = False) -> None:
        """Train joint, then the chosen method, on the slider settings (background thread).

        ``wait`` blocks until both are done and re-raises a training error.
        """
        if self.running:
            if not wait:
                return
            self.wait()
        trial = self._next_trial()
        self.lives = [LiveRun(cfg, trial / key) for key, cfg in self.configs().items()]
        self._stop.clear()
        self.run_button.disabled = True
        self.stop_button.disabled = False
        self.summary.value = ""
        self.status.value = f"training in <code>{html.escape(str(trial))}</code> …"
        self._drawn = -1
        self.job = BackgroundJob(self._train_all, name="msam-lab", on_done=self._finished)
        self._ticker = Ticker(self.refresh_s, self.refresh).start()
        self.job.start()
        if wait:
            self.wait()

    def _train_all(self) -> list[Path]:
        done = []
        for live in self.lives:
            if self._stop.is_set():
                break
            done.append(live.run())
        return done

    def stop(self) -> None:
        """Stop the run in progress after its current step; the next one does not start."""
        self._stop.set()
        for live in self.lives:
            live.control.stop()

    def wait(self, timeout: float | None = None) -> list[Path] | None:
        """Block until the trial ends; its run directories, or None after ``timeout`` s."""
        if self.job is None:
            raise RuntimeError("nothing is running: call run() first")
        if not self.job.join(timeout):
            return None
        if self.job.error is not None:
            raise self.job.error
        return self.job.result

    def _finished(self, job: BackgroundJob) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        self.run_button.disabled = False
        self.stop_button.disabled = True
        self.refresh(force=True)
        if job.error is not None:
            self.status.value = (
                f"<b style='color:#b00020'>failed</b>: "
                f"{html.escape(type(job.error).__name__)}: {html.escape(str(job.error))}"
            )
            return
        self.status.value = (
            f"<b>{'stopped' if self._stop.is_set() else 'done'}</b>: "
            f"<code>{html.escape(str(self.trial))}</code>"
        )
        self.summary.value = self._summary_html()

    # -- drawing ---------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Redraw the result figures from the records so far (in place)."""
        with self._lock:
            version = sum(live.buffer.version for live in self.lives)
            if version == self._drawn and not force:
                return
            self._drawn = version
            try:
                for key, live in zip(("joint", "method"), self.lives, strict=False):
                    if live.buffer.n_iterations:
                        self.shares[key].update(live.buffer.snapshot())
                runs = [live.buffer.snapshot() for live in self.lives if live.buffer.n_epochs]
                if runs:
                    self.comparison.update(runs, metric=self.curve_metric.value)
            except Exception as err:  # shown under the figures; training goes on
                self.draw_error = err
                self.summary.value = html.escape(f"drawing failed: {err!r}")
            if self.running:
                steps = [f"{live.config.method} step {live.steps_done}" for live in self.lives]
                self.status.value = "training: " + " · ".join(steps)

    def _summary_html(self) -> str:
        runs = self.runs
        if not runs:
            return ""
        metrics = ["acc", *[f"acc/{n}" for n in self.names], "switches"]
        table = run_metrics(runs, metrics, split="val", at="last")
        wide = table.pivot_table(index="group", columns="metric", values="value", sort=False)
        wide = wide[[m for m in metrics if m in wide.columns]]
        pad = "style='padding:2px 12px;text-align:right'"
        head = "".join(f"<th {pad}>{html.escape(metric_label(m))}</th>" for m in wide.columns)
        rows = []
        for group, row in wide.iterrows():
            cells = "".join(
                f"<td {pad}>{v:.0f}</td>" if m == "switches" else f"<td {pad}>{v:.1%}</td>"
                for m, v in row.items()
            )
            rows.append(f"<tr><th {pad}>{html.escape(str(group))}</th>{cells}</tr>")
        return (
            f"<table class='msam-summary'><tr><th {pad}>validation, last epoch</th>"
            f"{head}</tr>{''.join(rows)}</table>"
        )
