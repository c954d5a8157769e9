"""Two gloo ranks of FSDP2 with the GPU recipes' exact policy (bf16 mixed precision, checkpointing, frozen
vision tower) on a tiny Qwen3-VL give the single-process run's loss and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.learner.actor import run_on_ranks
from codepercept_rl.models.tiny import build_tiny_model
from tests.learner.gpu_policy_worker import run_rank
from tests.learner.s1_rows import render_png, row, write_jsonl


@pytest.mark.timeout(600)
def test_two_ranks_bf16_policy_match_one_process(tmp_path: Path) -> None:
    build_tiny_model("qwen3_vl", "nano", out_dir=str(tmp_path / "model"))
    rows = []
    for i in range(4):
        (tmp_path / f"{i}.png").write_bytes(render_png(1.0 + i))
        rows.append(
            row(f"r{i}", "code", f"{i}.png", "```python\nplt.bar(['a', 'b'], [1, 2])\n```" * (1 + i % 3))
        )
    args = (str(tmp_path / "model"), str(write_jsonl(tmp_path / "s1.jsonl", rows)))
    one = run_on_ranks(run_rank, 1, *args, ray_cfg=RayConfig(enabled=False))[0]
    two = run_on_ranks(run_rank, 2, *args, ray_cfg=RayConfig(enabled=False))[0]
    assert one["loss"] == pytest.approx(two["loss"], abs=1e-5)
    assert one["grads"].keys() == two["grads"].keys()
    assert not any("visual" in name for name in one["grads"])  # the frozen tower gets no gradient
    worst = max(float((one["grads"][n].float() - two["grads"][n].float()).abs().max()) for n in one["grads"])
    assert worst <= 1e-5, f"max |grad difference| {worst}"
    assert all(g.dtype == torch.float32 for g in one["grads"].values())  # fp32 master weights and gradients
