"""Built-in rewards on real sandbox renders: ranking, monotonicity, bad input, weights."""

from __future__ import annotations

import pytest

from codepercept_rl.rewards import RewardSample, compute_rewards, get_reward
from reward_servers.pool import RewardPool
from tests.rewards.conftest import BLANK, REF, WRONG, fence, moved_label

# (reward, best possible score of a perfect reproduction). rlrf's length term is 0.75 at L_pred = L_gt
# (1 - (1/2)^2), so its perfect score is (1 + 1 + 0.75) / 3.
RENDER_REWARDS = [("render_similarity", 1.0), ("rlrf", 2.75 / 3), ("codepercept", 4.0)]


def _scores(name: str, codes: list[str], pool: RewardPool, **kw: object) -> list[float]:
    samples = [RewardSample(fence(c), target_id="ref", reference_code=REF) for c in codes]
    out = compute_rewards(get_reward(name, **kw), samples, pool)
    assert out.statuses == ["ok"] * len(codes), out.errors
    return [float(s) for s in out.scores]


@pytest.mark.parametrize(("name", "best"), RENDER_REWARDS)
def test_perfect_scores_top_blank_and_wrong_clearly_lower(
    name: str, best: float, pool: RewardPool, target_png: bytes
) -> None:
    perfect, wrong, blank = _scores(name, [REF, WRONG, BLANK], pool)
    assert perfect == pytest.approx(best, abs=0.02 * best)
    margin = 0.2 * best
    assert wrong < perfect - margin, (wrong, perfect)
    assert blank < perfect - margin, (blank, perfect)


@pytest.mark.parametrize(("name", "best"), RENDER_REWARDS)
def test_moving_a_label_away_lowers_the_score_monotonically(
    name: str, best: float, pool: RewardPool, target_png: bytes
) -> None:
    # While the moved label still overlaps its true place, every step away must cost something.
    scores = _scores(name, [moved_label(x) for x in (0.5, 0.55, 0.62, 0.72, 0.85)], pool)
    assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[0] - scores[-1] > 0.005 * best


def test_codepercept_components_are_the_papers_four_terms(pool: RewardPool, target_png: bytes) -> None:
    out = compute_rewards(
        get_reward("codepercept"),
        [
            RewardSample(fence(REF), target_id="ref", reference_code=REF),
            RewardSample(fence(WRONG), target_id="ref"),
        ],
        pool,
    )
    assert out.components["format"] == [1.0, 1.0]
    assert out.components["exec"] == [1.0, 1.0]
    assert out.components["image"][0] == pytest.approx(1.0)
    assert out.components["code"][0] == pytest.approx(1.0)  # trace F1s of identical code
    assert out.components["code"][1] is None  # no reference code: r_code left out, not faked
    assert out.scores[1] == pytest.approx(2.0 + out.components["image"][1])


def test_bad_inputs_get_a_defined_score_and_status(pool: RewardPool, target_png: bytes) -> None:
    two_blocks = fence(REF) + "\nAnd a variant:\n" + fence(WRONG)
    unterminated = "Code:\n```python\n" + REF
    samples = [
        RewardSample(two_blocks, target_id="ref"),  # the first block is the answer
        RewardSample("I cannot draw this.", target_id="ref"),  # no code at all
        RewardSample(unterminated, target_id="ref"),  # runs, but the format bonus needs a closed block
        RewardSample(["not", "text"], target_id="ref"),
        RewardSample(None, target_id="ref"),
        RewardSample(fence(REF), target_id="no-such-target"),
        RewardSample(fence(REF)),  # nothing to compare with
        RewardSample(fence("raise RuntimeError('boom')\n"), target_id="ref"),
    ]
    out = compute_rewards(get_reward("render_similarity"), samples, pool)
    assert out.statuses == [
        "ok", "no_code", "ok", "bad_input", "bad_input", "bad_request", "no_reference", "exec_error",
    ]  # fmt: skip
    assert out.scores[0] == pytest.approx(1.0)
    assert out.scores[1] == 0.0
    assert out.components["format"][2] == 0.0 and out.components["exec"][2] == 1.0
    assert out.scores[2] == pytest.approx(0.9)
    assert out.scores[3:7] == [None, None, None, None]
    assert "no-such-target" in out.errors[5]
    assert out.scores[7] == pytest.approx(0.1)  # the format point only
    summary = out.summary()
    assert summary["reward/scored"] == pytest.approx(4 / 8)
    assert summary["reward/status/bad_input"] == pytest.approx(2 / 8)


def test_format_and_exec_parts(pool: RewardPool, target_png: bytes) -> None:
    answers = [fence(REF), REF, "```py\nprint(1)\n```", fence("import nonexistent_module\n")]
    samples = [RewardSample(a, target_id="ref") for a in answers]
    samples.append(RewardSample(fence(WRONG)))  # no target: exec still knows whether it runs
    fmt = compute_rewards(get_reward("format"), samples, pool)
    assert fmt.scores == [1.0, 0.0, 0.0, 1.0, 1.0]
    exe = compute_rewards(get_reward("exec"), samples, pool)
    assert exe.scores == [1.0, 1.0, 0.0, 0.0, 1.0]
    assert exe.statuses[2] == "no_figure" and exe.statuses[3] == "exec_error"


def test_weights_are_configurable_and_validated(pool: RewardPool, target_png: bytes) -> None:
    only_format = {"format": 1.0, "exec": 0.0, "ssim": 0.0, "edge": 0.0, "pixel": 0.0}
    assert _scores("render_similarity", [WRONG], pool, weights=only_format) == [1.0]
    with_trace = _scores("render_similarity", [WRONG], pool, weights={"trace": 1.0})
    without = _scores("render_similarity", [WRONG], pool)
    assert with_trace[0] > without[0]  # the trace F1s of a wrong chart are partly right (layout, title)
    with pytest.raises(ValueError, match="no component 'ssmi'"):
        get_reward("render_similarity", {"ssmi": 0.5})
    with pytest.raises(ValueError, match="must be a number"):
        get_reward("codepercept", {"image": "high"})


def test_rlrf_length_term_penalises_long_code(pool: RewardPool, target_png: bytes) -> None:
    padded = REF + "# padding\n" * 60
    out = compute_rewards(
        get_reward("rlrf"),
        [RewardSample(fence(c), target_id="ref", reference_code=REF) for c in (REF, padded)],
        pool,
    )
    assert out.components["length"][0] == pytest.approx(0.75)
    assert out.components["length"][1] < 0.0
    assert out.components["recon"][1] == pytest.approx(out.components["recon"][0])
