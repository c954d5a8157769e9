"""A device-strict rank for the learner's collectives check (run by ``test_device_strict.py``).

NCCL reduces device tensors only: a host tensor handed to a collective fails on a GPU rank ("No backend type
associated with device type cpu"), where gloo on CPU accepts it. To make the CPU run as strict, each rank works
under ``torch.set_default_device("meta")``: every tensor the learner creates *without* an explicit device is a
meta tensor, which gloo refuses and which has no value to read, while tensors put on the rank's device (as a GPU
run needs them) work as before. The model and batches are built before the mode is on.
"""

from __future__ import annotations

import torch

from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.learner.dist import destroy_distributed


def _micro_batch(seed: int, rows: int) -> MicroBatch:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(10, 100, (rows, 12), generator=g)
    return MicroBatch(ids, torch.ones_like(ids), torch.ones_like(ids, dtype=torch.float32))


def run_strict(strict: bool) -> dict[str, float]:
    """One rank: a training step, no-grad log-probs and a validation loss sum; rank 1 holds one micro-batch
    fewer than rank 0 (so ``_aligned`` pads it). Returns this rank's figures."""
    torch.set_num_threads(1)
    learner = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano"), device="cpu"))
    rank = learner.dist.rank
    mbs = [_micro_batch(10 * rank + i, rows=2) for i in range(2 - rank)]
    tokens = float(sum(mb.loss_mask.sum() for mb in mbs))
    try:
        if strict:
            torch.set_default_device("meta")
        stats = learner.train_step(mbs, sft_loss, normalizer=48.0 * 3 / 2)
        logprobs = learner.forward_logprobs_batches(mbs)
        val = learner.loss_sum(mbs, sft_loss)
    finally:
        torch.set_default_device(None)
        destroy_distributed()
    return {"loss": stats["loss"], "grad_norm": stats["grad_norm"], "val": val, "tokens": tokens,
            "logprob_sum": float(sum(lp.sum() for lp in logprobs))}  # fmt: skip
