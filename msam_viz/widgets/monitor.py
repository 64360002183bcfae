"""Live training monitor: start, pause and stop a run from a notebook and watch it learn.

Training runs in a background thread (:func:`msam_core.train` with a
:class:`~msam_core.train.TrainingControl`), so the cell returns at once and the kernel stays
free.  Every record the loop writes is also handed to a :class:`RecordBuffer`; a refresher
thread redraws the figures from it a few times a second (each view holds its whole current
figure, so a reloaded page shows it too), with the same figure functions as the static
plots: Shapley shares with the dominant modality, fused and unimodal accuracy, sharpness, and
the loss.
"""

from __future__ import annotations

import html
import json
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go

from msam_core.config import TrainConfig, resolve_config
from msam_core.derived import SAM_FAMILY, default_run_dir
from msam_core.record import CONFIG_FILE
from msam_viz.figures import accuracy_curves, shapley_shares, sharpness_curves
from msam_viz.figures._common import bin_mean, empty_message, run_subtitle, smooth
from msam_viz.io import Run
from msam_viz.style import DEFAULT_STYLE, Style, rgba
from msam_viz.widgets._live import BackgroundJob, LiveFigure, RecordBuffer

#: methods that take a SAM step, so record ``sharpness`` at every step
FIGURES = ("loss", "shapley", "accuracy", "sharpness")


def loss_curve(
    run: Run, *, smooth_steps: int | None = None, style: Style | None = None
) -> go.Figure:
    """Training loss per iteration (faint) and its centred rolling mean, in nats."""
    style = style or DEFAULT_STYLE
    fig = go.Figure()
    style.apply(fig, "Training loss", run_subtitle(run), height=320)
    frame = run.iterations
    if frame.empty or "loss" not in frame.columns:
        return empty_message(fig, "no steps recorded yet")
    part = frame[["step", "loss"]].dropna().sort_values("step")
    raw = bin_mean(part, "step", ["loss"], style.max_points)
    fig.add_trace(
        go.Scatter(
            x=raw["step"],
            y=raw["loss"],
            mode="lines",
            name="loss per batch",
            line={"color": rgba(style.fused_color, style.raw_opacity), "width": 1},
            hovertemplate="step %{x}: %{y:.4f}<extra></extra>",
        )
    )
    window = smooth_steps or max(1, len(part) // 50)
    smoothed = part.assign(loss=smooth(part["loss"], window))
    smoothed = bin_mean(smoothed, "step", ["loss"], style.max_points)
    fig.add_trace(
        go.Scatter(
            x=smoothed["step"],
            y=smoothed["loss"],
            mode="lines",
            name=f"mean over {window} steps",
            line={"color": style.fused_color, "width": 2.2},
            hovertemplate="step %{x}: %{y:.4f}<extra>smoothed</extra>",
        )
    )
    fig.update_xaxes(title_text="iteration (optimiser step)")
    fig.update_yaxes(title_text="cross-entropy (nats)", rangemode="tozero")
    return fig


def default_out(config: TrainConfig, root: str | os.PathLike = "runs") -> Path:
    """``runs/<method>_<dataset>_seed<seed>``: the directory :func:`msam_core.train` picks."""
    return default_run_dir(config.method, config.dataset, config.seed, root)


class LiveRun:
    """One training run fed into a :class:`RecordBuffer` as it goes.

    :meth:`run` blocks (call it from a worker thread); :attr:`control` pauses or stops it
    from any thread; :attr:`buffer` holds every record so far.
    """

    def __init__(
        self,
        config: TrainConfig,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        data: Any = None,
        model: Any = None,
    ) -> None:
        from msam_core.train import TrainingControl  # torch import deferred to first use

        self.config = config
        self.out = Path(out)
        self.overwrite = overwrite
        self.data = data
        self.model = model
        self.control = TrainingControl()
        self.buffer = RecordBuffer(config.to_dict(), path=self.out)
        self.total_steps: int | None = None
        self.run_dir: Path | None = None

    def run(self) -> Path:
        """Train to the end (or until stopped); return the run directory."""
        from msam_core.train import train

        self.run_dir = train(
            self.config,
            out=self.out,
            overwrite=self.overwrite,
            callback=self._record,
            control=self.control,
            quiet=True,
            data=self.data,
            model=self.model,
        )
        return self.run_dir

    def _record(self, record: dict[str, Any]) -> None:
        if self.total_steps is None:
            # config.json is written before the first record: it knows the modality order
            # and the steps per epoch, which the figures and the progress bar need.
            stored = json.loads((self.out / CONFIG_FILE).read_text(encoding="utf-8"))
            self.buffer.set_config(stored)
            per_epoch = stored.get("run", {}).get("steps_per_epoch")
            self.total_steps = int(per_epoch) * self.config.epochs if per_epoch else 0
        if "split" in record:
            self.buffer.add_epoch(record)
        else:
            self.buffer.add_iteration(record)

    @property
    def steps_done(self) -> int:
        last = self.buffer.last_iteration()
        return int(last["step"]) if last else 0


class Ticker:
    """Calls ``tick()`` every ``interval_s`` seconds in a daemon thread until :meth:`stop`."""

    def __init__(self, interval_s: float, tick: Callable[[], None]) -> None:
        if interval_s <= 0:
            raise ValueError(f"refresh interval must be > 0 seconds, got {interval_s}")
        self.interval_s = interval_s
        self.tick = tick
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="msam-refresh", daemon=True)

    def start(self) -> Ticker:
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._halt.wait(self.interval_s):
            try:
                self.tick()
            except Exception:  # a drawing error must not end live updates for good
                continue

    def stop(self) -> None:
        self._halt.set()
        if self._thread.ident is not None and self._thread is not threading.current_thread():
            self._thread.join()


class TrainingMonitor(W.VBox):
    """Start / pause / stop one training run and watch its figures grow.

    ``config``: a :class:`~msam_core.config.TrainConfig`, a mapping of its keys or a config
    file; ``overrides`` change keys (``epochs=3``).  ``out``: the run directory (default
    ``runs/<method>_<dataset>_seed<seed>``); ``overwrite`` replaces a previous run there.
    ``refresh_s``: seconds between redraws.  ``figures``: any of ``loss``, ``shapley``,
    ``accuracy``, ``sharpness`` (default: all that the method records).  ``data`` /
    ``model``: your own dataset or model instead of building them from the config.

    In code: ``monitor.start()``, ``monitor.pause()``, ``monitor.resume()``,
    ``monitor.stop()``, ``monitor.wait()`` (blocks; returns the run directory and re-raises
    a training error).  ``monitor.run`` is a :class:`~msam_viz.io.Run` of the records so far.
    """

    def __init__(
        self,
        config: TrainConfig | Mapping[str, Any] | str | os.PathLike | None = None,
        *,
        out: str | os.PathLike | None = None,
        overwrite: bool = False,
        refresh_s: float = 0.5,
        figures: Sequence[str] | None = None,
        smooth_steps: int = 1,
        style: Style | None = None,
        data: Any = None,
        model: Any = None,
        **overrides: Any,
    ) -> None:
        self.config = resolve_config(config, **overrides)
        if figures is None:
            figures = [f for f in FIGURES if f != "sharpness" or self._records_sharpness()]
        unknown = [f for f in figures if f not in FIGURES]
        if unknown:
            raise ValueError(f"unknown figures {unknown}; choose from {list(FIGURES)}")
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0 seconds, got {refresh_s}")
        self.refresh_s = refresh_s
        self.out = Path(out) if out is not None else default_out(self.config)
        self.live = LiveRun(self.config, self.out, overwrite=overwrite, data=data, model=model)
        self.job: BackgroundJob | None = None
        self._ticker: Ticker | None = None
        self._drawn_version = -1
        self._lock = threading.Lock()
        self.draw_error: Exception | None = None

        self.start_button = W.Button(description="Start", icon="play", button_style="success")
        self.pause_button = W.Button(description="Pause", icon="pause", disabled=True)
        self.stop_button = W.Button(
            description="Stop", icon="stop", button_style="danger", disabled=True
        )
        self.smoothing = W.IntSlider(
            value=smooth_steps,
            min=1,
            max=100,
            description="smooth (steps)",
            continuous_update=False,
        )
        self.progress = W.IntProgress(value=0, min=0, max=1, description="steps")
        self.status = W.HTML(self._status_text("ready"))
        self.start_button.on_click(lambda _b: self.start())
        self.pause_button.on_click(lambda _b: self.resume() if self.paused else self.pause())
        self.stop_button.on_click(lambda _b: self.stop())
        self.smoothing.observe(lambda _c: self.refresh(force=True), names="value")

        style_opt = {"style": style} if style is not None else {}
        makers: dict[str, tuple[Callable[..., go.Figure], dict[str, Any]]] = {
            "loss": (loss_curve, {"smooth_steps": smooth_steps}),
            "shapley": (shapley_shares, {"smooth_steps": smooth_steps}),
            "accuracy": (accuracy_curves, {}),
            "sharpness": (sharpness_curves, {"smooth_steps": smooth_steps}),
        }
        empty = self.live.buffer.snapshot()
        self.figures: dict[str, LiveFigure] = {
            name: LiveFigure(makers[name][0], empty, **makers[name][1], **style_opt)
            for name in figures
        }
        buttons = W.HBox([self.start_button, self.pause_button, self.stop_button, self.smoothing])
        super().__init__(
            [buttons, W.HBox([self.progress, self.status])]
            + [f.widget for f in self.figures.values()]
        )
        self.add_class("msam-monitor")

    def _records_sharpness(self) -> bool:
        return self.config.method in SAM_FAMILY or self.config.measure_every > 0

    # -- control ---------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self.job is not None and self.job.running

    @property
    def paused(self) -> bool:
        return self.live.control.paused

    @property
    def run(self) -> Run:
        """The records so far as a :class:`~msam_viz.io.Run` (every figure function takes it)."""
        return self.live.buffer.snapshot()

    @property
    def error(self) -> BaseException | None:
        return self.job.error if self.job is not None else None

    def start(self) -> TrainingMonitor:
        """Start training in a background thread (once per monitor)."""
        if self.job is not None:
            raise RuntimeError(
                f"this monitor already started its run in {str(self.out)!r}; create a new "
                "TrainingMonitor (with another out=) for another run"
            )
        self.job = BackgroundJob(self.live.run, name="msam-train", on_done=self._finished)
        self.start_button.disabled = True
        self.pause_button.disabled = False
        self.stop_button.disabled = False
        self.status.value = self._status_text("starting")
        self._ticker = Ticker(self.refresh_s, self.refresh).start()
        self.job.start()
        return self

    def pause(self) -> None:
        """Hold the loop before its next step (figures and kernel stay live)."""
        if not self.running:
            return
        self.live.control.pause()
        self.pause_button.description, self.pause_button.icon = "Resume", "play"
        self.refresh(force=True)

    def resume(self) -> None:
        self.live.control.unpause()
        self.pause_button.description, self.pause_button.icon = "Pause", "pause"
        self.refresh(force=True)

    def stop(self) -> None:
        """Stop after the current step; the records and last epoch checkpoint stay on disk."""
        self.live.control.stop()
        self.pause_button.disabled = True
        self.stop_button.disabled = True

    def wait(self, timeout: float | None = None) -> Path | None:
        """Block until the run ends; return its directory, or re-raise its error.

        Returns None when ``timeout`` (seconds) passed first.
        """
        if self.job is None:
            raise RuntimeError("the run has not been started: call start() first")
        if not self.job.join(timeout):
            return None
        if self.job.error is not None:
            raise self.job.error
        return self.job.result

    def _finished(self, job: BackgroundJob) -> None:
        if self._ticker is not None:
            self._ticker.stop()
        self.start_button.disabled = True
        self.pause_button.disabled = True
        self.stop_button.disabled = True
        self.refresh(force=True)

    # -- drawing ---------------------------------------------------------------------------

    def refresh(self, force: bool = False) -> None:
        """Redraw every figure from the records so far (skipped when nothing new arrived)."""
        with self._lock:
            version = self.live.buffer.version
            if version == self._drawn_version and not force:
                return
            self._drawn_version = version
            run = self.live.buffer.snapshot()
            smooth_steps = self.smoothing.value
            try:
                for name, figure in self.figures.items():
                    if name == "accuracy":
                        figure.update(run)
                    else:
                        figure.update(run, smooth_steps=smooth_steps)
            except Exception as err:  # shown in the status line; training goes on
                self.draw_error = err
            total = self.live.total_steps or 0
            self.progress.max = max(total, 1)
            self.progress.value = min(self.live.steps_done, self.progress.max)
            self.status.value = self._status_text(self._state())

    def _state(self) -> str:
        if self.job is None:
            return "ready"
        if self.job.running:
            if self.live.control.stopped:
                return "stopping"
            return "paused" if self.paused else "training"
        if self.job.error is not None:
            return "failed"
        return "stopped" if self.live.control.stopped else "finished"

    def _status_text(self, state: str) -> str:
        colours = {"failed": "#b00020", "finished": "#1b7f3b", "paused": "#8a6d00"}
        parts = [f"<b style='color:{colours.get(state, '#333')}'>{state}</b>"]
        last = self.live.buffer.last_iteration() if hasattr(self, "live") else None
        if last:
            parts.append(f"step {last['step']}")
            parts.append(f"epoch {last.get('epoch', '?')}/{self.config.epochs}")
            loss = last.get("loss")
            if isinstance(loss, int | float) and np.isfinite(loss):
                parts.append(f"loss {loss:.3f}")
            if last.get("dominant") is not None:
                parts.append(f"dominant <b>{html.escape(str(last['dominant']))}</b>")
        if getattr(self, "draw_error", None) is not None:
            parts.append(html.escape(f"drawing failed: {self.draw_error!r}"))
        if state == "failed" and self.job is not None and self.job.error is not None:
            parts.append(html.escape(f"{type(self.job.error).__name__}: {self.job.error}"))
        parts.append(f"<code>{html.escape(str(self.out))}</code>")
        return " · ".join(parts)


__all__ = ["LiveRun", "Ticker", "TrainingMonitor", "default_out", "loss_curve"]
