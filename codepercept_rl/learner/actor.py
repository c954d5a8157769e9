"""Learner ranks as Ray actors (one per rank) or local processes, without torchrun.

Two ways to use it:

- run one function on every rank (a whole job, like S1)::

      summaries = run_on_ranks(run_rank, world_size=2, cfg, False, ray_cfg=cfg.ray)

- drive a :class:`~codepercept_rl.learner.Learner` per rank from a driver (the GRPO engine)::

      group = LearnerGroup(LearnerConfig(...), world_size=2, ray_cfg=cfg.ray)
      stats = group.call("train_step", per_rank_args=[(mbs0, loss_fn, n), (mbs1, loss_fn, n)])
      weights = group.call("state_dict_for_rollout")[0]    # rank 0 holds the full weights
      group.shutdown()

- put an object beside rank 0's learner (a colocated rollout engine, built as ``cls(learner, *args)``) and call
  it asynchronously: ``group.attach(cls, *args)``, ``group.submit_attached("generate", ...)`` -> a future.

Every actor gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` (rank 0's node) and ``MASTER_PORT``
before it builds anything, so :func:`~codepercept_rl.learner.dist.init_distributed` joins the same group as
under torchrun. With ``ray.enabled=false`` ranks are local processes (``torch.multiprocessing`` spawn) for
``run_on_ranks``, and a single in-process rank for ``LearnerGroup`` (a ``breakpoint()`` works there).
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch.multiprocessing as mp

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.learner.dist import free_port

__all__ = ["RankWorker", "LearnerGroup", "init_ray", "run_on_ranks"]


def _rank_env(rank: int, world_size: int, addr: str, port: int, local_rank: int) -> dict[str, str]:
    return {"RANK": str(rank), "WORLD_SIZE": str(world_size), "LOCAL_RANK": str(local_rank),
            "MASTER_ADDR": addr, "MASTER_PORT": str(port)}  # fmt: skip


class RankWorker:
    """One rank: sets its process-group environment, then runs functions or a ``Learner``'s methods.

    A rank may hold several learners by role (verl's fused actor/ref worker): the policy (``actor``) and a
    frozen ``ref`` share the process, its GPU and its process group. A plain class: ``ray.remote(RankWorker)``
    makes it an actor; in-process it is used as is.
    """

    def __init__(self, env: dict[str, str] | None = None) -> None:
        if env:
            os.environ.update(env)
        self.learners: dict[str, Any] = {}
        self.attached: Any = None

    @property
    def learner(self) -> Any:
        """The ``actor`` role's learner (None before :meth:`build_learner`)."""
        return self.learners.get("actor")

    def node_address(self) -> tuple[str, int]:
        """This actor's node IP and a free port on it (rank 0's become MASTER_ADDR / MASTER_PORT)."""
        import ray

        ip = ray.util.get_node_ip_address()
        return ip, free_port("0.0.0.0")

    def set_env(self, env: dict[str, str]) -> None:
        """Sets environment variables (before anything touches torch.distributed)."""
        os.environ.update(env)

    def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Runs ``fn(*args)`` on this rank and returns its result."""
        return fn(*args)

    def build_learner(self, cfg: Any, role: str = "actor") -> None:
        """Builds this rank's ``Learner`` for ``role`` (the first one joins the process group)."""
        from codepercept_rl.learner.learner import Learner

        if role in self.learners:
            raise RuntimeError(f"this rank already holds a {role!r} learner")
        self.learners[role] = Learner(cfg)

    def drop_learner(self, role: str) -> None:
        """Frees ``role``'s learner (its model and optimizer) and the memory it held."""
        self.learners.pop(role, None)
        import gc

        gc.collect()

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls ``Learner.<method>(*args, **kwargs)`` of the ``actor`` role on this rank."""
        return self.call_role("actor", method, *args, **kwargs)

    def call_role(self, role: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls ``Learner.<method>(*args, **kwargs)`` of ``role`` on this rank."""
        if role not in self.learners:
            raise RuntimeError(f"no {role!r} learner on this rank: build_learner(cfg, {role!r}) first")
        return getattr(self.learners[role], method)(*args, **kwargs)

    def placement(self) -> dict[str, Any]:
        """Where this rank runs: process id, node, the GPUs it may see, ``LOCAL_RANK``, each role's device."""
        import ray

        gpu_ids = [str(g) for g in ray.get_gpu_ids()] if ray.is_initialized() else []
        return {
            "pid": os.getpid(),
            "node_ip": ray.util.get_node_ip_address() if ray.is_initialized() else "127.0.0.1",
            "gpu_ids": gpu_ids,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "local_rank": os.environ.get("LOCAL_RANK"),
            "devices": {role: str(learner.dist.device) for role, learner in self.learners.items()},
        }

    def attach(self, cls: type, *args: Any) -> None:
        """Builds ``cls(learner, *args)`` in this process, beside the learner (a colocated rollout engine)."""
        if self.learner is None:
            raise RuntimeError("build_learner first")
        self.attached = cls(self.learner, *args)

    def call_attached(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Calls ``<attached object>.<method>(*args, **kwargs)``."""
        if self.attached is None:
            raise RuntimeError("attach first")
        return getattr(self.attached, method)(*args, **kwargs)


def init_ray(ray_cfg: RayConfig, **kwargs: Any) -> None:
    """Starts or joins Ray as ``ray_cfg`` says, unless this process already did (``kwargs`` go to ``ray.init``).

    ``ray.address`` None starts a fresh local Ray (or joins ``RAY_ADDRESS`` when set, as under ``ray job
    submit``); a bare ``ray.init()`` would instead join any Ray another process on this machine started.
    ``ray.worker_niceness`` applies to a Ray started here (a running cluster keeps its own setting).
    """
    import ray

    if not ray.is_initialized():
        address = ray_cfg.address or os.environ.get("RAY_ADDRESS") or "local"
        if address == "local" and ray_cfg.worker_niceness is not None:
            kwargs.setdefault("_system_config", {})["worker_niceness"] = ray_cfg.worker_niceness
        ray.init(address=address, num_cpus=ray_cfg.num_cpus, include_dashboard=False, **kwargs)


def _ray_workers(world_size: int, ray_cfg: RayConfig, num_gpus: float) -> list[Any]:
    import ray

    init_ray(ray_cfg)
    actor_cls = ray.remote(num_cpus=1, num_gpus=num_gpus)(RankWorker)
    workers = [actor_cls.remote() for _ in range(world_size)]
    addr, port = ray.get(workers[0].node_address.remote())
    # LOCAL_RANK 0: an actor that reserves a GPU sees only that one (Ray sets its CUDA_VISIBLE_DEVICES), so
    # its device is cuda:0 whichever GPU of the node it got.
    ray.get([w.set_env.remote(_rank_env(r, world_size, addr, port, 0)) for r, w in enumerate(workers)])
    return workers


def _spawn_target(
    index: int, fn: Callable[..., Any], world_size: int, port: int, args: tuple, results: Any
) -> None:
    # Local processes on one machine see every GPU: rank i takes cuda:i, as under torchrun.
    os.environ.update(_rank_env(index, world_size, "127.0.0.1", port, index))
    results[index] = fn(*args)


def run_on_ranks(
    fn: Callable[..., Any], world_size: int, *args: Any, ray_cfg: RayConfig, num_gpus_per_rank: float = 0.0
) -> list[Any]:
    """Runs ``fn(*args)`` on ``world_size`` fresh ranks (Ray actors, or spawned processes without Ray).

    ``fn`` and ``args`` must be picklable (a module-level function). Returns each rank's result, by rank.

    Raises:
        ray.exceptions.RayTaskError: a Ray rank raised (it carries the rank's exception).
        torch.multiprocessing.ProcessRaisedException: a spawned rank raised (it carries the traceback).
    """
    if ray_cfg.enabled:
        import ray

        workers = _ray_workers(world_size, ray_cfg, num_gpus_per_rank)
        try:
            return ray.get([w.run.remote(fn, *args) for w in workers])
        finally:
            for w in workers:
                ray.kill(w)
    with mp.get_context("spawn").Manager() as manager:
        results = manager.dict()
        mp.start_processes(
            _spawn_target,
            args=(fn, world_size, free_port(), args, results),
            nprocs=world_size,
            start_method="spawn",
        )
        return [results[r] for r in range(world_size)]


class LearnerGroup:
    """``world_size`` learner ranks driven from this process (Ray actors, or one in-process rank).

    Args:
        cfg: the ``LearnerConfig`` every rank builds its learner from.
        world_size: ranks.
        ray_cfg: ``enabled=false`` runs a single rank in this process (``world_size`` must be 1).
        num_gpus_per_rank: GPUs each Ray actor reserves (1 on GPU clusters).

    :meth:`add_role` puts a second learner (GRPO's frozen reference) on the same ranks and returns a group that
    drives it: the same processes, GPUs and process group, as verl fuses its actor and reference workers.

    Raises:
        ValueError: ``world_size > 1`` with Ray disabled (use torchrun or ``run_on_ranks`` then).
    """

    def __init__(self, cfg: Any, world_size: int, ray_cfg: RayConfig, num_gpus_per_rank: float = 0.0) -> None:
        self.world_size = world_size
        self.role = "actor"
        self._ray = ray_cfg.enabled
        self._owner = True  # kills the actors at shutdown (a role's group only drops its learners)
        self._attached_pool: concurrent.futures.ThreadPoolExecutor | None = None
        self.attached_ranks = 0  # ranks holding an attached object (attach)
        if not self._ray:
            if world_size != 1:
                raise ValueError(
                    "ray.enabled=false runs one in-process rank; use world_size=1, Ray or torchrun"
                )
            self._workers: list[Any] = [RankWorker()]
            self._workers[0].build_learner(cfg)
            return
        import ray

        self._workers = _ray_workers(world_size, ray_cfg, num_gpus_per_rank)
        ray.get([w.build_learner.remote(cfg) for w in self._workers])

    def add_role(self, role: str, cfg: Any) -> LearnerGroup:
        """Builds ``cfg``'s learner as ``role`` on every rank of this group; returns the group that drives it.

        The new learners join the ranks' existing process group; that group's ``shutdown`` frees them and
        leaves the ranks running.
        """
        if self._ray:
            import ray

            ray.get([w.build_learner.remote(cfg, role) for w in self._workers])
        else:
            self._workers[0].build_learner(cfg, role)
        view = object.__new__(LearnerGroup)
        view.__dict__.update(self.__dict__, role=role, _owner=False, _attached_pool=None)
        return view

    def call(self, method: str, per_rank_args: Sequence[tuple] | None = None, **kwargs: Any) -> list[Any]:
        """Calls a ``Learner`` method on every rank at once (they run collectives); results by rank.

        Args:
            method: the method name (``train_step``, ``forward_logprobs``, ``save_checkpoint`` ...).
            per_rank_args: one positional-argument tuple per rank (each rank's share of a batch), or None.
            kwargs: the same keyword arguments for every rank.
        """
        args = list(per_rank_args) if per_rank_args is not None else [()] * self.world_size
        if len(args) != self.world_size:
            raise ValueError(f"per_rank_args has {len(args)} entries for {self.world_size} ranks")
        if not self._ray:
            return [self._workers[0].call_role(self.role, method, *args[0], **kwargs)]
        import ray

        return ray.get(
            [
                w.call_role.remote(self.role, method, *a, **kwargs)
                for w, a in zip(self._workers, args, strict=True)
            ]
        )

    def placements(self) -> list[dict[str, Any]]:
        """Each rank's :meth:`RankWorker.placement` (process, GPUs, ``LOCAL_RANK``, devices), by rank."""
        if not self._ray:
            return [self._workers[0].placement()]
        import ray

        return ray.get([w.placement.remote() for w in self._workers])

    def attach(self, cls: type, *args: Any, all_ranks: bool = False) -> None:
        """Builds ``cls(the rank's learner, *args)`` inside rank 0's process, or in every rank's process with
        ``all_ranks`` (one colocated rollout engine per rank or per tensor-parallel group); see
        :meth:`submit_attached`."""
        ranks = range(self.world_size) if all_ranks else range(1)
        if self._ray:
            import ray

            ray.get([self._workers[r].attach.remote(cls, *args) for r in ranks])
        else:
            self._workers[0].attach(cls, *args)
            # One thread, like an actor's mailbox: the driver keeps going while rank 0 works.
            self._attached_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=cls.__name__)
        self.attached_ranks = len(ranks)

    def submit_attached(
        self, method: str, *args: Any, rank: int = 0, **kwargs: Any
    ) -> concurrent.futures.Future:
        """Calls a method of the object :meth:`attach` built on ``rank``, asynchronously; the future holds its
        result.

        With Ray the call queues behind the rank's other calls (one mailbox); in-process it runs on a worker
        thread, so the caller must not drive the learner until the future is done.
        """
        if not 0 <= rank < self.attached_ranks:
            raise RuntimeError(
                f"nothing attached on rank {rank}: attach first (all_ranks=True for every rank)"
            )
        if self._ray:
            return self._workers[rank].call_attached.remote(method, *args, **kwargs).future()
        if self._attached_pool is None:
            raise RuntimeError("attach first")
        return self._attached_pool.submit(self._workers[0].call_attached, method, *args, **kwargs)

    def shutdown(self) -> None:
        """Stops the actors (their process groups go with them); a role's group frees only its learners."""
        if self._attached_pool is not None:
            self._attached_pool.shutdown(wait=True)
            self._attached_pool = None
        if not self._owner:
            if self._ray:
                import ray

                try:
                    ray.get([w.drop_learner.remote(self.role) for w in self._workers])
                except ray.exceptions.RayActorError:
                    pass  # the owning group stopped the ranks first: the learners went with them
            elif self._workers:
                self._workers[0].drop_learner(self.role)
        elif self._ray:
            import ray

            for w in self._workers:
                ray.kill(w)
        self._workers = []

    def rank0_address(self) -> tuple[str, int]:
        """Rank 0's node address and a port free on it a moment ago (for a group rank 0 opens: the split
        placement's weight channel); ``127.0.0.1`` and a local port when the rank runs in this process."""
        if not self._ray:
            return "127.0.0.1", free_port()
        import ray

        return ray.get(self._workers[0].node_address.remote())
