"""The GRPO step's workers and the one way the driver talks to them.

``Actor(cls, ...)`` puts a worker in a Ray actor (``ray.enabled=true``) or in this process (RLlib's local mode:
a ``breakpoint()`` works). Either way ``submit(method, ...)`` returns a ``concurrent.futures.Future``, so the
driver overlaps work the same way in both: reward scoring of one generation chunk runs while the next chunk
generates.

- :class:`RolloutWorker`: a policy copy and a rollout engine (HF ``generate`` or vLLM); new weights each step
  (split placement).
- :class:`ColocatedRolloutWorker`: HF ``generate`` inside learner rank 0's process with the learner's own
  weights (colocated placement, ``rollout.hybrid_engine=true``); :class:`Colocated` is its driver-side handle,
  with the same ``submit`` / ``call`` / ``shutdown`` as :class:`Actor`.
- :class:`RewardWorker`: the reward function and its backend (a sandboxed ``RewardPool`` or remote reward
  services): untrusted completions are executed there, never in the driver or the learner.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from codepercept_rl.config.schema import ModelConfig, RewardConfig, RolloutConfig
from codepercept_rl.rewards import RewardOutput, RewardSample, build_reward, compute_rewards, make_backend
from codepercept_rl.rollout import Completion, RolloutPrompt, SamplingParams


class Actor:
    """A worker object in a Ray actor or in this process, with future-returning calls.

    Args:
        cls: the worker class (a plain class).
        args, kwargs: its constructor arguments.
        ray_enabled: place it in a Ray actor.
        num_cpus, num_gpus: the Ray actor's resources.
    """

    def __init__(
        self,
        cls: type,
        *args: Any,
        ray_enabled: bool,
        num_cpus: float = 1.0,
        num_gpus: float = 0.0,
        **kwargs: Any,
    ) -> None:
        self._ray = ray_enabled
        self.name = cls.__name__
        self.restarts = 0
        self.engines = 1  # objects serving its calls (Colocated may hold several rollout engines)
        if ray_enabled:
            import ray

            self._remote_cls = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus)(cls)
            self._args, self._kwargs = args, kwargs
            self._handle = self._remote_cls.remote(*args, **kwargs)
        else:
            self._obj = cls(*args, **kwargs)
            # One thread: calls run in order, like a Ray actor's mailbox, but off the driver's thread.
            self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix=self.name)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Call ``method`` asynchronously; the future holds its result or raises its exception."""
        if self._ray:
            return getattr(self._handle, method).remote(*args, **kwargs).future()
        return self._pool.submit(getattr(self._obj, method), *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` and wait for its result."""
        return self.submit(method, *args, **kwargs).result()

    def restart(self) -> None:
        """Replace a Ray actor that died (its process was killed, its node went away) with a fresh one.

        Raises:
            RuntimeError: in-process workers cannot die on their own; there is nothing to restart.
        """
        if not self._ray:
            raise RuntimeError(f"{self.name} runs in-process; it cannot be restarted")
        import ray

        ray.kill(self._handle, no_restart=True)
        self._handle = self._remote_cls.remote(*self._args, **self._kwargs)
        self.restarts += 1

    def shutdown(self) -> None:
        """Close the worker (its ``close`` method when it has one) and free the actor."""
        try:
            self.call("close")
        finally:
            if self._ray:
                import ray

                ray.kill(self._handle)
            else:
                self._pool.shutdown(wait=True)


def _vllm_engine(
    model_cfg: ModelConfig, rollout_cfg: RolloutConfig, max_prompt_tokens: int | None, **engine_kwargs: Any
) -> Any:
    """A vLLM engine on ``model.path`` (split or colocated), ``max_model_len`` by verl's rule; ``engine_kwargs``
    go to ``vllm.LLM``."""
    from codepercept_rl.rollout.vllm_engine import VLLMRolloutEngine

    if not model_cfg.path:
        raise ValueError("rollout.name=vllm needs model.path (a Hugging Face folder saved for vLLM)")
    # verl's rule: room for the longest prompt and the longest response, unless set outright.
    max_model_len = rollout_cfg.max_model_len
    if max_model_len is None:
        if max_prompt_tokens is None:
            raise ValueError("rollout.name=vllm needs data.max_prompt_length or rollout.max_model_len")
        max_model_len = max_prompt_tokens + rollout_cfg.response_length
    return VLLMRolloutEngine(
        model_cfg.path,
        dtype=model_cfg.dtype,
        tensor_parallel_size=rollout_cfg.tensor_model_parallel_size,
        gpu_memory_utilization=rollout_cfg.gpu_memory_utilization,
        max_model_len=max_model_len,
        enable_sleep_mode=rollout_cfg.enable_sleep_mode,
        max_prompt_tokens=max_prompt_tokens,
        update_weights_bucket_megabytes=rollout_cfg.update_weights_bucket_megabytes,
        **engine_kwargs,
    )


class RolloutWorker:
    """A policy copy with a rollout engine.

    Args:
        model_cfg: the policy (``model.path`` or a tiny preset); the learner pushes weights each step.
        rollout_cfg: engine and sampling settings.
        max_prompt_tokens: longer prompts are skipped and counted; with vLLM, plus ``rollout.response_length``,
            the engine's ``max_model_len`` unless ``rollout.max_model_len`` is set.
        seed: for a tiny model built from scratch (the learner's seed: identical initial weights).
        torch_num_threads: intra-op threads of this process.
    """

    def __init__(
        self,
        model_cfg: ModelConfig,
        rollout_cfg: RolloutConfig,
        max_prompt_tokens: int | None,
        seed: int = 0,
        torch_num_threads: int = 1,
    ) -> None:
        import torch

        from codepercept_rl.learner.learner import load_policy

        torch.set_num_threads(torch_num_threads)
        self.cfg = rollout_cfg
        if rollout_cfg.name == "vllm":
            self.engine: Any = _vllm_engine(model_cfg, rollout_cfg, max_prompt_tokens)
        else:
            from codepercept_rl.rollout import HFRolloutEngine

            model, processor = load_policy(model_cfg, seed=seed)
            model.eval()
            self.engine = HFRolloutEngine(
                model,
                processor,
                micro_batch_size=rollout_cfg.micro_batch_size,
                max_prompt_tokens=max_prompt_tokens,
                decode=rollout_cfg.hf_decode,
                sampler=rollout_cfg.hf_sampler,
            )

    def generate(self, prompts: Sequence[RolloutPrompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt."""
        return self.engine.generate(prompts, params)

    def update_weights(self, state: Mapping[str, Any]) -> int:
        """Load the learner's full weights; returns how many tensors were loaded."""
        self.engine.update_weights(state.items())
        return len(state)

    # The receiving end of the learner's weight channel (None until open_weight_channel).
    _weight_channel: Any = None

    def open_weight_channel(
        self, host: str, port: int, backend: str = "gloo", timeout_s: float = 600.0
    ) -> None:
        """Joins learner rank 0's weight channel (:class:`~codepercept_rl.rollout.weight_sync.WeightChannel`)
        as channel rank 1; blocks until rank 0 joins too. With ``nccl`` payloads arrive on this process's GPU.

        Args:
            host, port: rank 0's address (its rendezvous store).
            backend: ``gloo`` or ``nccl`` (rank 0's choice).
            timeout_s: how long to wait for rank 0, here and in every later :meth:`receive_weights`.

        Raises:
            RuntimeError: rank 0 did not answer within ``timeout_s``.
        """
        import torch

        from codepercept_rl.rollout.weight_sync import WeightChannel

        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else "cpu"
        try:
            self._weight_channel = WeightChannel(host, port, rank=1, world_size=2, backend=backend, device=device,
                                                 timeout_s=timeout_s)  # fmt: skip
        except RuntimeError as e:
            raise RuntimeError(f"weight channel on {host}:{port} ({backend}): learner rank 0 did not answer "
                               f"within {timeout_s:g} s: {e}") from e  # fmt: skip

    def receive_weights(self) -> int:
        """Loads the weights learner rank 0 streams (``Learner.send_weights_to_rollout``) into the engine, one
        bucket at a time: each bucket is consumed before the next one overwrites the receive buffer. Returns
        how many tensors were loaded.

        Raises:
            RuntimeError: no channel, or rank 0 died or stopped sending for ``timeout_s``.
        """
        from codepercept_rl.rollout import HFRolloutEngine
        from codepercept_rl.rollout.weight_sync import receive_weights

        if self._weight_channel is None:
            raise RuntimeError("receive_weights before open_weight_channel")
        # HF copies each tensor as it comes; vLLM keeps tensors until its own bucket fills, past the next
        # receive: host-memory views of the receive buffer are cloned for it (a GPU view is copied to host there).
        keeps = not isinstance(self.engine, HFRolloutEngine)
        stream = receive_weights(self._weight_channel)
        loaded, channel_failed = 0, False

        def named_tensors() -> Any:
            nonlocal loaded, channel_failed
            while True:
                try:
                    bucket = next(stream)
                except StopIteration:
                    return
                except RuntimeError:
                    channel_failed = True
                    raise
                for name, tensor in bucket:
                    loaded += 1
                    yield name, tensor.clone() if keeps and tensor.device.type == "cpu" else tensor

        try:
            self.engine.update_weights(named_tensors())
        except Exception as e:
            if channel_failed:
                raise RuntimeError(f"weight sync from learner rank 0 failed (dead, or no answer within "
                                   f"{self._weight_channel.timeout_s:g} s): {e}") from e  # fmt: skip
            for _ in stream:  # the engine refused a tensor: let rank 0 finish its stream, then fail
                pass
            raise
        return loaded

    def stats(self) -> dict[str, int]:
        """The engine's counters (prompts too long, generated tokens ...)."""
        return dict(self.engine.stats)

    def close(self) -> None:
        """Drops the weight channel (its groups); nothing else to release beyond the process."""
        self._weight_channel = None


class ColocatedRolloutWorker:
    """A rollout engine in a learner rank's process with the learner's own weights (verl's hybrid engine).

    ``rollout.name=hf``: HF ``generate`` on the learner's :attr:`~codepercept_rl.learner.Learner.rollout_module`
    in rank 0's process (on one fp32 rank its parameters are the learner's; otherwise a plain module the learner
    refreshes in place, ``sync_rollout_model``, a collective of all ranks); the driver calls
    ``sync_rollout_model`` on every rank once before attaching this worker.

    ``rollout.name=vllm``: one vLLM engine per group of ``rollout.tensor_model_parallel_size`` consecutive ranks,
    built from ``model.path`` in every rank's process (each rank holds one tensor-parallel shard of it).
    With several ranks the engine joins the learners' process group through vLLM's ``external_launcher``
    executor (as verl's SPMD rollout does): no processes or process groups of its own. The ranks of one
    tensor-parallel group must be given the same prompts; different groups generate different prompts (data
    parallel). :meth:`sync_weights` streams the learner's weights into it in buckets; every rank calls it at
    once (each entry is one all-gather of the FSDP2 shards, and each rank loads its own tensor-parallel slice).

    Args:
        learner: this rank's :class:`~codepercept_rl.learner.Learner`.
        rollout_cfg: engine and sampling settings.
        max_prompt_tokens: longer prompts are skipped and counted; with vLLM, plus ``rollout.response_length``,
            the engine's ``max_model_len`` unless ``rollout.max_model_len`` is set.

    Raises:
        ValueError: the learner ranks do not split into tensor-parallel groups of the configured size.
    """

    def __init__(self, learner: Any, rollout_cfg: RolloutConfig, max_prompt_tokens: int | None) -> None:
        self.learner = learner
        if rollout_cfg.name == "vllm":
            world, tp = learner.dist.world_size, rollout_cfg.tensor_model_parallel_size
            if world % tp:
                raise ValueError(
                    f"rollout.tensor_model_parallel_size={tp} does not divide the {world} learner ranks"
                )
            kwargs: dict[str, Any] = {}
            if world > 1:
                # The learners' process group is vLLM's world: it forms its tensor-parallel groups inside it
                # (it reads the rank from the environment, as under torchrun).
                kwargs["distributed_executor_backend"] = "external_launcher"
                os.environ.setdefault("RANK", str(learner.dist.rank))
                os.environ.setdefault("WORLD_SIZE", str(world))
            self.engine: Any = _vllm_engine(learner.cfg.model, rollout_cfg, max_prompt_tokens, **kwargs)
            return
        from codepercept_rl.rollout import HFRolloutEngine

        if learner.rollout_module is None:
            raise RuntimeError("call sync_rollout_model on every rank before attaching the colocated rollout")
        self.engine = HFRolloutEngine(
            learner.rollout_module,
            learner.processor,
            micro_batch_size=rollout_cfg.micro_batch_size,
            max_prompt_tokens=max_prompt_tokens,
            decode=rollout_cfg.hf_decode,
            sampler=rollout_cfg.hf_sampler,
        )

    def generate(self, prompts: Sequence[RolloutPrompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, sampled with the learner's current weights."""
        return self.engine.generate(prompts, params)

    def sync_weights(self) -> int:
        """vLLM: sleep, wake the weights, stream the learner's weights in (one parameter at a time, in
        buckets: no whole state dict), wake the KV cache (verl's order; sleep/wake are no-ops on CPU).
        Returns the bytes streamed."""
        import torch

        self.engine.sleep(level=2)  # the weights are about to be replaced: discard them, do not offload
        self.engine.wake_up(tags=["weights"])
        dtype = torch.bfloat16 if self.learner.cfg.model.dtype == "bfloat16" else torch.float32
        sent = 0

        def counted() -> Any:
            nonlocal sent
            for name, tensor in self.learner.iter_full_params(dtype):
                sent += tensor.numel() * tensor.element_size()
                yield name, tensor

        self.engine.update_weights(counted())
        self.engine.wake_up(tags=["kv_cache"])
        return sent

    def stats(self) -> dict[str, int]:
        """The engine's counters (prompts too long, generated tokens ...)."""
        return dict(self.engine.stats)

    def close(self) -> None:
        """Nothing to release: the module belongs to the learner."""


class Colocated:
    """The driver's handle on objects living beside the learner ranks (``LearnerGroup.attach``), with
    :class:`Actor`'s ``submit`` / ``call`` / ``shutdown``; it cannot be restarted apart from the learners.

    Args:
        learners: the :class:`~codepercept_rl.learner.actor.LearnerGroup`.
        cls, args: ``cls(rank's learner, *args)`` is built in the ranks' processes.
        group_size: ``None``: one object, beside rank 0. A number: one object on every rank, the ranks in groups
            of ``group_size`` consecutive ranks (a vLLM engine's tensor-parallel group). Then ``generate``
            splits its prompts into one contiguous share per group (each rank of a group gets its group's
            share; the request seeds stay those of one engine given every prompt) and returns them in order,
            ``stats`` sums the groups, and any other method runs on every rank at once (weight syncs are
            collectives) and returns rank 0's result.
    """

    def __init__(self, learners: Any, cls: type, *args: Any, group_size: int | None = None) -> None:
        self.name = cls.__name__
        self._learners = learners
        self._group_size = group_size
        # How many objects serve generate (one per group).
        self.engines = 1 if group_size is None else learners.world_size // group_size
        if group_size is not None and (group_size < 1 or learners.world_size % group_size):
            raise ValueError(
                f"group_size={group_size} does not divide the {learners.world_size} learner ranks"
            )
        learners.attach(cls, *args, all_ranks=group_size is not None)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Call ``method`` asynchronously; the future holds its result or raises its exception."""
        if self._group_size is None:
            return self._learners.submit_attached(method, *args, **kwargs)
        world, size = self._learners.world_size, self._group_size
        if method == "generate":
            prompts, params = args
            shares = _contiguous_shares(len(prompts), world // size)
            futures = []
            for g, (lo, hi) in enumerate(shares):
                if lo == hi:
                    continue
                share = dataclasses.replace(params, seed=None if params.seed is None else params.seed + lo)
                futures += [self._learners.submit_attached(method, prompts[lo:hi], share, rank=r, **kwargs)
                            for r in range(g * size, (g + 1) * size)]  # fmt: skip
            # A group's ranks return the same completions: keep each group's first.
            return _joined(futures[::size], lambda parts: [groups for part in parts for groups in part])
        if method == "stats":  # one engine per group: ask each group's first rank
            leaders = range(0, world, size)
            return _joined([self._learners.submit_attached(method, rank=r) for r in leaders], _summed)
        futures = [self._learners.submit_attached(method, *args, rank=r, **kwargs) for r in range(world)]
        return _joined(futures, lambda results: results[0])

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` and wait for its result."""
        return self.submit(method, *args, **kwargs).result()

    def shutdown(self) -> None:
        """Close the objects; the learner group (and its processes) is shut down by its owner."""
        self.call("close")


def _contiguous_shares(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``[lo, hi)`` ranges covering ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds = [0]
    for p in range(parts):
        bounds.append(bounds[-1] + base + (p < extra))
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def _summed(dicts: Sequence[Mapping[str, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for d in dicts:
        for k, v in d.items():
            out[k] = out.get(k, 0) + v
    return out


def _joined(futures: Sequence[concurrent.futures.Future], combine: Any) -> concurrent.futures.Future:
    """A future of ``combine([f.result() for f in futures])``, done when all are (the first error wins)."""
    out: concurrent.futures.Future = concurrent.futures.Future()
    pending = [len(futures)]
    lock = threading.Lock()

    def finish() -> None:
        try:
            out.set_result(combine([f.result() for f in futures]))
        except BaseException as e:  # noqa: BLE001 - handed to the caller through the future
            out.set_exception(e)

    def done(_: concurrent.futures.Future) -> None:
        with lock:
            pending[0] -= 1
            last = pending[0] == 0
        if last:
            finish()

    if not futures:
        finish()
    for f in futures:
        f.add_done_callback(done)
    return out


class RewardWorker:
    """The configured reward and its sandboxed backend.

    Args:
        reward_cfg: ``reward.name`` / ``weights`` / ``path`` / ``server_urls`` / ``num_workers`` / ``judge``.
    """

    def __init__(self, reward_cfg: RewardConfig) -> None:
        self.reward = build_reward(reward_cfg)
        self.backend = make_backend(reward_cfg)

    def register_targets(self, targets: Mapping[str, bytes]) -> int:
        """Register target images once; samples then refer to them by id."""
        return len(self.backend.register_targets(dict(targets)))

    def score(self, samples: Sequence[RewardSample]) -> RewardOutput:
        """Scores of a batch of completions (one per sample, ``None`` = could not score)."""
        return compute_rewards(self.reward, list(samples), self.backend)

    def render(self, code: str) -> bytes | None:
        """The PNG a piece of code draws in the sandbox (for sample tables), or None."""
        return self.backend.render(code).png

    def close(self) -> None:
        """Stop the sandbox workers or HTTP connections."""
        self.backend.close()
