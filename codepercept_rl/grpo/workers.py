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


def _vllm_engine(model_cfg: ModelConfig, rollout_cfg: RolloutConfig, max_prompt_tokens: int | None) -> Any:
    """A vLLM engine on ``model.path`` (split or colocated), ``max_model_len`` by verl's rule."""
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
            )

    def generate(self, prompts: Sequence[RolloutPrompt], params: SamplingParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt."""
        return self.engine.generate(prompts, params)

    def update_weights(self, state: Mapping[str, Any]) -> int:
        """Load the learner's full weights; returns how many tensors were loaded."""
        self.engine.update_weights(state.items())
        return len(state)

    def stats(self) -> dict[str, int]:
        """The engine's counters (prompts too long, generated tokens ...)."""
        return dict(self.engine.stats)

    def close(self) -> None:
        """Nothing to release beyond the process."""


class ColocatedRolloutWorker:
    """A rollout engine in learner rank 0's process with the learner's own weights (verl's hybrid engine).

    ``rollout.name=hf``: HF ``generate`` on the learner's :attr:`~codepercept_rl.learner.Learner.rollout_module`
    (on one fp32 rank its parameters are the learner's; otherwise a plain module the learner refreshes in place,
    ``sync_rollout_model``, a collective of all ranks); the driver calls ``sync_rollout_model`` on every rank once
    before attaching this worker. ``rollout.name=vllm``: a vLLM engine built from ``model.path`` (one learner
    rank only), refreshed by :meth:`sync_weights`, which streams the learner's weights into it in buckets.

    Args:
        learner: rank 0's :class:`~codepercept_rl.learner.Learner`.
        rollout_cfg: engine and sampling settings.
        max_prompt_tokens: longer prompts are skipped and counted; with vLLM, plus ``rollout.response_length``,
            the engine's ``max_model_len`` unless ``rollout.max_model_len`` is set.
    """

    def __init__(self, learner: Any, rollout_cfg: RolloutConfig, max_prompt_tokens: int | None) -> None:
        self.learner = learner
        if rollout_cfg.name == "vllm":
            if learner.dist.world_size != 1:
                raise ValueError("a colocated vLLM engine needs one learner rank (several: not implemented)")
            self.engine: Any = _vllm_engine(learner.cfg.model, rollout_cfg, max_prompt_tokens)
            return
        from codepercept_rl.rollout import HFRolloutEngine

        if learner.rollout_module is None:
            raise RuntimeError("call sync_rollout_model on every rank before attaching the colocated rollout")
        self.engine = HFRolloutEngine(
            learner.rollout_module,
            learner.processor,
            micro_batch_size=rollout_cfg.micro_batch_size,
            max_prompt_tokens=max_prompt_tokens,
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
    """The driver's handle on an object living beside learner rank 0 (``LearnerGroup.attach``), with
    :class:`Actor`'s ``submit`` / ``call`` / ``shutdown``; it cannot be restarted apart from the learners."""

    def __init__(self, learners: Any, cls: type, *args: Any) -> None:
        self.name = cls.__name__
        self._learners = learners
        learners.attach(cls, *args)

    def submit(self, method: str, *args: Any, **kwargs: Any) -> concurrent.futures.Future:
        """Call ``method`` asynchronously; the future holds its result or raises its exception."""
        return self._learners.submit_attached(method, *args, **kwargs)

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call ``method`` and wait for its result."""
        return self.submit(method, *args, **kwargs).result()

    def shutdown(self) -> None:
        """Close the object; the learner group (and its process) is shut down by its owner."""
        self.call("close")


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
