"""msam_viz figures, asserted on their data and layout (never pixels).

Expected values come from the closed-form fixture functions in ``viz_fixtures``.
"""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest
import viz_fixtures as vf

from msam_core.landscape import Landscape
from msam_core.record import CONFIG_FILE, RunWriter, write_json_atomic
from msam_viz import (
    DEFAULT_STYLE,
    MissingRecordsWarning,
    Style,
    accuracy_curves,
    compare_curves,
    compare_runs,
    dominance,
    dominant_switches,
    landscape_contour,
    landscape_curves,
    landscape_surface,
    load_run,
    load_runs,
    run_metrics,
    shapley_shares,
    sharpness_curves,
    summary_grid,
)
from msam_viz.figures import shapley_share_table
from msam_viz.figures._common import run_labels, run_subtitle
from msam_viz.figures.comparison_table import dataset_labels

MODS = ("audio", "visual")
EPOCHS, PER_EPOCH, EVERY = 4, 25, 5
N = EPOCHS * PER_EPOCH


@pytest.fixture(scope="module")
def runs_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for seed in range(3):
        vf.write_run(root, f"msam_s{seed}", seed=seed, with_landscape=False)
    for seed in range(2):
        vf.write_run(root, f"joint_s{seed}", method="joint", seed=seed, with_landscape=False)
    vf.write_sparse_run(root, "sparse")
    return root


@pytest.fixture(scope="module")
def run(runs_dir):
    return load_run(runs_dir / "msam_s0")


@pytest.fixture(scope="module")
def sparse(runs_dir):
    return load_run(runs_dir / "sparse")


def traces(fig: go.Figure, name: str) -> list:
    return [t for t in fig.data if t.name == name]


def missing_notes(fig: go.Figure) -> list[str]:
    return [a.text for a in fig.layout.annotations if a.name == "missing"]


# -- style ---------------------------------------------------------------------------------


def test_modality_colour_depends_on_name_only() -> None:
    style = Style()
    assert style.modality_color("audio") == style.modality_color("audio")
    one = style.modality_colors(["audio", "visual", "text"])
    other = style.modality_colors(["text", "visual", "audio"])
    assert one == other
    assert list(other) == ["text", "visual", "audio"]  # returned in the caller's order
    assert len(set(one.values())) == 3
    # Unknown names: the same colour on every call (stable hash, not Python's salted hash).
    assert style.modality_color("eeg") == Style().modality_color("eeg")


def test_clashing_modality_names_get_distinct_colours() -> None:
    style = Style()
    palette = style.modality_palette
    # Find two unknown names that prefer the same palette colour, then draw them together.
    names = [f"sensor{k}" for k in range(40)]
    by_colour: dict[str, list[str]] = {}
    for name in names:
        by_colour.setdefault(style.modality_color(name), []).append(name)
    clash = next(group for group in by_colour.values() if len(group) >= 2)[:2]
    colours = style.modality_colors(clash)
    assert colours[clash[0]] != colours[clash[1]]
    assert set(colours.values()) <= set(palette)
    # The alphabetically first keeps its own colour.
    first = min(clash)
    assert colours[first] == style.modality_color(first)


def test_style_is_frozen_and_overrides_take_precedence() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_STYLE.template = "plotly_dark"  # type: ignore[misc]
    style = Style(
        modality_overrides=(("audio", "#000000"),), method_overrides=(("sam", "#111111"),)
    )
    assert style.modality_color("audio") == "#000000"
    assert style.method_color("sam") == "#111111"
    assert style.method_color("msam") == DEFAULT_STYLE.method_color("msam")


def test_each_modality_has_one_colour_across_figures(run) -> None:
    colours = DEFAULT_STYLE.modality_colors(MODS)
    seen: dict[str, set[str]] = {m: set() for m in MODS}
    figs = [shapley_shares(run), dominance(run), accuracy_curves(run), sharpness_curves(run)]
    for fig in figs:
        for trace in fig.data:
            if trace.type != "scatter" or trace.legendgroup not in MODS:
                continue
            seen[trace.legendgroup].add(trace.line.color)
    for m in MODS:
        assert seen[m] == {colours[m]}, m
    assert colours["audio"] != colours["visual"]


# -- run labels and subtitles ----------------------------------------------------------------


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    """As ``msam demo`` writes: OUT/<dataset>/<method>, names repeated across datasets; the
    mfeat runs are 0.2 more accurate and use other modalities."""
    return vf.write_demo_runs(tmp_path_factory.mktemp("demo"), mfeat_offset=0.2)


def test_clashing_run_names_get_the_shortest_distinguishing_path_suffix(demo_dir, tmp_path) -> None:
    runs = load_runs(demo_dir)
    assert [r.name for r in runs] == ["joint", "msam", "joint", "msam"]
    assert run_labels(runs) == ["mfeat/joint", "mfeat/msam", "synthetic/joint", "synthetic/msam"]
    # msam compare's OUT/<method>/seed<k>: the seed folder clashes, the method tells apart.
    for method in ("joint", "msam"):
        for seed in (0, 1):
            vf.write_run(tmp_path, f"{method}/seed{seed}", method=method, seed=seed, epochs=1)
    compared = load_runs(tmp_path)
    assert run_labels(compared) == ["joint/seed0", "joint/seed1", "msam/seed0", "msam/seed1"]
    # Names that do not clash stay as they are; a name that is a folder of another run's
    # path ("joint" beside "joint/seed0") would read as that folder, so it gets longer too.
    mixed = [*compared[:2], runs[0]]
    assert run_labels(mixed) == ["seed0", "seed1", "mfeat/joint"]
    assert run_labels([compared[0], runs[1]]) == ["seed0", "msam"]
    # The same run twice is still told apart.
    assert run_labels([runs[0], runs[0]]) == ["joint", "joint (2)"]


def test_subtitle_does_not_repeat_what_the_name_says(demo_dir, runs_dir) -> None:
    synthetic_msam = load_run(demo_dir / "synthetic" / "msam")
    assert run_subtitle(synthetic_msam) == "msam · synthetic · seed 0"
    assert shapley_shares(synthetic_msam).layout.title.subtitle.text == "msam · synthetic · seed 0"
    # A label made of method, dataset and seed says nothing new either ...
    assert run_subtitle(synthetic_msam, "synthetic/msam") == "msam · synthetic · seed 0"
    assert run_subtitle(load_run(runs_dir / "joint_s1")) == "joint · synthetic · seed 1"
    # ... while a name of the user's own is kept.
    assert run_subtitle(load_run(runs_dir / "sparse")) == "sparse · joint · synthetic · seed 0"


# -- Shapley shares and dominance --------------------------------------------------------------


def test_shapley_shares_are_the_fixture_shares(run) -> None:
    fig = shapley_shares(run)
    areas = [t for t in fig.data if t.type == "scatter"]
    assert [t.name for t in areas] == list(MODS)
    assert all(t.stackgroup == "share" for t in areas)
    for t in areas:
        expected = [vf.shares(s, N, MODS)[t.name] for s in range(N)]
        assert list(t.x) == list(range(N))
        np.testing.assert_allclose(t.y, expected)
    # Step 0 has no positive contribution: equal shares, as M-SAM's weights.
    assert areas[0].y[0] == pytest.approx(0.5)
    np.testing.assert_allclose(np.sum([t.y for t in areas], axis=0), 1.0)
    assert fig.layout.yaxis.title.text.startswith("share")
    assert fig.layout.xaxis2.title.text == "iteration (optimiser step)"


def band_per_step(band, steps) -> list[str]:
    """The dominant modality the band shows at each step (cells given by their x edges)."""
    edges = np.asarray(band.x, dtype=float)
    names = [row[0] for row in band.customdata[0]]
    return [names[np.searchsorted(edges, s, side="right") - 1] for s in steps]


def test_dominant_band_follows_recorded_dominant_modality(run) -> None:
    fig = shapley_shares(run)
    (band,) = [t for t in fig.data if t.type == "heatmap"]
    expected = [vf.dominant(s, N, MODS) for s in range(N)]
    assert band_per_step(band, range(N)) == expected
    codes = np.asarray(band.z[0], dtype=int)
    assert [MODS[c] for c in codes] == [row[0] for row in band.customdata[0]]
    # One cell per run of the same dominant modality: switches + 1 cells.
    assert len(codes) == len(dominant_switches(run)) + 1
    colours = DEFAULT_STYLE.modality_colors(MODS)
    # The colour scale maps code i to modality i's colour.
    scale = dict((round(p * 2), c) for p, c in band.colorscale)
    assert scale[0] == colours["audio"] and scale[2] == colours["visual"]


def test_smoothing_is_a_centred_rolling_mean(run) -> None:
    window = 5
    fig = shapley_shares(run, smooth_steps=window)
    audio = traces(fig, "audio")[0]
    raw = pd.Series([vf.shares(s, N, MODS)["audio"] for s in range(N)])
    expected = raw.rolling(window, center=True, min_periods=1).mean()
    np.testing.assert_allclose(audio.y, expected)
    with pytest.raises(ValueError, match="smooth window"):
        shapley_shares(run, smooth_steps=0)


def test_long_runs_are_bin_averaged_to_max_points(tmp_path) -> None:
    path = vf.write_run(
        tmp_path, "long", epochs=2, steps_per_epoch=5000, every=50, with_landscape=False
    )
    long_run = load_run(path)
    fig = shapley_shares(long_run, max_points=500)
    audio = traces(fig, "audio")[0]
    assert len(audio.y) == 500
    table = shapley_share_table(long_run)
    # Equal-size bins: the mean of the bin means is the mean of all steps.
    assert np.mean(audio.y) == pytest.approx(table["audio"].mean())
    sharp = sharpness_curves(long_run, max_points=500)
    assert all(len(t.x) <= 500 for t in sharp.data)
    # The dominant band is exact at every step (no switch averaged away), yet small.
    band = next(t for t in fig.data if t.type == "heatmap")
    steps = range(10_000)
    assert band_per_step(band, steps) == [vf.dominant(s, 10_000, MODS) for s in steps]
    assert len(band.x) == len(dominant_switches(long_run)) + 2


def test_dominant_switches_match_fixture(run) -> None:
    switches = dominant_switches(run)
    expected = [
        (s, vf.dominant(s - 1, N, MODS), vf.dominant(s, N, MODS))
        for s in range(1, N)
        if vf.dominant(s, N, MODS) != vf.dominant(s - 1, N, MODS)
    ]
    assert list(zip(switches["step"], switches["from"], switches["to"], strict=True)) == expected


def test_dominance_figure_lanes_and_steps_per_epoch(run) -> None:
    fig = dominance(run)
    n_switches = len(dominant_switches(run))
    assert fig.layout.title.text == f"Dominant modality: {n_switches} switches over {N} iterations"
    # Bottom panel: per epoch, the share of steps each modality dominated (stacks sum to 1).
    bars = {t.legendgroup: t for t in fig.data if t.type == "bar"}
    for m in MODS:
        expected = [
            np.mean(
                [vf.dominant(s, N, MODS) == m for s in range(e * PER_EPOCH, (e + 1) * PER_EPOCH)]
            )
            for e in range(EPOCHS)
        ]
        np.testing.assert_allclose(bars[m].y, expected)
    (counts,) = traces(fig, "switches")
    assert sum(counts.customdata) == n_switches
    assert list(counts.text) == [f"{n} sw." for n in counts.customdata]
    # Each lane covers exactly the steps its modality dominated.
    for m in MODS:
        (lane,) = traces(fig, m)
        xs = list(lane.x)
        covered = sum(xs[i + 1] - xs[i] for i in range(0, len(xs), 3))
        assert covered == sum(vf.dominant(s, N, MODS) == m for s in range(N))


def test_dominant_derived_from_phi_when_not_recorded(tmp_path) -> None:
    path = vf.write_run(tmp_path, "nodom", epochs=1, steps_per_epoch=20, with_landscape=False)
    lines = (path / "iterations.jsonl").read_text().splitlines()
    stripped = []
    for line in lines:
        record = json.loads(line)
        record.pop("dominant")
        stripped.append(json.dumps(record))
    (path / "iterations.jsonl").write_text("\n".join(stripped) + "\n")
    switches = dominant_switches(load_run(path))
    assert list(switches["to"]) == [vf.dominant(s, 20, MODS) for s in switches["step"]]


# -- accuracy -------------------------------------------------------------------------------


def test_accuracy_curves_fused_and_unimodal_per_split(run) -> None:
    fig = accuracy_curves(run)
    names = [t.name for t in fig.data]
    assert names == [f"{n} ({s})" for s in ("train", "val") for n in ("fused", *MODS)]
    (val_audio,) = traces(fig, "audio (val)")
    assert list(val_audio.y) == pytest.approx([vf.accuracy(e, "val", 0) for e in range(EPOCHS)])
    (fused,) = traces(fig, "fused (val)")
    assert fused.line.color == DEFAULT_STYLE.fused_color
    assert fused.line.dash == "solid" and traces(fig, "fused (train)")[0].line.dash == "dot"
    assert fig.layout.xaxis.title.text == "epoch"
    assert fig.layout.yaxis.tickformat == ".0%"
    only_val = accuracy_curves(run, splits=("val",))
    assert [t.name for t in only_val.data] == ["fused", *MODS]
    # The test split (recorded too) is drawn only on request.
    with_test = accuracy_curves(run, splits=("val", "test"))
    (test_audio,) = traces(with_test, "audio (test)")
    assert test_audio.line.dash == "dash"
    assert list(test_audio.y) == pytest.approx([vf.accuracy(e, "test", 0) for e in range(EPOCHS)])
    with pytest.raises(ValueError, match="none of splits"):
        accuracy_curves(run, splits=("dev",))


def test_accuracy_without_unimodal_records_draws_fused_and_says_so(sparse) -> None:
    with pytest.warns(MissingRecordsWarning, match="acc/audio"):
        fig = accuracy_curves(sparse)
    assert [t.name for t in fig.data] == ["fused (train)", "fused (val)"]
    assert any("acc/audio" in note for note in missing_notes(fig))


# -- sharpness ------------------------------------------------------------------------------


def test_sharpness_curves_overall_per_modality_and_hessian(run) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingRecordsWarning)  # nothing is missing here
        fig = sharpness_curves(run)
    (overall,) = traces(fig, "overall")
    np.testing.assert_allclose(overall.y, [vf.sharpness(s) for s in range(N)])
    measured = list(range(0, N, EVERY))
    for i, m in enumerate(MODS):
        (t,) = traces(fig, m)
        assert list(t.x) == measured
        np.testing.assert_allclose(t.y, [vf.sharpness_of(i, s) for s in measured])
    (fusion,) = traces(fig, "fusion head")
    assert fusion.line.color == DEFAULT_STYLE.fusion_color
    np.testing.assert_allclose(fusion.y, [vf.sharpness_of(len(MODS), s) for s in measured])
    (eig,) = traces(fig, "Hessian λ_max")
    assert eig.yaxis == "y2"
    np.testing.assert_allclose(eig.y, [vf.top_eig(s) for s in measured])
    colours = DEFAULT_STYLE.modality_colors(MODS)
    for i, m in enumerate(MODS):
        (block,) = traces(fig, f"λ_max, {m} block")
        assert block.yaxis == "y2" and block.line.color == colours[m]
        np.testing.assert_allclose(block.y, [vf.top_eig(s) / (i + 2) for s in measured])
    assert "nats" in fig.layout.yaxis.title.text
    assert fig.layout.yaxis2.title.text == "λ_max of ∇²ℓ"
    assert not missing_notes(fig)


def test_sharpness_smoothing_keeps_raw_series_faint(run) -> None:
    fig = sharpness_curves(run, smooth_steps=9)
    raw, smoothed = traces(fig, "overall (raw)"), traces(fig, "overall (mean of 9 steps)")
    assert raw and smoothed
    expected = pd.Series([vf.sharpness(s) for s in range(N)]).rolling(9, center=True, min_periods=1)
    np.testing.assert_allclose(smoothed[0].y, expected.mean())
    assert "rgba" in raw[0].line.color


def test_sharpness_of_run_without_hessian_draws_what_it_has(sparse) -> None:
    with pytest.warns(MissingRecordsWarning) as caught:
        fig = sharpness_curves(sparse)
    text = str(caught[0].message)
    assert "hessian/top_eig" in text and "sharpness/<modality>" in text
    # One panel with what there is; no empty Hessian panel.
    assert [t.name for t in fig.data] == ["overall"]
    assert "yaxis2" not in fig.layout.to_plotly_json()
    assert any("hessian/top_eig" in note for note in missing_notes(fig))


def _rewrite_jsonl(path, edit) -> None:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        edit(record)
    path.write_text("\n".join(map(json.dumps, records)) + "\n")


def _drop_hessian(record: dict) -> None:
    for key in [k for k in record if k.startswith("hessian/")]:
        record.pop(key)


def test_hessian_from_epoch_records_drawn_at_their_step(tmp_path) -> None:
    path = vf.write_run(tmp_path, "epoch_hessian", with_landscape=False)
    _rewrite_jsonl(path / "iterations.jsonl", _drop_hessian)
    fig = sharpness_curves(load_run(path))
    (eig,) = traces(fig, "Hessian λ_max")
    recorded_steps = [(e + 1) * PER_EPOCH for e in range(EPOCHS)]  # the epoch rows' "step"
    assert list(eig.x) == recorded_steps
    np.testing.assert_allclose(eig.y, [vf.top_eig(s) for s in recorded_steps])
    # Without a step in the epoch rows: at each epoch's last iteration.
    _rewrite_jsonl(path / "epochs.jsonl", lambda r: r.pop("step"))
    (eig,) = traces(sharpness_curves(load_run(path)), "Hessian λ_max")
    assert list(eig.x) == [(e + 1) * PER_EPOCH - 1 for e in range(EPOCHS)]


def test_run_without_any_records_gives_empty_figures_not_errors(tmp_path) -> None:
    path = tmp_path / "fresh"
    path.mkdir()
    (path / "config.json").write_text(json.dumps({"method": "msam", "seed": 0}))
    fresh = load_run(path)
    with pytest.warns(MissingRecordsWarning):
        figs = [
            shapley_shares(fresh),
            dominance(fresh),
            accuracy_curves(fresh),
            sharpness_curves(fresh),
        ]
    for fig in figs:
        assert not fig.data
        assert any(a.name in {"empty", "missing"} for a in fig.layout.annotations)


def test_figures_take_runs_not_paths(runs_dir) -> None:
    for figure in (shapley_shares, dominance, accuracy_curves, sharpness_curves, compare_runs):
        with pytest.raises(TypeError, match="load_run"):
            figure(str(runs_dir / "msam_s0"))


# -- comparison -----------------------------------------------------------------------------


def test_run_metrics_tidy_table(runs_dir) -> None:
    runs = load_runs(runs_dir)
    table = run_metrics(runs, ["acc", "switches"])
    assert list(table.columns) == ["run", "dataset", "group", "seed", "metric", "value"]
    assert set(table["dataset"]) == {"synthetic"}
    acc = table.loc[(table["metric"] == "acc") & (table["group"] == "msam")]
    assert sorted(acc["value"]) == pytest.approx(
        [vf.final_accuracy_for_seed(s, EPOCHS) for s in range(3)]
    )
    best = run_metrics(runs, ["acc"], at="best")  # accuracy rises: best is the last epoch
    assert sorted(best["value"]) == sorted(table.loc[table["metric"] == "acc", "value"])
    with pytest.raises(ValueError, match="at must be one of"):
        run_metrics(runs, at="first")


def test_compare_runs_bars_are_seed_means_with_sd_error_bars(runs_dir) -> None:
    runs = load_runs(runs_dir)
    fig = compare_runs(runs, ["acc", "hessian/top_eig"])
    bars = {t.name: t for t in fig.data if t.type == "bar" and t.xaxis == "x"}
    assert list(bars) == ["msam", "joint"]
    msam_acc = [vf.final_accuracy_for_seed(s, EPOCHS) for s in range(3)]
    assert bars["msam"].y[0] == pytest.approx(np.mean(msam_acc))
    assert bars["msam"].error_y.array[0] == pytest.approx(np.std(msam_acc, ddof=1))
    assert bars["msam"].marker.line.color == DEFAULT_STYLE.method_color("msam")
    # "joint" pools its two seeds and the sparse joint run: three seeds in all.
    seeds = [t for t in fig.data if t.name == "joint seeds" and t.xaxis == "x"]
    assert len(seeds[0].y) == 3
    titles = [a.text for a in fig.layout.annotations if a.name != "missing"]
    assert titles[:2] == ["accuracy", "Hessian λ_max"]


def test_compare_runs_names_metrics_no_run_recorded(runs_dir) -> None:
    runs = load_runs(runs_dir)
    with pytest.warns(MissingRecordsWarning, match="grad_norm"):
        fig = compare_runs(runs, ["acc", "grad_norm"])
    assert any("grad_norm" in note for note in missing_notes(fig))


def test_compare_curves_mean_and_sd_band(runs_dir) -> None:
    runs = load_runs(runs_dir)
    fig = compare_curves(runs, "acc")
    (line,) = traces(fig, "msam")
    expected = [np.mean([vf.accuracy(e, "val") + 0.01 * s for s in range(3)]) for e in range(4)]
    np.testing.assert_allclose(line.y, expected)
    (band,) = traces(fig, "msam ±1 sd")
    assert band.fill == "toself" and band.mode == "lines"


def test_summary_grid_is_a_static_matplotlib_figure(runs_dir) -> None:
    from matplotlib.figure import Figure

    runs = load_runs(runs_dir)
    fig = summary_grid(runs, ["acc", "acc/audio", "balance"])
    assert isinstance(fig, Figure)
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == ["accuracy", "audio-only accuracy", "balance"]
    with pytest.raises(ValueError, match="no epoch records"):
        summary_grid(runs, ["acc"], split="dev")


# -- runs on several datasets: pooled per (dataset, method), never across datasets ----------


def _final_acc(offset: float = 0.0, modality_index: int | None = None) -> float:
    """Last-epoch val accuracy of a seed-0 run of the ``demo_dir`` fixture (2 epochs)."""
    return vf.accuracy(1, "val", modality_index) + offset


def test_run_metrics_pools_only_runs_of_one_dataset(demo_dir) -> None:
    table = run_metrics(load_runs(demo_dir), ["acc", "acc/fou", "acc/audio"])
    sizes = table.groupby(["dataset", "group", "metric"]).size()
    assert (sizes == 1).all()  # one run per (dataset, method): nothing averaged across
    acc = table.loc[table["metric"] == "acc"].set_index(["dataset", "group"])["value"]
    assert acc[("synthetic", "msam")] == pytest.approx(_final_acc())
    assert acc[("mfeat", "msam")] == pytest.approx(_final_acc(0.2))
    assert set(table.loc[table["metric"] == "acc/fou", "dataset"]) == {"mfeat"}
    assert set(table.loc[table["metric"] == "acc/audio", "dataset"]) == {"synthetic"}
    assert table.loc[table["dataset"] == "mfeat", "run"].tolist()[0] == "mfeat/joint"


def test_compare_runs_gives_each_dataset_its_own_row_of_panels(demo_dir) -> None:
    runs = load_runs(demo_dir)
    fig = compare_runs(runs)
    bars = [t for t in fig.data if t.type == "bar"]
    # Per axis (panel): one dataset, one metric, one bar per method.
    panels: dict[str, list] = {}
    for bar in bars:
        panels.setdefault(bar.yaxis, []).append(bar)
    metrics = {"mfeat": [], "synthetic": []}
    for axis_bars in panels.values():
        assert len({(b.meta["dataset"], b.meta["metric"]) for b in axis_bars}) == 1
        assert [b.name for b in axis_bars] == ["msam", "joint"]
        metrics[axis_bars[0].meta["dataset"]].append(axis_bars[0].meta["metric"])
    assert metrics == {
        "mfeat": ["acc", "acc/fou", "acc/pix", "balance", "switches"],
        "synthetic": ["acc", "acc/audio", "acc/visual", "balance", "switches"],
    }
    for bar in bars:
        if bar.meta["metric"] == "acc":
            offset = 0.2 if bar.meta["dataset"] == "mfeat" else 0.0
            assert bar.y[0] == pytest.approx(_final_acc(offset))
            assert not bar.error_y.visible  # one seed per (dataset, method): no sd
    seeds = [t for t in fig.data if t.type == "scatter"]
    assert all(len(t.y) == 1 for t in seeds)
    assert {t.customdata[0][0] for t in seeds} == set(run_labels(runs))
    # A heading per dataset sits above its row, and the row's panels lie below it only.
    headings = {
        a.text.split("</b>")[0][3:]: a.y for a in fig.layout.annotations if a.name == "dataset"
    }
    assert list(headings) == ["mfeat", "synthetic"]
    for bar in bars:
        top = fig.layout[bar.yaxis.replace("y", "yaxis")].domain[1]
        own = headings[bar.meta["dataset"]]
        assert top == pytest.approx(own)
    assert "2 datasets" in fig.layout.title.subtitle.text
    # Per-modality metrics of one dataset are not "missing" from the other.
    assert missing_notes(fig) == []


def test_compare_runs_names_the_dataset_a_metric_is_missing_from(demo_dir, tmp_path) -> None:
    for method in ("joint", "msam"):
        vf.write_run(tmp_path, f"synthetic/{method}", method=method, epochs=1, with_hessian=False)
        vf.write_run(tmp_path, f"mfeat/{method}", method=method, dataset="mfeat", epochs=1)
    with pytest.warns(MissingRecordsWarning, match=r"hessian/top_eig\) on synthetic"):
        fig = compare_runs(load_runs(tmp_path), ["acc", "hessian/top_eig"])
    eig = [t for t in fig.data if t.type == "bar" and t.meta["metric"] == "hessian/top_eig"]
    assert {t.meta["dataset"] for t in eig} == {"mfeat"}


def test_compare_curves_one_panel_per_dataset(demo_dir) -> None:
    fig = compare_curves(load_runs(demo_dir), "acc")
    lines = [t for t in fig.data if t.mode == "lines+markers"]
    assert [(t.meta["dataset"], t.name) for t in lines] == [
        ("mfeat", "msam"),
        ("mfeat", "joint"),
        ("synthetic", "msam"),
        ("synthetic", "joint"),
    ]
    for line in lines:
        offset = 0.2 if line.meta["dataset"] == "mfeat" else 0.0
        np.testing.assert_allclose(line.y, [vf.accuracy(e, "val") + offset for e in range(2)])
    assert {t.xaxis for t in lines if t.meta["dataset"] == "mfeat"} == {"x"}
    assert {t.xaxis for t in lines if t.meta["dataset"] == "synthetic"} == {"x2"}
    # One legend entry per method, toggling it in every panel.
    assert [t.name for t in lines if t.showlegend is not False] == ["msam", "joint"]
    assert [a.text for a in fig.layout.annotations] == ["mfeat", "synthetic"]
    # A modality of one dataset: only that dataset's panel, and nothing called missing.
    with warnings.catch_warnings():
        warnings.simplefilter("error", MissingRecordsWarning)
        fou = compare_curves(load_runs(demo_dir), "acc/fou")
    assert {t.meta["dataset"] for t in fou.data} == {"mfeat"}
    # A metric no run has: an empty figure that says so, not empty axes.
    with pytest.warns(MissingRecordsWarning, match="acc/text"):
        none = compare_curves(load_runs(demo_dir), "acc/text")
    assert not none.data
    assert [a.name for a in none.layout.annotations] == ["missing", "empty"]


def test_summary_grid_panels_per_dataset(demo_dir) -> None:
    fig = summary_grid(load_runs(demo_dir), ["acc", "acc/fou", "acc/audio"])
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert titles == [
        "mfeat · accuracy",
        "mfeat · fou-only accuracy",
        "synthetic · accuracy",
        "synthetic · audio-only accuracy",
    ]
    by_title = {ax.get_title(): ax for ax in fig.axes}
    msam, _joint = by_title["mfeat · accuracy"].lines[:2]
    np.testing.assert_allclose(msam.get_ydata(), [vf.accuracy(e, "val") + 0.2 for e in range(2)])


def test_same_dataset_with_other_modalities_is_not_pooled(tmp_path) -> None:
    vf.write_run(tmp_path, "two", epochs=1)
    vf.write_run(tmp_path, "three", epochs=1, modalities=("audio", "visual", "text"))
    runs = load_runs(tmp_path)
    assert dataset_labels(runs) == ["synthetic (audio+visual+text)", "synthetic (audio+visual)"]
    table = run_metrics(runs, ["acc"])
    assert table["dataset"].nunique() == 2


def test_same_dataset_on_other_data_is_not_pooled_and_repeated_seeds_get_no_seed_sd(tmp_path):
    for k, strengths in enumerate(([4, 2], [3, 3], [8, 1])):
        options = {"strengths": strengths, "seed": 7}  # the split seed never tells data apart
        vf.write_run(tmp_path, f"trial{k}", epochs=2, dataset_options=options)
    vf.write_run(tmp_path, "trial3", epochs=2, dataset_options={"strengths": [8, 1]})
    runs = load_runs(tmp_path)
    labels = dataset_labels(runs)
    assert sorted(set(labels)) == [
        "synthetic (strengths=[3,3])",
        "synthetic (strengths=[4,2])",
        "synthetic (strengths=[8,1])",
    ]
    fig = compare_runs(runs, ["acc"])
    bars = [t for t in fig.data if t.type == "bar"]
    assert len(bars) == 3  # one per data set, never one bar over all four runs
    repeated = next(b for b in bars if b.meta["dataset"] == "synthetic (strengths=[8,1])")
    assert repeated.customdata[0][0] == 2 and not repeated.error_y.visible  # both seed 0


def test_best_epoch_is_the_one_training_selected(tmp_path):
    path = vf.write_run(tmp_path, "run", epochs=4)  # val accuracy rises every epoch
    (path / "summary.json").write_text('{"best_epoch": 1}', encoding="utf-8")
    run = load_run(path)
    best = run_metrics([run], ["acc"], at="best")
    assert best["value"].item() == pytest.approx(vf.accuracy(1, "val"))


def test_best_epoch_without_a_summary_follows_the_training_rule(tmp_path):
    path = tmp_path / "live"
    with RunWriter(path) as writer:
        write_json_atomic(path / CONFIG_FILE, {"dataset": "synthetic", "method": "msam"})
        for epoch, acc, loss in [(0, 0.9, 0.1), (1, 0.5, 1.0), (2, 0.7, 0.6), (3, 0.7, 0.4)]:
            writer.log_epoch({"epoch": epoch, "split": "val", "acc": acc, "loss": loss})
    best = run_metrics([load_run(path)], ["loss"], at="best")
    assert best["value"].item() == 0.4  # epoch 3: epoch 0 never counts, ties go to lower loss


# -- landscapes -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def landscape_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape_runs")
    return load_run(vf.write_run(root, "with_landscapes", epochs=2, steps_per_epoch=5))


def test_landscape_curves_one_per_subspace_in_modality_colours(landscape_run) -> None:
    fig = landscape_curves(landscape_run)
    curves = [t for t in fig.data if t.mode == "lines"]
    assert [t.name for t in curves] == [
        "whole model (epoch 3)",
        "audio encoder only (epoch 3)",
        "visual encoder only (epoch 3)",
    ]
    for k, t in enumerate(curves):
        np.testing.assert_allclose(t.y, vf.curve_loss(k, np.asarray(t.x)))
    colours = DEFAULT_STYLE.modality_colors(MODS)
    assert curves[1].line.color == colours["audio"]
    assert curves[2].line.color == colours["visual"]
    assert curves[0].line.color == DEFAULT_STYLE.fused_color
    weights = [t for t in fig.data if t.mode == "markers"]
    assert [(t.x[0], t.y[0]) for t in weights] == [(0.0, 0.5)] * 3
    assert fig.layout.yaxis.title.text == "loss (nats)"
    acc = landscape_curves(landscape_run, metric="acc")
    assert acc.layout.yaxis.tickformat == ".0%"
    assert fig.layout.xaxis.title.text == "α (step along the direction; filter-normalised)"


@pytest.mark.parametrize(
    ("norm", "subspace", "unit"),
    [
        ("layer", "all", "layer-normalised"),
        ("none", "all", "raw parameter units"),
        ("none", "pca", "±1 = farthest checkpoint"),
    ],
)
def test_landscape_axes_name_the_grid_unit(norm, subspace, unit) -> None:
    axis = np.linspace(-1, 1, 3)
    curve = Landscape(axis, np.zeros(0), axis**2, 1 - axis**2, subspace=subspace, norm=norm)
    assert unit in landscape_curves(curve).layout.xaxis.title.text
    grid = Landscape(axis, axis, np.add.outer(axis**2, axis**2), np.ones((3, 3)), norm=norm)
    if subspace == "all":
        assert unit in landscape_contour(grid).layout.xaxis.title.text


def test_landscape_contour_defaults_to_pca_with_trajectory(landscape_run) -> None:
    fig = landscape_contour(landscape_run)
    (contour,) = [t for t in fig.data if t.type == "contour"]
    a, b = np.meshgrid(contour.x, contour.y, indexing="xy")  # plotly: z[row=β][col=α]
    np.testing.assert_allclose(contour.z, vf.landscape_loss(a, b))
    (path,) = traces(fig, "training trajectory")
    np.testing.assert_allclose(np.stack([path.x, path.y], axis=1), vf.TRAJECTORY)
    assert list(path.text) == [f"epoch {e}" for e in range(len(vf.TRAJECTORY))]
    title = fig.layout.xaxis.title.text
    assert title == "PC1 (80% of trajectory variance; ±1 = farthest checkpoint)"
    assert fig.layout.yaxis.scaleanchor == "x"  # equal units on both axes
    random_dirs = landscape_contour(landscape_run, "epoch0003_all_2d")
    assert not traces(random_dirs, "training trajectory")
    assert random_dirs.layout.xaxis.title.text == "α (direction 1, filter-normalised)"
    with pytest.raises(KeyError, match="choose one of"):
        landscape_contour(landscape_run, "epoch0099_pca_2d")


def test_landscape_surface_draws_trajectory_on_the_surface(landscape_run) -> None:
    fig = landscape_surface(landscape_run)
    (surface,) = [t for t in fig.data if t.type == "surface"]
    (path,) = [t for t in fig.data if t.type == "scatter3d"]
    z = np.asarray(surface.z)
    lift = 0.01 * (z.max() - z.min())
    expected = vf.landscape_loss(vf.TRAJECTORY[:, 0], vf.TRAJECTORY[:, 1]) + lift
    np.testing.assert_allclose(path.z, expected)
    assert fig.layout.scene.zaxis.title.text == "loss (nats)"
    logged = landscape_surface(landscape_run, log=True)
    np.testing.assert_allclose(logged.data[0].z, np.log10(z))
    with pytest.raises(ValueError, match="log scale applies to the loss"):
        landscape_surface(landscape_run, metric="acc", log=True)


def test_landscape_in_memory_and_trajectory_between_grid_points() -> None:
    from msam_core.landscape import Landscape, grid_axis

    axis = grid_axis(5, 1.0)  # spacing 0.5
    a, b = np.meshgrid(axis, axis, indexing="ij")
    loss = vf.landscape_loss(a, b)
    landscape = Landscape(
        alphas=axis,
        betas=axis.copy(),
        loss=loss,
        acc=1 - loss / 4,
        subspace="pca",
        trajectory=np.array([[0.25, 0.25], [2.0, 0.0], [0.0, 0.0]]),  # middle one off the grid
    )
    with pytest.warns(MissingRecordsWarning, match="outside the grid"):
        fig = landscape_surface(landscape)
    (path,) = [t for t in fig.data if t.type == "scatter3d"]
    lift = 0.01 * (loss.max() - loss.min())
    # Bilinear interpolation: the centre of a grid cell is the mean of its four corners.
    corners = vf.landscape_loss(np.array([0, 0, 0.5, 0.5]), np.array([0, 0.5, 0, 0.5]))
    np.testing.assert_allclose(path.z, [corners.mean() + lift, loss[2, 2] + lift])
    assert "pca" in fig.layout.title.subtitle.text


def test_run_without_landscapes_says_so(sparse) -> None:
    for figure in (landscape_curves, landscape_contour, landscape_surface):
        with pytest.warns(MissingRecordsWarning, match="landscapes"):
            fig = figure(sparse)
        assert not fig.data
        assert any("landscapes" in note for note in missing_notes(fig))
