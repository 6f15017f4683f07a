"""Writing a matplotlib figure to .svg or .png, the same way for every picture.

Figures are drawn on a ``Figure`` with an Agg canvas, never through pyplot: pyplot keeps global
state and may pick an interactive backend, which a CLI or a benchmark must not do. SVG keeps its
text as text (``svg.fonttype`` ``none``) so that the names in a picture can be searched, diffed and
checked by tests, and carries no date, so that a picture regenerated from the same plan is the same
file.

matplotlib comes with Jellybean's ``viz`` extra, not with every install: it is imported only when a
picture is drawn, through :func:`require_matplotlib`, which says which extra to install when it is
missing (:class:`jellybean.extras.MissingExtra`, a user's error, not a traceback).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from jellybean.extras import require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: The file types a picture can be written as (by the path's suffix).
SUFFIXES = (".svg", ".png")

#: Average advance of one character of DejaVu Sans, in ems; used to size boxes before drawing.
CHAR_WIDTH_EM = 0.53
POINTS_PER_INCH = 72.0


def require_matplotlib() -> None:
    """Return when matplotlib can be imported; :class:`jellybean.extras.MissingExtra` naming the
    ``viz`` extra when it is not installed."""
    require("matplotlib", "drawing a picture")


def check_picture_path(path: str | Path) -> Path:
    """The path as a Path; a ValueError in one line when its suffix is not a supported picture type,
    and MissingExtra when pictures cannot be drawn here (no matplotlib), so that callers can refuse
    either before doing any work."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise ValueError(f"cannot draw to {str(path)!r}: the file name must end in .svg or .png")
    require_matplotlib()
    return path


def new_figure(width_in: float, height_in: float) -> Figure:
    """A figure of the given size in inches, with an Agg canvas attached (no pyplot, no display)."""
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width_in, height_in), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def text_width_in(text: str, fontsize_pt: float) -> float:
    """Estimated width of ``text`` in inches at ``fontsize_pt`` (layout happens before any drawing)."""
    return len(text) * CHAR_WIDTH_EM * fontsize_pt / POINTS_PER_INCH


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write ``figure`` to ``path`` (.svg or .png, creating the folder); returns the path."""
    path = check_picture_path(path)
    import matplotlib

    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = path.suffix.lower().lstrip(".")
    metadata = {"Date": None} if fmt == "svg" else {"Software": None}
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "jellybean"}):
        figure.savefig(path, format=fmt, metadata=metadata, dpi=100 if fmt == "png" else None)
    return path
