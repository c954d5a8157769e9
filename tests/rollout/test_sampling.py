"""The fast sampler draws from HF's top-p distribution: never a token HF's ``TopPLogitsWarper`` removes or a masked
one, and the frequencies of many draws match the renormalised nucleus (a chi-square bound far in the tail, so a
seeded run that passes is not luck); rows whose nucleus is wider than the candidate set take the sorted path."""

from __future__ import annotations

import math

import pytest
import torch
from transformers.generation.logits_process import TopPLogitsWarper

from codepercept_rl.rollout.decode import Processors
from codepercept_rl.rollout.sampling import sample

VOCAB = 40
DRAWS = 20_000


def _rows(seed: int) -> torch.Tensor:
    """Rows from peaked (a trained policy) to flat (random weights), and one with masked tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randn(VOCAB, generator=g) * scale for scale in (8.0, 4.0, 2.0, 1.0, 0.3)]
    masked = torch.randn(VOCAB, generator=g) * 2.0
    masked[-6:] = float("-inf")  # suppressed ids at the end of the vocabulary, as Qwen's vision tokens are
    masked[:2] = float("-inf")
    rows.append(masked)
    return torch.stack(rows)


def _hf_nucleus(scores: torch.Tensor, top_p: float) -> torch.Tensor:
    """HF's distribution: its warper, then the softmax generate samples from."""
    if top_p < 1.0:
        scores = TopPLogitsWarper(top_p=top_p)(torch.zeros(len(scores), 1, dtype=torch.long), scores.clone())
    return torch.softmax(scores, dim=-1)


def _chi_square_bound(df: int) -> float:
    """Six standard deviations above the chi-square mean: a seeded draw from the right distribution stays below."""
    return df + 6.0 * math.sqrt(2.0 * df)


@pytest.mark.parametrize("top_p", [0.3, 0.85, 0.95, 1.0])
@pytest.mark.parametrize("candidates", [4, 16])
def test_draws_follow_hfs_top_p_distribution(top_p, candidates):
    torch.manual_seed(0)
    scores = _rows(1)
    expected = _hf_nucleus(scores, top_p)
    tokens = sample(scores.repeat_interleave(DRAWS, dim=0), top_p, candidates=candidates).view(
        len(scores), DRAWS
    )
    for row in range(len(scores)):
        counts = torch.bincount(tokens[row], minlength=VOCAB).double()
        p = expected[row].double()
        outside = counts[p == 0].sum().item()
        assert outside == 0, f"row {row}: {outside:.0f} draws of tokens HF's top-p {top_p} removes or masks"
        support = p > 0
        chi2 = (((counts - DRAWS * p)[support]) ** 2 / (DRAWS * p[support])).sum().item()
        df = max(int(support.sum()) - 1, 1)
        assert chi2 < _chi_square_bound(df), f"row {row}: chi-square {chi2:.1f} over {df} degrees of freedom"


def test_a_nucleus_wider_than_the_candidates_is_sorted_in_full():
    """A flat row at top-p 0.95 keeps most of the vocabulary: far more tokens than 4 candidates."""
    torch.manual_seed(1)
    flat = torch.zeros(1, VOCAB)
    tokens = sample(flat.repeat(DRAWS, 1), 0.95, candidates=4)
    kept = int((_hf_nucleus(flat, 0.95) > 0).sum())
    assert kept > 30
    assert len(torch.unique(tokens)) == kept


def test_a_boundary_among_tied_tokens_keeps_as_many_as_hf():
    """Which of equally likely tokens a nucleus keeps is the sort's choice (HF's too); how many is not."""
    tied = torch.zeros(1, VOCAB)
    tied[0, 10:13] = 5.0  # three equal leaders, each ~0.31 of the mass: top-p 0.3 keeps one, 0.5 two
    for top_p in (0.3, 0.5):
        torch.manual_seed(5)
        drawn = set(sample(tied.repeat(2000, 1), top_p).tolist())
        assert drawn <= {10, 11, 12}
        assert len(drawn) == int((_hf_nucleus(tied, top_p) > 0).sum())


def test_masked_tokens_are_never_drawn():
    """Two allowed tokens amid masked ones, the last of the vocabulary masked too."""
    scores = torch.full((4, VOCAB), float("-inf"))
    scores[:, 5] = 0.0
    scores[:, 7] = 0.0
    for top_p in (1.0, 0.9):
        torch.manual_seed(2)
        tokens = sample(scores.repeat(5000, 1), top_p)
        assert set(tokens.tolist()) <= {5, 7}


def test_processors_route_top_p_to_the_chosen_sampler():
    fast = Processors.build(greedy=False, temperature=0.7, top_p=0.85, top_k=-1, repetition_penalty=1.0,
                            suppress_ids=[3], sampler="fast")  # fmt: skip
    hf = Processors.build(greedy=False, temperature=0.7, top_p=0.85, top_k=-1, repetition_penalty=1.0,
                          suppress_ids=[3], sampler="hf")  # fmt: skip
    assert not any(type(p).__name__ == "TopPLogitsWarper" for p in fast.chain) and fast.top_p == 0.85
    assert any(type(p).__name__ == "TopPLogitsWarper" for p in hf.chain)
    scores = _rows(3)
    ids = torch.zeros(len(scores), 1, dtype=torch.long)
    torch.manual_seed(4)
    tokens = fast.sample(fast(ids, scores).repeat_interleave(500, dim=0))
    allowed = _hf_nucleus(hf(ids, scores), 1.0).repeat_interleave(500, dim=0) > 0
    assert bool(allowed.gather(1, tokens[:, None]).all()), "the fast sampler drew outside HF's warped support"
    assert 3 not in tokens.tolist()
    with pytest.raises(ValueError, match="sampler"):
        Processors.build(greedy=False, temperature=1.0, top_p=1.0, top_k=-1, repetition_penalty=1.0,
                         suppress_ids=[], sampler="vllm")  # fmt: skip


def test_bad_arguments_name_what_is_wrong():
    with pytest.raises(ValueError, match="top_p"):
        sample(torch.zeros(2, 5), 0.0)
    with pytest.raises(ValueError, match="batch, vocab"):
        sample(torch.zeros(5), 0.9)
    with pytest.raises(ValueError, match="candidates"):
        sample(torch.zeros(2, 5), 0.9, candidates=0)
