"""One rank of the FSDP2 parity test; run by ``torchrun`` from ``test_fsdp_parity.py``.

    torchrun --nproc-per-node 2 tests/learner/parity_worker.py S1_JSONL OUT_FILE STEPS BATCH MODEL_DIR

Loads the model from ``MODEL_DIR`` (rank 0 reads it, the other rank gets its shards by broadcast), trains
``STEPS`` steps of ``BATCH`` rows each (micro-batches of one row, so every rank accumulates gradients)
and has rank 0 save the losses, grad norms and final full weights to ``OUT_FILE``.
"""

from __future__ import annotations

import dataclasses
import sys

import torch

from codepercept_rl.config.schema import ModelConfig, OptimConfig
from codepercept_rl.data import S1Dataset, collate, rank_micro_batches
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner.dist import destroy_distributed

CFG = LearnerConfig(
    model=ModelConfig(tiny_preset="nano"),
    optim=OptimConfig(lr=3e-3, lr_warmup_steps_ratio=0.0, warmup_style="cosine", min_lr_ratio=0.1),
    total_steps=3,
    grad_clip=0.5,
)


def main(jsonl: str, out: str, steps: int, batch: int, model_dir: str) -> None:
    torch.set_num_threads(1)
    learner = Learner(dataclasses.replace(CFG, model=ModelConfig(path=model_dir)))
    rank, world = learner.dist.rank, learner.dist.world_size
    ds = S1Dataset([jsonl], learner.processor, max_length=512)
    tok = learner.processor.tokenizer
    losses, norms = [], []
    for s in range(steps):
        indices = list(range(s * batch, (s + 1) * batch))
        micro = [collate([ds[i] for i in idx], tok.pad_token_id, learner.processor.image_token_id)
                 for idx in rank_micro_batches(indices, ds.lengths, rank, world, 1)]  # fmt: skip
        stats = learner.train_step(
            micro, sft_loss, normalizer=sum(float(ds[i].loss_mask.sum()) for i in indices)
        )
        losses.append(stats["loss"])
        norms.append(stats["grad_norm"])
    state = learner.state_dict_for_rollout()
    if rank == 0:
        torch.save({"losses": losses, "grad_norms": norms, "state": state, "world": world}, out)
    destroy_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
