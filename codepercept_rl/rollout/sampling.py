"""Drawing the next token of a CPU rollout: top-p (nucleus) sampling without a sort of the vocabulary.

HF's sampling step is ``TopPLogitsWarper`` (a full sort of every row, a softmax and a cumsum over it, a scatter
back) followed by ``torch.multinomial`` on the softmax. On a CPU core both are slow beside the model step of a
small policy: measured at 1 thread on 16 x 2,048 fp32 logits, the sort takes 2.3 ms and ``multinomial`` 1.1 ms,
while a softmax takes 27 us (timed on their own; the whole loop: ``benchmarks/hf_decode.py --model ... --top-p
0.85``). :func:`sample` draws from the same distribution in a
fraction of that:

- **the nucleus among a few candidates**: the ``candidates`` most likely tokens (``torch.topk``, sorted). Their
  running probability mass decides which are kept; when the mass of all of them reaches ``top_p`` the nucleus
  lies inside them (rows that put their mass on a few tokens, what a trained policy does at almost every step),
  and only the other rows are sorted in full;
- **the kept set is HF's and vLLM's**: a token stays when the probability of the tokens ranked above it is below
  ``top_p``, and the most likely token always stays (``min_tokens_to_keep=1``); kept probabilities are
  renormalised;
- **the draw** is one uniform number per row looked up in the cumulative kept probabilities
  (``torch.searchsorted``): inverse-CDF sampling, exact for a categorical distribution.

The distribution is generate's up to fp32 rounding at the nucleus boundary and among tied probabilities; the
random stream is not (generate draws with ``multinomial``). ``tests/rollout/test_sampling.py`` checks the kept
set against ``TopPLogitsWarper`` and the frequencies of many draws against the renormalised nucleus.
"""

from __future__ import annotations

import torch

SAMPLERS = ("fast", "hf")
DEFAULT_CANDIDATES = 16


def sample(scores: torch.Tensor, top_p: float = 1.0, *, candidates: int = DEFAULT_CANDIDATES) -> torch.Tensor:
    """One token id per row of ``scores`` (B, V), drawn from its softmax restricted to the top-p nucleus.

    ``scores`` are the processed logits (temperature, top-k and masks already applied; ``-inf`` marks a token
    that must not be drawn). Draws from torch's default generator, one uniform number per row.
    """
    if scores.dim() != 2:
        raise ValueError(f"sample expects (batch, vocab) scores, got shape {tuple(scores.shape)}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    if candidates < 1:
        raise ValueError(f"candidates={candidates}: must be >= 1")
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32)
    batch, vocab = probs.shape
    u = torch.rand(batch, 1, device=probs.device)
    if top_p >= 1.0:
        return _draw(probs, None, u)
    k = min(candidates, vocab)
    top, index = probs.topk(k, dim=-1)  # sorted, most likely first
    token, covered = _nucleus_draw(top, index, top_p, u)
    if k < vocab and not bool(covered.all()):
        rows = (~covered).nonzero().squeeze(1)
        full, order = probs[rows].sort(dim=-1, descending=True)
        token[rows] = _nucleus_draw(full, order, top_p, u[rows])[0]
    return token


def _nucleus_draw(
    probs: torch.Tensor, index: torch.Tensor, top_p: float, u: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws among the sorted ``probs`` (B, k) of tokens ``index``; also returns whether each row's nucleus ends
    inside these k (the mass of all k reaches ``top_p``)."""
    running = probs.cumsum(-1)
    keep = (running - probs) < top_p  # the mass ranked above each token
    keep[:, 0] = True
    return _draw(torch.where(keep, probs, 0.0), index, u), running[:, -1] >= top_p


def _draw(weights: torch.Tensor, index: torch.Tensor | None, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: the first position whose cumulative weight exceeds ``u`` x the row's total."""
    cdf = weights.cumsum(-1)
    # u < 1 (torch.rand's largest value is 1 - 2**-24), and u * total rounds below the total in fp32, so the first
    # position whose cumulative weight exceeds it is one where the weight rises: never a zero-weight token, such as
    # the suppressed ids that end Qwen's vocabulary.
    pos = torch.searchsorted(cdf, u * cdf[:, -1:], right=True)
    if index is not None:
        pos = index.gather(1, pos)
    return pos.squeeze(1)
