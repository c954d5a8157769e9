"""One learner rank with its colocated vLLM engine (spawned by ``test_vllm_colocated_ranks.py``)."""

from __future__ import annotations

import os


def run_rank(export: str, data: str, tp: int, max_prompt: int, response: int) -> dict:
    """A real FSDP2 learner on this rank, its vLLM engine (a shard of one with ``tp`` > 1), one optimizer step,
    the bucketed sync, then greedy completions of this rank's prompts; rank 0 adds the HF forward's of all."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    import torch

    torch.set_num_threads(1)
    from PIL import Image

    from codepercept_rl.config.schema import ModelConfig, OptimConfig, RolloutConfig
    from codepercept_rl.data import S1Dataset, collate
    from codepercept_rl.grpo.workers import ColocatedRolloutWorker
    from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
    from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams

    learner = Learner(
        LearnerConfig(
            model=ModelConfig(path=export, dtype="float32"),
            optim=OptimConfig(lr=5e-2, lr_warmup_steps_ratio=0.0),
            total_steps=1,
        )
    )
    rank, world = learner.dist.rank, learner.dist.world_size
    worker = ColocatedRolloutWorker(
        learner,
        RolloutConfig(name="vllm", response_length=response, tensor_model_parallel_size=tp),
        max_prompt,
    )
    engine = worker.engine
    prompts = [
        RolloutPrompt([{"role": "user", "content": "<image>Write matplotlib code."}], [Image.new("RGB", (64, 64), "red")]),
        RolloutPrompt([{"role": "user", "content": "<image>Describe."}], [Image.new("RGB", (96, 64), "blue")]),
    ]  # fmt: skip
    # Tensor-parallel ranks of one engine must be given the same prompts; separate engines, one prompt each.
    mine = prompts if tp == world else [prompts[rank]]
    greedy = SamplingParams(n=1, temperature=0.0, max_tokens=response)
    before = engine.generate(mine, greedy)

    ds = S1Dataset([os.path.join(data, "s1.jsonl")], learner.processor, max_length=512)
    mb = collate(ds.examples, learner.processor.tokenizer.pad_token_id, learner.processor.image_token_id)
    learner.train_step([mb], sft_loss, float(mb.loss_mask.sum()) * world)

    engine.bucket_bytes = 64 * 1024  # smaller than the largest tensor: fused layers span buckets
    largest = max(t.numel() * t.element_size() for _, t in learner.iter_full_params())
    sent = worker.sync_weights()
    after = engine.generate(mine, greedy)

    reference = learner.rollout_model()  # every rank joins the gather; rank 0 holds the full module
    hf = None
    if reference is not None:
        hf = HFRolloutEngine(reference, learner.processor).generate(prompts, greedy)

    def plain(groups):
        return [[(c.token_ids, c.logprobs) for c in g] for g in groups]

    return {
        "rank": rank,
        "prompts": [prompts.index(p) for p in mine],
        "before": plain(before),
        "after": plain(after),
        "hf": None if hf is None else plain(hf),
        "sent": sent,
        "largest": largest,
        "buckets": engine.stats["weight_buckets"],
        "bucket_bytes": engine.bucket_bytes,
        "tp": engine.llm.llm_engine.vllm_config.parallel_config.tensor_parallel_size,
    }
