"""Solid-geometry families, the paper's eight: cube nets, three-view projections, cross-sections, cube
stacking, combined solids, polyhedra, spatial curves and surface integrals.

Each ``make_*`` draws every choice from the ``random.Random`` it is given and returns
``(code, params, subject)``; geometry (net cells, section polygons, polyhedron vertices) is computed here and
written into the program as literals, so the program itself is short, readable and deterministic.
"""

from __future__ import annotations

import math
import random
from typing import Any

from data_tools.generators.base import CMAPS, COLORS, HEADER_2D, HEADER_3D, LIGHT_COLORS, num, pts

# The 11 nets of a cube as (column, row) cells: six of type 1-4-1, three of type 2-3-1, one 2-2-2, one 3-3.
CUBE_NETS: list[list[tuple[int, int]]] = (
    [
        [(a, 2), (0, 1), (1, 1), (2, 1), (3, 1), (b, 0)]
        for a, b in ((0, 0), (0, 1), (0, 2), (0, 3), (1, 1), (1, 2))
    ]
    + [[(0, 2), (1, 2), (1, 1), (2, 1), (3, 1), (c, 0)] for c in (1, 2, 3)]
    + [
        [(0, 2), (1, 2), (1, 1), (2, 1), (2, 0), (3, 0)],
        [(0, 1), (1, 1), (2, 1), (2, 0), (3, 0), (4, 0)],
    ]
)


def _view(rng: random.Random) -> tuple[int, int]:
    return rng.choice((15, 20, 25, 30, 35)), rng.choice((-135, -120, -60, -45, -30, 30, 45, 60))


def _axes3d(lines: list[str], figsize: str = "(5, 5)") -> None:
    lines += [f"fig = plt.figure(figsize={figsize})", "ax = fig.add_subplot(projection='3d')"]


def make_cube_net(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """One of the 11 cube nets, rotated/flipped, faces labelled, one face shaded."""
    index = rng.randrange(len(CUBE_NETS))
    cells = CUBE_NETS[index]
    for _ in range(rng.randrange(4)):  # rotate by 90 degrees: (c, r) -> (r, -c), then shift back to >= 0
        cells = [(r, -c) for c, r in cells]
    if rng.random() < 0.5:
        cells = [(-c, r) for c, r in cells]
    c0, r0 = min(c for c, _ in cells), min(r for _, r in cells)
    cells = sorted((c - c0, r - r0) for c, r in cells)
    labels = rng.choice((list("ABCDEF"), list("123456"), ["1", "2", "3", "4", "5", "6"][::-1]))
    shaded = rng.randrange(6)
    fill, shade = rng.sample(LIGHT_COLORS, 2)
    width, height = max(c for c, _ in cells) + 1, max(r for _, r in cells) + 1
    code = HEADER_2D + (
        f"cells = {cells!r}\n"
        f"labels = {labels!r}\n"
        "fig, ax = plt.subplots(figsize=(5, 5))\n"
        "for i, ((c, r), name) in enumerate(zip(cells, labels)):\n"
        f"    color = '{shade}' if i == {shaded} else '{fill}'\n"
        "    ax.add_patch(plt.Rectangle((c, r), 1, 1, facecolor=color, edgecolor='black', linewidth=2))\n"
        "    ax.text(c + 0.5, r + 0.5, name, ha='center', va='center', fontsize=16)\n"
        f"ax.set_xlim(-0.5, {width + 0.5})\n"
        f"ax.set_ylim(-0.5, {height + 0.5})\n"
        "ax.set_aspect('equal')\n"
        "ax.axis('off')\n"
        "ax.set_title('Net of a cube')\n"
    )
    params = {"net_index": index, "cells": cells, "labels": labels, "shaded": shaded, "colors": [fill, shade]}
    return code, params, "a net of a cube made of six labelled squares"


def make_three_view(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A solid of unit cubes given by a height map, drawn as its front, side and top views."""
    rows, cols = rng.randint(2, 3), rng.randint(2, 3)
    heights = [[rng.randint(0, 3) for _ in range(cols)] for _ in range(rows)]
    if not any(map(any, heights)):
        heights[0][0] = 1
    color = rng.choice(LIGHT_COLORS)
    code = HEADER_2D + (
        f"heights = np.array({heights!r})  # rows: depth, columns: left to right\n"
        "front = heights.max(axis=0)\n"
        "side = heights.max(axis=1)\n"
        "fig, axes = plt.subplots(1, 3, figsize=(9, 3.4))\n"
        "for ax, title in zip(axes, ['Front view', 'Side view', 'Top view']):\n"
        "    ax.set_title(title)\n"
        "    ax.set_xlim(-0.5, 3.5)\n"
        "    ax.set_ylim(-0.5, 3.5)\n"
        "    ax.set_aspect('equal')\n"
        "    ax.axis('off')\n"
        "for x, h in enumerate(front):\n"
        "    for z in range(h):\n"
        f"        axes[0].add_patch(plt.Rectangle((x, z), 1, 1, facecolor='{color}', edgecolor='black'))\n"
        "for y, h in enumerate(side):\n"
        "    for z in range(h):\n"
        f"        axes[1].add_patch(plt.Rectangle((y, z), 1, 1, facecolor='{color}', edgecolor='black'))\n"
        "for y, x in zip(*np.nonzero(heights)):\n"
        f"    axes[2].add_patch(plt.Rectangle((x, y), 1, 1, facecolor='{color}', edgecolor='black'))\n"
    )
    return (
        code,
        {"heights": heights, "color": color},
        "the front, side and top views of a solid made of unit cubes",
    )


def _cross_section(kind: str, s: float, t: float) -> list[tuple[float, float, float]]:
    if kind == "square":
        return [(0, 0, t), (s, 0, t), (s, s, t), (0, s, t)]
    if kind == "triangle":
        return [(s - t, s, s), (s, s - t, s), (s, s, s - t)]
    if kind == "rectangle":
        return [(0, 0, 0), (s, s, 0), (s, s, s), (0, 0, s)]
    h = s / 2  # regular hexagon: the plane x + y + z = 1.5 s through six edge midpoints
    return [(s, h, 0), (h, s, 0), (0, s, h), (0, h, s), (h, 0, s), (s, 0, h)]


def make_cross_section(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A wireframe cube cut by a plane; the cross-section polygon is filled."""
    kind = rng.choice(("square", "triangle", "rectangle", "hexagon"))
    s = rng.choice((2, 3, 4))
    t = round(rng.uniform(0.3, 0.8) * s, 1)
    section = _cross_section(kind, s, t)
    color = rng.choice(COLORS)
    elev, azim = _view(rng)
    lines = HEADER_3D.splitlines() + [f"s = {s}"]
    _axes3d(lines)
    lines += [
        "corners = np.array([[x, y, z] for x in (0, s) for y in (0, s) for z in (0, s)])",
        "for a in corners:  # the 12 edges join corners that differ in exactly one coordinate",
        "    for b in corners:",
        "        if np.sum(a != b) == 1 and tuple(a) < tuple(b):",
        "            ax.plot(*zip(a, b), color='black', linewidth=1)",
        f"section = {pts(section)}",
        f"ax.add_collection3d(Poly3DCollection([section], facecolor='{color}', edgecolor='{color}', alpha=0.5))",
        "ax.set_box_aspect((1, 1, 1))",
        f"ax.view_init(elev={elev}, azim={azim})",
        "ax.set_axis_off()",
        f"ax.set_title('Cross-section of a cube: {kind}')",
    ]
    params = {"kind": kind, "side": s, "t": t, "section": section, "color": color, "view": [elev, azim]}
    return "\n".join(lines) + "\n", params, f"a cube cut by a plane with a {kind} cross-section"


def make_cube_stacking(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """Unit cubes stacked on a small grid (a height map), drawn in 3D."""
    rows, cols = rng.randint(2, 3), rng.randint(2, 4)
    heights = [[rng.randint(0, 3) for _ in range(cols)] for _ in range(rows)]
    heights[0][0] = max(heights[0][0], 1)
    total = sum(map(sum, heights))
    color = rng.choice(COLORS)
    elev, azim = _view(rng)
    lines = HEADER_2D.splitlines() + [f"heights = np.array({heights!r})"]
    _axes3d(lines)
    lines += [
        "for (y, x), h in np.ndenumerate(heights):",
        "    for z in range(h):",
        f"        ax.bar3d(x, y, z, 1, 1, 1, color='{color}', edgecolor='black', shade=True)",
        "ax.set_box_aspect((heights.shape[1], heights.shape[0], 3))",
        f"ax.view_init(elev={elev}, azim={azim})",
        "ax.set_axis_off()",
        f"ax.set_title('{total} unit cubes')",
    ]
    params = {"heights": heights, "total": total, "color": color, "view": [elev, azim]}
    return "\n".join(lines) + "\n", params, f"a stack of {total} unit cubes"


def make_combined_solid(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A cylinder or a square box with a cone, a hemisphere or a narrower cylinder on top, true to scale."""
    base = rng.choice(("cylinder", "box"))
    top = rng.choice(("cone", "hemisphere", "cylinder"))
    r, h, h2 = rng.choice((1, 1.5, 2)), rng.choice((1.5, 2, 3)), rng.choice((1, 1.5, 2))
    c1, c2 = rng.sample(COLORS, 2)
    elev, azim = _view(rng)
    total = h + (r if top == "hemisphere" else h2)
    lines = HEADER_2D.splitlines()
    _axes3d(lines)
    lines += [
        f"r, h = {r}, {h}  # radius (half-width for the box) and height of the base",
        "theta = np.linspace(0, 2 * np.pi, 48)",
    ]
    if base == "cylinder":
        lines += [
            "T, Z = np.meshgrid(theta, np.linspace(0, h, 2))",
            f"ax.plot_surface(r * np.cos(T), r * np.sin(T), Z, color='{c1}', alpha=0.8)",
        ]
    else:
        lines.append(f"ax.bar3d(-r, -r, 0, 2 * r, 2 * r, h, color='{c1}', alpha=0.5, edgecolor='black')")
    if top == "cone":
        lines += [
            "T, R = np.meshgrid(theta, np.linspace(0, r, 12))",
            f"ax.plot_surface(R * np.cos(T), R * np.sin(T), h + {h2} * (1 - R / r), color='{c2}', alpha=0.8)",
        ]
    elif top == "hemisphere":
        lines += [
            "T, P = np.meshgrid(theta, np.linspace(0, np.pi / 2, 12))",
            "x, y, z = r * np.cos(T) * np.cos(P), r * np.sin(T) * np.cos(P), h + r * np.sin(P)",
            f"ax.plot_surface(x, y, z, color='{c2}', alpha=0.8)",
        ]
    else:
        lines += [
            f"T, Z = np.meshgrid(theta, np.linspace(h, h + {h2}, 2))",
            f"ax.plot_surface(0.5 * r * np.cos(T), 0.5 * r * np.sin(T), Z, color='{c2}', alpha=0.8)",
        ]
    lines += [
        "ax.set_xlim(-r, r)",
        "ax.set_ylim(-r, r)",
        f"ax.set_zlim(0, {num(total)})",
        f"ax.set_box_aspect((2 * r, 2 * r, {num(total)}))  # true proportions",
        f"ax.view_init(elev={elev}, azim={azim})",
        "ax.set_axis_off()",
        f"ax.set_title('{base.capitalize()} with a {top} on top')",
    ]
    params = {"base": base, "top": top, "radius": r, "height": h, "top_height": h2, "colors": [c1, c2]}
    params["view"] = [elev, azim]
    article = "a square box" if base == "box" else "a cylinder"
    return "\n".join(lines) + "\n", params, f"{article} with a {top} on top"


def _polyhedron(kind: str, n: int) -> tuple[list[tuple[float, float, float]], list[list[int]]]:
    if kind == "tetrahedron":
        return [(1, 1, 1), (1, -1, -1), (-1, 1, -1), (-1, -1, 1)], [
            [0, 1, 2],
            [0, 1, 3],
            [0, 2, 3],
            [1, 2, 3],
        ]
    if kind == "octahedron":
        v = [(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)]
        return v, [[a, b, c] for a in (0, 1) for b in (2, 3) for c in (4, 5)]
    ring = [(math.cos(2 * math.pi * i / n), math.sin(2 * math.pi * i / n)) for i in range(n)]
    if kind == "pyramid":
        v = [(x, y, 0.0) for x, y in ring] + [(0.0, 0.0, 1.5)]
        return v, [list(range(n))] + [[i, (i + 1) % n, n] for i in range(n)]
    v = [(x, y, 0.0) for x, y in ring] + [(x, y, 1.5) for x, y in ring]  # prism
    sides = [[i, (i + 1) % n, n + (i + 1) % n, n + i] for i in range(n)]
    return v, [list(range(n)), list(range(n, 2 * n))] + sides


def make_polyhedron(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A tetrahedron, octahedron, n-gonal pyramid or n-gonal prism with labelled vertices."""
    kind = rng.choice(("tetrahedron", "octahedron", "pyramid", "prism"))
    n = rng.randint(3, 6) if kind in ("pyramid", "prism") else 0
    verts, faces = _polyhedron(kind, n)
    color = rng.choice(LIGHT_COLORS)
    alpha = rng.choice((0.3, 0.5, 0.7))
    elev, azim = _view(rng)
    names = [chr(ord("A") + i) for i in range(len(verts))]
    lines = HEADER_3D.splitlines() + [f"verts = {pts(verts, 3)}", f"faces = {faces!r}"]
    _axes3d(lines)
    lines += [
        "polys = [[verts[i] for i in face] for face in faces]",
        f"ax.add_collection3d(Poly3DCollection(polys, facecolor='{color}', edgecolor='black', alpha={alpha}))",
        f"for name, (x, y, z) in zip({''.join(names)!r}, verts):",
        "    ax.text(x * 1.12, y * 1.12, z + 0.08, name, fontsize=12)",
        "ax.set_xlim(-1.2, 1.2)",
        "ax.set_ylim(-1.2, 1.2)",
        "ax.set_zlim(-1.2, 1.6)",
        "ax.set_box_aspect((1, 1, 1.17))",
        f"ax.view_init(elev={elev}, azim={azim})",
        "ax.set_axis_off()",
    ]
    label = {"pyramid": f"{n}-gonal pyramid", "prism": f"{n}-gonal prism"}.get(kind, kind)
    article = "an" if label[0] in "aeio" else "a"
    params = {
        "kind": kind,
        "n": n,
        "n_vertices": len(verts),
        "n_faces": len(faces),
        "color": color,
        "alpha": alpha,
    }
    params["view"] = [elev, azim]
    return "\n".join(lines) + "\n", params, f"{article} {label} with {len(verts)} labelled vertices"


_CURVES = {
    "helix": ("{a} * np.cos(t)", "{a} * np.sin(t)", "{b} * t", (0, "{turns} * 2 * np.pi")),
    "conical helix": ("t * np.cos({a} * t)", "t * np.sin({a} * t)", "{b} * t", (0, "{turns} * 2")),
    "torus knot": (
        "(2 + np.cos({q} * t)) * np.cos({p} * t)",
        "(2 + np.cos({q} * t)) * np.sin({p} * t)",
        "np.sin({q} * t)",
        (0, "2 * np.pi"),
    ),
    "Viviani curve": (
        "{a} * (1 + np.cos(t))",
        "{a} * np.sin(t)",
        "2 * {a} * np.sin(t / 2)",
        (0, "4 * np.pi"),
    ),
}


def make_spatial_curve(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A parametric space curve (helix, conical helix, torus knot, Viviani's curve) with its start marked."""
    kind = rng.choice(sorted(_CURVES))
    p, q = rng.choice(((2, 3), (3, 2), (2, 5), (3, 4)))
    values = {"a": rng.choice((1, 1.5, 2)), "b": rng.choice((0.2, 0.3, 0.5)), "turns": rng.randint(2, 4)}
    values.update(p=p, q=q)
    fx, fy, fz, (t0, t1) = (s.format(**values) if isinstance(s, str) else s for s in _CURVES[kind])
    t1 = t1.format(**values)
    color = rng.choice(COLORS)
    elev, azim = _view(rng)
    lines = HEADER_2D.splitlines()
    _axes3d(lines)
    lines += [
        f"t = np.linspace({t0}, {t1}, 400)",
        f"x, y, z = {fx}, {fy}, {fz}",
        f"ax.plot(x, y, z, color='{color}', linewidth=2, label='{kind}')",
        "ax.scatter(x[0], y[0], z[0], color='black', s=30)",
        "ax.set_xlabel('x')",
        "ax.set_ylabel('y')",
        "ax.set_zlabel('z')",
        "ax.legend()",
        f"ax.view_init(elev={elev}, azim={azim})",
    ]
    params = {"kind": kind, **values, "color": color, "view": [elev, azim]}
    return "\n".join(lines) + "\n", params, f"a {kind} in three dimensions"


_SURFACES = [
    ("x**2 + y**2", "z = x^2 + y^2"),
    ("4 - x**2 - y**2", "z = 4 - x^2 - y^2"),
    ("np.sin(x) * np.cos(y)", r"z = \sin x \cos y"),
    ("x * y", "z = xy"),
    ("np.exp(-(x**2 + y**2))", "z = e^{-(x^2 + y^2)}"),
    ("x + 2 * y + 1", "z = x + 2y + 1"),
]


def make_surface_integral(rng: random.Random) -> tuple[str, dict[str, Any], str]:
    """A surface z = f(x, y) over a rectangle, its domain outlined in the xy-plane, titled with the integral."""
    expr, tex = rng.choice(_SURFACES)
    a, b = rng.choice((1, 1.5, 2)), rng.choice((1, 1.5, 2))
    cmap = rng.choice(CMAPS)
    elev, azim = _view(rng)
    lines = HEADER_2D.splitlines()
    _axes3d(lines, "(6, 5)")
    lines += [
        f"x, y = np.meshgrid(np.linspace(-{a}, {a}, 40), np.linspace(-{b}, {b}, 40))",
        f"z = {expr}",
        f"ax.plot_surface(x, y, z, cmap='{cmap}', alpha=0.9)",
        f"ax.plot([-{a}, {a}, {a}, -{a}, -{a}], [-{b}, -{b}, {b}, {b}, -{b}], 0, color='black', linestyle='--')",
        "ax.set_xlabel('x')",
        "ax.set_ylabel('y')",
        "ax.set_zlabel('z')",
        f"ax.set_title(r'$\\iint_S dS,\\ S: {tex},\\ |x| \\leq {a},\\ |y| \\leq {b}$')",
        f"ax.view_init(elev={elev}, azim={azim})",
    ]
    params = {"f": expr, "a": a, "b": b, "cmap": cmap, "view": [elev, azim]}
    return "\n".join(lines) + "\n", params, "a surface over a rectangular domain for a surface integral"
