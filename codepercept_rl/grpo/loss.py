"""The GRPO loss in the learner's convention: a *sum* per micro-batch, divided by a global normaliser.

:class:`~codepercept_rl.learner.Learner` divides the sum of every micro-batch's loss (all ranks) by one global
number, so the gradient does not depend on how a mini-batch was split. Each ``loss_agg_mode`` is a pair
(per-micro-batch sum, normaliser) whose quotient equals :func:`codepercept_rl.grpo.algos.aggregate_loss` over the
whole mini-batch:

=========================  ======================================  ==============================
mode                       sum over a micro-batch                  normaliser (whole mini-batch)
=========================  ======================================  ==============================
token-mean                 sum_b sum_t l m                         response tokens
seq-mean-token-sum         sum_b sum_t l m                         sequences
seq-mean-token-mean        sum_b (sum_t l m / sum_t m)             sequences
seq-mean-token-sum-norm    sum_b sum_t l m / max_response_length   sequences (Dr. GRPO constant)
=========================  ======================================  ==============================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codepercept_rl.grpo.algos import LOSS_AGG_MODES, clipped_surrogate, kl_penalty
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

    def __post_init__(self) -> None:
        if self.loss_agg_mode not in LOSS_AGG_MODES:
            raise ValueError(f"unknown loss_agg_mode '{self.loss_agg_mode}'; choose from {LOSS_AGG_MODES}")

    def normalizer(self, response_tokens: int, sequences: int) -> float:
        """The global divisor for a mini-batch with these counts."""
        return float(response_tokens if self.loss_agg_mode == "token-mean" else sequences)

    def __call__(
        self, logprobs: torch.Tensor, mb: MicroBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(loss sum, stat sums)`` of one micro-batch; stats are summed over response tokens (``tokens``
        counts them), so ``stat / tokens`` over the whole step is the token mean."""
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
        stats = {
            "pg_loss": (per_token.detach() * mask).sum(),
            "pg_clipfrac": (s["clipped"] * mask).sum(),
            "pg_clipfrac_lower": (s["dual_clipped"] * mask).sum(),
            "ppo_kl": (s["neg_log_ratio"] * mask).sum(),
            "tokens": mask.sum(),
        }
        if self.use_kl_loss:
            kl = kl_penalty(logprobs, mb.extras["ref_logprobs"], self.kl_loss_type)
            per_token = per_token + self.kl_loss_coef * kl
            stats["kl_loss"] = (kl.detach() * mask).sum()
        masked = per_token * mask
        if self.loss_agg_mode == "seq-mean-token-mean":
            loss = (masked.sum(-1) / mask.sum(-1).clamp_min(1.0)).sum()
        elif self.loss_agg_mode == "seq-mean-token-sum-norm":
            loss = masked.sum() / self.max_response_length
        else:
            loss = masked.sum()
        return loss, stats
