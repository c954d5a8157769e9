"""Parametric program families: ``FAMILIES[name].generate(seed) -> Program`` (code + params + subject).

Run ``python -m data_tools.generators shapes 3`` to print the program of family ``shapes`` for seed 3.
Families only emit code; rendering goes through the sandbox (``data_tools.render``).
"""

from __future__ import annotations

from data_tools.generators import mini, plane, solid
from data_tools.generators.base import Family, Program

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in [
        Family(
            "cube_net", "solid", solid.make_cube_net, "nets of a cube (the 11 nets, rotated, labelled faces)"
        ),
        Family("three_view", "solid", solid.make_three_view, "front/side/top views of a unit-cube solid"),
        Family("cross_section", "solid", solid.make_cross_section, "a cube cut by a plane, section filled"),
        Family("cube_stacking", "solid", solid.make_cube_stacking, "unit cubes stacked on a grid, in 3D"),
        Family("combined_solid", "solid", solid.make_combined_solid, "a cylinder topped by another solid"),
        Family("polyhedron", "solid", solid.make_polyhedron, "polyhedra with labelled vertices"),
        Family("spatial_curve", "solid", solid.make_spatial_curve, "parametric space curves"),
        Family(
            "surface_integral",
            "solid",
            solid.make_surface_integral,
            "a surface over a domain, integral title",
        ),
        Family("function_plot", "plane", plane.make_function_plot, "function plots with an annotated point"),
        Family(
            "plane_geometry", "plane", plane.make_plane_geometry, "triangles/polygons, labels, angle marks"
        ),
        Family("stat_chart", "plane", plane.make_stat_chart, "bar/line/pie/scatter charts with legends"),
        Family("physics", "plane", plane.make_physics, "forces on an incline or a series circuit"),
        Family("shapes", "mini", mini.make_shapes, "1-3 coloured shapes on a 3x3 grid (miniature pipeline)"),
        Family("bars", "mini", mini.make_bars, "2-5 bars, values 1-5 (miniature pipeline)"),
    ]
}
GROUPS = {"solid", "plane", "mini"}
# Bump whenever a family's output for a given seed changes: builds record it, so a resumed build never mixes
# programs of two generator versions.
GENERATORS_VERSION = 1


def resolve_families(names: list[str] | str) -> list[str]:
    """Expand family names and group names ("solid", "plane", "mini", "all") into family names, in order.

    Raises:
        KeyError: a name is neither a family nor a group; the message lists the valid names.
    """
    if isinstance(names, str):
        names = [n for n in names.split(",") if n]
    out: list[str] = []
    for name in names:
        if name == "all":
            found = list(FAMILIES)
        elif name in GROUPS:
            found = [f.name for f in FAMILIES.values() if f.group == name]
        elif name in FAMILIES:
            found = [name]
        else:
            raise KeyError(
                f"unknown family {name!r}; families: {', '.join(FAMILIES)}; groups: all, {', '.join(sorted(GROUPS))}"
            )
        out += [f for f in found if f not in out]
    if not out:
        raise KeyError("no family given")
    return out


def generate(family: str, seed: int) -> Program:
    """The program of ``family`` for ``seed`` (raises KeyError for an unknown family)."""
    return FAMILIES[resolve_families([family])[0]].generate(seed)


__all__ = ["FAMILIES", "GENERATORS_VERSION", "GROUPS", "Family", "Program", "generate", "resolve_families"]
