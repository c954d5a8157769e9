"""caption_grounded on the real trace of the reference code: facts, claims, ranking, monotonicity."""

from __future__ import annotations

import pytest

from codepercept_rl.rewards import RewardSample, compute_rewards, get_reward
from codepercept_rl.rewards.caption import caption_claims, colour_name, trace_facts
from reward_servers.pool import RewardPool
from tests.rewards.conftest import REF

TRUE = (
    "A bar chart titled 'Sales' with three blue bars of heights 3, 1 and 2 over the categories a, b and c; "
    "the text 'peak' is written at (0.5, 2.5)."
)


def _with_errors(k: int) -> str:
    """TRUE with its first k facts stated wrongly (count, colour, title, heights, label, coordinates)."""
    swaps = [("three", "five"), ("blue", "red"), ("'Sales'", "'Revenue'"), ("3, 1 and 2", "7, 4 and 9"),
             ("'peak'", "'valley'"), ("(0.5, 2.5)", "(4.5, 8.5)")]  # fmt: skip
    caption = TRUE
    for old, new in swaps[:k]:
        caption = caption.replace(old, new)
    return caption


@pytest.fixture(scope="module")
def trace(pool: RewardPool) -> dict:
    render = pool.render(REF)
    assert render.status == "ok"
    return render.trace


def test_trace_facts_of_the_reference(trace: dict) -> None:
    facts = trace_facts(trace)
    assert facts.texts == ["sales", "peak"]
    assert facts.counts == {"bar": 3}
    assert facts.colours == {"blue"}  # tab:blue is "blue", not the nearest pure colour
    assert facts.coords == [0.5, 2.5]


def test_claims_of_a_caption() -> None:
    claims = caption_claims(TRUE)
    assert claims.counts == [(3, "bar")]
    assert claims.colours == ["blue"]
    assert claims.quoted == ["sales", "peak"]
    assert claims.numbers == [3.0, 1.0, 2.0, 0.5, 2.5]
    assert (
        colour_name("#d62728") == "red" and colour_name("#7f7f7f") == "gray" and colour_name("nope") is None
    )


def test_true_caption_tops_and_errors_lower_it_monotonically(pool: RewardPool) -> None:
    captions = [_with_errors(k) for k in range(7)] + ["", "A figure."]
    samples = [RewardSample(c, task="caption", reference_code=REF) for c in captions]
    out = compute_rewards(get_reward("caption_grounded"), samples, pool)
    scores = [float(s) for s in out.scores]
    assert scores[0] == pytest.approx(1.0)
    assert all(a > b for a, b in zip(scores[:6], scores[1:7], strict=True)), scores
    assert scores[6] < 0.35
    assert scores[7] == 0.0  # empty caption
    assert scores[8] < 0.1  # says nothing checkable
    assert out.components["precision"][6] < 0.2


def test_hallucinated_extras_cost_precision_not_recall(pool: RewardPool) -> None:
    padded = TRUE + " Four green circles and a purple arrow sit at (9.5, 7.25)."
    out = compute_rewards(
        get_reward("caption_grounded"),
        [RewardSample(c, task="caption", reference_code=REF) for c in (TRUE, padded)],
        pool,
    )
    assert out.components["recall"][0] == out.components["recall"][1] == 1.0
    assert out.components["precision"][1] < out.components["precision"][0] - 0.2


def test_length_guard_and_reference_handling(pool: RewardPool, trace: dict) -> None:
    rambling = TRUE + " It is a chart." * 400
    samples = [
        RewardSample(rambling, task="caption", reference_trace=trace),  # precomputed trace: no render
        RewardSample(TRUE, task="caption", reference_code="raise SystemExit(3)\n"),
        RewardSample(TRUE, task="caption"),
        RewardSample(42, task="caption", reference_code=REF),
    ]
    out = compute_rewards(get_reward("caption_grounded"), samples, pool)
    assert out.components["length"][0] == 0.0
    assert out.statuses[1:] == ["no_reference", "no_reference", "bad_input"]
    assert out.scores[1:] == [None, None, None]
    assert "did not render" in out.errors[1]
