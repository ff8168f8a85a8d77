"""Layout checks for matplotlib figures, done on the drawn figure (what a reader sees in the PNG).

Issue 18 found legends covering bars and a bar label cut off at the axes edge; these checks find both.
"""

from __future__ import annotations

import math

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def layout_problems(fig: Figure) -> list[str]:
    """Every legend that overlaps a bar of any axes, and every text of an axes that leaves it."""
    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    legends = [*fig.legends, *(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)]
    problems = []
    for legend in legends:
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            for bar in ax.patches:
                extent = bar.get_window_extent(renderer)
                drawn = all(map(math.isfinite, extent.bounds)) and extent.width * extent.height > 0
                if drawn and box.overlaps(extent):
                    labels = [t.get_text() for t in legend.get_texts()]
                    problems.append(f"legend {labels} covers a bar of '{ax.get_title()}'")
                    break
    for ax in fig.axes:
        inside = ax.get_window_extent(renderer).padded(1.0)
        for text in ax.texts:
            extent = text.get_window_extent(renderer)
            if text.get_text() and not (
                inside.contains(extent.x0, extent.y0) and inside.contains(extent.x1, extent.y1)
            ):
                problems.append(f"text {text.get_text()!r} leaves its axes (clipped)")
    return problems
