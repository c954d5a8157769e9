"""The R1 job: GRPO with code-execution rewards, driven from here, work done by actors.

    codepercept-rl train recipes/r1_tiny_cpu.yaml [key=value ...] [--resume]

Reads top to bottom: ``setup`` (config, Ray, data, learner ranks, rollout worker, reward worker, tracker,
resume) -> ``train`` (``grpo_step`` until ``trainer.total_training_steps``, validation every
``trainer.test_freq``, a checkpoint every ``trainer.save_freq``) -> ``cleanup``.

One step (:func:`grpo_step`), each phase timed under ``timing_s/<phase>``:

1. ``gen``: the rollout worker samples ``rollout.n`` completions per prompt, in chunks;
2. ``reward``: each chunk is scored by the reward worker (sandboxed renders) as soon as it is generated, so
   scoring overlaps generation; ``timing_s/reward`` is the wait left after generation ended. With
   ``algorithm.filter_groups`` groups whose rewards are all equal are dropped and more prompts are sampled;
3. ``old_log_prob`` / ``ref``: log-probs of the sampling policy and, when a KL term is on, of the frozen
   reference. When the update is on-policy (``actor.ppo_epochs=1`` and one mini-batch per rollout batch, as
   verl's actor decides ``on_policy``; no KL in the reward) the sampling policy *is* the policy the update's
   forward sees, so that forward's log-probs, detached, stand in for the old ones (ratio 1, the same
   gradient) and this forward is skipped; ``actor.recompute_log_prob=true`` always runs it;
4. ``adv``: group-normalised advantages (``algorithm.norm_adv_by_std_in_grpo=false``: Dr. GRPO);
5. ``update_actor``: ``actor.ppo_epochs`` passes over mini-batches of ``actor.ppo_mini_batch_size`` prompts
   (``actor/entropy`` comes from this forward when phase 3 was skipped);
6. ``update_weights``: the new weights reach the rollout engine (see placement).

Placement (``rollout.hybrid_engine``, verl's ``actor_rollout_ref.hybrid_engine``):

- split (``false``, the default): the rollout worker is its own Ray actor (with vLLM, its own
  ``rollout.tensor_model_parallel_size`` GPUs) holding its own copy of the policy. At set-up learner rank 0 and
  the worker open a private two-party process group (verl's weight-update group: NCCL with vLLM on GPU, else
  gloo); after each update every rank gathers the full weights parameter by parameter and rank 0 streams them
  over it in buckets of ``rollout.update_weights_bucket_megabytes``, which the worker loads one at a time (no
  whole state dict, no object store; with Ray disabled the same channel joins two threads of this process). A
  dead or silent peer fails the sync after ``WEIGHT_SYNC_TIMEOUT_S``;
- colocated (``true``): no rollout actor; with HF ``generate`` the engine lives in learner rank 0's process
  and generates with the learner's weights in memory. With one fp32 rank its module's parameters *are* the
  learner's (the optimizer updates them in place: phase 6 copies nothing, ``timing_s/update_weights`` ~ 0);
  with several ranks (or bf16 compute) every rank joins a gather into a plain module on rank 0, in memory.
  Rank 0 generates while the other ranks wait; on CPU it frees the rollout actor's core.
  With ``rollout.name=vllm`` every group of ``rollout.tensor_model_parallel_size`` ranks holds one vLLM engine,
  built from ``model.path`` inside the learners' process group (vLLM's ``external_launcher``), and each group
  generates its share of the prompts. Phase 6 streams the learner's weights into the engines parameter by
  parameter (one all-gather each) in buckets of ``rollout.update_weights_bucket_megabytes`` (sleep, wake the
  weights, load, wake the KV cache, as verl does); with ``rollout.enable_sleep_mode`` the engines free their
  weights and KV cache on the GPUs during the update.

One step off-policy (``trainer.one_step_off_policy=true``, verl's recipe of that name; split placement only):
step k+1's first generation round goes to the rollout worker as soon as step k takes its own prefetched batch
(step 0, which has none, submits it after its rounds), so generation, with the weights before step k's update,
runs beside step k's wait for rewards and phases 3-5; a collector thread hands each chunk to the reward worker
as it arrives. Phase 6 waits for the worker to finish sampling (``timing_s/wait_rollout``: the generation the
step did not hide) and then syncs, so step k+1 trains on rollouts exactly one policy version old; dynamic
sampling's further rounds, if any, queue behind the prefetched one. The update is then never on-policy: the old
log-probs are recomputed (phase 3), so the clipped ratio is taken against the weights that start the update,
as verl does, or with ``algorithm.rollout_correction.bypass_mode=true`` they are the engine's own, the ratio
against the weights that sampled. Step k+1 logs ``timing_s/gen_overlapped`` (its first round's generation) and
``batch/off_policy_rollouts``. A checkpoint keeps the prompts of the batch in flight: the resumed run samples
them again as its first round, with the restored weights.

Sampling is seeded per step, so a run resumed from a checkpoint (``--resume``, or ``trainer.resume_mode=auto``)
logs the same metrics as an uninterrupted one on CPU (one step off-policy: except the step after the resume). Metric names follow verl (``actor/pg_loss``,
``critic/score/mean``, ``response_length/mean``, ``timing_s/*``, ``perf/throughput``).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import math
import statistics
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from codepercept_rl.config import JobConfig, load_config, to_dict
from codepercept_rl.errors import UserError
from codepercept_rl.grpo.algos import grpo_advantages, kl_penalty
from codepercept_rl.grpo.batch import (
    PromptEncoder,
    Rollout,
    TrainBatch,
    build_micro_batches,
    response_logprobs,
)
from codepercept_rl.grpo.data import PromptSampler, R1Dataset
from codepercept_rl.grpo.loss import GRPOLoss
from codepercept_rl.grpo.workers import Actor, Colocated, ColocatedRolloutWorker, RewardWorker, RolloutWorker
from codepercept_rl.learner import LearnerConfig
from codepercept_rl.learner import checkpoint as ckpt
from codepercept_rl.learner.actor import LearnerGroup, init_ray
from codepercept_rl.plan import check_placement
from codepercept_rl.rollout import SamplingParams
from codepercept_rl.rollout.hf import vision_token_ids
from codepercept_rl.tracking import Tracker
from codepercept_rl.utils.run import prepare_run_dir, seed_everything

log = logging.getLogger("codepercept_rl.train")

MAX_CONSECUTIVE_SKIPPED_UPDATES = 3  # non-finite gradients this many steps in a row stop the run
# Split placement: how long either end of the weight channel waits for the other (a dead or hung peer fails the
# sync after this long instead of hanging); the learner ranks' own collective timeout (``init_distributed``).
WEIGHT_SYNC_TIMEOUT_S = 600.0


@dataclass
class GRPORun:
    """Everything the driver holds."""

    cfg: JobConfig
    run_dir: Path
    tracker: Tracker
    train_data: R1Dataset
    val_data: R1Dataset | None
    sampler: PromptSampler
    learners: LearnerGroup
    reference: LearnerGroup | None
    rollout: Actor | Colocated
    reward: Actor
    encoder: PromptEncoder
    loss: GRPOLoss
    world_size: int
    total_steps: int
    vision_ids: frozenset[int] = frozenset()
    step: int = 0
    skipped_in_a_row: int = 0
    counters: Counter = field(default_factory=Counter)
    prefetch: Prefetch | None = None  # trainer.one_step_off_policy: the next step's first batch, in flight
    resume_items: list[int] | None = None  # a checkpoint's prefetched prompts: the resumed step's first round
    # trainer.one_step_off_policy: waits on a prefetched batch's chunks and scores them while the driver trains
    collector: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="rollout-collector")
    )

    @property
    def ckpt_root(self) -> Path:
        """Where checkpoints go."""
        return self.run_dir / "checkpoints"


# --------------------------------------------------------------------------------------------------------------
# setup


def setup(cfg: JobConfig, resume: bool = False) -> GRPORun:
    """Starts Ray (unless disabled), the actors and the tracker, and restores a checkpoint if asked.

    Raises:
        UserError: missing data, sizes that do not fit, ``--resume`` without a checkpoint.
    """
    _validate(cfg)
    seed_everything(cfg.trainer.seed, cfg.trainer.torch_num_threads)
    run_dir = prepare_run_dir(Path(cfg.trainer.default_local_dir) / cfg.trainer.experiment_name, cfg)
    train_data = R1Dataset(cfg.data.train_files, strict=cfg.data.strict)
    val_data = R1Dataset(cfg.data.val_files, strict=cfg.data.strict) if cfg.data.val_files else None
    if cfg.ray.enabled:
        init_ray(cfg.ray, log_to_driver=True)
        check_placement(cfg)  # one line naming the missing GPUs, not a hang on a placement
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    on_gpu = cfg.trainer.device == "cuda" or (cfg.trainer.device == "auto" and torch.cuda.is_available())
    total = cfg.trainer.total_training_steps or max(1, cfg.trainer.total_epochs * len(train_data)
                                                   // cfg.data.train_batch_size)  # fmt: skip
    learner_cfg = LearnerConfig(
        model=cfg.model,
        optim=cfg.actor.optim,
        total_steps=total,
        grad_clip=cfg.actor.grad_clip,
        seed=cfg.trainer.seed,
        device=cfg.trainer.device,
        temperature=cfg.rollout.temperature,  # log-probs of the distribution the rollouts were drawn from
        use_prefix_grouper=cfg.actor.use_prefix_grouper,
    )
    learners, reference = build_learners(cfg, learner_cfg, num_gpus_per_rank=1.0 if on_gpu else 0.0)
    if cfg.rollout.hybrid_engine:
        if cfg.rollout.name == "hf":
            learners.call("sync_rollout_model")  # rank 0's rollout module exists before the engine wraps it
        # vLLM: one engine per tensor-parallel group of ranks, each generating its share of the prompts.
        per_group = cfg.rollout.tensor_model_parallel_size if cfg.rollout.name == "vllm" else None
        rollout: Actor | Colocated = Colocated(learners, ColocatedRolloutWorker, cfg.rollout,
                                               cfg.data.max_prompt_length, group_size=per_group)  # fmt: skip
    else:
        split_vllm_on_gpu = on_gpu and cfg.rollout.name == "vllm"  # its tensor-parallel ranks, a GPU each
        rollout = Actor(RolloutWorker, cfg.model, cfg.rollout, cfg.data.max_prompt_length, cfg.trainer.seed,
                        cfg.trainer.torch_num_threads, ray_enabled=cfg.ray.enabled, num_cpus=1,
                        num_gpus=float(cfg.rollout.tensor_model_parallel_size) if split_vllm_on_gpu else 0.0)  # fmt: skip
        # An HF rollout actor holds no GPU: its end of the channel is in host memory (gloo).
        open_weight_channel(learners, rollout, backend="nccl" if split_vllm_on_gpu else "gloo")
    reward = Actor(RewardWorker, cfg.reward, ray_enabled=cfg.ray.enabled, num_cpus=0)
    reward.call("register_targets", _targets(train_data, val_data))
    processor = _driver_processor(cfg)
    loss = GRPOLoss(
        clip_ratio_low=cfg.actor.clip_ratio_low, clip_ratio_high=cfg.actor.clip_ratio_high,
        clip_ratio_c=cfg.actor.clip_ratio_c, loss_agg_mode=cfg.actor.loss_agg_mode, use_kl_loss=cfg.actor.use_kl_loss,
        kl_loss_coef=cfg.actor.kl_loss_coef, kl_loss_type=cfg.actor.kl_loss_type,
        max_response_length=cfg.rollout.response_length,
    )  # fmt: skip
    tracker = Tracker(
        run_dir, project=cfg.trainer.project_name, experiment=cfg.trainer.experiment_name,
        backends=cfg.tracking.backends, config=to_dict(cfg), wandb_mode=cfg.tracking.wandb_mode,
        group=cfg.tracking.wandb_group, job_type="grpo", tags=cfg.tracking.wandb_tags,
    )  # fmt: skip
    # A step packs and measures at most train_batch_size prompts; older encodings are dropped (bounded memory).
    encoder = PromptEncoder(processor, max_cached=max(64, 2 * cfg.data.train_batch_size))
    run = GRPORun(cfg, run_dir, tracker, train_data, val_data,
                  PromptSampler(len(train_data), cfg.trainer.seed, cfg.data.shuffle), learners, reference,
                  rollout, reward, encoder, loss, world, total,
                  frozenset(vision_token_ids(processor.tokenizer)))  # fmt: skip
    latest = ckpt.latest_checkpoint(run.ckpt_root)
    if resume and latest is None:
        raise UserError(f"--resume: no complete checkpoint under {run.ckpt_root}")
    if latest is not None and (resume or cfg.trainer.resume_mode == "auto"):
        extra = learners.call("load_checkpoint", per_rank_args=[(str(latest),)] * world)[0]
        run.step = int(extra["step"])
        run.sampler.load_state(extra["sampler"])
        run.resume_items = list(extra.get("prefetched") or []) or None
        log.info("resumed from %s at step %d", latest, run.step)
    _sync_weights(run)
    return run


def build_learners(
    cfg: JobConfig, learner_cfg: LearnerConfig, num_gpus_per_rank: float
) -> tuple[LearnerGroup, LearnerGroup | None]:
    """The policy's ranks and, when a KL term needs one, the frozen reference on the same ranks.

    One Ray actor per rank reserves ``num_gpus_per_rank`` GPUs; the reference is a second, frozen learner in
    each rank's process (verl's fused actor/ref worker): rank i's reference runs on rank i's GPU, in the
    process group the policy already set up, in ``model.dtype`` with no optimizer, its parameter shards in host
    memory between forwards when ``ref.fsdp_config.param_offload``.
    """
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    learners = LearnerGroup(learner_cfg, world, cfg.ray, num_gpus_per_rank=num_gpus_per_rank)
    reference = None
    if _needs_reference(cfg):
        ref_cfg = dataclasses.replace(
            learner_cfg, trainable=False, param_offload=cfg.ref.fsdp_config.param_offload,
            model=dataclasses.replace(learner_cfg.model, enable_gradient_checkpointing=False),
        )  # fmt: skip
        reference = learners.add_role("ref", ref_cfg)
    return learners, reference


def _validate(cfg: JobConfig) -> None:
    if not cfg.data.train_files:
        raise UserError(
            "data.train_files is empty: give the R1 parquet export, e.g. data.train_files=[r1/train.parquet]"
        )
    if cfg.rollout.n < 2:
        raise UserError(f"rollout.n={cfg.rollout.n}: GRPO needs at least 2 completions per prompt")
    if cfg.data.train_batch_size % cfg.actor.ppo_mini_batch_size:
        raise UserError(f"data.train_batch_size={cfg.data.train_batch_size} is not a multiple of "
                        f"actor.ppo_mini_batch_size={cfg.actor.ppo_mini_batch_size}")  # fmt: skip
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node
    if world > 1 and not cfg.ray.enabled:
        raise UserError(f"{world} learner ranks need Ray (ray.enabled=true) or torchrun")
    if not cfg.actor.clip_ratio_c > 1.0:
        raise UserError(f"actor.clip_ratio_c={cfg.actor.clip_ratio_c}: dual-clip PPO needs a bound > 1 "
                        "(verl's default: 3.0)")  # fmt: skip
    if cfg.rollout.temperature <= 0:
        raise UserError(f"rollout.temperature={cfg.rollout.temperature}: GRPO samples its rollouts, so it needs a "
                        "temperature > 0 (greedy decoding is rollout.val_temperature=0)")  # fmt: skip
    if cfg.actor.entropy_coeff != 0:
        raise UserError("actor.entropy_coeff != 0 is not supported yet (entropy is logged, not optimised)")
    if (cfg.algorithm.rollout_correction.bypass_mode and cfg.rollout.name == "vllm"
            and cfg.rollout.temperature != 1.0):  # fmt: skip
        raise UserError(f"algorithm.rollout_correction.bypass_mode=true with rollout.temperature="
                        f"{cfg.rollout.temperature}: vLLM reports log-probs of the untempered logits (its "
                        "logprobs_mode default), so they are not the sampling distribution's; use temperature 1.0 or "
                        "leave bypass_mode off (the learner recomputes them)")  # fmt: skip
    if cfg.trainer.one_step_off_policy and cfg.rollout.hybrid_engine:
        raise UserError("trainer.one_step_off_policy=true samples the next batch while the learner trains, so the "
                        "rollout needs its own worker and weights: set rollout.hybrid_engine=false")  # fmt: skip
    tp = cfg.rollout.tensor_model_parallel_size
    if cfg.rollout.hybrid_engine and cfg.rollout.name == "vllm" and (tp < 1 or world % tp):
        raise UserError(f"rollout.tensor_model_parallel_size={tp}: the colocated vLLM engines split the {world} "
                        "learner ranks into tensor-parallel groups, so it must divide trainer.nnodes * "
                        "trainer.n_gpus_per_node")  # fmt: skip


def _needs_reference(cfg: JobConfig) -> bool:
    return (cfg.actor.use_kl_loss and cfg.actor.kl_loss_coef > 0) or (
        cfg.algorithm.use_kl_in_reward and cfg.algorithm.kl_coef > 0
    )


def _driver_processor(cfg: JobConfig) -> Any:
    """The policy's processor (the driver tokenises prompts into learner micro-batches)."""
    from codepercept_rl.learner.learner import load_policy

    if cfg.model.path:
        from transformers import AutoConfig

        from codepercept_rl.models.processor import load_processor

        # Not AutoProcessor: S1's export names the stock processor (for vLLM), whose video half needs torchvision.
        return load_processor(cfg.model.path, AutoConfig.from_pretrained(cfg.model.path).model_type)
    return load_policy(cfg.model, seed=cfg.trainer.seed)[1]


def _sync_weights(run: GRPORun, bucket_bytes: int | None = None) -> float:
    """Phase 6: the learner's weights to the rollout engine (module docstring, placement). Returns seconds.

    ``bucket_bytes``: split placement, the weight channel's bucket size; default
    ``rollout.update_weights_bucket_megabytes`` MiB (tests pass less than a tiny model's largest tensor).
    """
    t0 = time.perf_counter()
    if run.cfg.rollout.hybrid_engine and run.cfg.rollout.name == "vllm":
        run.rollout.call("sync_weights")  # streamed from the learner into its engine, bucket by bucket
    elif run.cfg.rollout.hybrid_engine:
        run.learners.call("sync_rollout_model")  # one fp32 rank: re-binds shared tensors, copies nothing
    else:
        # Split: rank 0 streams buckets over the weight channel while the rollout worker loads them.
        bucket = bucket_bytes or run.cfg.rollout.update_weights_bucket_megabytes << 20
        received = run.rollout.submit("receive_weights")
        sent = run.learners.call("send_weights_to_rollout", bucket_bytes=bucket)[0]
        received.result()
        run.counters["weight_sync/buckets"] += sent["buckets"]
        run.counters["weight_sync/bytes"] += sent["bytes"]
        log.debug("weights to the rollout: %(tensors)d tensors, %(buckets)d buckets, %(bytes)d bytes", sent)
    return time.perf_counter() - t0


def open_weight_channel(
    learners: LearnerGroup, rollout: Actor, backend: str, timeout_s: float | None = None
) -> None:
    """Split placement, once: the weight channel between learner rank 0 (sender) and the rollout worker.

    Rank 0's node address and a free port there; then the rollout worker joins (asynchronously) while every
    learner rank is called (rank 0 joins, the others return at once), as verl's weight-update group.

    Args:
        learners: the policy's ranks.
        rollout: the split rollout worker (:class:`~codepercept_rl.grpo.workers.RolloutWorker`).
        backend: ``nccl`` (payloads GPU to GPU) or ``gloo`` (through host memory).
        timeout_s: how long each end waits for the other, now and in every sync; default
            :data:`WEIGHT_SYNC_TIMEOUT_S`.

    Raises:
        RuntimeError: (possibly inside a ``ray.exceptions.RayTaskError``) one end did not join in time.
    """
    timeout_s = WEIGHT_SYNC_TIMEOUT_S if timeout_s is None else timeout_s
    host, port = learners.rank0_address()
    joined = rollout.submit("open_weight_channel", host, port, backend, timeout_s)
    learners.call("open_weight_channel", host=host, port=port, backend=backend, timeout_s=timeout_s)
    joined.result(timeout=timeout_s)


def _on_policy(cfg: JobConfig, n_groups: int) -> bool:
    """Whether the update may use its own detached log-probs as the sampling policy's (phase 3 skipped).

    True for one epoch over one mini-batch: the weights the update's forward sees are those that sampled
    (they were synced before generation), so ``old = logp.detach()`` equals the recomputed value. A KL penalty in
    the reward needs the old log-probs before the advantages, and ``actor.recompute_log_prob`` forces them.
    Never with ``trainer.one_step_off_policy``: its rollouts come from the weights before the last update.
    """
    return (
        not cfg.actor.recompute_log_prob
        and not cfg.trainer.one_step_off_policy
        and cfg.actor.ppo_epochs == 1
        and n_groups <= cfg.actor.ppo_mini_batch_size
        and not (cfg.algorithm.use_kl_in_reward and cfg.algorithm.kl_coef > 0)
    )


# --------------------------------------------------------------------------------------------------------------
# one step


def _sampling(cfg: JobConfig, seed: int, *, validation: bool = False) -> SamplingParams:
    r = cfg.rollout
    if validation:
        greedy = r.val_temperature == 0
        return SamplingParams(n=1, temperature=r.val_temperature, top_p=1.0 if greedy else r.top_p,
                              max_tokens=r.response_length, seed=seed)  # fmt: skip
    return SamplingParams(n=r.n, temperature=r.temperature, top_p=r.top_p, top_k=r.top_k,
                          repetition_penalty=r.repetition_penalty, max_tokens=r.response_length, seed=seed)  # fmt: skip


@dataclass
class PendingGeneration:
    """Phase 1 in flight: ``chunks`` of item indices, each submitted to the rollout worker (``futures``)."""

    chunks: list[list[int]]
    futures: list[Future]
    started: float  # perf_counter() at submission


@dataclass
class Prefetch:
    """``trainer.one_step_off_policy``: the next step's first batch, sampled with the weights before this step's
    update while the learner trains; ``batch`` (a future of :func:`collect_and_score`'s result) is filled by the
    driver's collector thread, which hands each chunk to the reward worker as it arrives."""

    pending: PendingGeneration
    batch: Future
    items: list[int]  # its prompts (rows of the train set): a checkpoint keeps them for a resumed run


def submit_generation(
    run: GRPORun, items: list[int], params: SamplingParams, data: R1Dataset
) -> PendingGeneration:
    """Phase 1 for ``items``, submitted in chunks of ``rollout.micro_batch_size`` sequences; returns at once."""
    # rollout.micro_batch_size sequences per engine: colocated vLLM on several ranks splits a chunk over engines.
    per_chunk = max(1, run.cfg.rollout.micro_batch_size // params.n) * run.rollout.engines
    chunks = [items[i : i + per_chunk] for i in range(0, len(items), per_chunk)]
    t0 = time.perf_counter()
    futures = [
        run.rollout.submit("generate", [data[i].prompt for i in chunk],
                           SamplingParams(**{**params.__dict__, "seed": (params.seed or 0) + 7919 * c}))
        for c, chunk in enumerate(chunks)
    ]  # fmt: skip
    return PendingGeneration(chunks, futures, t0)


def generate_and_score(
    run: GRPORun, items: list[int], params: SamplingParams, data: R1Dataset
) -> tuple[TrainBatch, float, float]:
    """Phases 1-2 for ``items``: generation in chunks, each chunk scored as soon as it exists.

    Returns:
        The batch (rollouts in prompt-major order), seconds generating, seconds waiting for rewards after.
    """
    return collect_and_score(run, submit_generation(run, items, params, data), data)


def collect_and_score(
    run: GRPORun, pending: PendingGeneration, data: R1Dataset
) -> tuple[TrainBatch, float, float]:
    """Waits for ``pending``'s chunks in order, handing each to the reward worker as it arrives, then for the
    rewards; returns what :func:`generate_and_score` returns (seconds counted from the submission)."""
    t0 = pending.started
    prompts, rollouts, score_futures = [], [], []
    for chunk, fut in zip(pending.chunks, pending.futures, strict=True):
        groups = fut.result()
        samples = []
        for i, group in zip(chunk, groups, strict=True):
            p_index = len(prompts)
            prompts.append(data[i].prompt)
            for comp in group:
                ids = _cut_at_vision_tokens(comp.token_ids, run.vision_ids)
                lps = comp.logprobs[: len(ids)] if comp.logprobs is not None else None
                rollouts.append(Rollout(p_index, i, ids, comp.text, comp.finish_reason, logprobs=lps))
                samples.append(data[i].reward_sample(comp.text))
        start = len(rollouts) - len(samples)
        score_futures.append((start, samples, run.reward.submit("score", samples), run.reward.restarts))
    gen_s = time.perf_counter() - t0
    for start, samples, fut, incarnation in score_futures:
        out = _reward_result(run, fut, samples, incarnation)
        for k, score in enumerate(out.scores):
            r = rollouts[start + k]
            r.score, r.status = score, out.statuses[k]
            r.components = {name: vals[k] for name, vals in out.components.items()}
    return TrainBatch(prompts, rollouts), gen_s, time.perf_counter() - t0 - gen_s


def _targets(train: R1Dataset, val: R1Dataset | None) -> dict[str, bytes]:
    """Every target image the reward worker must know, by id."""
    return {**train.targets(), **(val.targets() if val else {})}


def _reward_result(run: GRPORun, fut: Any, samples: list, incarnation: int) -> Any:
    """A chunk's reward output; a reward actor that died mid-batch is replaced (once, however many chunks were
    queued on it: ``incarnation`` is its restart count when the chunk was submitted) and the chunk is scored
    again: the step goes on, and ``reward/worker_restarts`` counts it."""
    try:
        return fut.result()
    except Exception as e:  # noqa: BLE001 - narrowed below: only a dead Ray actor is handled
        if not run.cfg.ray.enabled:
            raise
        from ray.exceptions import RayActorError  # ActorDiedError and friends subclass it

        if not isinstance(e, RayActorError):
            raise
        if run.reward.restarts == incarnation:
            log.warning("reward worker died (%s); restarting it", type(e).__name__)
            run.reward.restart()
            run.reward.call("register_targets", _targets(run.train_data, run.val_data))
            run.counters["reward_worker_restarts"] += 1
        return run.reward.call("score", samples)


def _cut_at_vision_tokens(ids: list[int], vision_ids: frozenset[int]) -> list[int]:
    """Responses end before any vision placeholder (an engine that cannot suppress them, e.g. vLLM): fed back
    to the learner, one would make the model look for image features that do not exist."""
    for t, tid in enumerate(ids):
        if tid in vision_ids:
            return ids[:t]
    return ids


def _split(seqs: list[int], parts: int, whole_groups: bool = False) -> list[list[int]]:
    """``parts`` shares of ``seqs`` (sizes within one of each other): strided, or in contiguous runs with
    ``whole_groups`` (a group's rollouts are adjacent, so they land on one rank and share their prompt's
    forward there: ``actor.use_prefix_grouper``, verl's group-level balancing)."""
    if not whole_groups:
        return [seqs[r::parts] for r in range(parts)]
    size, extra = divmod(len(seqs), parts)
    bounds = [r * size + min(r, extra) for r in range(parts + 1)]
    return [seqs[bounds[r] : bounds[r + 1]] for r in range(parts)]


def _logprobs(
    group: LearnerGroup, run: GRPORun, batch: TrainBatch, order: list[int], entropy: list[float] | None = None
) -> list[torch.Tensor]:
    """Response log-probs of ``order`` under ``group``'s current weights (every rank gets a share); when
    ``entropy`` is a list, the per-token entropies of the responses are appended to it."""
    shares = _split(list(range(len(order))), run.world_size, run.cfg.actor.use_prefix_grouper)
    mbs = [build_micro_batches(batch, [order[k] for k in share], run.encoder, run.cfg.actor.ppo_micro_batch_size_per_device)
           for share in shares]  # fmt: skip
    want_entropy = entropy is not None
    outs = group.call("forward_logprobs_batches", per_rank_args=[(m, want_entropy, True) for m in mbs])
    result: list[torch.Tensor | None] = [None] * len(order)
    for share, rank_mbs, rank_out in zip(shares, mbs, outs, strict=True):
        if want_entropy:
            for mb, (_, ent) in zip(rank_mbs, rank_out, strict=True):
                entropy.extend(ent[mb.loss_mask.bool()].tolist())
            rank_out = [lp for lp, _ in rank_out]
        flat = [lp for mb, lps in zip(rank_mbs, rank_out, strict=True) for lp in response_logprobs(lps, mb)]
        for k, lp in zip(share, flat, strict=True):
            result[k] = lp
    return result  # type: ignore[return-value]


def grpo_step(run: GRPORun) -> dict[str, float]:
    """One GRPO step (module docstring); returns its metrics."""
    cfg, step = run.cfg, run.step
    t_step = time.perf_counter()
    timing: dict[str, float] = {}
    want = cfg.data.train_batch_size

    # 1-2. rollout and reward (overlapped), with dynamic sampling
    kept = TrainBatch([], [])
    rounds, filtered, off_policy = 0, 0, 0  # off_policy: kept rollouts of a prefetched batch
    gen_s = reward_s = 0.0
    while len(kept.prompts) < want:
        rounds += 1
        # One step off-policy: the first round was sampled during the last step's update (a later round must not
        # take the prefetch the first one submitted: that is the next step's).
        prefetched = run.prefetch if rounds == 1 else None
        if prefetched is not None:
            run.prefetch = None
            # The next step's, now: the same weights sample it beside these rewards' wait and the update.
            if step + 1 < run.total_steps:
                _prefetch(run, step + 1)
            t0 = time.perf_counter()
            batch, timing["gen_overlapped"], _ = prefetched.batch.result()
            # Its generation ended before the last sync (phase 6 waits for it): what is left is the rewards' wait.
            reward_s += time.perf_counter() - t0
        else:
            items = run.resume_items or run.sampler.take(want - len(kept.prompts) if cfg.algorithm.filter_groups
                                                         else want)  # fmt: skip
            run.resume_items = None
            batch, g_s, r_s = generate_and_score(run, items, _sampling(cfg, _round_seed(cfg, step, rounds)),
                                                 run.train_data)  # fmt: skip
            gen_s, reward_s = gen_s + g_s, reward_s + r_s
        for p_index, prompt in enumerate(batch.prompts):
            group = [r for r in batch.rollouts if r.prompt_index == p_index]
            scores = [r.score for r in group if r.score is not None]
            if cfg.algorithm.filter_groups and (len(scores) < 2 or max(scores) - min(scores) < 1e-8):
                filtered += 1
                continue
            new_index = len(kept.prompts)
            kept.prompts.append(prompt)
            off_policy += len(group) if prefetched is not None else 0
            for r in group:
                r.prompt_index = new_index
                kept.rollouts.append(r)
        if not cfg.algorithm.filter_groups or rounds >= cfg.algorithm.max_num_gen_batches:
            break
    timing["gen"], timing["reward"] = gen_s, reward_s
    if (
        cfg.trainer.one_step_off_policy
        and run.prefetch is None
        and kept.rollouts
        and step + 1 < run.total_steps
    ):
        _prefetch(run, step + 1)  # the next step's first batch, sampled while this one trains
    if not kept.rollouts:
        run.counters["steps_without_signal"] += 1
        return {"batch/filtered_groups": float(filtered), "batch/num_gen_batches": float(rounds),
                "timing_s/gen": gen_s, "timing_s/reward": reward_s,
                "timing_s/step": time.perf_counter() - t_step}  # fmt: skip

    trainable = [k for k, r in enumerate(kept.rollouts) if r.token_ids]
    # The sample table's renders run in the reward worker while the learner works (logged at the end).
    table_rollouts = kept.rollouts[: cfg.trainer.log_train_generations]
    table_renders = _submit_renders(run, table_rollouts)

    # 3. log-probs of the sampling policy (unless the update is on-policy, or the engine's stand in for them)
    # and of the reference
    on_policy = _on_policy(cfg, len(kept.prompts))
    bypass = not on_policy and cfg.algorithm.rollout_correction.bypass_mode
    t0 = time.perf_counter()
    token_entropy: list[float] = []
    old = None
    if bypass:
        old = _rollout_logprobs(run, kept, trainable)
    elif not on_policy:
        old = _logprobs(run.learners, run, kept, trainable, entropy=token_entropy)
    timing["old_log_prob"] = time.perf_counter() - t0
    ref = None
    if run.reference is not None:
        t0 = time.perf_counter()
        ref = _logprobs(run.reference, run, kept, trainable)
        timing["ref"] = time.perf_counter() - t0

    # 4. advantages (a KL penalty in the reward first, when asked)
    t0 = time.perf_counter()
    scores = torch.tensor([math.nan if r.score is None else r.score for r in kept.rollouts])
    rewards = scores.clone()
    kl_in_reward = None
    if cfg.algorithm.use_kl_in_reward and ref is not None:
        assert old is not None  # _on_policy is False with a KL penalty in the reward
        kl_in_reward = torch.zeros(len(kept.rollouts))
        for k, idx in enumerate(trainable):
            kl_in_reward[idx] = kl_penalty(old[k], ref[k], cfg.algorithm.kl_penalty).sum()
        rewards = rewards - cfg.algorithm.kl_coef * kl_in_reward
    adv = grpo_advantages(rewards, [r.prompt_index for r in kept.rollouts],
                          norm_by_std=cfg.algorithm.norm_adv_by_std_in_grpo)  # fmt: skip
    for r, a in zip(kept.rollouts, adv.tolist(), strict=True):
        r.advantage = a
    timing["adv"] = time.perf_counter() - t0

    # 5. update: ppo_epochs x mini-batches (whole groups per mini-batch)
    t0 = time.perf_counter()
    update_stats: Counter = Counter()  # token sums (divided by the tokens of the step)
    aggregated: dict[str, list[float]] = {name: [] for name in GRPOLoss.AGGREGATED_STATS}
    grad_norms, lrs, skipped = [], [], 0
    pos_of = {idx: k for k, idx in enumerate(trainable)}
    groups_per_mb = cfg.actor.ppo_mini_batch_size
    n_groups = len(kept.prompts)
    loss = dataclasses.replace(run.loss, on_policy=on_policy)
    for epoch in range(cfg.actor.ppo_epochs):
        g_order = list(range(n_groups))
        if epoch > 0:
            torch.manual_seed(cfg.trainer.seed + 7 * step + epoch)
            g_order = torch.randperm(n_groups).tolist()
        for start in range(0, n_groups, groups_per_mb):
            mb_groups = set(g_order[start : start + groups_per_mb])
            seqs = [idx for idx in trainable if kept.rollouts[idx].prompt_index in mb_groups]
            if not seqs:
                continue
            tokens = sum(len(kept.rollouts[i].token_ids) for i in seqs)
            normalizer = run.loss.normalizer(tokens, len(seqs))
            shares = _split(seqs, run.world_size, cfg.actor.use_prefix_grouper)
            per_rank = []
            for share in shares:
                mbs = build_micro_batches(
                    kept, share, run.encoder, cfg.actor.ppo_micro_batch_size_per_device,
                    old_logprobs=[old[pos_of[i]] for i in share] if old is not None else None,
                    ref_logprobs=[ref[pos_of[i]] for i in share] if ref is not None else None,
                )  # fmt: skip
                per_rank.append((mbs, loss, normalizer))
            # Phase 3 skipped: entropy from this forward (of the sampling policy when on-policy).
            out = run.learners.call("train_step", per_rank_args=per_rank, with_entropy=on_policy or bypass)[0]
            grad_norms.append(out["grad_norm"])
            lrs.append(out["lr"])
            skipped += int(out["skipped"])
            for k, v in out.items():
                name = k.removeprefix("stats/")
                if name == k:
                    continue
                if name in aggregated:
                    aggregated[name].append(v / normalizer)  # verl's per-mini-batch value in this mode
                else:
                    update_stats[name] += v
    timing["update_actor"] = time.perf_counter() - t0
    run.skipped_in_a_row = run.skipped_in_a_row + 1 if skipped else 0

    # 6. weights to the rollout engine, once it has sampled the prefetched batch (its mailbox is in order anyway;
    # waiting here keeps the channel's timeout for the transfer itself)
    if run.prefetch is not None:
        t0 = time.perf_counter()
        wait_all(run.prefetch.pending.futures)
        timing["wait_rollout"] = time.perf_counter() - t0
    sent_before = run.counters["weight_sync/buckets"], run.counters["weight_sync/bytes"]
    timing["update_weights"] = _sync_weights(run)
    timing["step"] = time.perf_counter() - t_step
    _log_generations(run, "train/generations", table_rollouts, run.train_data, step + 1, table_renders)
    metrics = _step_metrics(run, kept, scores, rewards, adv, update_stats, grad_norms, lrs, skipped, filtered,
                            rounds, timing, kl_in_reward)  # fmt: skip
    for name, values in aggregated.items():
        if values:  # the mean over mini-batches of the loss_agg_mode value, as verl reduces its actor metrics
            metrics[f"actor/{name}"] = statistics.fmean(values)
    metrics["actor/old_log_prob_recomputed"] = float(not on_policy and not bypass)
    if cfg.trainer.one_step_off_policy:  # rollouts of this step sampled by the weights before the last update
        metrics["batch/off_policy_rollouts"] = float(off_policy)
    if not cfg.rollout.hybrid_engine:  # split placement: what this step's sync sent over the weight channel
        metrics["weight_sync/buckets"] = float(run.counters["weight_sync/buckets"] - sent_before[0])
        metrics["weight_sync/bytes"] = float(run.counters["weight_sync/bytes"] - sent_before[1])
    if token_entropy:
        # Of the sampling policy, per response token (on-policy: actor/entropy came with the update's stats).
        metrics["actor/entropy"] = statistics.fmean(token_entropy)
    return metrics


def _rollout_logprobs(run: GRPORun, batch: TrainBatch, order: list[int]) -> list[torch.Tensor]:
    """``algorithm.rollout_correction.bypass_mode``: the engine's log-probs of ``order``'s responses, as the
    learner's phase 3 would return them.

    Raises:
        UserError: the engine gave none (or not one per token) for a response.
    """
    out = []
    for k in order:
        r = batch.rollouts[k]
        if r.logprobs is None or len(r.logprobs) != len(r.token_ids):
            got = "none" if r.logprobs is None else f"{len(r.logprobs)} for {len(r.token_ids)} tokens"
            raise UserError(f"algorithm.rollout_correction.bypass_mode=true takes the old log-probs from the "
                            f"rollout engine, but rollout.name={run.cfg.rollout.name} returned {got} for a "
                            f"response of item {r.item_index}")  # fmt: skip
        out.append(torch.tensor(r.logprobs, dtype=torch.float32))
    return out


def _round_seed(cfg: JobConfig, step: int, rounds: int) -> int:
    """The sampling seed of a step's ``rounds``-th generation round (so a resumed run samples the same)."""
    return cfg.trainer.seed * 1_000_003 + step * 101 + rounds


def _prefetch(run: GRPORun, step: int) -> None:
    """``trainer.one_step_off_policy``: submits ``step``'s first round now, with the rollout's current weights
    (those before the update that follows), and scores its chunks in the collector thread as they arrive."""
    cfg = run.cfg
    items = run.sampler.take(cfg.data.train_batch_size)
    pending = submit_generation(run, items, _sampling(cfg, _round_seed(cfg, step, 1)), run.train_data)
    run.prefetch = Prefetch(
        pending, run.collector.submit(collect_and_score, run, pending, run.train_data), items
    )


def _stats(prefix: str, values: Sequence[float]) -> dict[str, float]:
    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return {}
    return {f"{prefix}/mean": statistics.fmean(vals), f"{prefix}/max": max(vals), f"{prefix}/min": min(vals)}


def _step_metrics(run, kept, scores, rewards, adv, update_stats, grad_norms, lrs, skipped, filtered, rounds,
                  timing, kl_in_reward) -> dict[str, float]:  # fmt: skip
    cfg = run.cfg
    m: dict[str, float] = {}
    m.update(_stats("critic/score", scores.tolist()))
    m.update(_stats("critic/rewards", rewards.tolist()))
    m.update(_stats("critic/advantages", adv.tolist()))
    lengths = [len(r.token_ids) for r in kept.rollouts]
    m.update(_stats("response_length", lengths))
    m["response_length/clip_ratio"] = sum(r.finish_reason == "length" for r in kept.rollouts) / len(lengths)
    tokens = update_stats.pop("tokens", 0.0)
    for k, v in update_stats.items():
        m[f"actor/{k}"] = v / max(tokens, 1.0)
    if grad_norms:
        m["actor/grad_norm"] = statistics.fmean(g for g in grad_norms if math.isfinite(g)) if any(
            math.isfinite(g) for g in grad_norms) else math.nan  # fmt: skip
        m["actor/lr"] = lrs[-1]
    m["actor/skipped_updates"] = float(skipped)
    if kl_in_reward is not None:
        m["critic/kl_in_reward"] = float(kl_in_reward.mean())
    for name in sorted({c for r in kept.rollouts for c in r.components}):
        vals = [r.components.get(name) for r in kept.rollouts]
        vals = [float(v) for v in vals if v is not None]
        if vals:
            m[f"reward/{name}/mean"] = statistics.fmean(vals)
    for status, count in Counter(r.status for r in kept.rollouts).items():
        m[f"reward/status/{status}"] = float(count)
    m["reward/worker_restarts"] = float(run.counters["reward_worker_restarts"])
    m["batch/num_prompts"] = float(len(kept.prompts))
    m["batch/filtered_groups"] = float(filtered)
    m["batch/num_gen_batches"] = float(rounds)
    m["batch/prompt_too_long"] = float(sum(r.finish_reason == "prompt_too_long" for r in kept.rollouts))
    # Cut by the engine's context (rollout.max_model_len), not by response_length: a truncation to look into.
    m["batch/max_model_len_cut"] = float(sum(r.finish_reason == "max_model_len" for r in kept.rollouts))
    for k, v in timing.items():
        m[f"timing_s/{k}"] = v
    total_tokens = sum(lengths) + sum(len(run.encoder.encode(p)[0]) for p in kept.prompts) * cfg.rollout.n
    m["perf/total_num_tokens"] = float(total_tokens)
    m["perf/throughput"] = total_tokens / max(timing["step"], 1e-9)
    return m


# --------------------------------------------------------------------------------------------------------------
# validation, training loop, cleanup


def validate(run: GRPORun) -> dict[str, float]:
    """Greedy (``rollout.val_temperature=0``) answers on the validation set, scored by the reward."""
    if run.val_data is None:
        return {}
    items = list(range(len(run.val_data)))
    batch, gen_s, _ = generate_and_score(run, items, _sampling(run.cfg, run.cfg.trainer.seed, validation=True),
                                         run.val_data)  # fmt: skip
    scores = [r.score for r in batch.rollouts if r.score is not None]
    m = {"val/score/mean": statistics.fmean(scores) if scores else math.nan,
         "val/exec_rate": sum(r.status == "ok" for r in batch.rollouts) / len(batch.rollouts),
         "timing_s/val_gen": gen_s}  # fmt: skip
    for name in sorted({c for r in batch.rollouts for c in r.components}):
        vals = [float(v) for r in batch.rollouts if (v := r.components.get(name)) is not None]
        if vals:
            m[f"val/{name}/mean"] = statistics.fmean(vals)
    _log_generations(run, "val/generations", batch.rollouts[: run.cfg.trainer.log_val_generations], run.val_data,
                     run.step)  # fmt: skip
    return m


def _submit_renders(run: GRPORun, rollouts: list[Rollout]) -> list[Any]:
    """Starts the sandbox renders of the rollouts whose code ran (futures; None for the others)."""
    return [run.reward.submit("render", r.text) if r.status == "ok" else None for r in rollouts]


def _log_generations(
    run: GRPORun,
    name: str,
    rollouts: list[Rollout],
    data: R1Dataset,
    step: int,
    renders: list[Any] | None = None,
) -> None:
    """A table of samples: the target image next to the rollout's render (drawn in the sandbox), score, text.
    ``renders``: from :func:`_submit_renders` when they were started earlier (they overlap the update)."""
    rows = []
    futures = renders if renders is not None else _submit_renders(run, rollouts)
    for r, future in zip(rollouts, futures, strict=True):
        item = data[r.item_index]
        render = future.result() if future is not None else None
        rows.append([item.item_id, item.target_png, render, r.score, r.status, r.text[-2000:]])
    if rows:
        run.tracker.log_table(name, ["item", "target", "render", "score", "status", "completion"], rows, step)


def train(run: GRPORun) -> None:
    """Steps until ``total_steps``; validation and checkpoints on their schedules."""
    cfg = run.cfg
    if cfg.trainer.val_before_train and run.step == 0:
        run.tracker.log(validate(run), step=0)
    while run.step < run.total_steps:
        metrics = grpo_step(run)
        run.step += 1
        last = run.step == run.total_steps
        if run.val_data is not None and (
            last or (cfg.trainer.test_freq > 0 and run.step % cfg.trainer.test_freq == 0)
        ):
            metrics.update(validate(run))
        run.tracker.log(metrics, step=run.step)
        if run.skipped_in_a_row >= MAX_CONSECUTIVE_SKIPPED_UPDATES:
            raise UserError(f"stopping at step {run.step}: {run.skipped_in_a_row} updates in a row had a non-finite "
                            "gradient (NaN/inf loss); lower actor.optim.lr or check the data")  # fmt: skip
        if last or (cfg.trainer.save_freq > 0 and run.step % cfg.trainer.save_freq == 0):
            save_checkpoint(run)
    # A plain Hugging Face folder of the final policy (from_pretrained, vLLM, codepercept-rl eval --model).
    run.learners.call("export_hf", per_rank_args=[(str(run.run_dir / "hf"),)] * run.world_size)


def save_checkpoint(run: GRPORun) -> None:
    """A checkpoint of every rank at ``run.step``, with the sampler's position and, one step off-policy, the
    prompts of the batch in flight (its samples are not kept: a resumed run samples those prompts again, with the
    restored weights)."""
    extra = {"step": run.step, "sampler": run.sampler.state(),
             "prefetched": list(run.prefetch.items) if run.prefetch is not None else []}  # fmt: skip
    run.learners.call("save_checkpoint", per_rank_args=[(str(run.ckpt_root),)] * run.world_size, extra=extra,
                      keep=run.cfg.trainer.max_actor_ckpt_to_keep)  # fmt: skip


def cleanup(run: GRPORun) -> None:
    """Close the actors and the tracker."""
    run.collector.shutdown(wait=False, cancel_futures=True)  # an unfinished prefetch dies with its actors
    for actor in (run.rollout, run.reward):
        actor.shutdown()
    if run.reference is not None:  # before the ranks it lives on stop
        run.reference.shutdown()
    run.learners.shutdown()
    run.tracker.finish()


def main(argv: Sequence[str] | None = None) -> int:
    """``codepercept-rl train RECIPE [key=value ...] [--resume]``."""
    parser = argparse.ArgumentParser(
        prog="codepercept-rl train", description="GRPO (R1) with code-execution rewards."
    )
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/r1_tiny_cpu.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.n=8 actor.optim.lr=1e-6")
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest checkpoint (error if none)"
    )
    args = parser.parse_args(argv)
    cfg = load_config(args.recipe, args.overrides, schema=JobConfig)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    run = setup(cfg, resume=args.resume)
    try:
        train(run)
    finally:
        cleanup(run)
    return 0
