"""Rewards for GRPO on code-rendered STEM images: a registry, composite built-ins, LLM judges, adapters.

A reward takes a batch of ``RewardSample`` and returns a ``RewardOutput`` (one ``float | None`` per sample, named
components, statuses). Code runs only in the reward backend (``RewardPool`` or ``RewardClient``)::

    from codepercept_rl.rewards import RewardSample, build_reward, compute_rewards, make_backend
    backend = make_backend(cfg.reward)                     # local sandbox pool or remote reward services
    reward = build_reward(cfg.reward)                      # reward.name / reward.weights.* / reward.path
    out = compute_rewards(reward, [RewardSample(completion, target_id="fig1")], backend)
    out.scores, out.components["exec"], out.statuses, out.summary()

Built-ins (``available_rewards()``): ``codepercept`` (the paper's r_fmt + r_exec + r_code + r_image, judge or
deterministic stand-ins), ``render_similarity``, ``rlrf``, ``caption_grounded``, ``format``, ``exec``.
Adapters: ``adapters.trl.TRLReward``, ``adapters.verl.compute_score``, ``adapters.openrlhf.create_app``.

Tests: ``python -m pytest tests/rewards -q``; cost per sample: ``python benchmarks/reward_cost.py``.
"""

from codepercept_rl.rewards.backend import RewardBackend, make_backend
from codepercept_rl.rewards.registry import (
    FunctionReward,
    Reward,
    available_rewards,
    build_reward,
    compute_rewards,
    get_reward,
    load_reward_path,
    register_reward,
)
from codepercept_rl.rewards.types import RewardOutput, RewardSample

__all__ = [
    "FunctionReward",
    "Reward",
    "RewardBackend",
    "RewardOutput",
    "RewardSample",
    "available_rewards",
    "build_reward",
    "compute_rewards",
    "get_reward",
    "load_reward_path",
    "make_backend",
    "register_reward",
]
