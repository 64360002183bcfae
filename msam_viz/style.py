"""One look for every msam figure: a fixed colour per modality and per method, fonts, template.

A modality's colour depends on its name only, so ``audio`` is the same blue in the Shapley
area, the accuracy curves, the sharpness panel and every run of a comparison.  Well-known
names have a fixed entry; ``m0``, ``m1``, … take the palette in index order; any other name
is placed by a stable hash of its text (not Python's salted ``hash``).  When two names of one
figure land on the same colour, :meth:`Style.modality_colors` moves the later name (sorted
order) to the next free colour, so one figure never shows two modalities alike.

Colours are colour-blind safe (Okabe & Ito 2008 for modalities, Tol's "vibrant" for methods).
Use ``dataclasses.replace(DEFAULT_STYLE, template="plotly_dark")`` for a variant.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

import plotly.graph_objects as go

# Okabe-Ito, ordered so that the first colours are the most distinct on white.
MODALITY_PALETTE: tuple[str, ...] = (
    "#0072B2",  # blue
    "#E69F00",  # orange
    "#009E73",  # bluish green
    "#CC79A7",  # reddish purple
    "#D55E00",  # vermillion
    "#56B4E9",  # sky blue
    "#8C6D1F",  # brown (replaces Okabe-Ito yellow, which is unreadable on white)
    "#555555",  # dark grey
)

# Names the shipped datasets use; a fixed entry keeps their colours stable across datasets.
KNOWN_MODALITIES: tuple[tuple[str, str], ...] = (
    ("audio", "#0072B2"),
    ("visual", "#E69F00"),
    ("video", "#E69F00"),
    ("image", "#E69F00"),
    ("text", "#009E73"),
    ("accelerometer", "#0072B2"),
    ("gyroscope", "#E69F00"),
    ("left", "#0072B2"),
    ("right", "#E69F00"),
    ("top", "#0072B2"),
    ("bottom", "#E69F00"),
)

# The method under study (msam) is the warm, strong colour; the plain baseline is grey.
METHOD_COLORS: tuple[tuple[str, str], ...] = (
    ("msam", "#CC3311"),
    ("sam", "#0077BB"),
    ("asam", "#33BBEE"),
    ("ogm_ge", "#009988"),
    ("agm", "#EE7733"),
    ("mmpareto", "#AA4499"),
    ("mla", "#117733"),
    ("pmr", "#999933"),
    ("gblending", "#332288"),
    ("joint", "#777777"),
)
METHOD_FALLBACK: tuple[str, ...] = ("#EE3377", "#332288", "#117733", "#882255", "#44AA99")

SPLIT_DASH: tuple[tuple[str, str], ...] = (
    ("train", "dot"),
    ("val", "solid"),
    ("valid", "solid"),
    ("validation", "solid"),
    ("test", "dash"),
)

_INDEXED = re.compile(r"^(?:m|mod|modality)_?(\d+)$")


def _stable_index(name: str, n: int) -> int:
    """A palette index that depends on ``name`` only (same on every machine and run)."""
    match = _INDEXED.match(name.lower())
    if match:
        return int(match.group(1)) % n
    return zlib.crc32(name.encode("utf-8")) % n


@dataclass(frozen=True)
class Style:
    """Colours, fonts and layout shared by every msam figure (immutable, so safe to share).

    ``modality_overrides`` / ``method_overrides`` are ``(name, colour)`` pairs taking
    precedence over the defaults, e.g. ``Style(modality_overrides=(("speech", "#000"),))``.
    """

    modality_palette: tuple[str, ...] = MODALITY_PALETTE
    known_modalities: tuple[tuple[str, str], ...] = KNOWN_MODALITIES
    modality_overrides: tuple[tuple[str, str], ...] = ()
    method_colors: tuple[tuple[str, str], ...] = METHOD_COLORS
    method_overrides: tuple[tuple[str, str], ...] = ()
    fused_color: str = "#222222"  # the fused model / overall quantity, never a modality
    fusion_color: str = "#8C8C8C"  # the fusion head's own block (sharpness, Hessian)
    split_dash: tuple[tuple[str, str], ...] = SPLIT_DASH
    landscape_colorscale: str = "Viridis"  # perceptually uniform, readable in grey print
    trajectory_color: str = "#FF3864"  # stands out on every Viridis hue
    template: str = "plotly_white"
    font_family: str = "Inter, 'Helvetica Neue', Arial, sans-serif"
    font_size: int = 13
    title_size: int = 17
    width: int = 920
    height: int = 480
    area_opacity: float = 0.75
    raw_opacity: float = 0.25  # unsmoothed series drawn behind their smoothed line
    max_points: int = 2000  # per series, before line/area traces are bin-averaged

    def __post_init__(self) -> None:
        if not self.modality_palette:
            raise ValueError("modality_palette must hold at least one colour")

    # colours -----------------------------------------------------------------------------

    def modality_color(self, name: str) -> str:
        """The colour of one modality, from its name alone."""
        for key, colour in (*self.modality_overrides, *self.known_modalities):
            if key == name:
                return colour
        return self.modality_palette[_stable_index(name, len(self.modality_palette))]

    def modality_colors(self, names: Iterable[str]) -> dict[str, str]:
        """Colours for modalities drawn together, distinct whenever the palette allows.

        Names keep their own :meth:`modality_color`; on a clash the later name (sorted order)
        takes the next unused palette colour.  Returned in the order of ``names``.
        """
        names = list(dict.fromkeys(names))
        taken: dict[str, str] = {}
        used: set[str] = set()
        overridden = {key for key, _ in self.modality_overrides}
        # Overridden names first: a user's explicit choice never moves.
        for name in sorted(names, key=lambda n: (n not in overridden, n)):
            colour = self.modality_color(name)
            if colour in used and name not in overridden:
                free = [c for c in self.modality_palette if c not in used]
                if free:
                    palette = self.modality_palette
                    start = palette.index(colour) if colour in palette else 0
                    # The next free colour after the preferred one, cyclically.
                    colour = min(free, key=lambda c: (palette.index(c) - start) % len(palette))
            taken[name] = colour
            used.add(colour)
        return {name: taken[name] for name in names}

    def method_color(self, method: str) -> str:
        """The colour of a training method (``msam``, ``sam``, ``joint``, …)."""
        for key, colour in (*self.method_overrides, *self.method_colors):
            if key == method:
                return colour
        return METHOD_FALLBACK[zlib.crc32(method.encode("utf-8")) % len(METHOD_FALLBACK)]

    def dash(self, split: str) -> str:
        """Line dash of an evaluation split: train dotted, val solid, test dashed."""
        return dict(self.split_dash).get(split, "dashdot")

    # layout ------------------------------------------------------------------------------

    def apply(
        self, fig: go.Figure, title: str, subtitle: str | None = None, height: int | None = None
    ) -> go.Figure:
        """Set template, fonts, size, title (and subtitle) on ``fig``; returns ``fig``."""
        title_spec: dict = {
            "text": title,
            "x": 0.0,
            "xanchor": "left",
            "xref": "paper",
            # Pinned to the top, so title and subtitle never run into the legend above the plot.
            "y": 0.985,
            "yanchor": "top",
            "yref": "container",
            "font": {"size": self.title_size},
        }
        if subtitle:
            title_spec["subtitle"] = {"text": subtitle, "font": {"size": self.font_size - 1}}
        fig.update_layout(
            template=self.template,
            title=title_spec,
            font={"family": self.font_family, "size": self.font_size},
            width=self.width,
            height=height or self.height,
            margin={"l": 70, "r": 30, "t": 112 if subtitle else 80, "b": 60},
            legend={"orientation": "h", "yanchor": "bottom", "y": 1.0, "x": 1, "xanchor": "right"},
            hoverlabel={"font": {"family": self.font_family}},
        )
        return fig


def rgba(colour: str, alpha: float) -> str:
    """``#RRGGBB`` -> ``rgba(r, g, b, alpha)`` (plotly fills need an explicit alpha)."""
    colour = colour.lstrip("#")
    if len(colour) == 3:
        colour = "".join(c * 2 for c in colour)
    if len(colour) != 6:
        raise ValueError(f"expected a colour like '#1f77b4', got '#{colour}'")
    r, g, b = (int(colour[i : i + 2], 16) for i in (0, 2, 4))
    return f"rgba({r}, {g}, {b}, {alpha:g})"


DEFAULT_STYLE = Style()
