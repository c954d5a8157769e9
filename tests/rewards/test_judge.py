"""LLM judges against a real local OpenAI-compatible server: parsing, retries, timeouts, cache, fallback."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from codepercept_rl.config.schema import JudgeConfig
from codepercept_rl.rewards import RewardSample, compute_rewards, get_reward
from codepercept_rl.rewards.judge import (
    JudgeError,
    JudgeParseError,
    JudgeRequest,
    JudgeVerdict,
    LLMJudge,
    build_messages,
    parse_verdict,
)
from reward_servers.pool import RewardPool
from tests.rewards.conftest import REF, WRONG, CountingBackend, fence
from tests.rewards.fake_judge import FakeJudge


@pytest.fixture(scope="module")
def server() -> Iterator[FakeJudge]:
    judge = FakeJudge(slow_s=2.0)
    yield judge
    judge.close()


def _judge(server: FakeJudge, model: str, **kw: object) -> LLMJudge:
    cfg = JudgeConfig(
        base_url=server.url, model=model, timeout_s=kw.pop("timeout_s", 5.0), max_retries=2, **kw
    )
    return LLMJudge(cfg, backoff_s=0.01)


def _run(judge: LLMJudge, requests: list[JudgeRequest]) -> list[JudgeVerdict | JudgeError]:
    return asyncio.run(judge.judge(requests))


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        ('{"structure": 30, "positions": 15, "text": 10, "style": 20, "clarity": 5, "total": 80}', 0.80),
        ('Sure!\n```json\n{"structure": "25/30", "positions": 30, "text": 10, "style": 20}\n```', 0.85),
        (
            '{"structure": 99, "positions": 30, "text": 10, "style": 20, "clarity": 10}',
            1.0,
        ),  # clipped per part
        ('{"structure": -5, "positions": 0, "text": 0, "style": 0, "clarity": 0}', 0.0),
        ('{"total": 64}', 0.64),
        ('<think>It could be {"total": 5}</think> Total: 72', 0.72),
        ("I'd give it 55/100 overall.", 0.55),
        ("Score: 150 out of 100", 1.0),
    ],
)
def test_parse_verdict_accepts_what_judges_write(answer: str, expected: float) -> None:
    score, _ = parse_verdict(answer, "image")
    assert score == pytest.approx(expected)


@pytest.mark.parametrize("answer", ["", "Looks fine to me.", '{"verdict": "good"}', "<think>80/100</think>"])
def test_parse_verdict_refuses_answers_without_a_score(answer: str) -> None:
    with pytest.raises(JudgeParseError):
        parse_verdict(answer, "code")


def test_prompts_carry_the_inputs_and_the_papers_rubric() -> None:
    image = build_messages(JudgeRequest("image", b"\x89PNGa", b"\x89PNGb"))
    parts = image[1]["content"]
    assert [p["type"] for p in parts].count("image_url") == 2
    assert "structure" in parts[-1]["text"] and "(0-30)" in parts[-1]["text"]
    code = build_messages(JudgeRequest("code", "plt.plot([1])", "plt.bar([1], [2])"))[1]["content"]
    assert "plt.bar([1], [2])" in code and '"positions" (0-30)' in code and '"quality" (0-10)' in code


def test_good_judge_scores_from_the_inputs_and_caches(server: FakeJudge, tmp_path: Path) -> None:
    judge = _judge(server, "good", cache_dir=str(tmp_path))
    requests = [JudgeRequest("code", "a = 1", "a = 1"), JudgeRequest("code", "a = 1", "b = 2")]
    before = server.requests
    first = _run(judge, requests)
    assert [v.score for v in first] == [pytest.approx(1.0), pytest.approx(0.4)]
    assert server.requests == before + 2
    second = _run(judge, requests)
    assert [v.cached for v in second] == [True, True] and server.requests == before + 2
    assert second[1].parts == pytest.approx(first[1].parts)
    (tmp_path / f"{judge.cache_key(requests[0])}.json").write_text("{torn")  # a corrupt entry is re-asked
    assert _run(judge, requests[:1])[0].cached is False


def test_reasoning_answers_are_read_after_the_thinking(server: FakeJudge) -> None:
    [verdict] = _run(_judge(server, "think"), [JudgeRequest("image", b"\x89PNG same", b"\x89PNG same")])
    assert isinstance(verdict, JudgeVerdict) and verdict.score == pytest.approx(1.0)  # not the 5 in <think>
    assert verdict.parts == {"structure": 30, "positions": 30, "text": 10, "style": 20, "clarity": 10}


@pytest.mark.parametrize("model", ["garbage", "badshape"])
def test_unusable_answers_are_retried_then_fail(server: FakeJudge, model: str) -> None:
    before = server.requests
    [verdict] = _run(_judge(server, model), [JudgeRequest("code", "x", "y")])
    assert isinstance(verdict, JudgeError) and "3 attempts" in str(verdict)
    assert server.requests == before + 3


def test_slow_judge_times_out(server: FakeJudge) -> None:
    before = server.requests
    [verdict] = _run(_judge(server, "slow", timeout_s=0.3), [JudgeRequest("code", "x", "y")])
    assert isinstance(verdict, JudgeError) and "timed out" in str(verdict)
    assert server.requests == before + 3  # three 0.3 s attempts, none waited for the 2 s answer


def test_flaky_judge_succeeds_on_retry_and_refusals_are_not_retried(
    server: FakeJudge, monkeypatch: pytest.MonkeyPatch
) -> None:
    [verdict] = _run(_judge(server, "flaky"), [JudgeRequest("code", "q", "q")])
    assert isinstance(verdict, JudgeVerdict) and verdict.score == pytest.approx(1.0)
    before = server.requests
    [refused] = _run(_judge(server, "auth"), [JudgeRequest("code", "q", "q")])
    assert isinstance(refused, JudgeError) and "401" in str(refused) and server.requests == before + 1
    monkeypatch.setenv("CODEPERCEPT_JUDGE_API_KEY", "sesame")
    [allowed] = _run(_judge(server, "auth"), [JudgeRequest("code", "q", "q")])
    assert isinstance(allowed, JudgeVerdict)


def test_concurrency_limit_holds(server: FakeJudge) -> None:
    deadline = time.monotonic() + 5.0
    while server.in_flight and time.monotonic() < deadline:  # answers the timeout test abandoned
        time.sleep(0.05)
    server.max_in_flight = 0
    judge = _judge(server, "busy", max_concurrency=2)
    verdicts = _run(judge, [JudgeRequest("code", "x", f"y{i}") for i in range(6)])
    assert all(isinstance(v, JudgeVerdict) for v in verdicts)
    assert server.max_in_flight == 2


@pytest.fixture(scope="module")
def judged_samples(target_png: bytes) -> list[RewardSample]:
    return [RewardSample(fence(c), target_id="ref", reference_code=REF) for c in (REF, WRONG)]


def test_codepercept_uses_the_judge_when_it_answers(
    server: FakeJudge, pool: RewardPool, judged_samples: list[RewardSample]
) -> None:
    reward = get_reward("codepercept", judge=_judge(server, "good"))
    counting = CountingBackend(pool)
    out = compute_rewards(reward, judged_samples, counting)
    # Two candidates re-rendered for the image judge, the shared reference (the target) rendered once.
    assert sorted(counting.renders) == sorted([fence(REF), fence(WRONG), REF])
    assert out.statuses == ["ok", "ok"]
    assert out.components["image_judge"] == [pytest.approx(1.0), pytest.approx(0.4)]
    assert out.components["code_judge"] == [pytest.approx(1.0), pytest.approx(0.4)]
    assert out.components["judge_fallback"] == [0.0, 0.0]
    assert out.scores == [pytest.approx(4.0), pytest.approx(2.8)]


@pytest.mark.parametrize("model", ["garbage", "slow"])
def test_codepercept_falls_back_to_stand_ins_when_the_judge_fails(
    server: FakeJudge, pool: RewardPool, judged_samples: list[RewardSample], model: str
) -> None:
    standin = compute_rewards(get_reward("codepercept"), judged_samples, pool)
    reward = get_reward("codepercept", judge=_judge(server, model, timeout_s=0.3))
    out = compute_rewards(reward, judged_samples, pool)
    assert out.statuses == ["judge_fallback", "judge_fallback"]
    assert out.components["judge_fallback"] == [1.0, 1.0]
    assert out.scores == pytest.approx(standin.scores)
    assert "image judge" in out.errors[0] and "code judge" in out.errors[0]


def test_config_builds_a_judge_only_when_an_endpoint_is_set(server: FakeJudge) -> None:
    from codepercept_rl.config import JobConfig, load_config
    from codepercept_rl.rewards import build_reward

    cfg = load_config(
        None, [f"reward.judge.base_url={server.url}", "reward.judge.model=good"], schema=JobConfig
    )
    assert isinstance(build_reward(cfg.reward).judge, LLMJudge)
    assert build_reward(load_config(None, [], schema=JobConfig).reward).judge is None
    bad = load_config(None, [f"reward.judge.base_url={server.url}", "reward.name=rlrf"], schema=JobConfig)
    with pytest.raises(ValueError, match="does not take these options"):
        build_reward(bad.reward)
