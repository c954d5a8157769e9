"""Learner ranks started without torchrun: Ray actors driven from this process, and spawned processes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.data import S1Dataset, collate, rank_micro_batches
from codepercept_rl.learner import sft_loss
from codepercept_rl.learner.actor import LearnerGroup, run_on_ranks
from codepercept_rl.learner.dist import destroy_distributed, init_distributed
from codepercept_rl.models.tiny import build_tiny_model
from tests.learner.parity_worker import CFG
from tests.learner.s1_rows import render_png, row, write_jsonl


def _rank_sum() -> tuple[int, int, float]:
    info = init_distributed("cpu")
    value = torch.tensor([float(info.rank + 1)])
    dist.all_reduce(value)
    destroy_distributed()
    return info.rank, info.world_size, float(value)


def test_run_on_ranks_spawns_a_gloo_group_without_ray() -> None:
    results = run_on_ranks(_rank_sum, 2, ray_cfg=RayConfig(enabled=False))
    assert results == [(0, 2, 3.0), (1, 2, 3.0)]


@pytest.mark.timeout(300)
def test_ray_actor_group_takes_a_sharded_step(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    rows = []
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(render_png(1.0 + i))
        rows.append(
            row(f"r{i}", "code", f"{i}.png", "```python\nplt.bar(['a', 'b'], [1, 2])\n```" * (1 + i % 2))
        )
    model, processor = build_tiny_model("qwen2_5_vl", "nano", seed=CFG.seed)
    ds = S1Dataset([write_jsonl(tmp_path / "s1.jsonl", rows)], processor, max_length=512)
    pad, image = processor.tokenizer.pad_token_id, processor.image_token_id
    targets = sum(float(e.loss_mask.sum()) for e in ds.examples)
    # The loss before the update is the plain model's mean target NLL over the whole batch.
    whole = collate(ds.examples, pad, image)
    model.set_attn_implementation("sdpa")
    with torch.no_grad():
        logits = model(**whole.model_inputs()).logits
    logprobs = torch.log_softmax(logits[:, :-1], -1).gather(-1, whole.input_ids[:, 1:, None])[..., 0]
    expected = float(-(logprobs * whole.loss_mask[:, 1:]).sum() / targets)

    shards = [[collate([ds[i] for i in idx], pad, image) for idx in rank_micro_batches(range(4), ds.lengths, r, 2, 1)]
              for r in range(2)]  # fmt: skip
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        group = LearnerGroup(CFG, world_size=2, ray_cfg=RayConfig(enabled=True))
        stats = group.call("train_step", per_rank_args=[(s, sft_loss, targets) for s in shards])
        weights = group.call("state_dict_for_rollout")
        group.shutdown()
    finally:
        ray.shutdown()
    assert stats[0] == stats[1]  # the loss is all-reduced: every rank reports the global value
    assert stats[0]["loss"] == pytest.approx(expected, rel=1e-5)
    assert weights[1] == {} and weights[0].keys() == model.state_dict().keys()  # gathered on rank 0 only
    assert not torch.equal(weights[0]["lm_head.weight"], model.state_dict()["lm_head.weight"])


def _niceness() -> int:
    return os.nice(0)


def test_ray_started_here_runs_its_workers_at_the_configured_niceness() -> None:
    ray = pytest.importorskip("ray")
    from codepercept_rl.learner.actor import init_ray

    seen = {}
    for setting in (0, None):  # None: Ray's own default (15), below the driver
        init_ray(RayConfig(num_cpus=1, worker_niceness=setting), log_to_driver=False)
        try:
            seen[setting] = ray.get(ray.remote(num_cpus=1)(_niceness).remote())
        finally:
            ray.shutdown()
    assert seen[0] == os.nice(0)  # the same as the process that started Ray
    assert seen[None] > seen[0]


def _local_rank() -> str:
    return os.environ["LOCAL_RANK"]


def test_spawned_ranks_each_take_their_own_local_device() -> None:
    # Local processes see every GPU of the machine: rank i must use cuda:i (LOCAL_RANK=i), not all cuda:0.
    assert run_on_ranks(_local_rank, 2, ray_cfg=RayConfig(enabled=False)) == ["0", "1"]
