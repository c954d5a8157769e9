"""Plane STEM families: annotated function plots, plane geometry, statistical charts and physics diagrams.

As in ``solid.py``, each ``make_*`` takes a ``random.Random`` and returns ``(code, params, subject)``; any
number shown in the picture (a coordinate, an angle, a percentage) is computed here and written as a literal.
"""

from __future__ import annotations

import math
import random
from typing import Any

from data_tools.generators.base import COLORS, HEADER_2D, LIGHT_COLORS, num, pick, pts

# (numpy expression, mathtext label, python function of (x, a, b), x-range). In expressions {A}/{B} are the
# coefficients a/b as "2 * " (or "" when 1); in labels {a}/{b} are "2" (or ""); {c} is b as a constant.
_FUNCTIONS = [
    ("{A}np.sin({B}x)", r"$y = {a}\sin({b}x)$", lambda x, a, b: a * math.sin(b * x), (-3, 3)),
    ("{A}x**2 - {c}", r"$y = {a}x^2 - {c}$", lambda x, a, b: a * x * x - b, (-3, 3)),
    ("{A}np.exp({B}x / 4)", r"$y = {a}e^{{{b}x/4}}$", lambda x, a, b: a * math.exp(b * x / 4), (-3, 3)),
    ("{A}x**3 - {B}x", r"$y = {a}x^3 - {b}x$", lambda x, a, b: a * x**3 - b * x, (-2, 2)),
    ("{A}np.cos({B}x)", r"$y = {a}\cos({b}x)$", lambda x, a, b: a * math.cos(b * x), (-3, 3)),
]


def _coefficients(a: float, b: float) -> dict[str, str]:
    """Format fields for _FUNCTIONS: a coefficient of 1 is left out ("x", not "1 * x")."""
    return {
        "A": "" if a == 1 else f"{num(a)} * ",
        "B": "" if b == 1 else f"{num(b)} * ",
        "a": "" if a == 1 else num(a),
        "b": "" if b == 1 else num(b),
        "c": num(b),
    }


def make_function_plot(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """One or two functions with a legend, axis labels, and one annotated point."""
    chosen = pick(rng, range(len(_FUNCTIONS)), rng.randint(1, 2))
    x0, x1 = max(_FUNCTIONS[i][3][0] for i in chosen), min(_FUNCTIONS[i][3][1] for i in chosen)
    colors = pick(rng, COLORS, len(chosen))
    lines = HEADER_2D.splitlines() + [
        f"x = np.linspace({x0}, {x1}, 300)",
        "fig, ax = plt.subplots(figsize=(6, 4))",
    ]
    funcs = []
    for i, color in zip(chosen, colors, strict=True):
        expr, label, fn, _ = _FUNCTIONS[i]
        a, b = rng.choice((0.5, 1, 2)), rng.choice((1, 2, 3))
        fields = _coefficients(a, b)
        code_expr = expr.format(**fields)
        lines.append(f"ax.plot(x, {code_expr}, color='{color}', label=r'{label.format(**fields)}')")
        funcs.append({"expr": code_expr, "a": a, "b": b, "fn": fn})
    px = rng.choice([v / 2 for v in range(2 * x0 + 1, 2 * x1)])
    py = round(funcs[0]["fn"](px, funcs[0]["a"], funcs[0]["b"]), 2)
    point = f"P({num(px)}, {num(py)})"
    lines += [
        f"ax.plot({num(px)}, {num(py)}, 'ko')",
        f"ax.annotate('{point}', xy=({num(px)}, {num(py)}), xytext=(10, 10), textcoords='offset points')",
        "ax.axhline(0, color='gray', linewidth=0.8)",
        "ax.axvline(0, color='gray', linewidth=0.8)",
        "ax.set_xlabel('x')",
        "ax.set_ylabel('y')",
        "ax.legend()",
        "ax.grid(alpha=0.3)",
    ]
    params = {
        "functions": [f["expr"] for f in funcs],
        "colors": colors,
        "point": [px, py],
        "x_range": [x0, x1],
    }
    n = len(funcs)
    return "\n".join(lines) + "\n", params, f"a plot of {n} function{'s' * (n > 1)} with an annotated point"


def _angle_deg(p: tuple[float, float], q: tuple[float, float], r: tuple[float, float]) -> float:
    """Angle at ``p`` between rays p->q and p->r, in degrees."""
    a1 = math.atan2(q[1] - p[1], q[0] - p[0])
    a2 = math.atan2(r[1] - p[1], r[0] - p[0])
    return math.degrees((a2 - a1) % (2 * math.pi))


def make_plane_geometry(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A labelled triangle with an angle mark, optionally with its circumcircle; or a regular polygon in a circle."""
    kind = rng.choice(("triangle", "triangle", "inscribed polygon"))
    color = rng.choice(COLORS)
    lines = HEADER_2D.splitlines() + ["fig, ax = plt.subplots(figsize=(5, 5))"]
    if kind == "inscribed polygon":
        n = rng.randint(3, 8)
        r = rng.choice((2, 3))
        start = rng.choice((0, 15, 30, 45, 90))
        verts = [
            (r * math.cos(math.radians(start + 360 * i / n)), r * math.sin(math.radians(start + 360 * i / n)))
            for i in range(n)
        ]
        names = "".join(chr(ord("A") + i) for i in range(n))
        lines += [
            f"ax.add_patch(plt.Circle((0, 0), {r}, fill=False, color='black'))",
            f"verts = {pts(verts, 3)}",
            f"ax.add_patch(plt.Polygon(verts, fill=False, edgecolor='{color}', linewidth=2))",
            f"for name, (x, y) in zip('{names}', verts):",
            "    ax.text(1.12 * x, 1.12 * y, name, ha='center', va='center', fontsize=13)",
            "ax.plot(0, 0, 'ko')",
            "ax.text(0.1, 0.1, 'O', fontsize=13)",
            f"ax.set_xlim(-{r + 1}, {r + 1})",
            f"ax.set_ylim(-{r + 1}, {r + 1})",
        ]
        params = {"kind": kind, "n": n, "radius": r, "start_deg": start, "color": color}
        subject = f"a regular polygon with {n} vertices inscribed in a circle with centre O"
    else:
        while True:  # rejection-sample a triangle whose angles are all >= 25 degrees (readable marks)
            p = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(3)]
            area2 = (p[1][0] - p[0][0]) * (p[2][1] - p[0][1]) - (p[2][0] - p[0][0]) * (p[1][1] - p[0][1])
            if area2 > 0:
                angles = [_angle_deg(p[i], p[(i + 1) % 3], p[(i + 2) % 3]) for i in range(3)]
                if min(angles) >= 25:
                    break
        a, b, c = p
        start = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
        angle = angles[0]
        circum = rng.random() < 0.5
        lines += [
            f"A, B, C = {a}, {b}, {c}",
            f"ax.add_patch(plt.Polygon([A, B, C], fill=False, edgecolor='{color}', linewidth=2))",
            "for name, (x, y) in zip('ABC', [A, B, C]):",
            "    ax.plot(x, y, 'ko')",
            "    ax.text(x + 0.15, y + 0.15, name, fontsize=14)",
            f"ax.add_patch(matplotlib.patches.Arc(A, 1.2, 1.2, theta1={num(start, 1)}, theta2={num(start + angle, 1)}))",
            f"ax.text(A[0] + 0.8 * np.cos(np.radians({num(start + angle / 2, 1)})), A[1] + 0.8 * np.sin(np.radians({num(start + angle / 2, 1)})), '{round(angle)}°', fontsize=11)",
        ]
        lines.insert(0, "import matplotlib")
        if circum:
            (ax_, ay), (bx, by), (cx, cy) = a, b, c
            d = 2 * (ax_ * (by - cy) + bx * (cy - ay) + cx * (ay - by))
            ux = (
                (ax_**2 + ay**2) * (by - cy) + (bx**2 + by**2) * (cy - ay) + (cx**2 + cy**2) * (ay - by)
            ) / d
            uy = (
                (ax_**2 + ay**2) * (cx - bx) + (bx**2 + by**2) * (ax_ - cx) + (cx**2 + cy**2) * (bx - ax_)
            ) / d
            rad = math.hypot(ax_ - ux, ay - uy)
            lines.append(
                f"ax.add_patch(plt.Circle(({num(ux, 3)}, {num(uy, 3)}), {num(rad, 3)}, fill=False, color='gray', linestyle='--'))"
            )
        lines += ["ax.autoscale_view()", "ax.margins(0.15)"]
        params = {
            "kind": kind,
            "vertices": [a, b, c],
            "angle_A": round(angle),
            "circumcircle": circum,
            "color": color,
        }
        subject = "a triangle ABC with the angle at A marked" + (
            " and its circumscribed circle" if circum else ""
        )
    lines += ["ax.set_aspect('equal')", "ax.axis('off')"]
    return "\n".join(lines) + "\n", params, subject


_CATEGORIES = [
    ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat"],
    ["Q1", "Q2", "Q3", "Q4"],
    ["North", "South", "East", "West"],
    ["Apples", "Pears", "Plums", "Grapes", "Kiwis"],
    ["2019", "2020", "2021", "2022", "2023"],
]
_SERIES = ["Group A", "Group B", "Group C"]
_TITLES = ["Sales", "Rainfall (mm)", "Visitors", "Survey results", "Energy use (kWh)"]


def make_stat_chart(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A bar, line, pie or scatter chart with a title, labels and (for several series) a legend."""
    kind = rng.choice(("bar", "line", "pie", "scatter"))
    cats = rng.choice(_CATEGORIES)
    title = rng.choice(_TITLES)
    lines = HEADER_2D.splitlines() + ["fig, ax = plt.subplots(figsize=(6, 4))"]
    params: dict[str, Any] = {"kind": kind, "title": title}
    if kind == "pie":
        values = [rng.randint(5, 40) for _ in cats]
        colors = pick(rng, LIGHT_COLORS, len(cats))
        lines += [
            f"values = {values!r}",
            f"ax.pie(values, labels={cats!r}, colors={colors!r}, autopct='%1.0f%%', startangle=90)",
            "ax.set_aspect('equal')",
        ]
        params.update(categories=cats, values=values, colors=colors)
    elif kind == "scatter":
        k = rng.randint(1, 3)
        colors = pick(rng, COLORS, k)
        lines.append("rng = np.random.default_rng(0)  # fixed seed: the same points every run")
        centres = []
        for name, color in zip(_SERIES[:k], colors, strict=True):
            cx, cy = rng.randint(0, 10), rng.randint(0, 10)
            centres.append([cx, cy])
            lines.append(
                f"ax.scatter({cx} + rng.normal(size=20), {cy} + rng.normal(size=20), color='{color}', label='{name}')"
            )
        lines += ["ax.set_xlabel('x')", "ax.set_ylabel('y')", "ax.legend()"]
        params.update(series=_SERIES[:k], centres=centres, colors=colors)
    else:
        k = rng.randint(1, 3)
        series = {name: [rng.randint(1, 20) for _ in cats] for name in _SERIES[:k]}
        colors = pick(rng, COLORS, k)
        lines.append(f"labels = {cats!r}")
        if kind == "bar":
            width = num(0.8 / k, 3)
            lines.append("x = np.arange(len(labels))")
            for j, ((name, vals), color) in enumerate(zip(series.items(), colors, strict=True)):
                offset = num((j - (k - 1) / 2) * 0.8 / k, 3)
                lines.append(f"ax.bar(x + {offset}, {vals!r}, {width}, color='{color}', label='{name}')")
            lines.append("ax.set_xticks(x, labels)")
        else:
            for (name, vals), color in zip(series.items(), colors, strict=True):
                lines.append(f"ax.plot(labels, {vals!r}, marker='o', color='{color}', label='{name}')")
        lines += ["ax.set_ylabel('Value')", "ax.legend()"]
        params.update(categories=cats, series=series, colors=colors)
    lines.append(f"ax.set_title('{title}')")
    return "\n".join(lines) + "\n", params, f"a {kind} chart titled '{title}'"


def make_physics(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A block on an incline with force arrows, a series circuit, or a convex lens forming an image."""
    kind = rng.choice(("incline", "circuit", "lens"))
    if kind == "lens":
        return _lens(rng)
    lines = HEADER_2D.splitlines()
    if kind == "incline":
        theta = rng.choice((20, 25, 30, 35, 40))
        mass = rng.choice((1, 2, 5, 10))
        friction = rng.random() < 0.5
        t = math.radians(theta)
        base = 6
        top = base * math.tan(t)
        cx, cy = 3 * math.cos(t) - 0.5 * math.sin(t), 3 * math.sin(t) + 0.5 * math.cos(t)  # block centre
        lines += [
            "fig, ax = plt.subplots(figsize=(6, 4.5))",
            f"ax.add_patch(plt.Polygon([(0, 0), ({base}, 0), ({base}, {num(top)})], facecolor='lightgray', edgecolor='black'))",
            f"ax.add_patch(plt.Rectangle(({num(cx - 0.5 * math.cos(t) + 0.5 * math.sin(t))}, {num(cy - 0.5 * math.sin(t) - 0.5 * math.cos(t))}), 1, 1, angle={theta}, facecolor='tab:blue', edgecolor='black'))",
            f"c = ({num(cx)}, {num(cy)})  # centre of the block",
            f"arrows = {{'mg': (0, -1.8), 'N': ({num(-1.5 * math.sin(t))}, {num(1.5 * math.cos(t))})"
            + (f", 'f': ({num(-1.3 * math.cos(t))}, {num(-1.3 * math.sin(t))})" if friction else "")
            + "}",
            "for name, (dx, dy) in arrows.items():",
            "    ax.annotate('', xy=(c[0] + dx, c[1] + dy), xytext=c, arrowprops=dict(arrowstyle='->', color='red', lw=2))",
            "    ax.text(c[0] + 1.15 * dx, c[1] + 1.15 * dy, name, color='red', fontsize=13, ha='center')",
            f"ax.text(1.3, 0.15, '{theta}°', fontsize=12)",
            f"ax.set_title('Block of {mass} kg on a {theta}° incline')",
            f"ax.set_xlim(-1, {base + 1})",
            f"ax.set_ylim(-2, {num(top + 2)})",
            "ax.set_aspect('equal')",
            "ax.axis('off')",
        ]
        params = {"kind": kind, "theta": theta, "mass": mass, "friction": friction}
        subject = f"a block on an incline of {theta}° with force arrows"
    else:
        n = rng.randint(2, 4)
        ohms = [rng.choice((2, 4, 5, 10, 20)) for _ in range(n)]
        volts = rng.choice((6, 9, 12, 24))
        lines += [
            "fig, ax = plt.subplots(figsize=(7, 4))",
            f"resistors = {ohms!r}  # ohms, drawn left to right along the top wire",
            f"width = {2 * n + 2}",
            "ax.plot([0, 0, width, width, 0], [0, 3, 3, 0, 0], color='black', zorder=1)",
            "for i, r in enumerate(resistors):",
            "    x = 1.5 + 2 * i",
            "    ax.add_patch(plt.Rectangle((x, 2.75), 1, 0.5, facecolor='white', edgecolor='black', zorder=2))",
            "    ax.text(x + 0.5, 3.5, f'R{i + 1} = {r} Ω', ha='center', fontsize=11)",
            "ax.plot([width / 2 - 0.1, width / 2 - 0.1], [-0.5, 0.5], color='black', lw=3, zorder=2)",
            "ax.plot([width / 2 + 0.1, width / 2 + 0.1], [-0.25, 0.25], color='black', lw=3, zorder=2)",
            "ax.add_patch(plt.Rectangle((width / 2 - 0.08, -0.6), 0.16, 1.2, color='white', zorder=1.5))",
            f"ax.text(width / 2, -1.1, '{volts} V', ha='center', fontsize=12)",
            f"ax.set_title('Series circuit: total resistance {sum(ohms)} Ω')",
            "ax.set_xlim(-1, width + 1)",
            "ax.set_ylim(-2, 4.5)",
            "ax.set_aspect('equal')",
            "ax.axis('off')",
        ]
        params = {"kind": kind, "resistors": ohms, "volts": volts, "total_ohms": sum(ohms)}
        subject = f"a series circuit of a {volts} V battery and {n} resistors"
    return "\n".join(lines) + "\n", params, subject


def _lens(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A thin convex lens: object arrow, two principal rays, and the real image from 1/u + 1/v = 1/f."""
    f = rng.choice((2, 3))
    u = f * rng.choice((1.5, 2, 2.5, 3))  # object distance, beyond the focal point: a real, inverted image
    v = u * f / (u - f)
    ho = rng.choice((1, 1.5, 2))
    hi = -ho * v / u
    lines = HEADER_2D.splitlines() + [
        "import matplotlib",
        "fig, ax = plt.subplots(figsize=(8, 4))",
        f"f, u, v = {num(f)}, {num(u)}, {num(v)}  # focal length, object and image distances (1/u + 1/v = 1/f)",
        f"ho, hi = {num(ho)}, {num(hi)}  # object and image heights",
        "ax.axhline(0, color='black', linewidth=0.8)",
        "ax.add_patch(matplotlib.patches.Ellipse((0, 0), 0.4, 2 * max(ho, -hi) + 1, facecolor='lightblue', edgecolor='blue'))",
        "ax.annotate('', xy=(-u, ho), xytext=(-u, 0), arrowprops=dict(arrowstyle='->', color='green', lw=2))",
        "ax.annotate('', xy=(v, hi), xytext=(v, 0), arrowprops=dict(arrowstyle='->', color='red', lw=2))",
        "ax.plot([-u, 0, v], [ho, ho, hi], color='orange')  # parallel ray, refracted through F",
        "ax.plot([-u, v], [ho, hi], color='orange')  # ray through the optical centre",
        "for x in (-f, f):",
        "    ax.plot(x, 0, 'ko')",
        "    ax.text(x, -0.5, 'F', ha='center', fontsize=12)",
        "ax.text(-u, ho + 0.3, 'object', ha='center')",
        "ax.text(v, hi - 0.5, 'image', ha='center')",
        f"ax.set_title('Convex lens: f = {num(f)}, object distance {num(u)}, image distance {num(v)}')",
        "ax.set_xlim(-u - 1, v + 1)",
        "ax.axis('off')",
    ]
    params = {"kind": "lens", "focal_length": f, "object_distance": u, "image_distance": round(v, 2)}
    params["object_height"], params["image_height"] = ho, round(hi, 2)
    return "\n".join(lines) + "\n", params, "a convex lens forming a real, inverted image of an arrow"
