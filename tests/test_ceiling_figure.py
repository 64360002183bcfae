"""The comparison figure: specs and alone runs are groups of their own, ceilings are lines."""

from __future__ import annotations

import json

import pytest

from msam_core.compare import compare, run_path
from msam_viz import load_runs
from msam_viz.figures.comparison import compare_runs
from msam_viz.figures.comparison_table import run_metrics

TINY = {
    "dataset_options": {"n_train": 64, "n_val": 32, "n_test": 32},
    "batch_size": 32,
    "epochs": 1,
    "device": "cpu",
}


def test_alone_runs_and_specs_are_drawn_apart_with_the_ceilings_as_lines(tmp_path):
    out = tmp_path / "cmp"
    compare("synthetic", "joint,joint[lr=0.1]", 2, out, **TINY)
    runs = load_runs(out)
    table = run_metrics(runs, ["acc/visual"], split="test", at="best")
    assert set(table["group"]) == {"joint", "joint[lr=0.1]", "alone/visual"}
    assert (table["group"] == "joint").sum() == 2  # no alone or spec run pooled with joint

    fig = compare_runs(runs, ["acc/visual"], split="test", at="best")
    lines = {s.y0 for s in fig.layout.shapes}
    alone = table.loc[table["group"] == "alone/visual", "value"].mean()
    bayes = json.loads((run_path(out, "joint", 0) / "summary.json").read_text())
    limit = bayes["bayes_limits"]["visual"]["acc"]
    assert any(y == pytest.approx(alone) for y in lines)
    assert any(y == pytest.approx(limit) for y in lines)
    texts = {a.text for a in fig.layout.annotations}
    assert "visual alone" in texts and "Bayes limit" in texts

    # the alone runs are compared within their multimodal runs' dataset: the ceiling is drawn
    # on the panel of joint's visual bar, and an alone run shows its accuracy only
    assert set(table["dataset"]) == {"synthetic"}
    joint_axis = next(t.yaxis for t in fig.data if t.type == "bar" and t.x[0] == "joint")
    ceiling = next(s for s in fig.layout.shapes if s.y0 == pytest.approx(alone))
    assert ceiling.yref.split()[0] == joint_axis
    every = run_metrics(runs, split="test", at="best")
    assert set(every.loc[every["group"] == "alone/visual", "metric"]) == {"acc", "acc/visual"}


def test_accuracy_curves_draw_the_bayes_limits_of_a_synthetic_run(tmp_path):
    from msam_core.train import train
    from msam_viz import accuracy_curves, load_run

    run = load_run(train(method="joint", out=tmp_path / "run", quiet=True, **TINY))
    limits = run.summary["bayes_limits"]
    fig = accuracy_curves(run)
    drawn = sorted(s.y0 for s in fig.layout.shapes)
    expected = sorted(limits[k]["acc"] for k in ("all", "audio", "visual"))
    assert drawn == pytest.approx(expected)
    assert {"Bayes limit fused", "Bayes limit visual"} <= {a.text for a in fig.layout.annotations}
