"""Dashboards driven without a browser: set controls, press buttons, check the figures.

Widgets are plain Python objects; a FigureWidget keeps its ``data`` and ``layout`` on the
Python side, so every assertion here is on what the browser would be sent.
"""

from __future__ import annotations

import threading

import plotly.graph_objects as go
import pytest

from msam_viz.figures import shapley_shares
from msam_viz.widgets._live import BackgroundJob, LiveFigure, RecordBuffer, sync_figure

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
