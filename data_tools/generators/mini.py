"""The two miniature-pipeline families, ``shapes`` and ``bars``: programs short and canonical enough that a
from-scratch tiny transformer learns to write them in minutes on a CPU.

Both use one fixed style (fixed figure size, fixed limits, fixed statement order), few choices, and a canonical
ordering of elements, so the image fully determines the code: two different parameter sets never give the same
picture, and one picture has exactly one program.
"""

from __future__ import annotations

import random
from typing import Any

from data_tools.generators.base import num

SHAPE_KINDS = ("circle", "square", "triangle")
SHAPE_COLORS = ("red", "blue", "green", "orange", "purple")
GRID = 3  # cells per side; cell (col, row) has its centre at (col + 0.5, row + 0.5)
BAR_VALUES = (1, 2, 3, 4, 5)
BAR_COLORS = ("blue", "green", "orange", "purple")

_SHAPE_LINE = {
    "circle": "ax.add_patch(plt.Circle(({x}, {y}), 0.4, color='{c}'))",
    "square": "ax.add_patch(plt.Rectangle(({x0}, {y0}), 0.8, 0.8, color='{c}'))",
    "triangle": "ax.add_patch(plt.Polygon([({x0}, {y0}), ({x1}, {y0}), ({x}, {y1})], color='{c}'))",
}


def shape_line(kind: str, col: int, row: int, color: str) -> str:
    """The statement drawing one ``shapes`` element of ``kind`` and ``color`` in grid cell (``col``, ``row``)."""
    x, y = col + 0.5, row + 0.5
    return _SHAPE_LINE[kind].format(
        x=num(x), y=num(y), x0=num(x - 0.4), y0=num(y - 0.4), x1=num(x + 0.4), y1=num(y + 0.4), c=color
    )


def make_shapes(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """1-3 coloured shapes in distinct cells of a 3x3 grid, listed in cell order (row-major from the bottom)."""
    n = rng.randint(1, 3)
    cells = sorted(rng.sample(range(GRID * GRID), n))
    shapes = []
    lines = [
        "import matplotlib.pyplot as plt",
        "fig, ax = plt.subplots(figsize=(2, 2))",
        "ax.set_xlim(0, 3)",
        "ax.set_ylim(0, 3)",
        "ax.axis('off')",
    ]
    for cell in cells:
        col, row = cell % GRID, cell // GRID
        kind, color = rng.choice(SHAPE_KINDS), rng.choice(SHAPE_COLORS)
        lines.append(shape_line(kind, col, row, color))
        shapes.append({"kind": kind, "color": color, "col": col, "row": row})
    subject = f"a 3 by 3 grid picture with {n} coloured shape{'s' if n > 1 else ''}"
    return "\n".join(lines) + "\n", {"shapes": shapes}, subject


def make_bars(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """2-5 bars labelled A, B, C, ... with integer heights 1-5, one colour, fixed y-limit."""
    n = rng.randint(2, 5)
    labels = [chr(ord("A") + i) for i in range(n)]
    values = [rng.choice(BAR_VALUES) for _ in range(n)]
    color = rng.choice(BAR_COLORS)
    lines = [
        "import matplotlib.pyplot as plt",
        "fig, ax = plt.subplots(figsize=(2, 2))",
        f"ax.bar({labels!r}, {values!r}, color='{color}')",
        "ax.set_ylim(0, 6)",
    ]
    return (
        "\n".join(lines) + "\n",
        {"labels": labels, "values": values, "color": color},
        f"a bar chart of {n} bars",
    )
