"""Matplotlib for the report: the Agg backend under one style, and figures embedded as PNG ``<img>``
tags (``data:`` URIs, so the page needs no other file)."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from connector.report.markup import esc


@contextmanager
def pyplot() -> Iterator[Any]:
    """`matplotlib.pyplot` on the Agg backend, inside the report's style."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    style = {"axes.spines.top": False, "axes.grid": True, "grid.alpha": 0.3, "font.size": 9,
             "axes.titlesize": 10, "legend.fontsize": 8, "figure.dpi": 100}
    with plt.rc_context(style):
        yield plt


def embed(plt: Any, draw: Callable[[Any], Any], alt: str) -> str:
    """Run ``draw(plt)`` (it returns a figure), embed the figure as a PNG ``<img>``, and close it."""
    fig = None
    try:
        fig = draw(plt)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    finally:
        if fig is not None:
            plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{esc(alt)}">'

