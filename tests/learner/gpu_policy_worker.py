"""One rank of the GPU-policy parity check (``test_fsdp_gpu_policy.py``), spawned by ``run_on_ranks``.

The learner exactly as the Qwen3-VL recipes build it on GPUs (FSDP2 per block + root, bf16 compute with fp32
master weights and fp32 gradient reduction, activation checkpointing, vision tower frozen, chunked LM head), on a
tiny Qwen3-VL folder; every rank accumulates one-row micro-batches of the same global batch.
"""

from __future__ import annotations

import torch

from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.data import S1Dataset, collate, rank_micro_batches
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner.dist import destroy_distributed


def run_rank(model_dir: str, jsonl: str) -> dict:
    """Loss, grad norm and (rank 0) the full gradients of one backward over the whole batch."""
    torch.set_num_threads(1)
    model = ModelConfig(path=model_dir, dtype="bfloat16", enable_gradient_checkpointing=True,
                        freeze_vision_tower=True, logprob_chunk_size=16)  # fmt: skip
    learner = Learner(LearnerConfig(model=model, device="cpu"))
    rank, world = learner.dist.rank, learner.dist.world_size
    ds = S1Dataset([jsonl], learner.processor, max_length=512)
    rows = list(range(len(ds)))
    normalizer = float(sum(ds[i].loss_mask.sum() for i in rows))
    pad, image = learner.processor.tokenizer.pad_token_id, learner.processor.image_token_id
    micro = [
        collate([ds[i] for i in idx], pad, image)
        for idx in rank_micro_batches(rows, ds.lengths, rank, world, 1)
    ]
    stats = learner.backward(micro, sft_loss, normalizer=normalizer)
    grads = learner.full_gradients()
    destroy_distributed()
    return {"loss": stats["loss"], "grads": grads if rank == 0 else None}
