"""The one way kerasflow draws a figure: matplotlib to a file (no display), saved atomically."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from kerasflow.io import atomic_path


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files only (no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> None:
    with atomic_path(path) as temporary:
        figure.savefig(temporary, dpi=100, format="png")
    pyplot().close(figure)
