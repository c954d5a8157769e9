"""The learner: one FSDP2-sharded Qwen-VL policy with its optimizer, used by SFT now and GRPO later.

Every rank of a group builds one ``Learner`` and calls the same methods in the same order (they run
collectives)::

    learner = Learner(LearnerConfig(model=cfg.model, optim=cfg.actor.optim, total_steps=100))
    stats = learner.train_step(micro_batches, sft_loss, normalizer=global_target_tokens)
    learner.save_checkpoint("runs/x/checkpoints", extra={"epoch": 0, "batch": 12})
    learner.export_hf("runs/x/hf")            # a plain Hugging Face folder (save_pretrained + processor)

Runs alone (world size 1, in-process), under ``torchrun`` (one process per rank) or as Ray actors
(:mod:`codepercept_rl.learner.actor`). Loss convention: ``loss_fn`` returns a *sum* over this micro-batch's
tokens; ``train_step`` divides by ``normalizer`` (a global count, the same on every rank), so the gradient
does not depend on how the global batch was split into ranks and micro-batches.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from transformers import AutoConfig, AutoModelForImageTextToText, PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.config.schema import ModelConfig, OptimConfig
from codepercept_rl.learner import checkpoint as ckpt
from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.learner.dist import DistInfo, init_distributed
from codepercept_rl.learner.fsdp import (
    apply_fsdp2,
    compute_dtype,
    freeze_vision_tower,
    pick_attn_implementation,
    trainable_parameter_count,
)
from codepercept_rl.learner.logprobs import lm_head_logprobs
from codepercept_rl.learner.optim import build_optimizer, build_scheduler
from codepercept_rl.learner.packing import pack, unpack
from codepercept_rl.learner.prefix_grouper import group_prefixes, scatter
from codepercept_rl.models.patch_embed import use_linear_patch_embed
from codepercept_rl.models.processor import load_processor
from codepercept_rl.models.tiny import build_tiny_model, load_model

log = logging.getLogger(__name__)

__all__ = ["LearnerConfig", "Learner", "LossFn", "load_policy", "sft_loss"]

# loss_fn(logprobs (B, T), micro_batch) -> scalar tensor: the SUM of per-token losses of this micro-batch;
# or (loss, {name: scalar tensor}) to also report statistics, summed over micro-batches and ranks. Log-probs are
# computed from the first column holding a loss_mask token on; the columns before it are 0.
LossFn = Callable[[torch.Tensor, MicroBatch], "torch.Tensor | tuple[torch.Tensor, dict[str, torch.Tensor]]"]


def sft_loss(logprobs: torch.Tensor, mb: MicroBatch) -> torch.Tensor:
    """Negative log-likelihood summed over target tokens: ``-sum(logprobs * loss_mask)``."""
    return -(logprobs * mb.loss_mask).sum()


@dataclass
class LearnerConfig:
    """What a learner needs: the model and optimizer sections, the schedule length and run-level knobs."""

    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    total_steps: int = 1  # optimizer steps of the whole run (the LR schedule's length)
    grad_clip: float = 1.0  # max global grad norm; <= 0 measures it without clipping
    seed: int = 0
    device: str = "auto"
    # Log-probs and entropy are of softmax(logits / temperature): GRPO sets it to rollout.temperature, the
    # distribution its rollouts were sampled from (old, new and reference log-probs alike, as verl does); SFT
    # keeps 1.
    temperature: float = 1.0
    # false: a frozen model (GRPO's reference): no optimizer, no gradients, parameters stored in the compute
    # dtype (bf16 on GPUs, half the memory of fp32 master weights), as verl keeps its reference policy.
    trainable: bool = True
    # Parameter shards in host memory between forwards (verl ``ref.fsdp_config.param_offload``).
    param_offload: bool = False
    # verl ``actor.use_prefix_grouper``: rows of a micro-batch that share their prompt (a GRPO group) run it once,
    # each response attending to it (prefix_grouper.py); the same log-probs and gradients, less compute.
    use_prefix_grouper: bool = False

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ValueError(f"LearnerConfig.temperature must be > 0, got {self.temperature}")


def load_policy(cfg: ModelConfig, seed: int = 0) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model and processor named by ``cfg``: a saved folder (``path``) or a tiny one built offline.

    Raises:
        ValueError: neither ``model.path`` nor ``model.tiny_preset`` is set.
    """
    if cfg.path:
        return load_model(cfg.path)
    if cfg.tiny_preset:
        return build_tiny_model(cfg.tiny_arch, preset=cfg.tiny_preset, seed=seed)
    raise ValueError("set model.path (a Hugging Face folder) or model.tiny_preset (nano, tiny, small)")


def _skeleton_policy(path: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model of folder ``path`` with parameters on the meta device (no memory, no read), and its processor."""
    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=torch.float32)
    return model, load_processor(path, config.model_type)


def _broadcast_weights_from_rank0(
    model: torch.nn.Module, full_state: dict[str, torch.Tensor], device: torch.device
) -> None:
    """Fills a sharded model from rank 0's full state dict; the other ranks' parameters may be on meta.

    Parameters go through ``set_model_state_dict(broadcast_from_rank0=True)`` (each rank keeps its shard);
    buffers, which FSDP does not shard and which are not all in the state dict (rotary ``inv_freq``), are
    broadcast one by one.
    """
    if dist.get_rank() != 0:
        model.to_empty(device=device)  # meta -> allocated, uninitialised (filled below)
    options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    set_model_state_dict(model, full_state, options=options)
    for buffer in model.buffers():
        dist.broadcast(buffer, src=0)


class Learner:
    """An FSDP2 policy with AdamW, LR schedule, checkpoints and export. See the module docstring.

    Args:
        cfg: the learner config.
        model: an already-built fp32 model (tests, GRPO reference copies); default: :func:`load_policy`.
        processor: its processor (saved by :meth:`export_hf`).
        dist_info: an existing process-group description; default: :func:`init_distributed`.
    """

    def __init__(
        self,
        cfg: LearnerConfig,
        model: PreTrainedModel | None = None,
        processor: ProcessorMixin | None = None,
        dist_info: DistInfo | None = None,
    ) -> None:
        self.cfg = cfg
        self.dist = dist_info or init_distributed(cfg.device)
        # With several ranks and a saved folder, only rank 0 reads the weights; the others build an empty
        # (meta) skeleton and receive their shards from rank 0 once sharded: one copy in host memory, not N.
        from_rank0 = model is None and bool(cfg.model.path) and self.dist.world_size > 1
        if from_rank0 and not self.dist.is_main:
            model, processor = _skeleton_policy(cfg.model.path)
        elif model is None:
            model, processor = load_policy(cfg.model, seed=cfg.seed)
        self.processor = processor
        use_linear_patch_embed(model)  # the vision tower's patch conv as one matmul (same parameters)
        self.attn_implementation = pick_attn_implementation(cfg.model.attn_implementation, self.dist.device)
        model.set_attn_implementation(self.attn_implementation)
        if cfg.model.freeze_vision_tower:
            frozen = freeze_vision_tower(model)
            log.info("vision tower frozen: %d parameters", frozen)
        log.info("trainable parameters: %d", trainable_parameter_count(model))
        if not cfg.trainable:
            # Frozen: no fp32 master copy to keep (nothing updates it) and no activations kept for a backward.
            model.requires_grad_(False)
            model.to(compute_dtype(cfg.model.dtype))
        elif cfg.model.enable_gradient_checkpointing:
            # Non-reentrant checkpointing composes with FSDP2's hooks; reentrant does not.
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        self._model_cls = type(model)
        self.config = model.config
        self.generation_config = model.generation_config
        full_state = model.state_dict() if from_rank0 and self.dist.is_main else {}
        if from_rank0:
            self.model = apply_fsdp2(model, self.dist.mesh, cfg.model.dtype, param_offload=cfg.param_offload)
            _broadcast_weights_from_rank0(self.model, full_state, self.dist.device)
        else:
            model.to(self.dist.device)
            self.model = apply_fsdp2(model, self.dist.mesh, cfg.model.dtype, param_offload=cfg.param_offload)
        self.model.train(cfg.trainable)
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler: Any = None
        if cfg.trainable:
            self.optimizer = build_optimizer(self.model.named_parameters(), cfg.optim)
            self.scheduler = build_scheduler(self.optimizer, cfg.optim, cfg.total_steps)
        self.step = 0  # optimizer steps done
        self._rollout_model: PreTrainedModel | None = None

    def set_total_steps(self, total_steps: int) -> None:
        """Re-plans the LR schedule for ``total_steps`` (known once the data is read); before the first step.

        Raises:
            RuntimeError: called after optimizer steps were taken.
        """
        optimizer = self._optimizer("set_total_steps")
        if self.step:
            raise RuntimeError(f"set_total_steps after {self.step} steps would change the schedule mid-run")
        for group in optimizer.param_groups:  # LambdaLR scaled them; start from the base lr again
            group["lr"] = group["initial_lr"]
        self.cfg.total_steps = total_steps
        self.scheduler = build_scheduler(optimizer, self.cfg.optim, total_steps)

    # ------------------------------------------------------------------------------------------------------------
    # forward / update

    def forward_logprobs(self, mb: MicroBatch) -> torch.Tensor:
        """Log-probabilities of each token given the ones before it, shape (B, T), ``[:, 0] = 0``.

        Runs with autograd when grad mode is on (inside :meth:`train_step`), without it under ``no_grad``.
        """
        return self._forward(mb, with_entropy=False)[0]

    def _forward(
        self, mb: MicroBatch, with_entropy: bool, loss_positions_only: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        mb = mb.to(self.dist.device)
        if self.cfg.use_prefix_grouper:
            return self._forward_grouped(mb, with_entropy)
        if self.cfg.model.use_remove_padding:
            return self._forward_packed(mb, with_entropy)
        B, T = mb.input_ids.shape
        first = 1  # the first token whose log-prob is computed
        if loss_positions_only:
            # Logits only where a loss token is predicted (TRL's logits_to_keep): an RL prompt (image tokens
            # included) is often longer than its answer, and (B, T, V) fp32 logits are the largest activation.
            columns = mb.loss_mask.any(0).nonzero()
            first = max(1, int(columns[0])) if len(columns) else 1
        # The LM head returns log p(token t+1) for each kept position, computed in chunks of
        # model.logprob_chunk_size tokens at the sampling temperature: no (B, T, V) logits at once (logprobs.py).
        targets = mb.input_ids[:, first:]  # (B, T-first)
        logprobs, entropy = self._head_logprobs(
            targets, with_entropy, **mb.model_inputs(), logits_to_keep=T - first + 1
        )
        # Entropy of the distribution token t was drawn from, aligned like the log-probs; a statistic, no graph.
        entropy = F.pad(entropy, (first, 0)) if entropy is not None else None
        return F.pad(logprobs, (first, 0)), entropy  # (B, T)

    def _head_logprobs(
        self,
        targets: torch.Tensor,
        with_entropy: bool,
        positions: torch.Tensor | None = None,
        **model_inputs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The model's forward with its LM head returning log p(``targets``) (and the entropy) in chunks."""
        with lm_head_logprobs(
            self.model,
            targets,
            temperature=self.cfg.temperature,
            chunk_size=self.cfg.model.logprob_chunk_size,
            with_entropy=with_entropy,
            positions=positions,
        ) as head:
            logprobs = self.model(**model_inputs, use_cache=False).logits
        return logprobs, head.entropy if with_entropy else None

    def _forward_packed(self, mb: MicroBatch, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_forward` on the micro-batch's real tokens packed into one row (``model.use_remove_padding``,
        :mod:`~codepercept_rl.learner.packing`); the same (B, T) values, no compute on padding."""
        packed = pack(self.model, mb)
        logprobs, entropy = self._head_logprobs(packed.input_ids[:, 1:], with_entropy, **packed.inputs)
        return unpack(logprobs, packed), unpack(entropy, packed) if entropy is not None else None

    def _forward_grouped(
        self, mb: MicroBatch, with_entropy: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`_forward` with each shared prompt run once (``use_prefix_grouper``, :mod:`~codepercept_rl.learner.
        prefix_grouper`): the response tokens' log-probs (and entropy) in the (B, T) layout, 0 on the prompts."""
        grouped = group_prefixes(
            self.model, mb, self.attn_implementation, compute_dtype(self.cfg.model.dtype)
        )
        logprobs, entropy = self._head_logprobs(
            grouped.targets, with_entropy, positions=grouped.source, **grouped.inputs
        )
        return scatter(logprobs, grouped), scatter(entropy, grouped) if entropy is not None else None

    def train_step(
        self,
        micro_batches: Sequence[MicroBatch],
        loss_fn: LossFn,
        normalizer: float,
        with_entropy: bool = False,
    ) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches (gradient accumulation), every rank together.

        Args:
            micro_batches: this rank's share of the global batch, at least one.
            loss_fn: per-micro-batch loss sum (see :data:`LossFn`).
            normalizer: the global divisor (e.g. target tokens of the whole global batch, all ranks).
            with_entropy: also report ``stats/entropy``, the sum over ``loss_mask`` tokens of the entropy of the
                next-token distribution (from this step's forward, before the update; no gradient).

        Returns:
            ``loss`` (global sum / normalizer), ``grad_norm`` (before clipping), ``lr`` (used by this step),
            ``skipped`` (1.0 when the gradient was not finite and the update was skipped), and
            ``stats/<name>`` for each statistic ``loss_fn`` returned, summed over micro-batches and ranks.

        Raises:
            ValueError: no micro-batch, or a non-positive normalizer.
        """
        optimizer = self._optimizer("train_step")
        lr = self.scheduler.get_last_lr()[0]
        result = self.backward(micro_batches, loss_fn, normalizer, with_entropy)
        grad_norm = self._clip_grad_norm()
        skipped = not math.isfinite(grad_norm)
        if skipped:
            log.warning("step %d: gradient norm is %s; update skipped", self.step, grad_norm)
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        self.scheduler.step()
        self.step += 1
        return {
            "loss": result.pop("loss"),
            "grad_norm": grad_norm,
            "lr": lr,
            "skipped": float(skipped),
            **result,
        }

    def backward(
        self,
        micro_batches: Sequence[MicroBatch],
        loss_fn: LossFn,
        normalizer: float,
        with_entropy: bool = False,
    ) -> dict[str, float]:
        """The forward/backward half of :meth:`train_step`: accumulates ``d(global loss sum / normalizer)`` into
        the parameters' ``.grad`` (adding to what is there) and takes no optimizer step. Every rank together.
        :meth:`full_gradients` reads the result (parity tests compare it with other frameworks' losses).

        Returns:
            ``loss`` and ``stats/<name>``, as :meth:`train_step`.
        """
        self._optimizer("backward")
        if not micro_batches:
            raise ValueError("train_step needs at least one micro-batch on every rank")
        if not normalizer > 0:
            raise ValueError(f"normalizer must be > 0, got {normalizer}")
        self.model.train()
        # FSDP2 averages gradients over ranks; scaling by the world size makes the reduction a sum, so the
        # gradient is d(sum of losses / normalizer) whatever the split.
        scale = self.dist.world_size / normalizer
        # Sums stay on the device (no host sync per micro-batch) and cross ranks in one all-reduce at the end.
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        stat_sums: dict[str, torch.Tensor] = {}
        for mb, weight in self._aligned(micro_batches):
            mb = mb.to(self.dist.device)
            logprobs, entropy = self._forward(mb, with_entropy, loss_positions_only=True)
            out = loss_fn(logprobs, mb)
            loss, stats = out if isinstance(out, tuple) else (out, {})
            if entropy is not None:
                stats = {**stats, "entropy": (entropy * mb.loss_mask).sum()}
            loss = loss * weight
            (loss * scale).backward()
            loss_sum += loss.detach().double()
            for name, value in stats.items():
                term = value.detach().double() * weight
                stat_sums[name] = stat_sums[name] + term if name in stat_sums else term
        names = sorted(stat_sums)  # every rank reports the same names, in the same order
        totals = self._all_reduce_sums([loss_sum, *(stat_sums[n] for n in names)])
        result = {"loss": totals[0] / normalizer}
        result.update({f"stats/{name}": total for name, total in zip(names, totals[1:], strict=True)})
        return result

    def full_gradients(self) -> dict[str, torch.Tensor]:
        """The unsharded ``.grad`` of every trainable parameter, in Hugging Face names, on CPU, in the parameters'
        dtype; every rank must call it (each gathers the shards) and every rank gets the full dict."""
        grads = {}
        for name, param in self.model.named_parameters():
            if param.grad is None:
                continue
            grad = param.grad
            if isinstance(grad, torch.distributed.tensor.DTensor):
                grad = grad.full_tensor()
            grads[name] = grad.detach().cpu().clone()
        return grads

    def zero_grad(self) -> None:
        """Drops the accumulated gradients (after :meth:`backward` without a step)."""
        self._optimizer("zero_grad").zero_grad(set_to_none=True)

    def _optimizer(self, what: str) -> torch.optim.Optimizer:
        if self.optimizer is None:
            raise RuntimeError(
                f"{what}: this learner is frozen (LearnerConfig.trainable=false, a reference model)"
            )
        return self.optimizer

    @torch.no_grad()
    def forward_logprobs_batches(
        self,
        micro_batches: Sequence[MicroBatch],
        with_entropy: bool = False,
        loss_positions_only: bool = False,
    ) -> list[torch.Tensor] | list[tuple[torch.Tensor, torch.Tensor]]:
        """:meth:`forward_logprobs` of each micro-batch without gradient, on CPU (GRPO's old and reference
        log-probs); with ``with_entropy`` also the (B, T) entropy of each next-token distribution, as
        ``(logprobs, entropy)`` pairs; with ``loss_positions_only`` the columns before the first ``loss_mask``
        token are not computed (0). Ranks may hold different numbers of micro-batches (padded for FSDP's
        collectives)."""
        was_training = self.model.training
        self.model.eval()
        try:
            outs = []
            for mb, _ in self._aligned(micro_batches):
                lp, ent = self._forward(mb, with_entropy, loss_positions_only)
                outs.append((lp.cpu(), ent.cpu()) if with_entropy else lp.cpu())
        finally:
            self.model.train(was_training)
        return outs[: len(micro_batches)]

    @torch.no_grad()
    def loss_sum(self, micro_batches: Sequence[MicroBatch], loss_fn: LossFn) -> float:
        """The global sum of ``loss_fn`` over every rank's micro-batches, no gradient (validation)."""
        self.model.eval()
        local = torch.zeros((), dtype=torch.float64, device=self.dist.device)
        for mb, weight in self._aligned(micro_batches):
            mb = mb.to(self.dist.device)
            local += (loss_fn(self.forward_logprobs(mb), mb) * weight).double()
        self.model.train()
        return self._all_reduce_sums([local])[0]

    def _aligned(self, micro_batches: Sequence[MicroBatch]) -> list[tuple[MicroBatch, float]]:
        """Pads every rank to the same number of forwards (FSDP's collectives must match), with weight 0."""
        count = torch.tensor(
            [len(micro_batches)], device=self.dist.device
        )  # NCCL reduces device tensors only
        if self.dist.world_size > 1:
            dist.all_reduce(count, op=dist.ReduceOp.MAX)
        if not micro_batches and count.item() > 0:
            raise ValueError(f"rank {self.dist.rank} has no micro-batch while others have {count.item()}")
        pairs = [(mb, 1.0) for mb in micro_batches]
        pairs += [(micro_batches[0], 0.0)] * (int(count.item()) - len(micro_batches))
        return pairs

    def _clip_grad_norm(self) -> float:
        params = [p for p in self.model.parameters() if p.grad is not None]
        max_norm = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
        if isinstance(norm, torch.distributed.tensor.DTensor):
            norm = norm.full_tensor()
        return float(norm.item())

    def _all_reduce_sums(self, values: Sequence[torch.Tensor]) -> list[float]:
        """Sums of scalars over ranks in one collective. The scalars must be on this rank's device: NCCL
        reduces device tensors only (a host tensor fails with "No backend type associated with device type
        cpu")."""
        stacked = torch.stack([v.reshape(()).to(torch.float64) for v in values])
        if self.dist.world_size > 1:
            dist.all_reduce(stacked)
        return stacked.tolist()

    # ------------------------------------------------------------------------------------------------------------
    # weights out: rollout, checkpoints, export

    def state_dict_for_rollout(self) -> dict[str, torch.Tensor]:
        """Full (unsharded) CPU weights in Hugging Face names, on rank 0; every rank must call it.

        Other ranks get an empty dict (gathering to one rank keeps peak memory at one copy of the model).
        """
        state = self._full_state()
        if self.dist.world_size == 1:
            # One CPU rank: the "gathered" tensors are the live parameters; copy so the caller gets a snapshot.
            state = {k: v.detach().clone() for k, v in state.items()}
        return state

    def _full_state(self) -> dict[str, torch.Tensor]:
        # On one CPU rank the tensors are the live parameters (no copy): read them, do not keep them.
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        return get_model_state_dict(self.model, options=options)

    @torch.no_grad()
    def iter_full_params(self, dtype: torch.dtype | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yields ``(HF name, full tensor)`` one state-dict entry at a time, on every rank: a colocated engine's
        weight sync without a whole state dict (verl's sharding manager). Every rank must drain it in step:
        each sharded entry is one ``full_tensor()`` all-gather. Tensors stay on the learner's device, cast to
        ``dtype`` if given; on one rank they may be the live parameters: read them, do not keep them.
        """
        for name, value in self.model.state_dict().items():
            if isinstance(value, torch.distributed.tensor.DTensor):
                value = value.full_tensor()
            value = value.detach()
            yield name, value if dtype is None else value.to(dtype)

    # Rank 0's end of the split placement's weight channel (None until open_weight_channel, and on other ranks).
    _weight_channel: Any = None

    def open_weight_channel(
        self, host: str, port: int, backend: str = "gloo", timeout_s: float = 600.0
    ) -> bool:
        """Joins the split placement's weight channel (:class:`~codepercept_rl.rollout.weight_sync.WeightChannel`)
        as its sender (channel rank 0) on this group's rank 0; the other ranks do nothing. Every rank may be
        called; rank 0's call blocks until the rollout engine joins as channel rank 1.

        Args:
            host: this rank's node address; the channel's rendezvous store listens on ``port`` there.
            port: a free TCP port on ``host``.
            backend: ``gloo`` (payloads through host memory) or ``nccl`` (payloads on this rank's GPU).
            timeout_s: how long to wait for the rollout engine, here and in every later sync.

        Returns:
            True on the rank that joined (rank 0), False on the others.

        Raises:
            RuntimeError: the rollout engine did not join within ``timeout_s``.
        """
        if not self.dist.is_main:
            return False
        from codepercept_rl.rollout.weight_sync import WeightChannel

        try:
            channel = WeightChannel(host, port, rank=0, world_size=2, backend=backend, device=self.dist.device,
                                    timeout_s=timeout_s)  # fmt: skip
        except RuntimeError as e:
            raise RuntimeError(f"weight channel on {host}:{port} ({backend}): the rollout engine did not join "
                               f"within {timeout_s:g} s: {e}") from e  # fmt: skip
        self._weight_channel = channel
        return True

    def send_weights_to_rollout(self, bucket_bytes: int) -> dict[str, int]:
        """Streams the full weights to the rollout engine over the channel :meth:`open_weight_channel` opened,
        in buckets of at most ``bucket_bytes`` (a larger tensor travels alone), floating tensors cast to the
        compute dtype (bf16 for ``model.dtype=bfloat16``, else fp32). Every rank must call it: each rank drains
        :meth:`iter_full_params` in step (one all-gather per sharded entry); only rank 0 sends.

        Args:
            bucket_bytes: the most bytes of one bucket (``rollout.update_weights_bucket_megabytes`` MiB).

        Returns:
            Rank 0: ``tensors``, ``buckets`` and ``bytes`` sent; other ranks: the tensors gathered, 0 and 0.

        Raises:
            ValueError: ``bucket_bytes`` < 1.
            RuntimeError: no channel on rank 0, or the rollout engine died or stopped answering for
                ``timeout_s`` (rank 0 still finishes the all-gathers, so the other ranks return).
        """
        if bucket_bytes < 1:
            raise ValueError(f"bucket_bytes={bucket_bytes} must be >= 1")
        params = self.iter_full_params()  # cast by send_weights: integer buffers stay integers
        if not self.dist.is_main:
            return {"tensors": sum(1 for _ in params), "buckets": 0, "bytes": 0}
        from codepercept_rl.rollout.weight_sync import send_weights

        dtype = torch.bfloat16 if self.cfg.model.dtype == "bfloat16" else torch.float32
        try:
            if self._weight_channel is None:
                raise RuntimeError("send_weights_to_rollout before open_weight_channel")
            return send_weights(self._weight_channel, params, bucket_bytes, dtype=dtype)
        except RuntimeError as e:
            for _ in params:  # the other ranks are in the same all-gathers: finish them, then fail
                pass
            if self._weight_channel is None:
                raise
            raise RuntimeError(f"weight sync to the rollout engine failed (dead, or no answer within "
                               f"{self._weight_channel.timeout_s:g} s): {e}") from e  # fmt: skip

    @property
    def shares_rollout_parameters(self) -> bool:
        """True when the rollout module is a view of this learner's parameters (one rank, fp32 compute): a
        rank's FSDP2 shard is a plain tensor, and with one rank the shard is the whole parameter."""
        return self.dist.world_size == 1 and self.cfg.model.dtype == "float32"

    def sync_rollout_model(self) -> int:
        """Brings rank 0's rollout module (:attr:`rollout_module`) up to date with the policy; every rank must
        call it. Returns the bytes copied into it: 0 when it shares the learner's parameter storage.

        Shared (:attr:`shares_rollout_parameters`): the module's parameters are re-bound to the learner's
        current shard tensors (the optimizer updates them in place, so nothing moves; re-binding covers a
        checkpoint load that replaced them). Otherwise the full weights are gathered to rank 0 and copied
        (and cast to the compute dtype) into a plain module on its device.
        """
        if self.shares_rollout_parameters:
            if self._rollout_model is None:
                self._rollout_model = self._plain_model(torch.float32, device=torch.device("meta"))
            self._bind_shared_parameters(self._rollout_model)
            return 0
        state = self._full_state()
        if not self.dist.is_main:
            return 0
        if self._rollout_model is None:
            # On this rank's device in the compute dtype: generation on a GPU node must not fall back to CPU.
            dtype = torch.bfloat16 if self.cfg.model.dtype == "bfloat16" else torch.float32
            self._rollout_model = self._plain_model(dtype, device=self.dist.device)
        # Copies (and casts) into the existing tensors.
        self._rollout_model.load_state_dict(state, strict=True)
        return sum(t.numel() * t.element_size() for t in state.values())

    @property
    def rollout_module(self) -> PreTrainedModel | None:
        """The plain (unsharded) policy module for ``generate`` as of the last :meth:`sync_rollout_model`, on
        rank 0; None before the first sync and on other ranks."""
        return self._rollout_model

    def rollout_model(self) -> PreTrainedModel | None:
        """:meth:`sync_rollout_model`, then the rollout module in eval mode (rank 0) or None (other ranks).
        Every rank must call it. The module is built once; on one fp32 rank it shares the learner's
        parameters (no copy), otherwise it is a copy refreshed in place."""
        self.sync_rollout_model()
        return self._rollout_model.eval() if self._rollout_model is not None and self.dist.is_main else None

    def _plain_model(self, dtype: torch.dtype, device: torch.device) -> PreTrainedModel:
        with device:
            model = self._model_cls._from_config(self.config, dtype=dtype)
        use_linear_patch_embed(model)
        model.generation_config = self.generation_config
        return model.eval()

    @torch.no_grad()
    def _bind_shared_parameters(self, module: PreTrainedModel) -> None:
        """Points every parameter and buffer of ``module`` at this learner's (same names; tied weights stay
        tied: one shared tensor per learner parameter)."""
        views: dict[int, torch.nn.Parameter] = {}
        for name, _ in module.named_parameters(remove_duplicate=False):
            source = self.model.get_parameter(name)
            if id(source) not in views:
                local = source.to_local() if isinstance(source, torch.distributed.tensor.DTensor) else source
                views[id(source)] = torch.nn.Parameter(local.detach(), requires_grad=False)
            owner, _, attr = name.rpartition(".")
            setattr(module.get_submodule(owner), attr, views[id(source)])
        for name, buffer in self.model.named_buffers(remove_duplicate=False):
            owner_name, _, attr = name.rpartition(".")
            owner = module.get_submodule(owner_name)
            owner.register_buffer(attr, buffer, persistent=attr not in owner._non_persistent_buffers_set)
        stale = [n for n, t in (*module.named_parameters(), *module.named_buffers()) if t.is_meta]
        if stale:
            raise RuntimeError(f"rollout module: no learner tensor for {stale[:3]}")

    def save_checkpoint(
        self, root: str | Path, extra: dict[str, Any] | None = None, keep: int | None = 2
    ) -> Path:
        """Atomic sharded checkpoint of model, optimizer, scheduler, RNG, ``extra`` and the step (see
        :mod:`codepercept_rl.learner.checkpoint`). Every rank must call it."""
        extra = {**(extra or {}), "learner_step": self.step}
        optimizer = self._optimizer("save_checkpoint")
        return ckpt.save_checkpoint(root, self.step, self.model, optimizer, self.scheduler, extra, keep)

    def load_checkpoint(self, path: str | Path) -> dict[str, Any]:
        """Restores a checkpoint written by :meth:`save_checkpoint`; returns this rank's ``extra``."""
        t0 = time.perf_counter()
        step, extra = ckpt.load_checkpoint(
            path, self.model, self._optimizer("load_checkpoint"), self.scheduler
        )
        self.step = step
        log.info("resumed from %s (step %d) in %.2fs", path, step, time.perf_counter() - t0)
        return extra

    def export_hf(self, path: str | Path) -> Path | None:
        """Writes a plain Hugging Face folder (``save_pretrained`` + processor) that loads with
        ``from_pretrained``. Every rank must call it; rank 0 writes. Returns the folder on rank 0.

        The processor is saved in the hub layout (image *and* video processor configs, the stock processor
        class), which vLLM needs to serve the folder (R1's ``model.path`` is S1's export).
        """
        from codepercept_rl.models.processor import save_processor_for_vllm

        state = self.state_dict_for_rollout()
        if not self.dist.is_main:
            return None
        model = self._model_cls._from_config(self.config, dtype=torch.float32)  # fp32 master weights, on CPU
        model.load_state_dict(state, strict=True)
        model.generation_config = self.generation_config
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(path)
        if self.processor is not None:
            save_processor_for_vllm(self.processor, path, self.config.model_type, source=self.cfg.model.path)
        log.info("exported Hugging Face folder to %s", path)
        return path
