"""Issue 18: R1's reward must not charge less for omitting a drawn element than for adding a wrong one.

Real ``shapes`` programs (held-out generator seeds: build indices >= 900 of the quickstart's spec, never built by
the quickstart: its 600 items for S1 and the evaluation and 300 for R1's prompts), rendered in real sandboxes and scored by the real ``codepercept`` reward of the R1 recipe, as a
GRPO rollout is (registered target image, ``target_id`` + ``reference_code``). No mocks.

What holds per item, and why: the code term's trace F1s are 2M / (n_ref + n_pred). With k reference shapes,
omitting one gives 2(k-1)/(2k-1) and adding one 2k/(2k+1), so omission always costs more, by
1/(2k-1) - 1/(2k+1) > 0 per F1 (exact, geometry-free). Its recall-weighted element term (``element_f2``, β = 2)
gives 5(k-1)/(5k-1) and 5k/(5k+1), and (k-1)/k for a shape drawn right but in an empty cell, so that drawing a
shape in the wrong place never scores below leaving it out: the guess R1 must not learn to skip. The image
term's edge F1 follows the F1 formula for edge pixels, so it agrees on average (measured per item too, on 40
items from build index 900, min margin +0.022), but it depends on shape sizes, so only its mean is asserted.
``python benchmarks/reward_omission.py`` prints the full table.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.rewards import RewardSample, build_reward, compute_rewards, make_backend
from data_tools.build import BuildSpec, plan_item
from data_tools.generators import FAMILIES
from data_tools.generators.mini import GRID, SHAPE_COLORS, SHAPE_KINDS, shape_line

os.environ.setdefault("OMP_NUM_THREADS", "1")
RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "r1_tiny_cpu.yaml"
QUICKSTART_SPEC = BuildSpec(families=["shapes", "bars"], num=900, seed=0)  # --num 600 + --rl-num 300


def _programs() -> list:
    """The first held-out shapes programs per shape count 1, 2, 3 (two each)."""
    want, out, index = {1: 2, 2: 2, 3: 2}, [], QUICKSTART_SPEC.num
    while any(want.values()):
        family, seed, _ = plan_item(QUICKSTART_SPEC, index)
        index += 1
        if family == "shapes":
            prog = FAMILIES["shapes"].generate(seed)
            k = len(prog.params["shapes"])
            if want[k]:
                want[k] -= 1
                out.append(prog)
    return out


def _variants(prog) -> dict[str, str]:
    """full; omit: the middle shape statement deleted; extra: a shape of an unused kind (if any) and an unused
    colour in an empty cell, appended; moved: the middle shape, kind and colour kept, in that empty cell instead
    (statement edits on the generator's own code)."""
    lines = prog.code.splitlines(keepends=True)
    drawn = [i for i, line in enumerate(lines) if line.startswith("ax.add_patch")]
    shapes = prog.params["shapes"]
    assert len(drawn) == len(shapes)
    omit = "".join(line for i, line in enumerate(lines) if i != drawn[len(drawn) // 2])
    used = {(s["col"], s["row"]) for s in shapes}
    col, row = next((c, r) for r in range(GRID) for c in range(GRID) if (c, r) not in used)
    kind = next((k for k in SHAPE_KINDS if k not in {s["kind"] for s in shapes}), "circle")
    color = next(c for c in SHAPE_COLORS if c not in {s["color"] for s in shapes})
    line = shape_line(kind, col, row, color)
    middle = shapes[len(drawn) // 2]
    moved = "".join(
        shape_line(middle["kind"], col, row, middle["color"]) + "\n" if i == drawn[len(drawn) // 2] else line_
        for i, line_ in enumerate(lines)
    )
    return {"full": prog.code, "omit": omit, "extra": prog.code + line + "\n", "moved": moved}


@pytest.fixture(scope="module")
def scored() -> Iterator[list[dict[str, dict[str, float]]]]:
    cfg = load_config(RECIPE, ["reward.num_workers=1"], schema=JobConfig)
    reward, backend = build_reward(cfg.reward), make_backend(cfg.reward)
    try:
        progs = _programs()
        renders = [backend.render(p.code) for p in progs]
        assert all(r.status == "ok" and r.png for r in renders), [r.error for r in renders]
        backend.register_targets({f"omission/{p.seed}": r.png for p, r in zip(progs, renders, strict=True)})
        names = ("full", "omit", "extra", "moved")
        samples = [
            RewardSample(
                completion=f"```python\n{v[name]}```", target_id=f"omission/{p.seed}", reference_code=p.code
            )
            for p, v in ((p, _variants(p)) for p in progs)
            for name in names
        ]
        out = compute_rewards(reward, samples, backend)
    finally:
        backend.close()
    assert out.statuses == ["ok"] * len(samples), out.errors
    rows = []
    for i in range(len(progs)):
        row = {}
        for j, name in enumerate(names):
            k = len(names) * i + j
            comps = ("code", "image", "element_f2", "elements", "ref_elements", "elements_ratio")
            row[name] = {"total": out.scores[k], **{c: out.components[c][k] for c in comps}}
        row["shapes"] = len(progs[i].params["shapes"])
        rows.append(row)
    yield rows


def test_full_answer_scores_highest(scored) -> None:
    for row in scored:
        assert row["full"]["total"] == pytest.approx(4.0)
        assert row["full"]["total"] > max(row["omit"]["total"], row["extra"]["total"])


def test_omission_costs_at_least_a_wrong_addition_per_item(scored) -> None:
    for row in scored:
        drop_omit = row["full"]["total"] - row["omit"]["total"]
        drop_extra = row["full"]["total"] - row["extra"]["total"]
        assert drop_omit >= drop_extra, row
        assert row["omit"]["code"] < row["extra"]["code"], row  # exact by the F1 formula (module docstring)


def test_a_misplaced_shape_never_scores_below_leaving_it_out(scored) -> None:
    for row in scored:
        k = row["shapes"]
        assert row["omit"]["element_f2"] == pytest.approx(5 * (k - 1) / (5 * k - 1)), row
        assert row["extra"]["element_f2"] == pytest.approx(5 * k / (5 * k + 1)), row
        assert row["moved"]["element_f2"] == pytest.approx((k - 1) / k), row
        assert row["moved"]["code"] > row["omit"]["code"], row


def test_image_term_agrees_on_average(scored) -> None:
    omit = sum(r["full"]["image"] - r["omit"]["image"] for r in scored) / len(scored)
    extra = sum(r["full"]["image"] - r["extra"]["image"] for r in scored) / len(scored)
    assert omit >= extra > 0.0


def test_the_reward_reports_how_much_each_answer_drew_against_its_reference(scored) -> None:
    """The ``elements`` diagnostics (in no score): shapes drawn by the answer and by the reference."""
    for row in scored:
        k = row["shapes"]
        for name, drawn in (("full", k), ("omit", k - 1), ("extra", k + 1), ("moved", k)):
            assert row[name]["ref_elements"] == k and row[name]["elements"] == drawn, (name, row)
            assert row[name]["elements_ratio"] == pytest.approx(drawn / k)
