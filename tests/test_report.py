"""The HTML report: self-contained (plotly.js inlined), every figure present, honest about
missing records; PNG export through kaleido when a browser exists, a clear message when not."""

from __future__ import annotations

import os
import re

import pytest
import viz_fixtures as vf
from plotly.offline import get_plotlyjs

import msam_viz.report as report
from msam_viz import accuracy_curves, load_runs
from msam_viz.report import NO_BROWSER_MESSAGE, build_sections, export_png, write_report


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    vf.write_run(root, "msam_s0", epochs=2, steps_per_epoch=6)
    vf.write_run(root, "msam_s1", seed=1, epochs=2, steps_per_epoch=6, with_landscape=False)
    vf.write_sparse_run(root, "joint_sparse")
    return load_runs(root)


def _figure_count(sections) -> int:
    return sum(len(s.figures) for s in sections)


@pytest.fixture(scope="module")
def written(runs, tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "sub" / "report.html"
    return out, write_report(runs, out)


def test_report_is_self_contained_with_every_figure(runs, written) -> None:
    out, result = written
    assert result.html == out and result.png_files == [] and result.png_message is None
    page = out.read_text(encoding="utf-8")
    # plotly.js is inlined once; nothing is fetched from a CDN or any other URL.
    assert page.count(get_plotlyjs()[:2000]) == 1
    assert not re.search(r"<script[^>]+src=", page)
    assert "<link" not in page
    sections = build_sections(runs)
    assert page.count("Plotly.newPlot") == _figure_count(sections)
    # Landscapes of the run that has them: a 1-D figure plus contour and surface per 2-D grid.
    assert 'id="run-msam-s0-landscape_epoch0003_pca_2d_surface"' in page
    assert "data:image/png;base64," in page  # the seaborn summary grid, embedded
    for run in runs:
        assert f"<td>{run.name}</td>" in page


def test_report_names_what_each_run_lacks(written) -> None:
    page = written[0].read_text(encoding="utf-8")
    sparse_part = page.split('id="run-joint-sparse"')[1].split("<h2")[0]
    assert "Not recorded:" in sparse_part
    for missing in ("hessian/top_eig", "landscapes/*.npz", "acc/audio"):
        assert missing in sparse_part
    # One item per missing record, under the one heading (not "not in this run: a; b").
    notes = sparse_part.split('<div class="notes">')[1].split("</div>")[0]
    assert "not in this run" not in notes
    assert "<li>Hessian top eigenvalue (hessian/top_eig)</li>" in notes
    full_part = page.split('id="run-msam-s0"')[1].split("<h2")[0]
    assert "Not recorded:" not in full_part


def test_single_run_report_has_no_comparison(runs, tmp_path) -> None:
    sections = build_sections(runs[0])
    assert [s.title for s in sections] == ["Runs", f"Run {runs[0].name}"]
    out = write_report(runs[0], tmp_path / "one.html").html
    assert 'id="comparison"' not in out.read_text(encoding="utf-8")


def test_report_rejects_bad_input(runs, tmp_path) -> None:
    with pytest.raises(ValueError, match=r"must end in \.html"):
        write_report(runs, tmp_path / "report.pdf")
    with pytest.raises(TypeError, match="load_run"):
        write_report(str(tmp_path), tmp_path / "r.html")
    with pytest.raises(ValueError, match="no runs given"):
        write_report([], tmp_path / "r.html")


def test_png_without_browser_writes_html_and_says_why(runs, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(report, "find_browser", lambda: None)
    with pytest.warns(RuntimeWarning, match="Chrome or Chromium"):
        result = write_report(runs, tmp_path / "r.html", png_dir=tmp_path / "png")
    assert result.html.exists()
    assert result.png_message == NO_BROWSER_MESSAGE
    assert "apt-get install chromium" in NO_BROWSER_MESSAGE
    # The static summary needs no browser (matplotlib), so it is still written.
    assert [p.name for p in result.png_files] == ["comparison__summary_grid.png"]
    with pytest.raises(report.PngExportUnavailable, match="BROWSER_PATH"):
        export_png({"x": accuracy_curves(runs[1])}, tmp_path / "png2")


def test_png_export_with_browser(runs, tmp_path) -> None:
    if report.find_browser() is None:
        if os.environ.get("MSAM_REQUIRE_BROWSER") == "1":
            pytest.fail("MSAM_REQUIRE_BROWSER=1 but no Chrome/Chromium found for kaleido")
        pytest.skip("no Chrome/Chromium: install one (apt-get install chromium) to test PNGs")
    from PIL import Image

    fig = accuracy_curves(runs[1])  # msam_s0 (folder order: joint_sparse, msam_s0, …)
    (path,) = export_png({"msam s0/accuracy": fig}, tmp_path, scale=1.0)
    assert path.name == "msam_s0_accuracy.png"
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == (fig.layout.width, fig.layout.height)


# -- runs of several datasets, with clashing names (as `msam demo` writes them) ---------------


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory):
    return load_runs(vf.write_demo_runs(tmp_path_factory.mktemp("demo_runs")))


def test_report_compares_each_dataset_apart_and_labels_runs_uniquely(demo_runs) -> None:
    sections = build_sections(demo_runs)
    assert [s.title for s in sections] == [
        "Runs",
        "Run mfeat/joint",
        "Run mfeat/msam",
        "Run synthetic/joint",
        "Run synthetic/msam",
        "Comparison: mfeat",
        "Comparison: synthetic",
    ]
    for section in sections[-2:]:
        dataset = section.title.split(": ")[1]
        bars = [t for t in section.figures["compare_runs"].data if t.type == "bar"]
        assert {t.meta["dataset"] for t in bars} == {dataset}
        curves = section.figures["compare_accuracy"].data
        assert {t.meta["dataset"] for t in curves} == {dataset}
    table = sections[0].table
    for label in ("mfeat/joint", "synthetic/msam"):
        assert f"<td>{label}</td>" in table
    # The subtitle says method, dataset and seed once each.
    subtitle = sections[4].figures["accuracy"].layout.title.subtitle.text
    assert subtitle == "msam · synthetic · seed 0"


def test_report_png_files_are_one_set_per_run(demo_runs, tmp_path, monkeypatch) -> None:
    exported: dict = {}

    def fake_export(figures, out_dir, **_):  # names only: rendering is tested with a browser
        exported.update(figures)
        return [out_dir / f"{name}.png" for name in figures]

    monkeypatch.setattr(report, "export_png", fake_export)
    result = write_report(demo_runs, tmp_path / "r.html", png_dir=tmp_path / "png")
    names = [p.name for p in result.png_files]
    assert len(set(names)) == len(names)
    per_run = ("shapley_shares", "dominance", "accuracy", "sharpness")
    for key in ("mfeat_joint", "mfeat_msam", "synthetic_joint", "synthetic_msam"):
        assert all(f"{key}__{fig}.png" in names for fig in per_run)
    for dataset in ("mfeat", "synthetic"):
        for fig in ("compare_runs", "compare_accuracy", "summary_grid"):
            assert f"comparison_{dataset}__{fig}.png" in names
    assert len(names) == 4 * len(per_run) + 2 * 3
    # The static grids are real files, one per dataset.
    assert (tmp_path / "png" / "comparison_mfeat__summary_grid.png").stat().st_size > 0
    page = result.html.read_text(encoding="utf-8")
    assert 'id="run-synthetic-msam"' in page and 'id="comparison-mfeat"' in page


def test_labels_that_sanitise_alike_get_distinct_files_and_anchors(tmp_path) -> None:
    vf.write_run(tmp_path, "a b/x", epochs=1, steps_per_epoch=3, with_landscape=False)
    vf.write_run(tmp_path, "a_b/x", epochs=1, steps_per_epoch=3, with_landscape=False)
    sections = build_sections(load_runs(tmp_path))
    assert [s.title for s in sections[1:3]] == ["Run a b/x", "Run a_b/x"]
    assert [s.key for s in sections[1:3]] == ["a_b_x", "a_b_x-2"]
    page = report.render_html(sections, "t")
    assert 'id="run-a-b-x"' in page and 'id="run-a-b-x-2"' in page


# -- the `msam report` command ----------------------------------------------------------------


@pytest.fixture
def msam(monkeypatch):
    """``msam_core.cli.main`` with the report plug-in visible, installed or not."""
    from types import SimpleNamespace

    import msam_viz.commands as commands
    from msam_core import cli

    monkeypatch.setattr(
        cli, "_plugin_commands", lambda: {"report": SimpleNamespace(load=lambda: commands)}
    )
    return cli.main


def test_report_command_is_registered_as_msam_plugin() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    plugins = pyproject["project"].get("entry-points", {}).get("msam.commands", {})
    assert plugins.get("report") == "msam_viz.commands"


def test_msam_report_writes_html_from_globs_and_folders(runs, msam, tmp_path, capsys) -> None:
    root = runs[0].path.parent
    out = tmp_path / "r.html"
    assert msam(["report", str(root / "msam_*"), "--out", str(out), "--smooth", "3"]) == 0
    assert out.exists()
    assert capsys.readouterr().out.strip() == f"wrote {out} (2 runs)"
    assert msam(["report", str(root), "--out", str(tmp_path / "all.html"), "--quiet"]) == 0
    assert capsys.readouterr().out == ""
    assert msam(["--help"]) == 0
    listing = capsys.readouterr().out
    assert re.search(r"^  report +write a self-contained HTML report", listing, re.M)


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_msam_report_bad_run_is_one_line_error(kind, msam, tmp_path, capsys) -> None:
    target = tmp_path / "nothing_here"
    if kind == "empty":
        target.mkdir()
    status = msam(["report", str(target), "--out", str(tmp_path / "r.html")])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("msam report: error:") and "nothing_here" in err
    assert "\n" not in err
    assert not (tmp_path / "r.html").exists()


def test_msam_report_png_without_browser_exits_1_after_writing_html(
    runs, msam, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(report, "find_browser", lambda: None)
    out = tmp_path / "r.html"
    status = msam(["report", str(runs[1].path), "--out", str(out), "--png", str(tmp_path / "p")])
    assert status == 1
    assert out.exists()
    err = capsys.readouterr().err
    assert "PNGs not written" in err and "apt-get install chromium" in err


def test_msam_report_of_demo_output_counts_one_png_set_per_run(
    demo_runs, msam, tmp_path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(
        report, "export_png", lambda figures, out_dir, **_: [out_dir / f"{n}.png" for n in figures]
    )
    root = demo_runs[0].path.parents[1]  # OUT of OUT/<dataset>/<method>
    out = tmp_path / "r.html"
    assert msam(["report", str(root), "--out", str(out), "--png", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out.splitlines()
    # 4 figures for each of 4 runs, 3 per dataset comparison.
    assert printed == [f"wrote {out} (4 runs)", f"wrote 22 PNG files into {tmp_path / 'p'}"]
