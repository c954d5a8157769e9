"""The shared-prefix forward (``use_prefix_grouper``) against the padded forward, on GRPO micro-batches of tiny
Qwen2.5-VL / Qwen3-VL models: groups of responses to one image prompt, of different lengths, several groups per
micro-batch. The log-probs and entropy of every response token and every parameter's gradient must be the padded
forward's; the prompt must run once per group."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.grpo.batch import PromptEncoder, Rollout, TrainBatch, build_micro_batches
from codepercept_rl.grpo.loss import GRPOLoss
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner.prefix_grouper import group_prefixes
from codepercept_rl.rollout import RolloutPrompt
from tests.learner.s1_rows import render_png


def _prompt(height: float, size: int, text: str) -> RolloutPrompt:
    img = Image.open(io.BytesIO(render_png(height))).convert("RGB").resize((size, size))
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
    return RolloutPrompt(messages, [img])


def _batch(vocab: int, lengths: list[list[int]], prompts: list[RolloutPrompt], seed: int = 0) -> TrainBatch:
    g = torch.Generator().manual_seed(seed)
    rollouts = []
    for p, group in enumerate(lengths):
        for n in group:
            ids = torch.randint(10, vocab - 10, (n,), generator=g).tolist()
            adv = float(torch.randn((), generator=g))
            rollouts.append(Rollout(p, p, ids, "", "stop", advantage=adv))
    return TrainBatch(prompts, rollouts)


def _learner(arch: str, attn: str = "sdpa") -> Learner:
    torch.manual_seed(0)
    cfg = LearnerConfig(
        model=ModelConfig(tiny_preset="nano", tiny_arch=arch, attn_implementation=attn),
        device="cpu", temperature=0.7, grad_clip=0.0,
    )  # fmt: skip
    return Learner(cfg)


def _run(learner: Learner, mbs, grouped: bool, loss_fn=sft_loss):
    learner.cfg.use_prefix_grouper = grouped
    with torch.no_grad():
        outs = [learner._forward(mb, with_entropy=True) for mb in mbs]
    learner.zero_grad()
    normalizer = float(sum(mb.loss_mask.sum() for mb in mbs))
    learner.backward(mbs, loss_fn, normalizer=normalizer)
    grads = learner.full_gradients()
    learner.zero_grad()
    return outs, grads


@pytest.mark.parametrize(
    ("arch", "attn"), [("qwen2_5_vl", "sdpa"), ("qwen3_vl", "sdpa"), ("qwen2_5_vl", "eager")]
)
def test_grouped_forward_equals_padded(arch, attn):
    torch.set_num_threads(1)
    learner = _learner(arch, attn)
    prompts = [_prompt(1.0, 64, "Write the code."), _prompt(2.5, 56, "Write matplotlib code for this chart.")]
    # Two groups of different prompt lengths and images; responses of different lengths; 2 micro-batches.
    batch = _batch(learner.config.text_config.vocab_size, [[5, 9, 1, 7], [3, 8, 6]], prompts)
    mbs = build_micro_batches(batch, list(range(len(batch.rollouts))), PromptEncoder(learner.processor), 5)
    assert [mb.num_sequences for mb in mbs] == [5, 2]

    grouped = group_prefixes(learner.model, mbs[0], attn, torch.float32)
    assert grouped.num_groups == 2  # rows 0-3 share prompt 0; row 4 is prompt 1's
    p0 = int(mbs[0].loss_mask[0].argmax())
    p1 = int(mbs[0].loss_mask[4].argmax())
    assert grouped.num_tokens == p0 + (5 + 9 + 1 + 7) + p1 + 3  # each prompt once
    assert grouped.inputs["image_grid_thw"].shape[0] == 2  # one image per group, not per row

    (pad_out, g_pad), (grp_out, g_grp) = _run(learner, mbs, False), _run(learner, mbs, True)
    for mb, (lp_pad, ent_pad), (lp_grp, ent_grp) in zip(mbs, pad_out, grp_out, strict=True):
        resp = mb.loss_mask.bool()
        torch.testing.assert_close(lp_grp[resp], lp_pad[resp], rtol=0, atol=1e-5)
        torch.testing.assert_close(ent_grp[resp], ent_pad[resp], rtol=0, atol=1e-5)
        assert torch.count_nonzero(lp_grp[~resp]) == 0  # prompts and padding hold zeros
        assert bool((lp_grp[resp] < 0).all())
    assert g_pad.keys() == g_grp.keys() and g_pad
    for name in g_pad:
        torch.testing.assert_close(g_grp[name], g_pad[name], rtol=1e-4, atol=1e-6, msg=name)
    vision = [n for n in g_pad if "visual" in n]
    assert vision and any(g_pad[n].abs().sum() > 0 for n in vision)  # the shared image gets its gradient


def test_grpo_loss_gradient_equal():
    """The GRPO loss (advantages, clipped ratio against old log-probs) through both forwards."""
    torch.set_num_threads(1)
    learner = _learner("qwen2_5_vl")
    prompts = [_prompt(0.5, 64, "Reproduce the figure.")]
    batch = _batch(learner.config.text_config.vocab_size, [[6, 4, 9, 2]], prompts, seed=3)
    encoder = PromptEncoder(learner.processor)
    order = list(range(4))
    with torch.no_grad():
        first = build_micro_batches(batch, order, encoder, 4)[0]
        lp = learner._forward(first, with_entropy=False)[0]
    old = [lp[b][first.loss_mask[b].bool()] + 0.05 * (b - 1.5) for b in range(4)]  # off-policy: ratios != 1
    mbs = build_micro_batches(batch, order, encoder, 4, old_logprobs=old)
    loss = GRPOLoss(clip_ratio_low=0.2, clip_ratio_high=0.2, loss_agg_mode="token-mean")
    (_, g_pad), (_, g_grp) = _run(learner, mbs, False, loss), _run(learner, mbs, True, loss)
    for name in g_pad:
        torch.testing.assert_close(g_grp[name], g_pad[name], rtol=1e-4, atol=1e-6, msg=name)


def test_rows_without_a_shared_prompt_are_their_own_groups():
    """S1-like rows (all different) group one per row and still give the padded forward's log-probs."""
    torch.set_num_threads(1)
    learner = _learner("qwen2_5_vl")
    prompts = [_prompt(h, 56, f"Chart {i}.") for i, h in enumerate((0.5, 1.5, 2.0))]
    batch = _batch(learner.config.text_config.vocab_size, [[4], [6], [3]], prompts)
    mb = build_micro_batches(batch, [0, 1, 2], PromptEncoder(learner.processor), 3)[0]
    assert group_prefixes(learner.model, mb, "sdpa", torch.float32).num_groups == 3
    (pad_out, _), (grp_out, _) = _run(learner, [mb], False), _run(learner, [mb], True)
    resp = mb.loss_mask.bool()
    torch.testing.assert_close(grp_out[0][0][resp], pad_out[0][0][resp], rtol=0, atol=1e-5)


def test_same_text_different_image_is_not_shared():
    torch.set_num_threads(1)
    learner = _learner("qwen2_5_vl")
    prompts = [_prompt(0.5, 56, "Same text."), _prompt(2.0, 56, "Same text.")]
    batch = _batch(learner.config.text_config.vocab_size, [[4, 5], [3, 6]], prompts)
    mb = build_micro_batches(batch, [0, 1, 2, 3], PromptEncoder(learner.processor), 4)[0]
    assert torch.equal(
        mb.input_ids[0, :10], mb.input_ids[2, :10]
    )  # the token ids alone cannot tell them apart
    assert group_prefixes(learner.model, mb, "sdpa", torch.float32).num_groups == 2


def test_flash_attention_is_refused_with_its_reason():
    learner = _learner("qwen2_5_vl")
    batch = _batch(learner.config.text_config.vocab_size, [[3, 3]], [_prompt(1.0, 56, "x")])
    mb = build_micro_batches(batch, [0, 1], PromptEncoder(learner.processor), 2)[0]
    with pytest.raises(ValueError, match="use_prefix_grouper needs attention that takes a 4-D mask"):
        group_prefixes(learner.model, mb, "flash_attention_2", torch.float32)
