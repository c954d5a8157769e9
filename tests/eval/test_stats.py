"""Final = (Image + Code + Exec) / 3 on the paper's own numbers; bootstrap CIs; paired comparisons."""

from __future__ import annotations

import pytest

from codepercept_rl.eval.stats import compare, item_final, paper_final, summarize, summarize_items

# The paper's STEM2Code-Eval table (docs/paper.md): model -> (Image, Code, Exec %, Final).
PAPER_TABLE = {
    "Gemini2.5-Pro-Thinking": (68.89, 75.41, 91.7, 78.67),
    "GPT5-Thinking": (64.97, 64.98, 96.6, 75.52),
    "Qwen3-VL-4B-Instruct": (24.55, 26.42, 79.4, 43.46),
    "CodePercept-4B S1": (38.13, 43.43, 80.7, 54.09),
    "CodePercept-4B R1": (47.17, 45.86, 91.3, 61.44),
    "Qwen3-VL-8B-Instruct": (28.59, 28.23, 85.3, 47.37),
    "CodePercept-8B S1": (44.53, 46.78, 87.6, 59.64),
    "CodePercept-8B R1": (50.25, 47.04, 93.4, 63.56),
    "Qwen3-VL-32B-Instruct": (36.85, 39.98, 81.8, 52.88),
    "CodePercept-32B S1": (61.14, 56.99, 93.0, 70.38),
    "CodePercept-32B R1": (68.97, 62.53, 95.9, 75.80),
}


@pytest.mark.parametrize("model", list(PAPER_TABLE))
def test_final_reproduces_the_paper_table(model: str) -> None:
    image, code, exec_rate, final = PAPER_TABLE[model]
    # Inputs are rounded to 2 decimals (Exec to 1), Final to 2: agreement within that rounding (0.005 + 0.05/3).
    assert paper_final(image, code, exec_rate) == pytest.approx(final, abs=0.005 + 0.05 / 3)
    # Exec enters as a percentage, not a fraction (the released script's rate x 100).
    assert paper_final(image, code, exec_rate / 100) != pytest.approx(final, abs=1.0)


def rec(i: int, exec_: float, image: float, code: float | None, status: str = "ok", cat: str = "a") -> dict:
    return {
        "id": f"i{i}",
        "category": cat,
        "status": status,
        "scores": {"exec": exec_, "image": image, "code": code, "image_judge": None, "code_judge": None},
    }


def test_summary_means_finals_and_denominators() -> None:
    records = [
        rec(0, 100, 90, 80),
        rec(1, 100, 70, None),  # broken reference: left out of Code only
        rec(2, 0, 0, 0, status="no_code", cat="b"),
        {"id": "bad", "status": "bad_item", "category": "b", "scores": {}},
    ]
    s = summarize(records, n_boot=200, seed=1)
    o = s.overall
    assert (s.n_items, s.n_bad_items, o.n) == (4, 1, 3)
    assert o.scores["exec"] == pytest.approx(200 / 3)
    assert o.scores["image"] == pytest.approx(160 / 3)
    assert o.scores["code"] == pytest.approx(40.0)
    assert o.scores["final_det"] == pytest.approx((160 / 3 + 40 + 200 / 3) / 3)
    assert o.scores["final"] is None and o.defined["code"] == 2
    assert s.by_category["b"].scores["exec"] == 0.0 and s.by_category["a"].n == 2
    assert s.status_counts == {"ok": 2, "no_code": 1, "bad_item": 1} and s.reference_problems == 1


def test_bootstrap_is_seeded_and_covers_the_mean() -> None:
    records = [rec(i, 100.0 * (i % 3 != 0), 10.0 * (i % 10), 5.0 * (i % 7)) for i in range(60)]
    a = summarize_items(records, n_boot=500, seed=7)
    b = summarize_items(records, n_boot=500, seed=7)
    c = summarize_items(records, n_boot=500, seed=8)
    assert a.ci == b.ci and a.ci != c.ci
    for key in ("exec", "image", "code", "final_det"):
        lo, hi = a.ci[key]
        assert lo < a.scores[key] < hi
    # Percentile CI of a mean of 0/100 draws with p = 2/3 and n = 60: about +-12 points wide.
    lo, hi = a.ci["exec"]
    assert 15 < hi - lo < 35


def test_paired_compare_wins_ties_losses_and_ci() -> None:
    a = {f"i{i}": rec(i, 100, 60, 60) for i in range(20)}
    b = {f"i{i}": rec(i, 100, 60, 60) for i in range(20)}
    for i in range(5):  # B better on 5 items by 10 points of image: per-item Final +10/3
        b[f"i{i}"]["scores"]["image"] = 90
    b["i19"]["scores"].update(exec=0, image=0, code=0)  # one loss
    b["extra"] = rec(99, 100, 100, 100)
    cmp = compare(a, b, tie_margin=1.0, n_boot=500, seed=0)
    assert (cmp.n_common, cmp.only_b, cmp.wins, cmp.ties, cmp.losses) == (20, 1, 5, 14, 1)
    expected = (5 * 30 / 3 - (100 + 60 + 60) / 3) / 20
    assert cmp.mean_diff == pytest.approx(expected)
    lo, hi = cmp.ci
    assert lo <= expected <= hi
    assert item_final(b["i0"], judged=False) == pytest.approx((100 + 90 + 60) / 3)
