"""verl's ``custom_reward_function``: an async ``compute_score`` that calls the reward service over HTTP.

Wire it into a verl config::

    custom_reward_function:
      path: <repo>/codepercept_rl/rewards/adapters/verl.py
      name: compute_score            # async; verl's reward-loop managers await it
      reward_kwargs: {reward_url: "http://10.0.0.5:8000", reward_name: codepercept}

(``compute_score_sync`` is the same for verl's legacy, synchronous ``NaiveRewardManager``.) Start the service
with ``python -m reward_servers.server --port 8000`` on a machine with CPU cores to spare.

verl never hands images to a reward function, so the target travels as an id or a path:
``reward_model.ground_truth`` holds the reference code (a plain string) or a JSON object / dict with any of
``reference_code``, ``target_id``, ``target_path``, ``reference_caption``, ``task``; ``extra_info`` may carry
the same keys (they win). ``target_path`` is read by this process (keep the files where the trainer can read
them); ``target_id`` must be registered with the service first (``RewardClient.register_targets``).

Settings, first found wins: keyword arguments (``reward_kwargs``), ``extra_info``, environment:

- ``reward_url``: ``CODEPERCEPT_REWARD_URL`` (comma-separated for several services);
- ``reward_name``: ``CODEPERCEPT_REWARD_NAME`` (default ``codepercept``);
- ``reward_weights``: a dict (keyword arguments or ``extra_info`` only);
- ``judge_url`` / ``judge_model``: an OpenAI-compatible LLM judge for the ``codepercept`` reward
  (``CODEPERCEPT_JUDGE_URL`` / ``CODEPERCEPT_JUDGE_MODEL``; the key is read from ``CODEPERCEPT_JUDGE_API_KEY``).

Returns ``{"score": float, "scored": 0|1, "ok": 0|1, <weighted components>...}`` with a fixed key set per
reward (verl stacks the extra keys across samples). verl wants a float, so a sample that could not be scored
gets score 0.0 and ``scored`` 0: filter on ``scored`` if that matters.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any

from codepercept_rl.config.schema import JudgeConfig
from codepercept_rl.rewards.adapters.common import TargetFiles, parse_label, sample_from_fields
from codepercept_rl.rewards.backend import RewardBackend
from codepercept_rl.rewards.registry import Reward, get_reward

log = logging.getLogger(__name__)

URL_ENV = "CODEPERCEPT_REWARD_URL"
NAME_ENV = "CODEPERCEPT_REWARD_NAME"
JUDGE_URL_ENV = "CODEPERCEPT_JUDGE_URL"
JUDGE_MODEL_ENV = "CODEPERCEPT_JUDGE_MODEL"
DEFAULT_REWARD = "codepercept"

_lock = threading.Lock()
_clients: dict[tuple[str, ...], RewardBackend] = {}
_rewards: dict[tuple[Any, ...], Reward] = {}
_files = TargetFiles()


def _setting(key: str, kwargs: Mapping[str, Any], extra_info: Mapping[str, Any], env: str | None) -> Any:
    if kwargs.get(key) is not None:
        return kwargs[key]
    if extra_info.get(key) is not None:
        return extra_info[key]
    return os.environ.get(env) if env else None


def _backend(url: str | list[str]) -> RewardBackend:
    urls = tuple(u.strip() for u in (url.split(",") if isinstance(url, str) else url) if u.strip())
    if not urls:
        raise ValueError(
            f"no reward service URL: pass reward_url in reward_kwargs or extra_info, or set {URL_ENV}"
        )
    with _lock:
        client = _clients.get(urls)
        if client is None:
            from reward_servers.client import RewardClient

            # A sync client on worker threads: usable from any event loop verl runs us on (an async httpx
            # client is bound to the loop that first used it).
            client = _clients[urls] = RewardClient(list(urls))
        return client


def _reward(
    name: str, weights: Mapping[str, float] | None, judge_url: str | None, judge_model: str
) -> Reward:
    key = (name, tuple(sorted((weights or {}).items())), judge_url, judge_model)
    with _lock:
        reward = _rewards.get(key)
        if reward is None:
            options = {"judge": JudgeConfig(base_url=judge_url, model=judge_model)} if judge_url else {}
            reward = _rewards[key] = get_reward(name, weights, **options)
        return reward


async def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """Scores one verl sample through the reward service (module docstring).

    Raises:
        ValueError: no service URL configured, or an unknown reward name / weight (configuration errors,
            raised so that a misconfigured run stops at its first step rather than training on zeros).
    """
    extra = dict(extra_info or {})
    url = _setting("reward_url", kwargs, extra, URL_ENV)
    name = _setting("reward_name", kwargs, extra, NAME_ENV) or DEFAULT_REWARD
    weights = _setting("reward_weights", kwargs, extra, None)
    judge_url = _setting("judge_url", kwargs, extra, JUDGE_URL_ENV)
    judge_model = _setting("judge_model", kwargs, extra, JUDGE_MODEL_ENV) or ""
    backend = _backend(url or "")
    reward = _reward(str(name), weights, judge_url, str(judge_model))
    try:
        fields = parse_label(ground_truth)
    except ValueError as exc:  # a malformed row: scored as "no reference" (scored=0), the step goes on
        log.warning("ground_truth ignored: %s", exc)
        fields = {}
    fields.update(parse_label({k: extra.get(k) for k in extra}))
    sample = sample_from_fields(solution_str, fields, _files)
    out = await reward([sample], backend)
    score = out.scores[0]
    result = {"score": float(score) if score is not None else 0.0}
    result["scored"] = float(score is not None)
    result["ok"] = float(out.statuses[0] == "ok")
    for component in reward.weights:
        value = out.components.get(component, [None])[0]
        result[component] = float(value) if value is not None else 0.0
    return result


def compute_score_sync(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> dict[str, float]:
    """``compute_score`` for synchronous callers (verl's legacy ``NaiveRewardManager``)."""
    return asyncio.run(compute_score(data_source, solution_str, ground_truth, extra_info, **kwargs))
