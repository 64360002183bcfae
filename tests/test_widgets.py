"""Dashboards driven without a browser: set controls, press buttons, check the figures.

Widgets are plain Python objects; a FigureView keeps the figure it shows (``.figure``) beside
the synced state the browser draws, so assertions here are on what the browser would be sent.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import plotly.graph_objects as go
import pytest
import viz_fixtures as vf

from msam_core import train
from msam_viz import DEFAULT_STYLE, load_run
from msam_viz.figures import shapley_shares
from msam_viz.widgets import ImbalanceLab, LandscapeExplorer, TrainingMonitor
from msam_viz.widgets._live import (
    PLOTLY_MIME,
    BackgroundJob,
    FigureView,
    LiveFigure,
    RecordBuffer,
)
from msam_viz.widgets.run_comparer import RunComparer

# -- FigureView -----------------------------------------------------------------------------


def _shown(view):
    """The figure spec a browser would draw: the view's synced state, as sent (JSON)."""
    state = json.loads(json.dumps(view.get_state()["outputs"], allow_nan=False))
    (output,) = state
    return output["data"][PLOTLY_MIME]


def test_figure_view_state_is_the_whole_current_figure():
    view = FigureView(go.Figure(go.Scatter(x=[0, 1], y=[1, 2], name="a")))
    assert [t["name"] for t in _shown(view)["data"]] == ["a"]
    drawn = go.Figure(
        [go.Scatter(y=[1, 2], name="a"), go.Bar(y=[3], name="b")],
        layout={"title": {"text": "t"}, "xaxis": {"title": {"text": "step"}}},
    )
    assert view.set_figure(drawn) is view
    # A view made now (late, re-created, after a reload) renders this state: all of it.
    shown = _shown(view)
    assert [(t["type"], t["name"]) for t in shown["data"]] == [("scatter", "a"), ("bar", "b")]
    assert shown["layout"]["title"]["text"] == "t"
    assert shown["layout"]["xaxis"] == {"title": {"text": "step"}}
    assert view.figure is drawn
    # plotly.js is the front end's: the state is the figure alone
    assert len(json.dumps(view.get_state(), default=str)) < 50_000


def test_figure_view_rejects_what_is_not_a_figure():
    with pytest.raises(TypeError, match="a plotly go\\.Figure"):
        FigureView().set_figure({"data": []})


# -- RecordBuffer + LiveFigure --------------------------------------------------------------


def _config(modalities=("audio", "visual")):
    return {
        "method": "msam",
        "dataset": "synthetic",
        "seed": 0,
        "run": {"modalities": list(modalities)},
    }


def _step(step, phi_a, phi_b):
    return {
        "step": step,
        "epoch": 0,
        "loss": 1.0 / (step + 1),
        "phi/audio": phi_a,
        "phi/visual": phi_b,
        "dominant": "audio" if phi_a >= phi_b else "visual",
    }


def test_live_figure_grows_with_the_buffer_and_matches_the_static_figure():
    buffer = RecordBuffer(_config())
    live = LiveFigure(shapley_shares, buffer.snapshot())
    widget = live.widget
    assert len(widget.figure.data) == 0  # no records: the figure's empty message only
    for step in range(3):
        buffer.add_iteration(_step(step, 0.3, 0.1))
    live.update(buffer.snapshot())
    assert live.widget is widget
    area = [t for t in widget.figure.data if t.type == "scatter"]
    assert [t.name for t in area] == ["audio", "visual"]
    assert list(area[0].x) == [0, 1, 2]
    assert list(area[0].y) == pytest.approx([0.75] * 3)  # 0.3 / (0.3 + 0.1)
    buffer.add_iteration(_step(3, 0.0, 0.4))
    live.update(buffer.snapshot())
    area = [t for t in widget.figure.data if t.type == "scatter"]
    assert list(area[0].x) == [0, 1, 2, 3]
    assert area[1].y[-1] == pytest.approx(1.0)
    static = shapley_shares(buffer.snapshot())
    assert [t.name for t in static.data] == [t.name for t in widget.figure.data]
    assert live.updates == 3


def test_record_buffer_is_safe_to_fill_from_threads():
    buffer = RecordBuffer(_config())

    def fill(offset):
        for i in range(200):
            buffer.add_iteration(_step(offset + i, 0.2, 0.1))

    threads = [threading.Thread(target=fill, args=(k * 1000,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    run = buffer.snapshot()
    assert len(run.iterations) == 800
    assert run.modalities == ["audio", "visual"]
    assert buffer.version == 800


# -- BackgroundJob --------------------------------------------------------------------------


def test_background_job_keeps_result_and_error():
    done = []
    job = BackgroundJob(lambda: 42, on_done=done.append).start()
    assert job.join(10)
    assert job.result == 42 and job.error is None and done == [job]

    def fail():
        raise ValueError("bad strength")

    job = BackgroundJob(fail).start()
    assert job.join(10)
    assert isinstance(job.error, ValueError)
    assert "bad strength" in job.error_text


# -- RunComparer ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compare_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    for seed in range(2):
        vf.write_run(root, f"msam_s{seed}", method="msam", seed=seed, with_landscape=False)
        vf.write_run(root, f"joint_s{seed}", method="joint", seed=seed, with_landscape=False)
    return root


def _line(view, name):
    (trace,) = [t for t in view.figure.data if t.name == name and t.type == "scatter"]
    return trace


def test_run_comparer_draws_the_comparison_figures_and_follows_controls(compare_dir):
    comparer = RunComparer(str(compare_dir / "*"))
    assert len(comparer.runs) == 4
    bars, curves = comparer.bars.widget, comparer.curves.widget
    msam = _line(curves, "msam")
    expected = [np.mean([vf.accuracy(e, "val") + 0.01 * s for s in range(2)]) for e in range(4)]
    np.testing.assert_allclose(msam.y, expected)

    comparer.split.value = "train"  # the control redraws both figures in place
    assert comparer.curves.widget is curves and comparer.bars.widget is bars
    expected = [np.mean([vf.accuracy(e, "train") + 0.01 * s for s in range(2)]) for e in range(4)]
    np.testing.assert_allclose(_line(curves, "msam").y, expected)

    comparer.curve_metric.value = "acc/visual"
    assert "visual-only accuracy" in curves.figure.layout.yaxis.title.text

    # Untick the seed-1 runs: each method keeps one run, so no sd band is drawn.
    keep = [i for i, r in enumerate(comparer.runs) if r.seed == 0]
    comparer.run_select.value = tuple(keep)
    assert not [t for t in curves.figure.data if t.name.endswith("±1 sd")]
    assert "2 runs in 2 groups" in comparer.status.value


def test_run_comparer_metrics_panels_and_errors(compare_dir):
    comparer = RunComparer(compare_dir, metrics=["acc"])
    panels = [a.text for a in comparer.bars.widget.figure.layout.annotations if a.name != "missing"]
    assert panels == ["accuracy"]
    comparer.metric_select.value = ("acc", "switches")
    panels = [a.text for a in comparer.bars.widget.figure.layout.annotations if a.name != "missing"]
    assert panels == ["accuracy", "dominance switches"]
    with pytest.raises(ValueError, match="unknown metrics"):
        RunComparer(compare_dir, metrics=["grad_norm"])
    with pytest.raises(ValueError, match="split 'holdout' is not recorded"):
        RunComparer(compare_dir, split="holdout")
    with pytest.raises(FileNotFoundError):
        RunComparer(compare_dir / "nope")


# -- training dashboards (real msam_core.train on a tiny synthetic set) ----------------------

TINY = {"n_train": 64, "n_val": 32, "n_test": 32, "dims": 8}
FAST = {"dataset_options": TINY, "batch_size": 32, "eval_batch_size": 64, "probe_size": 32}


def _xs(fig, name):
    return [list(t.x) for t in fig.data if t.name == name]


def test_monitor_trains_to_the_end_and_live_figures_equal_the_figures_of_the_run(tmp_path):
    monitor = TrainingMonitor(method="msam", epochs=2, out=tmp_path / "m", refresh_s=0.05, **FAST)
    widgets = {name: f.widget for name, f in monitor.figures.items()}
    assert set(widgets) == {"loss", "shapley", "accuracy", "sharpness"}
    assert all(len(w.figure.data) == 0 for w in widgets.values())  # nothing recorded yet

    monitor.start_button.click()  # what the Start button does in the browser
    run_dir = monitor.wait(timeout=120)
    assert run_dir == tmp_path / "m"
    assert {name: f.widget for name, f in monitor.figures.items()} == widgets  # never re-created

    stored = load_run(run_dir)
    steps = stored.iterations["step"].tolist()
    assert len(steps) == 4  # 2 epochs x 64 samples / batches of 32
    assert _xs(widgets["loss"].figure, "loss per batch") == [steps]
    static = shapley_shares(stored)  # the figure drawn from disk equals the live one
    for name in stored.modalities:
        (live,) = [t for t in widgets["shapley"].figure.data if t.name == name]
        (ref,) = [t for t in static.data if t.name == name]
        np.testing.assert_allclose(live.y, ref.y)
    fused = [t for t in widgets["accuracy"].figure.data if t.name.startswith("fused")]
    assert fused and all(list(t.x) == [0, 1, 2] for t in fused)
    assert monitor.progress.value == monitor.progress.max == 4
    assert "finished" in monitor.status.value
    assert monitor.start_button.disabled and monitor.stop_button.disabled
    assert monitor.draw_error is None


def test_monitor_pause_holds_the_loop_and_stop_ends_it(tmp_path):
    monitor = TrainingMonitor(method="joint", epochs=200, out=tmp_path / "m", **FAST)
    assert monitor.figures.keys() == {"loss", "shapley", "accuracy"}  # joint: no sharpness
    monitor.start()
    while monitor.live.steps_done < 2:
        assert monitor.running, monitor.error
        threading.Event().wait(0.02)
    monitor.pause_button.click()
    assert monitor.paused and monitor.pause_button.description == "Resume"
    # a step (or an epoch's evaluation) in flight may still finish: let it settle first
    held, deadline = -1, time.monotonic() + 30
    while monitor.live.steps_done != held and time.monotonic() < deadline:
        held = monitor.live.steps_done
        threading.Event().wait(0.3)
    threading.Event().wait(0.5)
    assert monitor.live.steps_done == held and monitor.running
    monitor.pause_button.click()
    assert not monitor.paused
    monitor.stop_button.click()
    monitor.wait(timeout=120)
    summary = load_run(tmp_path / "m").summary
    assert "stopped by the user" in summary["stopped"]
    assert summary["steps"] < 200 * 2
    assert "stopped" in monitor.status.value


def test_monitor_reports_bad_input_and_training_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown figures"):
        TrainingMonitor(figures=["loss", "landscape"], out=tmp_path / "a")
    with pytest.raises(ValueError, match="refresh_s"):
        TrainingMonitor(refresh_s=0, out=tmp_path / "a")
    with pytest.raises(KeyError, match="lrate"):
        TrainingMonitor(lrate=0.1, out=tmp_path / "a")
    monitor = TrainingMonitor(method="no_such_method", epochs=1, out=tmp_path / "b", **FAST)
    with pytest.raises(RuntimeError, match="not been started"):
        monitor.wait()
    monitor.start()
    with pytest.raises(ValueError, match="no_such_method"):
        monitor.wait(timeout=120)
    assert "failed" in monitor.status.value and "no_such_method" in monitor.status.value
    with pytest.raises(RuntimeError, match="already started"):
        monitor.start()


def test_imbalance_lab_sliders_preview_and_configs(tmp_path):
    lab = ImbalanceLab(strengths=[4.0, 2.0], noise=1.0, epochs=1, out=tmp_path, **FAST)
    (bars,) = lab.preview.widget.figure.data
    np.testing.assert_allclose(bars.y, [4.0 * np.sqrt(2), 2.0 * np.sqrt(2)])
    lab.strength["audio"].value = 1.0
    lab.noise.value = 2.0
    (bars,) = lab.preview.widget.figure.data
    np.testing.assert_allclose(bars.y, [1.0 * np.sqrt(2) / 2, 2.0 * np.sqrt(2) / 2])
    assert list(bars.marker.color) == [
        DEFAULT_STYLE.modality_color("audio"),
        DEFAULT_STYLE.modality_color("visual"),
    ]
    lab.method.value = "ogm_ge"
    assert lab.rho.disabled
    lab.method.value = "sam"
    lab.rho.value = 0.1
    configs = lab.configs()
    assert list(configs) == ["joint", "sam"]
    assert configs["sam"].rho == 0.1 and configs["sam"].method == "sam"
    assert configs["joint"].dataset_options["strengths"] == [1.0, 2.0]
    assert configs["joint"].dataset_options["noise"] == 2.0
    assert configs["joint"].dataset_options["n_train"] == TINY["n_train"]


def test_imbalance_lab_bad_input():
    with pytest.raises(ValueError, match="at least two modalities"):
        ImbalanceLab(modalities=1)
    with pytest.raises(ValueError, match="3 strengths for 2 modalities"):
        ImbalanceLab(strengths=[1, 2, 3])
    with pytest.raises(ValueError, match="strength of 'audio'"):
        ImbalanceLab(strengths=[9.0, 1.0])
    with pytest.raises(ValueError, match="method must be one of"):
        ImbalanceLab(method="joint")
    with pytest.raises(ValueError, match="lab's own arguments"):
        ImbalanceLab(dataset_options={"strengths": [1, 1]})


def test_imbalance_lab_runs_joint_and_msam_and_compares(tmp_path):
    lab = ImbalanceLab(epochs=1, out=tmp_path, refresh_s=0.05, **FAST)
    figures = [lab.shares["joint"].widget, lab.shares["method"].widget, lab.comparison.widget]
    lab.run_button.click()
    dirs = lab.wait(timeout=300)
    assert dirs == [tmp_path / "trial_001" / "joint", tmp_path / "trial_001" / "msam"]
    assert [lab.shares["joint"].widget, lab.shares["method"].widget] == figures[:2]
    for key, run_dir in zip(("joint", "method"), dirs, strict=True):
        steps = load_run(run_dir).iterations["step"].tolist()
        area = [t for t in lab.shares[key].widget.figure.data if t.name in ("audio", "visual")]
        assert [list(t.x) for t in area] == [steps, steps]
    lines = {t.name for t in lab.comparison.widget.figure.data}
    assert {"joint", "msam"} <= lines
    assert "visual-only" in lab.comparison.widget.figure.layout.yaxis.title.text  # the weak one
    assert ">joint</th>" in lab.summary.value and ">msam</th>" in lab.summary.value
    assert "done" in lab.status.value and lab.draw_error is None
    lab.run(wait=True)
    assert lab.trial == tmp_path / "trial_002"


# -- landscape explorer ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("landscape") / "run"
    train(method="msam", epochs=2, out=out, quiet=True, **FAST)
    return out


def test_landscape_explorer_computes_caches_and_switches_views(trained_run):
    explorer = LandscapeExplorer(trained_run, steps=5, span=0.5, n_eval=32)
    assert explorer.epoch.options == (0, 1, 2) and explorer.epoch.value == 2
    assert "pca" in [v for _, v in explorer.subspace.options]
    widget = explorer.figure.widget
    explorer.compute_button.click()
    explorer.compute(wait=True)
    ls = explorer.landscape
    assert (ls.dims, ls.steps, ls.epoch, ls.span) == (2, 5, 2, 0.5)
    (contour,) = [t for t in widget.figure.data if t.type == "contour"]
    # plotly rows are y (β): z[j, i] is the loss at (α_i, β_j)
    np.testing.assert_allclose(np.asarray(contour.z, dtype=float), ls.loss.T, rtol=1e-6)
    path = explorer.path
    assert path.parent == trained_run / "landscapes" and path.exists()
    job = explorer.job

    explorer.view.value = "3-D surface"  # same grid, new view: no computation
    assert explorer.job is job
    assert [t.type for t in widget.figure.data if t.type == "surface"] == ["surface"]
    assert explorer.figure.widget is widget

    explorer.metric.value = "acc"
    (surface,) = [t for t in widget.figure.data if t.type == "surface"]
    assert np.nanmax(np.asarray(surface.z, dtype=float)) <= 1.0

    explorer.view.value = "1-D curve"  # needs a 1-D grid: computed in the background
    explorer.compute(wait=True)
    assert explorer.landscape.dims == 1
    assert [len(t.x) for t in widget.figure.data if t.type == "scatter" and len(t.x) > 1] == [5]

    explorer.subspace.value = "visual"
    explorer.compute(wait=True)
    assert explorer.landscape.subspace == "visual"
    assert "visual" in explorer.status.value or "visual" in str(explorer.path)
    mtime = path.stat().st_mtime_ns
    explorer.view.value = "2-D contour"
    explorer.subspace.value = "all"
    explorer.metric.value = "loss"
    explorer.compute(wait=True)
    assert explorer.path == path and path.stat().st_mtime_ns == mtime  # read back, not redone


def test_landscape_explorer_errors(trained_run, tmp_path):
    vf.write_run(tmp_path, "nockpt", with_landscape=False)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        LandscapeExplorer(tmp_path / "nockpt")
    with pytest.raises(ValueError, match="view must be one of"):
        LandscapeExplorer(trained_run, view="4-D")


def test_figure_view_sends_no_nan_over_json():
    nan = float("nan")
    fig = go.Figure(
        [
            go.Scatter(x=[0, 1, 2], y=[1.0, nan, 3.0], error_y={"array": [0.1, nan, 0.2]}),
            go.Contour(z=[[1.0, nan], [float("inf"), 2.0]]),
            go.Scatter(x=np.arange(3), y=np.array([1.0, np.nan, 2.0])),  # base64: NaN allowed
        ]
    )
    shown = _shown(FigureView(fig))  # _shown raises on a NaN in the JSON
    assert shown["data"][0]["y"] == [1.0, None, 3.0]
    assert shown["data"][0]["error_y"]["array"] == [0.1, None, 0.2]
    assert shown["data"][1]["z"] == [[1.0, None], [None, 2.0]]
    assert shown["data"][2]["y"]["dtype"] == "f8"  # decoded by plotly.js, NaN and all
