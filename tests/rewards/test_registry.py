"""Registry, reward.path loading, config selection and the output type's contract."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path

import pytest

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.rewards import (
    RewardBackend,
    RewardOutput,
    RewardSample,
    available_rewards,
    build_reward,
    compute_rewards,
    get_reward,
    load_reward_path,
    register_reward,
)
from reward_servers.pool import RewardPool
from tests.rewards.conftest import REF, WRONG, fence

REPO = Path(__file__).resolve().parents[2]


def test_builtins_are_registered_and_unknown_names_are_refused() -> None:
    assert {"codepercept", "render_similarity", "rlrf", "caption_grounded", "format", "exec"} <= set(
        available_rewards()
    )
    with pytest.raises(ValueError, match="unknown reward 'nope'.*render_similarity"):
        get_reward("nope")
    with pytest.raises(ValueError, match="does not take these options"):
        get_reward("format", colour="red")


def test_register_reward_decorator_and_duplicate_names() -> None:
    @register_reward("test_constant")
    class Constant:
        name = "test_constant"

        def __init__(self, weights: dict | None = None) -> None:
            self.weights = {"one": 1.0}

        async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
            return RewardOutput.from_scores([1.0] * len(samples))

    assert compute_rewards(get_reward("test_constant"), [RewardSample("x")] * 3, None).scores == [1.0] * 3
    with pytest.raises(ValueError, match="already registered"):
        register_reward("test_constant")(lambda weights=None: None)


def test_reward_output_contract() -> None:
    with pytest.raises(ValueError, match="component 'a' has 1 values for 2 scores"):
        RewardOutput([1.0, None], components={"a": [1.0]})
    with pytest.raises(ValueError, match="use None"):
        RewardOutput([float("nan")])
    out = RewardOutput(
        [1.0, None, 0.0], components={"a": [1.0, None, 0.5]}, statuses=["ok", "bad_input", "ok"]
    )
    assert out.summary() == {
        "reward/score": 0.5,
        "reward/scored": pytest.approx(2 / 3),
        "reward/a": 0.75,
        "reward/status/ok": pytest.approx(2 / 3),
        "reward/status/bad_input": pytest.approx(1 / 3),
    }
    assert out.rows()[1] == {"score": None, "status": "bad_input", "error": None, "a": None}


def test_compute_rewards_refuses_to_nest_event_loops() -> None:
    async def inner() -> None:
        compute_rewards(get_reward("format"), [RewardSample("x")], None)

    with pytest.raises(RuntimeError, match="use `await reward"):
        asyncio.run(inner())


def test_user_reward_from_a_path_runs_against_the_pool(pool: RewardPool, target_png: bytes) -> None:
    reward = load_reward_path(str(REPO / "examples/custom_reward.py") + ":ssim_with_length_cap")
    samples = [
        RewardSample(fence(REF), target_id="ref"),
        RewardSample(fence(WRONG), target_id="ref"),
        RewardSample(fence(REF) + "#" * 5000, target_id="ref"),
        RewardSample(fence(REF), target_id="missing"),
    ]
    out = compute_rewards(reward, samples, pool)
    assert out.scores[0] == pytest.approx(1.0)
    assert out.scores[1] < 0.9
    assert out.scores[2] == pytest.approx(0.8)
    assert out.scores[3] is None and out.statuses[3] == "bad_request"
    assert out.components["too_long"] == [0.0, 0.0, 1.0, 0.0]


def test_reward_path_errors_and_plain_list_returns(tmp_path: Path) -> None:
    module = tmp_path / "my_rewards.py"
    module.write_text(
        "async def lengths(samples, backend):\n    return [float(len(s.completion)) for s in samples]\n"
        "def wrong_count(samples, backend):\n    return [1.0]\n"
        "def not_a_list(samples, backend):\n    return 3.0\n"
    )
    out = compute_rewards(
        load_reward_path(f"{module}:lengths"), [RewardSample("ab"), RewardSample("abc")], None
    )
    assert out.scores == [2.0, 3.0] and out.statuses == ["ok", "ok"]
    with pytest.raises(ValueError, match="returned 1 scores for 2 samples"):
        compute_rewards(load_reward_path(f"{module}:wrong_count"), [RewardSample("a")] * 2, None)
    with pytest.raises(TypeError, match="must return a RewardOutput or a list"):
        compute_rewards(load_reward_path(f"{module}:not_a_list"), [RewardSample("a")], None)
    with pytest.raises(ValueError, match="file not found"):
        load_reward_path(f"{tmp_path}/absent.py:fn")
    with pytest.raises(ValueError, match="no callable 'missing'"):
        load_reward_path(f"{module}:missing")
    with pytest.raises(ValueError, match="must look like"):
        load_reward_path("my_rewards.py")


def test_config_selects_the_reward(tmp_path: Path) -> None:
    cfg = load_config(None, ["reward.name=render_similarity", "reward.weights.edge=0.6"], schema=JobConfig)
    reward = build_reward(cfg.reward)
    assert reward.name == "render_similarity" and reward.weights["edge"] == 0.6
    path_cfg = load_config(
        None, [f"reward.path={REPO}/examples/custom_reward.py:ssim_with_length_cap"], schema=JobConfig
    )
    assert build_reward(path_cfg.reward).name == "ssim_with_length_cap"
    both = load_config(
        None, [f"reward.path={REPO}/examples/custom_reward.py:x", "reward.weights.a=1"], schema=JobConfig
    )
    with pytest.raises(ValueError, match="reward.weights applies to built-in rewards"):
        build_reward(both.reward)
