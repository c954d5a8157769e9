"""The driver's handle on one rollout object per learner rank (``Colocated(..., group_size=k)``), over two real
Ray learner ranks: a generation call is split into one contiguous share per tensor-parallel group, each rank of a
group gets its group's share with the seeds one engine would have used, results come back in prompt order, a
rank's error reaches the caller, and other calls run on every rank at once."""

from __future__ import annotations

import pytest

from codepercept_rl.config.schema import ModelConfig, RayConfig
from codepercept_rl.grpo.workers import Colocated
from codepercept_rl.learner import LearnerConfig
from codepercept_rl.learner.actor import LearnerGroup
from codepercept_rl.rollout import Completion, RolloutPrompt, SamplingParams

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def two_ranks():
    ray.init(address="local", num_cpus=2, include_dashboard=False)
    group = LearnerGroup(LearnerConfig(model=ModelConfig(tiny_preset="nano"), total_steps=1), 2,
                         RayConfig(enabled=True, num_cpus=2))  # fmt: skip
    yield group
    group.shutdown()
    ray.shutdown()


def _echo_class():
    # Defined here so Ray ships it by value to the ranks' processes.
    class Echo:
        """Stands in for a rollout engine: one completion per prompt naming the rank, prompt and seed it saw."""

        def __init__(self, learner, tag: str) -> None:
            self.rank, self.tag, self.calls = learner.dist.rank, tag, 0

        def generate(self, prompts, params):
            self.calls += 1
            if any(p.messages[0]["content"] == "boom" for p in prompts):
                raise ValueError(f"rank {self.rank} cannot generate this")
            text = "{}|" + f"{self.rank}|{params.seed}"
            return [[Completion(text.format(p.messages[0]["content"]), [self.rank], None, "stop", i, 0)]
                    for i, p in enumerate(prompts)]  # fmt: skip

        def sync_weights(self) -> int:
            return 100 + self.rank

        def stats(self) -> dict[str, int]:
            return {"generate_calls": self.calls}

        def close(self) -> None:
            pass

    return Echo


def _prompts(*texts: str) -> list[RolloutPrompt]:
    return [RolloutPrompt([{"role": "user", "content": t}], []) for t in texts]


@pytest.mark.timeout(300)
def test_two_engines_split_prompts_and_one_tp2_engine_shares_them(two_ranks) -> None:
    Echo = _echo_class()
    engines = Colocated(two_ranks, Echo, "dp", group_size=1)
    assert engines.engines == 2
    out = engines.call("generate", _prompts("a", "b", "c"), SamplingParams(n=1, seed=10))
    # Shares [a, b] -> rank 0 and [c] -> rank 1; request seeds as one engine given all three (10 + position).
    assert [g[0].text for g in out] == ["a|0|10", "b|0|10", "c|1|12"]
    one = engines.call("generate", _prompts("z"), SamplingParams(n=1, seed=None))
    assert [g[0].text for g in one] == ["z|0|None"]  # rank 1's share is empty: not called
    assert engines.call("sync_weights") == 100  # ran on both ranks; rank 0's result
    assert engines.call("stats") == {"generate_calls": 3}  # summed over the engines
    with pytest.raises(ValueError, match="rank 1 cannot generate"):
        engines.call("generate", _prompts("a", "boom"), SamplingParams(n=1, seed=0))

    Echo = _echo_class()
    tp2 = Colocated(two_ranks, Echo, "tp", group_size=2)  # replaces the attached objects
    assert tp2.engines == 1
    out = tp2.call("generate", _prompts("a", "b"), SamplingParams(n=1, seed=5))
    assert [g[0].text for g in out] == ["a|0|5", "b|0|5"]  # both ranks got both prompts; group's first kept
    assert [two_ranks.submit_attached("stats", rank=r).result() for r in (0, 1)] == [
        {"generate_calls": 1}
    ] * 2
    with pytest.raises(ValueError, match="group_size=3 does not divide"):
        Colocated(two_ranks, Echo, "x", group_size=3)
