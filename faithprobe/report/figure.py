"""What every figure of the report shares: the ``Plot`` result, the style, PNG bytes out.

Figures are built with the object API (``matplotlib.figure.Figure``, Agg rendering) so no
pyplot state or backend is touched, and math text parsing is off, so a ``$`` in a step's text is
drawn as typed.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

__all__ = ["DPI", "PLOT_NAMES", "Plot", "color", "figure", "luminance", "png", "style"]

DPI = 100
# Every Plot.name the report draws (files under plots/); a report removes the ones it skipped.
PLOT_NAMES = ("forest", "early_answering", "adding_mistakes", "infogain", "patching",
              "resampling", "step_importance", "calibration", "coverage", "cues", "suppression",
              "receivers", "abstention")


@dataclass(frozen=True)
class Plot:
    """One figure of the report, or the reason it is missing."""

    name: str  # file stem under plots/ (a constant per kind of plot)
    title: str
    png: bytes | None  # None: skipped, nothing to draw
    note: str | None = None  # why it was skipped, or a caveat printed under the figure


@contextmanager
def style() -> Iterator[None]:
    import matplotlib

    rc = {"text.parse_math": False, "font.size": 8, "axes.titlesize": 9, "legend.fontsize": 7,
          "figure.dpi": DPI, "savefig.dpi": DPI}
    with matplotlib.rc_context(rc), warnings.catch_warnings():
        # A glyph the default font lacks (CJK, emoji) is drawn as a box: not worth a warning.
        warnings.filterwarnings("ignore", message=r"Glyph .* missing", category=UserWarning)
        yield


def figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=DPI, layout="constrained")


def png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def color(i: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10"](i % 10)


def luminance(rgba: Any) -> float:
    from matplotlib import colors

    r, g, b, _ = colors.to_rgba(rgba)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b
