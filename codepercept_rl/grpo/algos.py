"""GRPO's numbers: group-normalised advantages, the clipped surrogate, KL estimators, loss aggregation.

Pure tensor functions, no state. Shapes: ``B`` sequences (prompts x group size), ``T`` response tokens. Names and
conventions match verl 0.9's ``verl.trainer.ppo.core_algos`` where the meaning is the same, so configs carry over
(``clip_ratio_low/high/c``, ``loss_agg_mode``, ``kl_penalty`` / ``kl_loss_type`` in ``KL_ESTIMATORS``); the
parity suite ``tests/grpo/test_verl_parity.py`` checks them, and a full update through the learner, against
verl's own functions. Where we differ from verl on purpose, the function says so (and ``docs/rl_math.md``).
Log-probs and entropy (at the sampling temperature, in chunks) are the learner's: ``learner/logprobs.py``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

LOSS_AGG_MODES = (
    "token-mean",
    "token-sum",
    "seq-mean-token-sum",
    "seq-mean-token-mean",
    "seq-mean-token-sum-norm",
)
_KL_BASE = ("k1", "kl", "abs", "k2", "mse", "k3", "low_var_kl")
# "<name>+": the forward value of <name>, the gradient of k2 (straight-through; verl's "k3+" and friends).
KL_ESTIMATORS = _KL_BASE + tuple(f"{name}+" for name in _KL_BASE)
LOG_RATIO_CLAMP = 20.0  # |log-ratio| bound before exp (verl's): exp(20) ~ 5e8 is finite in fp32
K3_CLAMP = 10.0  # bound of the k3 estimate itself (verl's)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """``sum(x * mask) / sum(mask)`` over ``dim`` (all elements when None); 0 where the mask is empty."""
    mask = mask.to(x.dtype)
    total = (x * mask).sum() if dim is None else (x * mask).sum(dim)
    count = mask.sum() if dim is None else mask.sum(dim)
    return total / count.clamp_min(1.0)


def grpo_advantages(
    scores: torch.Tensor,
    group_ids: Sequence[int] | torch.Tensor,
    *,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages of one score per sequence.

    ``A_i = (r_i - mean_g(r)) / (std_g(r) + eps)`` over the sequences ``g`` sharing a prompt (``group_ids``);
    with ``norm_by_std=False`` (Dr. GRPO) ``A_i = r_i - mean_g(r)``. ``std`` is the unbiased sample std, as in
    verl; a group of one has mean = its score and std = 1 (advantage 0). NaN scores ("could not score", TRL's
    ``None``) are left out of their group's statistics and get advantage 0.

    Args:
        scores: (B,) one scalar reward per sequence.
        group_ids: (B,) the prompt each sequence answers.
        norm_by_std: divide by the group std (GRPO) or not (Dr. GRPO).
        eps: added to the std.

    Returns:
        (B,) advantages, float32.
    """
    scores = scores.detach().to(torch.float32)
    ids = torch.as_tensor(group_ids, device=scores.device)
    adv = torch.zeros_like(scores)
    valid = ~torch.isnan(scores)
    for g in torch.unique(ids):
        members = (ids == g) & valid
        n = int(members.sum())
        if n == 0:
            continue
        group = scores[members]
        mean = group.mean()
        std = group.std(unbiased=True) if n > 1 else torch.ones((), device=scores.device)
        centred = group - mean
        adv[members] = centred / (std + eps) if norm_by_std else centred
    return adv


def kl_penalty(
    logprob: torch.Tensor,
    ref_logprob: torch.Tensor,
    estimator: str = "low_var_kl",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_ref) from samples of pi.

    With ``d = logprob - ref_logprob``:
    ``k1`` (``kl``): ``d``; ``abs``: ``|d|``; ``k2`` (``mse``): ``d^2 / 2``;
    ``k3`` (``low_var_kl``): ``exp(-d') + d' - 1`` with ``d' = clamp(d, -20, 20)``, the result clamped to
    [-10, 10] (Schulman's unbiased, low-variance form; both clamps are verl's).
    ``<name>+``: the value of ``<name>`` with the gradient of ``k2`` (straight-through: k1 and k3 are unbiased
    estimates of the KL but their gradients are not the KL's gradient; k2's is). ``k2+`` / ``mse+`` are ``k2``.

    Args:
        logprob: (B, T) log-probs of the sampled tokens under the policy.
        ref_logprob: (B, T) the same under the frozen reference.
        estimator: one of ``KL_ESTIMATORS``.
        mask: (B, T) response tokens. Elsewhere the estimate is 0 *and carries no gradient*: ``d`` is zeroed
            before any non-linearity, so a prompt or padding position with a very negative log-prob (whose
            reference is 0) cannot turn ``exp`` into inf and the gradient into NaN.

    Returns:
        (B, T) per-token KL estimates.
    """
    straight_through = estimator.endswith("+")
    base = estimator[:-1] if straight_through else estimator
    if base not in _KL_BASE:
        raise ValueError(f"unknown KL estimator '{estimator}'; choose from {KL_ESTIMATORS}")
    d = logprob - ref_logprob
    if mask is not None:
        d = torch.where(mask.bool(), d, torch.zeros_like(d))
    if base in ("k1", "kl"):
        value = d
    elif base == "abs":
        value = d.abs()
    elif base in ("k2", "mse"):
        return 0.5 * d.square()  # k2 already has the right gradient: "k2+" is k2
    else:  # k3 / low_var_kl
        neg = torch.clamp(-d, min=-LOG_RATIO_CLAMP, max=LOG_RATIO_CLAMP)
        value = torch.clamp(torch.exp(neg) - neg - 1, min=-K3_CLAMP, max=K3_CLAMP)
    if not straight_through:
        return value
    k2 = 0.5 * d.square()
    return k2 - k2.detach() + value.detach()


def loss_sum(loss: torch.Tensor, mask: torch.Tensor, mode: str, horizon: int | None = None) -> torch.Tensor:
    """The numerator of ``loss_agg_mode`` over these rows: summed over rows (and micro-batches and ranks) and
    divided by :func:`loss_normalizer` of the same rows' counts it gives :func:`aggregate_loss`.

    ``token-mean`` / ``token-sum`` / ``seq-mean-token-sum``: ``sum_b sum_t l m``;
    ``seq-mean-token-mean``: ``sum_b (sum_t l m / sum_t m)`` (an empty row adds 0);
    ``seq-mean-token-sum-norm``: ``sum_b sum_t l m / horizon`` (``horizon``: the padded response length,
    verl's ``loss_scale_factor``; default ``T``).
    """
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode '{mode}'; choose from {LOSS_AGG_MODES}")
    mask = mask.to(loss.dtype)
    masked = loss * mask
    if mode == "seq-mean-token-mean":
        return (masked.sum(-1) / mask.sum(-1).clamp_min(1.0)).sum()
    if mode == "seq-mean-token-sum-norm":
        return masked.sum() / float(loss.shape[-1] if horizon is None else horizon)
    return masked.sum()


def loss_normalizer(mode: str, num_tokens: float, num_sequences: float) -> float:
    """The denominator of ``loss_agg_mode`` for a batch with these counts (the whole mini-batch, every rank):
    response tokens (``token-mean``), 1 (``token-sum``), or sequences with at least one response token (the
    ``seq-mean-*`` modes, as verl's ``agg_loss`` counts them). Never below 1: an empty batch has loss 0."""
    if mode not in LOSS_AGG_MODES:
        raise ValueError(f"unknown loss_agg_mode '{mode}'; choose from {LOSS_AGG_MODES}")
    if mode == "token-sum":
        return 1.0
    return max(float(num_tokens if mode == "token-mean" else num_sequences), 1.0)


def aggregate_loss(
    loss: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean", horizon: int | None = None
) -> torch.Tensor:
    """Reduce a (B, T) per-token loss to a scalar: :func:`loss_sum` / :func:`loss_normalizer` of this batch.

    ``token-mean``: ``sum(l*m) / sum(m)`` (DAPO: every token weighs the same);
    ``token-sum``: ``sum(l*m)``;
    ``seq-mean-token-sum``: mean over sequences of ``sum_t l*m``;
    ``seq-mean-token-mean``: mean over sequences of the per-sequence token mean (original GRPO);
    ``seq-mean-token-sum-norm``: ``sum(l*m) / (S * horizon)`` (Dr. GRPO: a constant per-token weight, no length
    bias; verl 0.9 and TRL's ``dr_grpo``).
    ``S`` counts the sequences with at least one unmasked token; the sequence means leave the others out.
    """
    sequences = float((mask.sum(-1) > 0).sum())
    return loss_sum(loss, mask, mode, horizon) / loss_normalizer(mode, float(mask.sum()), sequences)


def clipped_surrogate(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token PPO clipped surrogate with asymmetric clipping (DAPO clip-higher) and dual clip.

    With ``rho = exp(logprob - old_logprob)`` and token advantages ``A``:
    ``l = max(-A rho, -A clip(rho, 1 - eps_low, 1 + eps_high))``; for ``A < 0`` also ``l = min(l, -A c)``
    (dual clip, ``c = clip_ratio_c``).

    Args:
        logprob: (B, T) current policy log-probs (with grad).
        old_logprob: (B, T) log-probs of the policy that sampled (no grad).
        advantages: (B, T) per-token advantages (a sequence's advantage broadcast over its tokens).

    Returns:
        (B, T) per-token losses and (B, T) detached indicator/statistic tensors: ``clipped`` (the upper/lower
        clip is active), ``dual_clipped`` (the dual clip is active), ``neg_log_ratio`` (``old - new``).
    """
    log_ratio = torch.clamp(logprob - old_logprob, -20.0, 20.0)  # exp overflow guard, as verl
    ratio = torch.exp(log_ratio)
    loss1 = -advantages * ratio
    loss2 = -advantages * torch.clamp(ratio, 1.0 - clip_ratio_low, 1.0 + clip_ratio_high)
    clipped = torch.maximum(loss1, loss2)
    loss3 = -advantages * clip_ratio_c
    dual = torch.minimum(loss3, clipped)
    per_token = torch.where(advantages < 0, dual, clipped)
    with torch.no_grad():
        stats = {
            "clipped": torch.gt(loss2, loss1).float(),
            "dual_clipped": (torch.gt(clipped, loss3) & (advantages < 0)).float(),
            "neg_log_ratio": -log_ratio,
        }
    return per_token, stats


def policy_loss(
    logprob: torch.Tensor,
    old_logprob: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    clip_ratio_low: float = 0.2,
    clip_ratio_high: float = 0.2,
    clip_ratio_c: float = 3.0,
    loss_agg_mode: str = "token-mean",
    horizon: int | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`clipped_surrogate` reduced by :func:`aggregate_loss`, with verl's scalar statistics.

    Returns:
        The scalar loss and detached stats: ``pg_clipfrac`` (upper/lower clip active), ``pg_clipfrac_lower``
        (dual clip active), ``ppo_kl`` (mean of ``old - new`` log-prob, verl's name).
    """
    per_token, s = clipped_surrogate(
        logprob,
        old_logprob,
        advantages,
        clip_ratio_low=clip_ratio_low,
        clip_ratio_high=clip_ratio_high,
        clip_ratio_c=clip_ratio_c,
    )
    loss = aggregate_loss(per_token, mask, loss_agg_mode, horizon)
    stats = {
        "pg_clipfrac": masked_mean(s["clipped"], mask),
        "pg_clipfrac_lower": masked_mean(s["dual_clipped"], mask),
        "ppo_kl": masked_mean(s["neg_log_ratio"], mask),
    }
    return loss, stats
