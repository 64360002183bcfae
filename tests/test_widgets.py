"""Dashboards driven without a browser: set controls, press buttons, check the figures.

Widgets are plain Python objects; a FigureWidget keeps its ``data`` and ``layout`` on the
Python side, so every assertion here is on what the browser would be sent.
"""

from __future__ import annotations

import threading

import numpy as np
import plotly.graph_objects as go
import pytest
import viz_fixtures as vf

from msam_viz.figures import shapley_shares
from msam_viz.widgets._live import BackgroundJob, LiveFigure, RecordBuffer, sync_figure
from msam_viz.widgets.run_comparer import RunComparer

# -- sync_figure ----------------------------------------------------------------------------


def test_sync_updates_traces_in_place_when_structure_matches():
    widget = go.FigureWidget(go.Figure(go.Scatter(x=[0, 1], y=[1, 2], name="a")))
    trace = widget.data[0]
    sync_figure(widget, go.Figure(go.Scatter(x=[0, 1, 2], y=[1, 2, 5], name="a")))
    assert widget.data[0] is trace  # same trace object: updated, not replaced
    assert list(widget.data[0].y) == [1, 2, 5]


def test_sync_replaces_traces_when_structure_changes_and_clears_stale_layout():
    empty = go.Figure(layout={"xaxis": {"visible": False}, "annotations": [{"text": "none yet"}]})
    widget = go.FigureWidget(empty)
    drawn = go.Figure(
        [go.Scatter(y=[1, 2], name="a"), go.Bar(y=[3], name="b")],
        layout={"title": {"text": "t"}, "xaxis": {"title": {"text": "step"}}},
    )
    before = widget
    sync_figure(widget, drawn)
    assert widget is before
    assert [(t.type, t.name) for t in widget.data] == [("scatter", "a"), ("bar", "b")]
    assert widget.layout.annotations == ()
    assert widget.layout.xaxis.visible is None  # the empty figure's hidden axis is gone
    assert widget.layout.xaxis.title.text == "step"
    assert widget.layout.title.text == "t"


def test_sync_rejects_a_plain_figure():
    with pytest.raises(TypeError, match="FigureWidget"):
        sync_figure(go.Figure(), go.Figure())


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
    assert len(widget.data) == 0  # no records: the figure's empty message only
    for step in range(3):
        buffer.add_iteration(_step(step, 0.3, 0.1))
    live.update(buffer.snapshot())
    assert live.widget is widget
    area = [t for t in widget.data if t.type == "scatter"]
    assert [t.name for t in area] == ["audio", "visual"]
    assert list(area[0].x) == [0, 1, 2]
    assert list(area[0].y) == pytest.approx([0.75] * 3)  # 0.3 / (0.3 + 0.1)
    buffer.add_iteration(_step(3, 0.0, 0.4))
    live.update(buffer.snapshot())
    area = [t for t in widget.data if t.type == "scatter"]
    assert list(area[0].x) == [0, 1, 2, 3]
    assert area[1].y[-1] == pytest.approx(1.0)
    static = shapley_shares(buffer.snapshot())
    assert [t.name for t in static.data] == [t.name for t in widget.data]
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


def _line(fig, name):
    (trace,) = [t for t in fig.data if t.name == name and t.type == "scatter"]
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
    assert "visual-only accuracy" in curves.layout.yaxis.title.text

    # Untick the seed-1 runs: each method keeps one run, so no sd band is drawn.
    keep = [i for i, r in enumerate(comparer.runs) if r.seed == 0]
    comparer.run_select.value = tuple(keep)
    assert not [t for t in curves.data if t.name.endswith("±1 sd")]
    assert "2 runs in 2 groups" in comparer.status.value


def test_run_comparer_metrics_panels_and_errors(compare_dir):
    comparer = RunComparer(compare_dir, metrics=["acc"])
    panels = [a.text for a in comparer.bars.widget.layout.annotations if a.name != "missing"]
    assert panels == ["accuracy"]
    comparer.metric_select.value = ("acc", "switches")
    panels = [a.text for a in comparer.bars.widget.layout.annotations if a.name != "missing"]
    assert panels == ["accuracy", "dominance switches"]
    with pytest.raises(ValueError, match="unknown metrics"):
        RunComparer(compare_dir, metrics=["grad_norm"])
    with pytest.raises(ValueError, match="split 'test' is not recorded"):
        RunComparer(compare_dir, split="test")
    with pytest.raises(FileNotFoundError):
        RunComparer(compare_dir / "nope")
