"""Reward registry: built-ins by name, a user's own function by path, and a sync entry point.

A reward is an object with a ``name`` and ``async __call__(samples, backend) -> RewardOutput``::

    @register_reward("my_reward")
    class MyReward:
        def __init__(self, weights=None): ...
        async def __call__(self, samples, backend): ...

Selected by config: ``reward.name=render_similarity reward.weights.ssim=0.5``; a user's function without
touching the package: ``reward.path=my_rewards.py:my_fn``, where ``my_fn(samples, backend)`` (sync or async)
returns a ``RewardOutput`` or a list of ``float | None``. ``build_reward(cfg.reward)`` does both.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from codepercept_rl.rewards.backend import RewardBackend
from codepercept_rl.rewards.types import RewardOutput, RewardSample

if TYPE_CHECKING:
    from codepercept_rl.config.schema import RewardConfig

_BUILTIN_MODULES = (
    "codepercept_rl.rewards.render",
    "codepercept_rl.rewards.codepercept",
    "codepercept_rl.rewards.caption",
)


class Reward(Protocol):
    """A batch reward: ``await reward(samples, backend)`` -> one score per sample plus components.

    ``weights`` names the weighted components (the score is their weighted sum); empty for user functions.
    """

    name: str
    weights: dict[str, float]

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput: ...


_REGISTRY: dict[str, Callable[..., Reward]] = {}


def register_reward(name: str) -> Callable[[Callable[..., Reward]], Callable[..., Reward]]:
    """Class/factory decorator: makes ``get_reward(name, weights, **options)`` build it.

    Raises:
        ValueError: ``name`` is already registered by another object.
    """

    def deco(factory: Callable[..., Reward]) -> Callable[..., Reward]:
        known = _REGISTRY.get(name)
        if known is not None and known is not factory:
            raise ValueError(f"reward {name!r} is already registered by {known!r}")
        _REGISTRY[name] = factory
        return factory

    return deco


def _load_builtins() -> None:
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_rewards() -> list[str]:
    """Names of the registered rewards (built-ins included)."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_reward(name: str, weights: Mapping[str, float] | None = None, **options: Any) -> Reward:
    """Builds a registered reward.

    Raises:
        ValueError: unknown name (listing the known ones), unknown weight names, or options the reward
            does not take.
    """
    _load_builtins()
    factory = _REGISTRY.get(name)
    if factory is None:
        raise ValueError(f"unknown reward {name!r}; registered: {sorted(_REGISTRY)}")
    try:
        inspect.signature(factory).bind(weights=weights, **options)
    except TypeError as exc:
        raise ValueError(f"reward {name!r} does not take these options {sorted(options)}: {exc}") from None
    return factory(weights=weights, **options)


class FunctionReward:
    """Adapts a user function ``fn(samples, backend)`` (sync or async) to the ``Reward`` protocol."""

    def __init__(self, fn: Callable[..., Any], name: str | None = None) -> None:
        self.fn = fn
        self.name = name or getattr(fn, "__name__", type(fn).__name__)
        self.weights: dict[str, float] = {}

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        if inspect.iscoroutinefunction(self.fn):
            result = await self.fn(samples, backend)
        else:
            # A sync user function may block on the backend: keep it off the event loop.
            result = await asyncio.to_thread(self.fn, samples, backend)
        if isinstance(result, RewardOutput):
            out = result
        elif isinstance(result, Sequence) and not isinstance(result, str | bytes):
            out = RewardOutput.from_scores(result)
        else:
            raise TypeError(
                f"reward function {self.name!r} must return a RewardOutput or a list of float | None, "
                f"got {type(result).__name__}"
            )
        if len(out) != len(samples):
            raise ValueError(
                f"reward function {self.name!r} returned {len(out)} scores for {len(samples)} samples"
            )
        return out


def load_reward_path(spec: str) -> FunctionReward:
    """Loads ``path/to/file.py:function`` (or ``package.module:function``) as a reward.

    Raises:
        ValueError: the spec has no ``:``, the file does not exist, or it has no such callable.
    """
    path, sep, attr = spec.rpartition(":")
    if not sep or not path or not attr:
        raise ValueError(f"reward.path must look like 'my_rewards.py:my_fn', got {spec!r}")
    if path.endswith(".py"):
        file = Path(path).expanduser()
        if not file.is_file():
            raise ValueError(f"reward.path: file not found: {file}")
        digest = hashlib.sha256(str(file.resolve()).encode()).hexdigest()[:16]
        module_name = f"_codepercept_user_reward_{digest}"
        module_spec = importlib.util.spec_from_file_location(module_name, file)
        if module_spec is None or module_spec.loader is None:
            raise ValueError(f"reward.path: cannot import {file}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module  # dataclasses and pickling look modules up here
        module_spec.loader.exec_module(module)
    else:
        module = importlib.import_module(path)
    fn = getattr(module, attr, None)
    if fn is None or not callable(fn):
        raise ValueError(f"reward.path: {path} has no callable {attr!r}")
    return FunctionReward(fn, name=attr)


def build_reward(cfg: RewardConfig) -> Reward:
    """The reward a ``RewardConfig`` selects: ``cfg.path`` if set, else ``cfg.name`` with ``cfg.weights``.

    An active judge (``cfg.judge.enabled`` and ``cfg.judge.base_url``) is passed to rewards that take one.

    Raises:
        ValueError: weights given with ``path`` (a user function has its own), or the errors of
            ``get_reward`` / ``load_reward_path``.
    """
    if cfg.path:
        if cfg.weights:
            raise ValueError(
                "reward.weights applies to built-in rewards; a reward.path function sets its own"
            )
        return load_reward_path(cfg.path)
    options: dict[str, Any] = {}
    judge = cfg.judge
    if judge.enabled and judge.base_url:
        options["judge"] = judge
    return get_reward(cfg.name, cfg.weights, **options)


def compute_rewards(reward: Reward, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
    """Runs a reward from synchronous code (``asyncio.run``).

    Raises:
        RuntimeError: called from inside a running event loop (``await reward(samples, backend)`` there).
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(reward(samples, backend))
    raise RuntimeError("compute_rewards() called inside an event loop; use `await reward(samples, backend)`")
