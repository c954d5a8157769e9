"""Where rewards execute code: the one interface between the training side and ``reward_servers``.

Rewards never run model or dataset code in the trainer's process. They hand it to a ``RewardBackend``: a local
``reward_servers.pool.RewardPool`` (sandboxed zygote workers, in-process threads or Ray actors) or a
``reward_servers.client.RewardClient`` talking to remote reward services over HTTP. Both satisfy the protocol
below, so the same reward runs against either unchanged::

    from codepercept_rl.rewards.backend import make_backend
    backend = make_backend(cfg.reward)      # RewardClient if cfg.reward.server_urls, else a started RewardPool
    ...
    backend.close()

Rewards are async (judges are HTTP calls); backend calls are blocking and go to a worker thread with
``asyncio.to_thread`` (both backends are thread-safe), so one event loop can run judges and renders at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

if TYPE_CHECKING:
    from codepercept_rl.config.schema import RewardConfig
    from reward_servers.sandbox import RenderResult, ScoreResult


@runtime_checkable
class RewardBackend(Protocol):
    """What rewards need from a reward pool or client (both ``RewardPool`` and ``RewardClient`` fit)."""

    def score(self, items: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
        """Scores items (``code``, ``target_id`` | ``target_png``, ``reference_code``, ``reward``), in order."""
        ...

    def render(self, code: str) -> RenderResult:
        """Renders code in the sandbox: PNG images and the execution trace."""
        ...

    def register_targets(self, targets: Mapping[str, bytes]) -> list[str]:
        """Registers target images by id."""
        ...

    def close(self) -> None:
        """Releases workers or connections."""
        ...


def make_backend(cfg: RewardConfig, *, pool_backend: Literal["local", "ray"] = "local") -> RewardBackend:
    """Builds the backend a ``RewardConfig`` asks for.

    Args:
        cfg: ``server_urls`` non-empty selects a ``RewardClient`` over those services (``timeout_s`` is the
            per-sample sandbox limit there, so the HTTP timeout is generous); otherwise a local ``RewardPool``
            with ``num_workers`` sandboxes, each sample limited to ``timeout_s``.
        pool_backend: where a local pool's workers live: threads + zygotes here (``"local"``) or one Ray actor
            each (``"ray"``, e.g. when ``ray.enabled``); ignored for remote services.

    Returns:
        A started backend; the caller closes it.
    """
    if cfg.server_urls:
        from reward_servers.client import RewardClient

        return RewardClient(list(cfg.server_urls), timeout_s=max(120.0, 4 * cfg.timeout_s))
    from reward_servers.pool import RewardPool
    from reward_servers.sandbox import SandboxConfig

    config = SandboxConfig(timeout_s=cfg.timeout_s)
    return RewardPool(workers=cfg.num_workers, config=config, backend=pool_backend).start()


async def ascore(backend: RewardBackend, items: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
    """``backend.score`` on a worker thread (does not block the event loop)."""
    if not items:
        return []
    return await asyncio.to_thread(backend.score, list(items))


async def arender(backend: RewardBackend, code: str) -> RenderResult:
    """``backend.render`` on a worker thread."""
    return await asyncio.to_thread(backend.render, code)
