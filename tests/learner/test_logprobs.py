"""Chunked LM-head log-probs: the same numbers and gradients as full logits, a fraction of the memory.

The parity suite (tests/grpo/test_verl_parity.py) runs the learner with small chunks against verl's full-logits
``logprobs_from_logits``; here the function itself, and what autograd keeps for the backward.
"""

from __future__ import annotations

import pytest
import torch

from codepercept_rl.learner.logprobs import chunked_token_logprobs, lm_head_logprobs


def _inputs(n=97, hidden=16, vocab=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, hidden, generator=g).requires_grad_()
    w = torch.randn(vocab, hidden, generator=g).requires_grad_()
    t = torch.randint(vocab, (n,), generator=g)
    return h, w, t


@pytest.mark.parametrize("chunk_size", [1, 7, 96, 97, 1000])
def test_chunks_equal_full_logits_values_entropy_and_gradients(chunk_size):
    h, w, t = _inputs()
    full = torch.log_softmax((h @ w.T) / 0.7, -1)  # the reference: every logit at once
    ref_lp = full.gather(-1, t[:, None])[:, 0]
    ref_ent = -(full.exp() * full).sum(-1)
    ref_lp.sum().backward()
    ref_gh, ref_gw = h.grad.clone(), w.grad.clone()
    h.grad = w.grad = None
    lp, ent = chunked_token_logprobs(h, w, t, temperature=0.7, chunk_size=chunk_size, with_entropy=True)
    lp.sum().backward()
    assert torch.allclose(lp, ref_lp, atol=1e-5, rtol=0)
    assert torch.allclose(ent, ref_ent.detach(), atol=1e-5, rtol=0)
    assert torch.allclose(h.grad, ref_gh, atol=1e-5, rtol=0) and torch.allclose(
        w.grad, ref_gw, atol=1e-5, rtol=0
    )
    assert not ent.requires_grad


def _saved_bytes(fn) -> int:
    """Bytes of the tensors autograd saves for the backward while ``fn`` runs (what a forward holds on to)."""
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    out.sum().backward()
    return total


def test_chunks_keep_hidden_states_not_logits_for_the_backward():
    h, w, t = _inputs(n=2048, hidden=32, vocab=4096)
    full = _saved_bytes(lambda: chunked_token_logprobs(h, w, t, chunk_size=0)[0])
    chunked = _saved_bytes(lambda: chunked_token_logprobs(h, w, t, chunk_size=256)[0])
    logits_bytes = 2048 * 4096 * 4
    assert full >= logits_bytes  # the log-softmax of every logit waits for the backward
    assert chunked * 5 <= full, (chunked, full)


@pytest.mark.parametrize("chunk_size", [0, 2])
def test_lm_head_returns_next_token_logprobs_inside_the_model_forward(chunk_size):
    from codepercept_rl.models.tiny import build_tiny_model

    model, _ = build_tiny_model("qwen2_5_vl", "nano", seed=0)
    ids = torch.randint(5, 900, (2, 9), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits  # (2, 9, V)
        expected = torch.log_softmax(logits[:, 3:-1] / 1.3, -1).gather(-1, ids[:, 4:, None])[..., 0]
        with lm_head_logprobs(
            model, ids[:, 4:], temperature=1.3, chunk_size=chunk_size, with_entropy=True
        ) as out:
            got = model(input_ids=ids, use_cache=False, logits_to_keep=6).logits
    assert got.shape == (2, 5) and torch.allclose(got, expected, atol=1e-5)
    z = torch.log_softmax(logits[:, 3:-1] / 1.3, -1)
    assert torch.allclose(out.entropy, -(z.exp() * z).sum(-1), atol=1e-5)
    assert "forward" not in vars(model.lm_head)  # the head is itself again after the block
    with pytest.raises(ValueError, match="targets"), lm_head_logprobs(model, ids[:, 2:]), torch.no_grad():
        model(input_ids=ids, use_cache=False, logits_to_keep=6)
