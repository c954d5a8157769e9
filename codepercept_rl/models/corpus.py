"""A synthetic code corpus for training the tiny models' tokenizer.

Nothing is downloaded: the corpus is generated from templates with a seeded ``random.Random``, so the same
``(seed, n_programs)`` always gives the same text on every machine and Python version (the tokenizer trained
on it is then reproducible too). It mixes what the models will read and write:

- short matplotlib / numpy programs of the kinds STEM images are drawn with (line plots, bars, scatter,
  patches, polygons, annotations, 3-D surfaces, subplots), in fenced ```python blocks like model answers;
- Python keywords, builtins and common idioms;
- caption-like English sentences describing figures.

Run ``python -m codepercept_rl.models.corpus | head -50`` to look at a sample.
"""

from __future__ import annotations

import functools
import keyword
import random
from collections.abc import Callable, Iterator
from pathlib import Path

API_NAMES_FILE = Path(__file__).parent / "assets" / "api_names.txt"
# How each API group is reached in code.
API_PREFIX = {"plt": "plt", "ax": "ax", "ax3d": "ax", "fig": "fig", "np": "np", "np.random": "np.random",
              "np.linalg": "np.linalg", "patches": "patches", "math": "math"}  # fmt: skip

COLORS = (
    "red", "blue", "green", "black", "orange", "purple", "gray", "tab:blue", "tab:orange", "tab:green",
    "tab:red", "navy", "teal", "crimson", "gold", "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
)  # fmt: skip
MARKERS = ("o", "s", "^", "x", "+", "*", "D", ".")
LINESTYLES = ("-", "--", ":", "-.")
FUNCS = ("np.sin", "np.cos", "np.exp", "np.sqrt", "np.log1p", "np.tanh", "np.abs")
SHAPES = ("circle", "square", "triangle", "hexagon", "rectangle", "line", "curve", "arrow", "polygon", "cube")
SUBJECTS = ("function", "parabola", "sine wave", "bar chart", "scatter plot", "triangle", "circuit", "vector")
WORDS = (
    "the figure shows a {c} {s} centred at ({x}, {y}) with radius {r}.",
    "a {s} is drawn in {c}; its label reads '{l}'.",
    "the x-axis ranges from {x} to {r} and the y-axis from {y} to {r}.",
    "there are {n} {s}s arranged in a row, each filled with {c}.",
    "the plot of the {t} has a dashed {c} line and a title '{l}'.",
    "point {l} lies at ({x}, {y}); a {c} arrow points from it to the origin.",
    "the image contains {n} labelled points and a legend in the upper right corner.",
)
BUILTINS = (
    "print", "range", "len", "enumerate", "zip", "list", "dict", "tuple", "set", "sorted", "min", "max",
    "sum", "abs", "round", "isinstance", "float", "int", "str", "open", "map", "filter", "any", "all",
)  # fmt: skip


def _num(rng: random.Random, lo: float = -5, hi: float = 5, digits: int = 1) -> str:
    """A short decimal literal, as a model would write it."""
    return str(round(rng.uniform(lo, hi), digits))


def _header(rng: random.Random) -> list[str]:
    lines = ["import matplotlib.pyplot as plt", "import numpy as np"]
    if rng.random() < 0.3:
        lines.append("from matplotlib.patches import Circle, Rectangle, Polygon, FancyArrowPatch")
    w, h = rng.choice((4, 5, 6, 8)), rng.choice((3, 4, 5, 6))
    lines += ["", f"fig, ax = plt.subplots(figsize=({w}, {h}))"]
    return lines


def _line_plot(rng: random.Random) -> list[str]:
    f, c, ls = rng.choice(FUNCS), rng.choice(COLORS), rng.choice(LINESTYLES)
    n = rng.choice((50, 100, 200, 400))
    return [
        f"x = np.linspace({_num(rng, -6, 0)}, {_num(rng, 1, 8)}, {n})",
        f"y = {f}(x) * {_num(rng, 0.5, 3)}",
        f"ax.plot(x, y, color='{c}', linestyle='{ls}', linewidth={rng.choice((1, 1.5, 2, 3))}, label='{f[3:]}')",
        "ax.legend(loc='upper right')",
        f"ax.set_xlabel('{rng.choice(('x', 't', 'time (s)', 'angle'))}')",
        f"ax.set_ylabel('{rng.choice(('y', 'f(x)', 'amplitude', 'value'))}')",
    ]


def _bar_chart(rng: random.Random) -> list[str]:
    k = rng.randint(3, 7)
    labels = [rng.choice("ABCDEFGH") + str(i) for i in range(k)]
    values = [rng.randint(1, 40) for _ in range(k)]
    return [
        f"labels = {labels!r}",
        f"values = {values!r}",
        f"bars = ax.bar(labels, values, color='{rng.choice(COLORS)}', edgecolor='black')",
        "for bar, v in zip(bars, values):",
        "    ax.text(bar.get_x() + bar.get_width() / 2, v + 0.5, str(v), ha='center', va='bottom')",
        f"ax.set_title('{rng.choice(('Results', 'Counts per group', 'Measured values'))}')",
    ]


def _scatter(rng: random.Random) -> list[str]:
    return [
        f"rng = np.random.default_rng({rng.randint(0, 99)})",
        f"pts = rng.normal(size=({rng.randint(10, 200)}, 2))",
        f"ax.scatter(pts[:, 0], pts[:, 1], c='{rng.choice(COLORS)}', marker='{rng.choice(MARKERS)}', s={rng.randint(5, 60)})",
        "ax.set_aspect('equal')",
        f"ax.grid({rng.choice(('True', 'False'))}, alpha=0.3)",
    ]


def _patches(rng: random.Random) -> list[str]:
    lines = []
    for _ in range(rng.randint(1, 4)):
        kind = rng.choice(("Circle", "Rectangle", "Polygon"))
        c = rng.choice(COLORS)
        if kind == "Circle":
            args = f"({_num(rng, 0, 4)}, {_num(rng, 0, 4)}), {_num(rng, 0.2, 2)}"
        elif kind == "Rectangle":
            args = f"({_num(rng, 0, 3)}, {_num(rng, 0, 3)}), {_num(rng, 0.5, 3)}, {_num(rng, 0.5, 3)}"
        else:
            pts = [[float(_num(rng, 0, 4)), float(_num(rng, 0, 4))] for _ in range(rng.randint(3, 6))]
            args = f"{pts!r}, closed=True"
        lines.append(
            f"ax.add_patch({kind}({args}, facecolor='{c}', edgecolor='black', alpha={_num(rng, 0.3, 1)}))"
        )
    lines += ["ax.set_xlim(-1, 5)", "ax.set_ylim(-1, 5)", "ax.set_aspect('equal')", "ax.axis('off')"]
    return lines


def _geometry(rng: random.Random) -> list[str]:
    names = rng.sample("ABCDEFPQ", 3)
    pts = {n: (_num(rng, 0, 6), _num(rng, 0, 6)) for n in names}
    lines = [f"{n} = np.array([{x}, {y}])" for n, (x, y) in pts.items()]
    a, b, c = names
    lines += [
        f"tri = np.array([{a}, {b}, {c}, {a}])",
        f"ax.plot(tri[:, 0], tri[:, 1], '{rng.choice(COLORS)}', lw=2)",
        f"for name, p in zip({names!r}, [{a}, {b}, {c}]):",
        "    ax.annotate(name, p, textcoords='offset points', xytext=(5, 5), fontsize=12)",
        f"ax.annotate('', xy={a}, xytext={b}, arrowprops=dict(arrowstyle='->', color='{rng.choice(COLORS)}'))",
        "ax.set_aspect('equal')",
        "ax.axis('off')",
    ]
    return lines


def _surface(rng: random.Random) -> list[str]:
    return [
        "fig = plt.figure(figsize=(6, 5))",
        "ax = fig.add_subplot(111, projection='3d')",
        f"u = np.linspace(-{rng.randint(1, 4)}, {rng.randint(1, 4)}, {rng.choice((30, 50))})",
        "X, Y = np.meshgrid(u, u)",
        f"Z = {rng.choice(FUNCS)}(X ** 2 + Y ** 2)",
        f"ax.plot_surface(X, Y, Z, cmap='{rng.choice(('viridis', 'plasma', 'coolwarm', 'Blues'))}', alpha=0.8)",
        "ax.set_zlabel('z')",
    ]


def _subplots(rng: random.Random) -> list[str]:
    r, c = rng.choice(((1, 2), (2, 1), (2, 2)))
    return [
        f"fig, axes = plt.subplots({r}, {c}, figsize=(8, 4))",
        "for i, ax in enumerate(axes.flat):",
        f"    x = np.arange({rng.randint(5, 20)})",
        f"    ax.plot(x, x ** (i + 1), marker='{rng.choice(MARKERS)}', color='{rng.choice(COLORS)}')",
        "    ax.set_title(f'panel {i + 1}')",
        "fig.tight_layout()",
    ]


FAMILIES: tuple[Callable[[random.Random], list[str]], ...] = (
    _line_plot, _bar_chart, _scatter, _patches, _geometry, _surface, _subplots,
)  # fmt: skip


@functools.cache
def api_names() -> dict[str, tuple[str, ...]]:
    """The shipped snapshot of public plt / Axes / numpy / patches names, by group."""
    groups = {}
    for line in API_NAMES_FILE.read_text().splitlines():
        if line and not line.startswith("#"):
            group, names = line.split(": ", 1)
            groups[group] = tuple(names.split())
    return groups


def api_calls(rng: random.Random) -> str:
    """Lines calling random public API names, so the vocabulary covers calls the templates never make."""
    group, names = rng.choice(sorted(api_names().items()))
    args = ("", "x", "x, y", "0, 1", "'k'", "data, axis=0", "color='red'", "1.5", "[0, 1, 2]", "True")
    lines = [f"{rng.choice(('', 'out = ', 'y = '))}{API_PREFIX[group]}.{name}({rng.choice(args)})"
             for name in rng.sample(names, min(len(names), rng.randint(4, 12)))]  # fmt: skip
    return "\n".join(lines) + "\n"


def matplotlib_program(rng: random.Random) -> str:
    """One short, runnable matplotlib program drawn from a random family."""
    body = rng.choice(FAMILIES)(rng)
    head = _header(rng)
    if body[0].startswith("fig"):  # the family makes its own figure
        head = head[:-1]
    if any("add_patch" in line for line in body) and not any("patches" in line for line in head):
        head.insert(2, "from matplotlib.patches import Circle, Rectangle, Polygon")
    return "\n".join(head + body + ["plt.show()"]) + "\n"


def python_snippet(rng: random.Random) -> str:
    """A small generic Python function using keywords and builtins."""
    name = rng.choice(("add", "area", "norm", "mean", "scale", "count_items", "solve", "distance"))
    a, b = rng.sample(("a", "b", "x", "y", "n", "values", "points", "k"), 2)
    fn = rng.choice(BUILTINS)
    return (
        f"def {name}({a}, {b}):\n"
        f'    """Return the {name.replace("_", " ")} of {a} and {b}."""\n'
        f"    if {a} is None or not isinstance({b}, (int, float)):\n"
        f"        raise ValueError('bad input: ' + str({a}))\n"
        f"    result = {a} + {b}\n"
        f"    for i in range({rng.randint(1, 9)}):\n"
        f"        result = result * 2 if i % 2 == 0 else result - 1\n"
        f"    return {fn}([result]) if {rng.choice(('True', 'False'))} else result\n"
    )


def caption(rng: random.Random) -> str:
    """One caption-like English sentence about a figure."""
    return (
        rng.choice(WORDS)
        .format(
            c=rng.choice(COLORS).replace("tab:", ""),
            s=rng.choice(SHAPES),
            t=rng.choice(SUBJECTS),
            x=_num(rng),
            y=_num(rng),
            r=_num(rng, 1, 9),
            n=rng.randint(2, 12),
            l=rng.choice("ABCDEFPQ"),
        )
        .capitalize()
    )


def iter_corpus(seed: int = 0, n_programs: int = 3000) -> Iterator[str]:
    """Yields the corpus as documents (deterministic for ``(seed, n_programs)``).

    Args:
        seed: seed of the template sampler.
        n_programs: number of matplotlib programs; snippets and captions scale with it.
    """
    rng = random.Random(seed)
    yield " ".join(keyword.kwlist) + "\n" + " ".join(BUILTINS) + "\n"
    for i in range(n_programs):
        code = matplotlib_program(rng)
        cap = " ".join(caption(rng) for _ in range(rng.randint(1, 3)))
        # Half as a chat answer (prose + fenced block), half bare, as both appear in training data.
        yield f"{cap}\n\n```python\n{code}```\n" if i % 2 == 0 else code
        if i % 3 == 0:
            yield python_snippet(rng)
        if i % 2 == 1:
            yield api_calls(rng)


if __name__ == "__main__":
    for doc in iter_corpus(n_programs=6):
        print(doc)
