"""The learner on one CUDA GPU (NCCL, bf16, flash-attention when installed); skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from codepercept_rl.config.schema import ModelConfig, OptimConfig
from codepercept_rl.learner import Learner, LearnerConfig, MicroBatch, sft_loss

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_bf16_steps_on_cuda_lower_the_loss() -> None:
    cfg = LearnerConfig(
        model=ModelConfig(tiny_preset="tiny", dtype="bfloat16", enable_gradient_checkpointing=True),
        optim=OptimConfig(lr=3e-3),
        total_steps=5,
        device="cuda",
    )
    learner = Learner(cfg)
    assert learner.dist.backend == "nccl" and learner.dist.device.type == "cuda"
    ids = torch.randint(20, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    mb = MicroBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(4, 64))
    losses = [learner.train_step([mb], sft_loss, normalizer=4 * 64)["loss"] for _ in range(5)]
    assert losses[-1] < losses[0]
    state = learner.state_dict_for_rollout()
    assert all(v.device.type == "cpu" and v.dtype == torch.float32 for v in state.values())  # fp32 masters
