"""The driver's prompt encodings: shared by a group's rollouts, bounded in number (an epoch of image prompts
would not fit in the driver's memory), the same tensors when a dropped prompt comes back."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from codepercept_rl.grpo.batch import PromptEncoder
from codepercept_rl.models.tiny import build_tiny_model
from codepercept_rl.rollout import RolloutPrompt


def _prompt(i: int) -> RolloutPrompt:
    return RolloutPrompt(
        [{"role": "user", "content": f"<image>Draw figure {i}."}],
        [Image.new("RGB", (56, 56), (40 * i, 90, 20))],
    )


def test_prompt_encoder_keeps_the_most_recent_prompts_only():
    _, processor = build_tiny_model("qwen2_5_vl", "nano", seed=0)
    encoder = PromptEncoder(processor, max_cached=2)
    prompts = [_prompt(i) for i in range(3)]
    first = [encoder.encode(p) for p in prompts]
    assert len(encoder) == 2  # prompt 0 was dropped
    assert encoder.encode(prompts[2]) is first[2]  # a cached prompt: the same objects, not re-encoded
    again = encoder.encode(prompts[0])  # encoded anew: equal tensors; prompt 1 (least recently used) goes
    assert again is not first[0] and len(encoder) == 2
    assert torch.equal(again[0], first[0][0]) and torch.equal(again[1], first[0][1])
    assert encoder.encode(prompts[2]) is first[2] and encoder.encode(prompts[1]) is not first[1]
    with pytest.raises(ValueError, match="max_cached"):
        PromptEncoder(processor, max_cached=0)
