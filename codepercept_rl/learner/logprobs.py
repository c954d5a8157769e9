"""Per-token log-probs (and entropy) without [tokens x vocab] logits: the LM head applied chunk by chunk.

A micro-batch of 2 responses of 8,192 tokens with a 151k vocabulary has ~10 GB of fp32 logits, and autograd
keeps the log-softmax of all of them for the backward. Here the LM head runs on ``chunk_size`` tokens at a time;
in grad mode each chunk is checkpointed (non-reentrant), so the backward recomputes that chunk's logits instead of
keeping them: peak memory holds one chunk's logits, and what stays saved for the backward is the hidden states
(``H`` per token instead of ``V``). verl does the same with its chunked / fused ``logprobs_from_logits``.

It runs *inside* the model's own forward: :func:`lm_head_logprobs` makes the model's ``lm_head`` return
log-probs of the next tokens instead of logits for one call, so FSDP2 gathers, uses and reduces the head's
weight exactly as for a normal forward (a tied embedding stays tied) and nothing outside the model touches it::

    with lm_head_logprobs(model, targets, temperature=0.7, chunk_size=512) as out:
        logprobs = model(**inputs, logits_to_keep=K).logits     # (B, K-1): log p(targets)
    entropy = out.entropy                                        # (B, K-1) with with_entropy=True, no grad
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

__all__ = ["chunked_token_logprobs", "lm_head_logprobs"]


def _scaled_logits(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """``hidden @ weight.T / temperature`` in at least fp32 (bf16 loses the small probabilities GRPO ratios
    depend on)."""
    z = F.linear(hidden, weight)
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return z / temperature if temperature != 1.0 else z


def _entropy(z: torch.Tensor) -> torch.Tensor:
    """Entropy ``logsumexp(z) - sum softmax(z) z`` of (..., V) logits, no graph."""
    z = z.detach()
    return torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)


def _chunk(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """(n,) log-probs of ``targets`` from (n, H) hidden states."""
    return -F.cross_entropy(_scaled_logits(hidden, weight, temperature), targets, reduction="none")


@torch.no_grad()
def _chunk_entropy(hidden: torch.Tensor, weight: torch.Tensor, temperature: float) -> torch.Tensor:
    """(n,) entropy of the next-token distributions of (n, H) hidden states."""
    return _entropy(_scaled_logits(hidden, weight, temperature))


def chunked_token_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs of ``targets`` under ``softmax(hidden @ weight.T / temperature)``, ``chunk_size`` rows at a time.

    Args:
        hidden: (N, H) final hidden states (after the model's last norm).
        weight: (V, H) the LM head's weight.
        targets: (N,) the token each row predicts.
        temperature: divides the logits (the sampling temperature).
        chunk_size: rows per chunk; <= 0 computes all rows at once (the full-logits reference).
        with_entropy: also the (N,) entropies, without gradient.

    Returns:
        ``(logprobs (N,), entropy (N,) or None)``.
    """
    n = hidden.shape[0]
    size = n if chunk_size <= 0 else chunk_size
    pieces, entropies = [], []
    for start in range(0, n, max(size, 1)):
        h, t = hidden[start : start + size], targets[start : start + size]
        if torch.is_grad_enabled() and chunk_size > 0 and (h.requires_grad or weight.requires_grad):
            pieces.append(checkpoint(_chunk, h, weight, t, temperature, use_reentrant=False))
        else:
            pieces.append(_chunk(h, weight, t, temperature))
        if with_entropy:
            entropies.append(_chunk_entropy(h.detach(), weight.detach(), temperature))
    if n == 0:
        empty = hidden.new_zeros(0, dtype=torch.float32)
        return empty, (empty if with_entropy else None)
    return torch.cat(pieces), (torch.cat(entropies) if with_entropy else None)


@dataclass
class HeadOutputs:
    """What :func:`lm_head_logprobs` leaves behind: the entropy of the positions it scored (or None)."""

    entropy: torch.Tensor | None = None


@contextmanager
def lm_head_logprobs(
    model: torch.nn.Module,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 512,
    with_entropy: bool = False,
    positions: torch.Tensor | None = None,
) -> Iterator[HeadOutputs]:
    """For the model calls inside the block, its LM head returns next-token log-probs instead of logits.

    The head receives the hidden states the model keeps (``logits_to_keep`` positions, (B, K, H)); position k
    predicts ``targets[:, k]`` for k < K-1 and the last position predicts nothing, so the "logits" the model returns
    are (B, K-1) log-probs. ``targets`` is (B, K-1).

    With ``positions`` (M,) the head scores ``targets`` (M,) from the hidden states at those flat indices of
    (B * K): any state, any number of times (the prefix grouper scores G first tokens from one prompt state);
    the model then returns (M,) log-probs.
    """
    head = model.get_output_embeddings()
    out = HeadOutputs()

    if getattr(head, "bias", None) is not None:
        raise ValueError("lm_head_logprobs: an LM head with a bias is not supported")

    def forward(hidden: torch.Tensor) -> torch.Tensor:
        B, K, H = hidden.shape
        if positions is not None:
            if targets.shape != positions.shape:
                raise ValueError(
                    f"lm_head_logprobs: targets {tuple(targets.shape)} for positions {tuple(positions.shape)}"
                )
            rows = hidden.reshape(-1, H)[positions]
            logprobs, out.entropy = chunked_token_logprobs(
                rows,
                head.weight,
                targets,
                temperature=temperature,
                chunk_size=chunk_size,
                with_entropy=with_entropy,
            )
            return logprobs
        if targets.shape != (B, K - 1):
            raise ValueError(
                f"lm_head_logprobs: targets {tuple(targets.shape)} for hidden states {(B, K, H)}"
            )
        if chunk_size <= 0:  # every logit at once, exactly as a plain head + log-softmax computes them
            z = _scaled_logits(hidden, head.weight, temperature)[:, :-1]  # (B, K-1, V)
            if with_entropy:
                with torch.no_grad():
                    out.entropy = _entropy(z)
            return -F.cross_entropy(z.flatten(0, 1), targets.flatten(), reduction="none").view(B, K - 1)
        rows = hidden[:, :-1].reshape(-1, H)  # (B*(K-1), H)
        logprobs, entropy = chunked_token_logprobs(rows, head.weight, targets.reshape(-1), temperature=temperature,
                                                   chunk_size=chunk_size, with_entropy=with_entropy)  # fmt: skip
        out.entropy = entropy.view(B, K - 1) if entropy is not None else None
        return logprobs.view(B, K - 1)

    head.forward = forward  # an instance attribute: nn.Module.__call__ finds it before the class's forward
    try:
        yield out
    finally:
        del head.forward
