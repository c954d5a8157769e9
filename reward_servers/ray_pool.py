"""Ray backend of the reward pool: one Ray actor per worker, each wrapping its own Sandbox zygote.

Use it through the pool (everything else, cache, targets, back-pressure and metrics, stays in the driver)::

    import ray
    ray.init()                      # local; or ray.init(address="auto") on a cluster
    from reward_servers.pool import RewardPool
    with RewardPool(workers=8, backend="ray", ray_num_cpus=1) as pool:
        pool.score([{"code": "..."}])

Each pool thread drives one actor with blocking ``ray.get`` calls, so an actor runs one sample at a time, like a
local worker. The actor reports its zygote's restarts with every result. If the actor itself dies (its node is
lost, or it was killed), the handle starts a new actor, counts a restart and retries the job once; registered
targets are re-sent to the new actor before it gets work.

Not covered: placement (actors go wherever Ray schedules ``num_cpus``), and the driver is a single point of
failure like any Ray driver. Isolation of the code is the Sandbox's, unchanged inside the actor.
"""

from __future__ import annotations

import logging
import os

import ray
from ray.exceptions import RayActorError

from reward_servers.pool import Job, LocalWorker
from reward_servers.sandbox import RenderResult, SandboxConfig, ScoreResult

log = logging.getLogger(__name__)


class _RewardActor:
    """Actor body: a LocalWorker (one Sandbox zygote) living in the actor process."""

    def __init__(self, config: SandboxConfig, index: int) -> None:
        self.worker = LocalWorker(config, index)

    def score(self, job: Job) -> tuple[ScoreResult, int, bool]:
        result = self.worker.score(job)
        return result, self.worker.restarts, self.worker.alive

    def render(self, job: Job) -> tuple[RenderResult, int, bool]:
        result = self.worker.render(job)
        return result, self.worker.restarts, self.worker.alive

    def ensure_target(self, target_id: str, png: bytes, digest: str) -> None:
        self.worker.ensure_target(target_id, png, digest)

    def pid(self) -> int:
        return os.getpid()

    def close(self) -> None:
        self.worker.close()


RewardActor = ray.remote(_RewardActor)


class RayWorker:
    """Pool-side handle of one reward actor (implements ``reward_servers.pool.Worker``).

    Args:
        config: Sandbox limits for the actor's zygote.
        index: Worker index (names the actor's sandbox).
        num_cpus: CPUs Ray reserves for the actor (its zygote and forked children run inside that share).
    """

    def __init__(self, config: SandboxConfig, index: int, num_cpus: float = 1.0) -> None:
        if not ray.is_initialized():
            raise RuntimeError(
                "backend='ray' needs ray.init() (or ray.init(address=...)) before the pool starts"
            )
        self.index = index
        self.config = config
        self.num_cpus = num_cpus
        self._actor_restarts = 0
        self._zygote_restarts = 0  # as last reported by the current actor
        self._zygote_restarts_before = 0  # accumulated over dead actors
        self._alive = True
        self._targets: dict[
            str, tuple[bytes, str]
        ] = {}  # what this worker's actor holds: id -> (png, digest)
        self._start_actor()

    def _start_actor(self) -> None:
        self.actor = RewardActor.options(num_cpus=self.num_cpus, max_restarts=0).remote(
            self.config, self.index
        )
        self._alive = True
        # A new actor has an empty sandbox: give it back every target the old one held.
        ray.get([self.actor.ensure_target.remote(t, png, d) for t, (png, d) in self._targets.items()])

    def _replace_actor(self, exc: Exception) -> None:
        log.warning("reward actor %d died (%s); starting a new one", self.index, exc)
        self._alive = False
        self._actor_restarts += 1
        self._zygote_restarts_before += self._zygote_restarts
        self._zygote_restarts = 0
        self._start_actor()

    def _call(self, method: str, job: Job) -> ScoreResult | RenderResult:
        """Runs ``method`` on the actor; a dead actor is replaced and the job retried once."""
        for attempt in (0, 1):
            remote = self.actor.score if method == "score" else self.actor.render
            try:
                result, restarts, alive = ray.get(remote.remote(job))
            except RayActorError as exc:
                self._replace_actor(exc)
                if attempt == 1:
                    raise
                continue
            self._zygote_restarts, self._alive = restarts, alive
            return result
        raise AssertionError("unreachable: the loop returns or raises")

    def score(self, job: Job) -> ScoreResult:
        return self._call("score", job)  # type: ignore[return-value]

    def render(self, job: Job) -> RenderResult:
        return self._call("render", job)  # type: ignore[return-value]

    def ensure_target(self, target_id: str, png: bytes, digest: str) -> None:
        held = self._targets.get(target_id)
        if held is not None and held[1] == digest:
            return
        self._targets[target_id] = (png, digest)
        try:
            ray.get(self.actor.ensure_target.remote(target_id, png, digest))
        except RayActorError as exc:
            self._replace_actor(exc)  # the new actor gets every target, this one included

    def pid(self) -> int:
        """Process id of the actor (diagnostics and tests)."""
        return ray.get(self.actor.pid.remote())

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def restarts(self) -> int:
        return self._actor_restarts + self._zygote_restarts_before + self._zygote_restarts

    def close(self) -> None:
        try:
            ray.get(self.actor.close.remote(), timeout=30)
        except RayActorError:
            log.info("reward actor %d was already gone at close", self.index)
        ray.kill(self.actor)
