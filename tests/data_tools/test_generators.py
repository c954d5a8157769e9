"""Every family renders in the sandbox for several seeds; programs are deterministic, diverse and, for the
miniature families, short and canonical; template captions state only facts of the real trace."""

from __future__ import annotations

import ast
import itertools
import re

import pytest

from data_tools.captions import template_caption, verify_caption
from data_tools.dedup import code_hash, hamming, image_phash
from data_tools.filters import blank_reason
from data_tools.generators import FAMILIES, generate, resolve_families
from data_tools.generators.mini import SHAPE_COLORS

SEEDS = (0, 1, 2)


def test_fourteen_families_in_three_groups():
    assert len(FAMILIES) == 14
    assert resolve_families(["solid"]) == [
        "cube_net", "three_view", "cross_section", "cube_stacking",
        "combined_solid", "polyhedron", "spatial_curve", "surface_integral",
    ]  # fmt: skip
    assert resolve_families("mini") == ["shapes", "bars"]
    assert resolve_families(["shapes", "mini", "bars"]) == [
        "shapes",
        "bars",
    ]  # duplicates collapse, order kept
    with pytest.raises(KeyError, match="unknown family 'cubes'.*groups: all"):
        resolve_families(["cubes"])


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_deterministic_parseable_and_seed_dependent(family):
    programs = [generate(family, s) for s in range(12)]
    assert generate(family, 5) == programs[5]  # same seed, same program (code, params, subject)
    for p in programs:
        ast.parse(p.code)
        assert "random" not in p.code or "default_rng(0)" in p.code  # only a fixed-seed RNG inside programs
        assert p.subject and p.params
    assert len({code_hash(p.code) for p in programs}) >= 9, (
        "12 seeds should give (nearly) all distinct programs"
    )


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_renders_in_sandbox_with_a_true_caption(family, renderer):
    programs = [generate(family, s) for s in SEEDS]
    results = renderer.render_many([p.code for p in programs])
    hashes = []
    for prog, res in zip(programs, results, strict=True):
        assert res.status == "ok", f"{family} seed {prog.seed}: {res.status} {res.error} {res.stderr[-500:]}"
        assert blank_reason(res.png) is None
        assert res.trace.get("elements"), "the tracer saw no user-drawn element"
        caption = template_caption(res.trace, prog.subject)
        checked = verify_caption(caption, res.trace, prog.subject)
        assert checked.dropped == [], f"template sentences contradicted by the trace: {checked.dropped}"
        assert len(checked.kept) >= 3
        for text in res.trace.get("texts", [])[:12]:
            assert f'"{" ".join(text.split())}"' in caption  # every drawn text is quoted verbatim
        hashes.append(image_phash(res.png))
    assert min(hamming(a, b) for a, b in itertools.combinations(hashes, 2)) > 0, (
        "two seeds drew the same image"
    )


def test_shapes_captions_place_every_shape_where_the_params_say(renderer):
    for seed in SEEDS:
        prog = generate("shapes", seed)
        res = renderer.render(prog.code)
        caption = template_caption(res.trace, prog.subject)
        for shape in prog.params["shapes"]:
            noun = {"circle": "circle", "square": "rectangle", "triangle": "polygon"}[shape["kind"]]
            centre = f"({shape['col'] + 0.5:g}, {shape['row'] + 0.5:g})"
            colour = {"red": "red", "blue": "blue", "green": "green", "orange": "orange", "purple": "purple"}
            assert f"A {colour[shape['color']]} {noun} is centred at {centre}." in caption


@pytest.mark.parametrize("family", ["shapes", "bars"])
def test_miniature_families_are_short_and_canonical(family):
    programs = [generate(family, s) for s in range(300)]
    for p in programs:
        lines = p.code.strip().splitlines()
        assert len(p.code) < 400 and 4 <= len(lines) <= 12, p.code
        assert lines[:2] == ["import matplotlib.pyplot as plt", "fig, ax = plt.subplots(figsize=(2, 2))"]
    # one picture, one program: equal parameters <=> equal code
    by_params: dict[str, set[str]] = {}
    for p in programs:
        by_params.setdefault(repr(sorted(p.params.items())), set()).add(p.code)
    assert all(len(codes) == 1 for codes in by_params.values())
    assert len(by_params) == len({p.code for p in programs})


def test_shapes_choices_are_few():
    programs = [generate("shapes", s) for s in range(200)]
    colours = {c for p in programs for c in re.findall(r"color='(\w+)'", p.code)}
    assert colours <= set(SHAPE_COLORS)
    counts = {len(p.params["shapes"]) for p in programs}
    assert counts == {1, 2, 3}
