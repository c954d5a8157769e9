"""The GRPO loss in the learner's convention: a *sum* per micro-batch, divided by a global normaliser.

:class:`~codepercept_rl.learner.Learner` divides the sum of every micro-batch's loss (all ranks) by one global
number, so the gradient does not depend on how a mini-batch was split. The pair is
:func:`~codepercept_rl.grpo.algos.loss_sum` (per micro-batch) and
:func:`~codepercept_rl.grpo.algos.loss_normalizer` (whole mini-batch), the same two functions
:func:`~codepercept_rl.grpo.algos.aggregate_loss` divides, so the training loss and the helper cannot drift:

=========================  ======================================  ==============================
mode                       sum over a micro-batch                  normaliser (whole mini-batch)
=========================  ======================================  ==============================
token-mean                 sum_b sum_t l m                         response tokens
token-sum                  sum_b sum_t l m                         1
seq-mean-token-sum         sum_b sum_t l m                         sequences
seq-mean-token-mean        sum_b (sum_t l m / sum_t m)             sequences
seq-mean-token-sum-norm    sum_b sum_t l m / max_response_length   sequences (Dr. GRPO constant)
=========================  ======================================  ==============================

This is verl 0.9's ``ppo_loss`` with ``global_batch_info`` set (``batch_num_tokens``, ``global_batch_size``,
``loss_scale_factor`` = ``rollout.response_length``). The KL term is aggregated the same way and added with
weight ``kl_loss_coef``; it is computed on response tokens only (see :func:`~codepercept_rl.grpo.algos.kl_penalty`).
Log-probs arrive already divided by the sampling temperature (the learner's ``temperature``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codepercept_rl.grpo.algos import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    clipped_surrogate,
    kl_penalty,
    loss_normalizer,
    loss_sum,
)
from codepercept_rl.learner.batch import MicroBatch


@dataclass(frozen=True)
class GRPOLoss:
    """A picklable loss function (it travels to Ray learner actors) with the step's settings."""

    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = 3.0
    loss_agg_mode: str = "token-mean"
    use_kl_loss: bool = False
    kl_loss_coef: float = 0.001
    kl_loss_type: str = "low_var_kl"
    max_response_length: int = 512
    # The update is on-policy (one epoch, one mini-batch, weights unchanged since sampling): the sampling
    # policy's log-probs are this forward's own, detached (ratio 1; the gradient is -A * grad log-prob), and no
    # ``old_logprobs`` travel with the micro-batches (verl's actor ``on_policy``).
    on_policy: bool = False

    # Statistics reduced like the loss (divided by ``normalizer``); the rest are token sums.
    AGGREGATED_STATS = ("pg_loss", "kl_loss")

    def __post_init__(self) -> None:
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"unknown loss_agg_mode '{self.loss_agg_mode}'; choose from {LOSS_AGG_MODES}")
        if self.kl_loss_type not in KL_ESTIMATORS:
            raise ValueError(f"unknown kl_loss_type '{self.kl_loss_type}'; choose from {KL_ESTIMATORS}")
        if not self.clip_ratio_c > 1.0:
            raise ValueError(
                f"clip_ratio_c must be > 1 (dual-clip PPO's lower bound), got {self.clip_ratio_c}"
            )

    def normalizer(self, response_tokens: int, sequences: int) -> float:
        """The global divisor for a mini-batch with these counts (sequences with at least one response token)."""
        return loss_normalizer(self.loss_agg_mode, response_tokens, sequences)

    def __call__(
        self, logprobs: torch.Tensor, mb: MicroBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss sum, stat sums)`` of one micro-batch. ``pg_loss`` and ``kl_loss`` (:attr:`AGGREGATED_STATS`) are
        numerators like the loss: divided by :meth:`normalizer` they are verl's ``actor/pg_loss`` and
        ``actor/kl_loss`` in this ``loss_agg_mode``. The others are sums over response tokens (``tokens``
        counts them), so ``stat / tokens`` is the token mean (verl's ``pg_clipfrac``, ``ppo_kl`` ...)."""
        mask = mb.loss_mask  # (B, T)
        if self.on_policy:
            old = logprobs.detach()
        elif "old_logprobs" in mb.extras:
            old = mb.extras["old_logprobs"]
        else:
            raise ValueError("GRPOLoss: micro-batch has no old_logprobs and the loss is not on_policy")
        per_token, s = clipped_surrogate(
            logprobs,
            old,
            mb.extras["advantages"],
            clip_ratio_low=self.clip_ratio_low,
            clip_ratio_high=self.clip_ratio_high,
            clip_ratio_c=self.clip_ratio_c,
        )
        pg = loss_sum(per_token, mask, self.loss_agg_mode, self.max_response_length)
        stats = {
            "pg_loss": pg.detach(),
            "pg_clipfrac": (s["clipped"] * mask).sum(),
            "pg_clipfrac_lower": (s["dual_clipped"] * mask).sum(),
            "ppo_kl": (s["neg_log_ratio"] * mask).sum(),
            "tokens": mask.sum(),
        }
        loss = pg
        if self.use_kl_loss:
            # Only on response tokens: the prompt's and padding's reference log-probs are 0 (not computed).
            kl = kl_penalty(logprobs, mb.extras["ref_logprobs"], self.kl_loss_type, mask=mask)
            kl_sum = loss_sum(kl, mask, self.loss_agg_mode, self.max_response_length)
            loss = loss + self.kl_loss_coef * kl_sum
            stats["kl_loss"] = kl_sum.detach()
        return loss, stats
