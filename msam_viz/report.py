"""One self-contained HTML page for one or more runs, and PNG export of its figures.

The page inlines plotly.js (no CDN, no network: it opens offline, in a mail attachment, in
CI artifacts) and embeds the static seaborn summary as a PNG.  PNG export of the plotly
figures goes through kaleido, which drives a Chrome/Chromium already installed on the
machine; without one the HTML is still written and the reason is reported, never hidden.
"""

from __future__ import annotations

import base64
import html
import io
import os
import re
import shutil
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from msam_viz.figures import (
    MissingRecordsWarning,
    accuracy_curves,
    compare_curves,
    compare_runs,
    dominance,
    landscape_figures,
    shapley_shares,
    sharpness_curves,
    summary_grid,
)
from msam_viz.figures._common import (
    as_run_list,
    config_value,
    present,
    run_dataset,
    run_labels,
    run_name,
)
from msam_viz.figures.comparison_table import dataset_labels
from msam_viz.style import DEFAULT_STYLE, Style

NO_BROWSER_MESSAGE = (
    "PNG export needs Chrome or Chromium (kaleido drives it to render plotly figures) and "
    "none was found. Install one (Debian/Ubuntu: `apt-get install chromium`; macOS: Google "
    "Chrome) or point the BROWSER_PATH environment variable at its executable. "
    "The HTML report does not need a browser and was written without the PNGs."
)


class PngExportUnavailable(RuntimeError):
    """No Chrome/Chromium for kaleido, or kaleido is not installed."""


@dataclass
class Section:
    """One part of the page: a heading, notes (e.g. what a run lacks) and named figures.

    ``key``: the stem of its PNG files (``<key>__<figure>.png``), unique within a report.
    """

    title: str
    key: str = ""
    figures: dict[str, go.Figure] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)  # static PNGs (seaborn grid)
    table: str = ""  # pre-rendered, escaped HTML


@dataclass
class ReportResult:
    """What :func:`write_report` wrote: the page, the PNGs, and why PNGs are absent if so."""

    html: Path
    png_files: list[Path] = field(default_factory=list)
    png_message: str | None = None


def _collect(fn: Callable[..., Any], notes: list[str], *args: Any, **kwargs: Any) -> Any:
    """Call a figure function, turning its MissingRecordsWarnings into notes for the page."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", MissingRecordsWarning)
        out = fn(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, MissingRecordsWarning):
            # "run 'x': not in this run: a; b" -> items "a", "b" (the page heads them already).
            text = str(w.message)
            _, sep, tail = text.partition("not in this run: ")
            for item in (tail if sep else text.split(": ", 1)[-1]).split("; "):
                if item not in notes:
                    notes.append(item)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return out


def _landscape_figures(run: Any, style: Style, notes: list[str]) -> dict[str, go.Figure]:
    """The run's landscape figures (1-D, contour, surface), or a note when it has none."""
    if not getattr(run, "landscapes", None):
        notes.append("loss landscapes (landscapes/*.npz)")
        return {}
    return _collect(landscape_figures, notes, run, style=style)


def run_section(
    run: Any,
    *,
    label: str | None = None,
    style: Style | None = None,
    smooth_steps: int | None = None,
) -> Section:
    """The figures of one run, in reading order: balance, accuracy, sharpness, landscape.

    ``label``: the run's name in this report (unique among its runs, see
    :func:`~msam_viz.figures._common.run_labels`); default its own name.
    """
    style = style or DEFAULT_STYLE
    label = label or run_name(run)
    section = Section(title=f"Run {label}", key=_safe_name(label))
    notes = section.notes
    section.figures["shapley_shares"] = _collect(
        shapley_shares, notes, run, smooth_steps=smooth_steps, style=style
    )
    section.figures["dominance"] = _collect(dominance, notes, run, style=style)
    section.figures["accuracy"] = _collect(accuracy_curves, notes, run, style=style)
    section.figures["sharpness"] = _collect(
        sharpness_curves, notes, run, smooth_steps=smooth_steps, style=style
    )
    section.figures.update(_landscape_figures(run, style, notes))
    return section


def comparison_section(
    runs: Sequence[Any], *, title: str = "Comparison", style: Style | None = None
) -> Section:
    """Runs side by side: final metrics per method, accuracy curves, static summary grid.

    Meant for runs of one dataset (the report makes one section per dataset); runs of
    several datasets are drawn in one panel row per dataset.
    """
    style = style or DEFAULT_STYLE
    section = Section(title=title, key=_safe_name(title.lower()))
    section.figures["compare_runs"] = _collect(compare_runs, section.notes, runs, style=style)
    section.figures["compare_accuracy"] = _collect(
        compare_curves, section.notes, runs, "acc", style=style
    )
    try:
        grid = summary_grid(runs, style=style)
    except ValueError as err:  # no epoch records on val: say so, keep the rest
        section.notes.append(f"summary grid: {err}")
    else:
        buffer = io.BytesIO()
        grid.savefig(buffer, format="png", dpi=130, bbox_inches="tight")
        section.images["summary_grid"] = buffer.getvalue()
    return section


def _run_table(runs: Sequence[Any], labels: Sequence[str]) -> str:
    head = ["run", "method", "dataset", "seed", "modalities", "steps", "epochs", "val acc"]
    rows = []
    for run, label in zip(runs, labels, strict=True):
        epochs = run.epochs
        acc = ""
        if present(epochs, "acc") and "split" in epochs:
            val = epochs.loc[epochs["split"] == "val"].sort_values("epoch")
            if present(val, "acc"):
                acc = f"{val['acc'].dropna().iloc[-1]:.3f}"
        n_epochs = epochs["epoch"].nunique() if "epoch" in epochs else 0
        modalities = getattr(run, "modalities", None) or config_value(run, "modalities") or []
        cells = [
            label,
            config_value(run, "method", ""),
            run_dataset(run) or "",
            config_value(run, "seed", ""),
            ", ".join(map(str, modalities)),
            len(run.iterations),
            n_epochs,
            acc,
        ]
        rows.append("".join(f"<td>{html.escape(str(c))}</td>" for c in cells))
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(f"<tr>{r}</tr>" for r in rows)
    return f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>"


def build_sections(
    runs: Any, *, style: Style | None = None, smooth_steps: int | None = None
) -> list[Section]:
    """All sections of the report: an overview table, one per run, then the comparisons.

    Runs are named by labels unique in the report (``synthetic/msam`` beside ``mfeat/msam``).
    Only runs of one dataset are compared: one comparison section per dataset that has two
    runs or more, titled ``Comparison: <dataset>`` when the report spans several datasets.
    """
    runs = as_run_list(runs)
    labels = run_labels(runs)
    overview = Section(title="Runs", key="runs", table=_run_table(runs, labels))
    sections = [overview]
    sections += [
        run_section(r, label=label, style=style, smooth_steps=smooth_steps)
        for r, label in zip(runs, labels, strict=True)
    ]
    per_dataset: dict[str, list[Any]] = {}
    for run, dataset in zip(runs, dataset_labels(runs), strict=True):
        per_dataset.setdefault(dataset, []).append(run)
    for dataset, members in per_dataset.items():
        if len(members) > 1:
            title = "Comparison" if len(per_dataset) == 1 else f"Comparison: {dataset}"
            sections.append(comparison_section(members, title=title, style=style))
    _unique_keys(sections)
    return sections


def _unique_keys(sections: Sequence[Section]) -> None:
    """Make section keys unique (``a/b`` and ``a_b`` sanitise alike), so no PNG overwrites
    another: the second ``x`` becomes ``x-2``."""
    seen: set[str] = set()
    for section in sections:
        key = section.key or _safe_name(section.title)
        n = 1
        while (candidate := key if n == 1 else f"{key}-{n}") in seen:
            n += 1
        section.key = candidate
        seen.add(candidate)


_CSS = """
body { font-family: Inter, 'Helvetica Neue', Arial, sans-serif; margin: 0; color: #222;
       background: #fafafa; }
main { max-width: 980px; margin: 0 auto; padding: 24px 28px 64px; background: #fff; }
h1 { font-size: 26px; margin-bottom: 4px; }
h2 { font-size: 20px; margin-top: 40px; border-bottom: 1px solid #ddd; padding-bottom: 6px; }
.meta { color: #666; font-size: 13px; }
.notes { background: #fff6f0; border-left: 3px solid #d55e00; padding: 8px 12px;
         font-size: 13px; color: #6b2a00; }
table { border-collapse: collapse; font-size: 13px; margin: 12px 0; }
th, td { border-bottom: 1px solid #e3e3e3; padding: 5px 10px; text-align: left; }
th { background: #f3f3f3; }
figure { margin: 18px 0; }
img.static { max-width: 100%; }
nav a { margin-right: 12px; font-size: 13px; }
"""


def _anchor(title: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def _anchors(sections: Sequence[Section]) -> list[str]:
    """One HTML id per section, from its title, unique on the page."""
    out: list[str] = []
    for section in sections:
        base = _anchor(section.title) or "section"
        n = 1
        while (candidate := base if n == 1 else f"{base}-{n}") in out:
            n += 1
        out.append(candidate)
    return out


def render_html(sections: Sequence[Section], title: str) -> str:
    """The full page as a string: plotly.js inlined once in <head>, figures as divs."""
    plot_config = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
    anchors = _anchors(sections)
    parts = []
    for section, anchor in zip(sections, anchors, strict=True):
        parts.append(f'<h2 id="{anchor}">{html.escape(section.title)}</h2>')
        if section.notes:
            items = "".join(f"<li>{html.escape(n)}</li>" for n in section.notes)
            parts.append(f'<div class="notes">Not recorded:<ul>{items}</ul></div>')
        parts.append(section.table)
        for name, fig in section.figures.items():
            div = pio.to_html(
                fig,
                full_html=False,
                include_plotlyjs=False,  # inlined once in <head> below
                include_mathjax=False,
                config=plot_config,
                div_id=f"{anchor}-{name}",
            )
            parts.append(f"<figure>{div}</figure>")
        for name, png in section.images.items():
            data = base64.b64encode(png).decode("ascii")
            parts.append(
                f'<figure><img class="static" alt="{html.escape(name)}" '
                f'src="data:image/png;base64,{data}"></figure>'
            )
    nav = "".join(
        f'<a href="#{a}">{html.escape(s.title)}</a>' for s, a in zip(sections, anchors, strict=True)
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    from msam_viz import __version__

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n"
        # plotly.js inlined, so the page needs no network (the same as include_plotlyjs=True).
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n<main>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">msam_viz {__version__} · written {stamp}</p>\n'
        f"<nav>{nav}</nav>\n" + "\n".join(parts) + "\n</main>\n</body>\n</html>\n"
    )


# -- PNG export ---------------------------------------------------------------------------


def find_browser() -> str | None:
    """Path of the Chrome/Chromium kaleido would use (``BROWSER_PATH`` first), or None."""
    try:
        from choreographer.browsers.chromium import Chromium

        return Chromium.find_browser(skip_local=False)
    except Exception:  # detection is best effort; fall back to PATH
        env = os.environ.get("BROWSER_PATH")
        if env:
            return env if shutil.which(env) or Path(env).exists() else None
        for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
            if path := shutil.which(name):
                return path
        return None


def _safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "figure"


def export_png(
    figures: Mapping[str, go.Figure], out_dir: str | os.PathLike, *, scale: float = 2.0
) -> list[Path]:
    """Render each figure to ``out_dir/<name>.png`` through kaleido in one browser session.

    Raises PngExportUnavailable (with what to install) when kaleido or a browser is missing.
    """
    try:
        import kaleido
    except ImportError as err:
        raise PngExportUnavailable(
            "PNG export needs kaleido: pip install 'kaleido>=1' (or msam[notebooks])"
        ) from err
    if find_browser() is None:
        raise PngExportUnavailable(NO_BROWSER_MESSAGE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths, jobs = [], []
    for name, fig in figures.items():
        path = out / f"{_safe_name(name)}.png"
        width = fig.layout.width or DEFAULT_STYLE.width
        height = fig.layout.height or DEFAULT_STYLE.height
        opts = {"format": "png", "width": width, "height": height, "scale": scale}
        jobs.append({"fig": fig, "path": path, "opts": opts})
        paths.append(path)
    # mathjax=False: kaleido would otherwise load MathJax from a CDN; figures use no LaTeX.
    kaleido.write_fig_from_object_sync(jobs, kopts={"mathjax": False}, cancel_on_error=True)
    return paths


# -- the report ---------------------------------------------------------------------------


def write_report(
    runs: Any,
    out_html: str | os.PathLike,
    *,
    title: str | None = None,
    png_dir: str | os.PathLike | None = None,
    style: Style | None = None,
    smooth_steps: int | None = None,
) -> ReportResult:
    """Write a self-contained HTML report of ``runs`` (a Run or a list) to ``out_html``.

    With ``png_dir``, also writes every plotly figure as ``<section>__<figure>.png`` (kaleido +
    an installed Chrome/Chromium; ``<section>`` is the run's label, file-name safe, e.g.
    ``synthetic_msam``, or ``comparison[_<dataset>]``) and the seaborn summary grids
    (matplotlib, no browser).
    Without a browser the HTML is still written; ``png_message`` says why PNGs are missing
    and a warning is raised.
    """
    runs = as_run_list(runs)
    style = style or DEFAULT_STYLE
    if title is None:
        title = (
            f"msam report: {run_name(runs[0])}"
            if len(runs) == 1
            else f"msam report: {len(runs)} runs"
        )
    out = Path(out_html)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"report path must end in .html, got {str(out)!r}")
    sections = build_sections(runs, style=style, smooth_steps=smooth_steps)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(sections, title), encoding="utf-8")
    result = ReportResult(html=out)
    if png_dir is None:
        return result
    png_root = Path(png_dir)
    png_root.mkdir(parents=True, exist_ok=True)
    for section in sections:
        for name, data in section.images.items():
            path = png_root / f"{section.key}__{_safe_name(name)}.png"
            path.write_bytes(data)
            result.png_files.append(path)
    # Section keys are unique, so no two figures share a file.
    figures = {f"{s.key}__{name}": fig for s in sections for name, fig in s.figures.items()}
    try:
        result.png_files += export_png(figures, png_root)
    except PngExportUnavailable as err:
        result.png_message = str(err)
        warnings.warn(str(err), RuntimeWarning, stacklevel=2)
    return result
