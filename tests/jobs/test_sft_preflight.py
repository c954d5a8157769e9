"""S1's pre-flight memory check: the per-rank state estimate, its refusal, counts on meta, the paper recipes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.errors import UserError
from codepercept_rl.jobs.sft import (
    check_state_memory,
    parameter_counts,
    refuse_state_memory,
    state_bytes_per_rank,
)
from codepercept_rl.models.tiny import build_tiny_model

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
GPU = 80 * 2**30  # an A100 / H100


def test_state_estimate_matches_hand_computed_figures() -> None:
    # 8e9 parameters, 7.5e9 trainable (a frozen 0.5e9 vision tower): 4 B x 8e9 fp32 weights + (4 + 8) B x 7.5e9
    # fp32 grads and AdamW moments = 32e9 + 90e9 = 122e9 B on one rank; FSDP2 shards it over 8.
    assert state_bytes_per_rank(8_000_000_000, 7_500_000_000, 1) == 122_000_000_000
    assert state_bytes_per_rank(8_000_000_000, 7_500_000_000, 8) == 15_250_000_000
    assert state_bytes_per_rank(10, 10, 3) == 54  # 160 B over 3 ranks: the largest shard, rounded up
    assert state_bytes_per_rank(10, 0, 1) == 40  # all frozen: weights only


def test_refuses_in_one_line_a_share_larger_than_the_gpu() -> None:
    need = state_bytes_per_rank(8_000_000_000, 7_500_000_000, 1)  # 113.6 GiB
    with pytest.raises(UserError, match=r"needs 113\.6 GiB per rank .*over 1 rank\(s\)\) but cuda:3 has 80\.0 GiB; "
                       r"run one rank per GPU") as e:  # fmt: skip
        refuse_state_memory(8_000_000_000, 7_500_000_000, 1, need, GPU, "cuda:3")
    assert "\n" not in str(e.value)
    refuse_state_memory(8_000_000_000, 7_500_000_000, 8, need // 8, GPU, "cuda:3")  # 14.2 GiB: fits
    refuse_state_memory(8_000_000_000, 7_500_000_000, 1, need, None, "cpu")  # nothing to compare with


def test_parameter_counts_come_from_the_folder_config_on_meta(tmp_path: Path) -> None:
    model, _ = build_tiny_model("qwen2_5_vl", "nano")
    model.save_pretrained(tmp_path)
    total = sum(p.numel() for p in model.parameters())
    visual = sum(p.numel() for p in model.model.visual.parameters())
    assert parameter_counts(ModelConfig(path=str(tmp_path), freeze_vision_tower=True)) == (
        total,
        total - visual,
    )
    assert parameter_counts(ModelConfig(path=str(tmp_path), freeze_vision_tower=False)) == (total, total)
    assert parameter_counts(ModelConfig(tiny_preset="nano")) is None
    check_state_memory(ModelConfig(path=str(tmp_path)), 1, torch.device("cpu"))  # on CPU: logs, never refuses


# Qwen3-VL's published sizes (rounded): all parameters, and those left trainable with the vision tower frozen.
PAPER_MODELS = {"4b": (4.44e9, 4.02e9), "8b": (8.77e9, 8.19e9)}


@pytest.mark.parametrize("size", sorted(PAPER_MODELS))
def test_paper_recipes_launch_one_rank_per_gpu_and_their_share_fits(size: str) -> None:
    cfg = load_config(RECIPES / f"s1_qwen3vl_{size}.yaml", [], schema=JobConfig)
    ranks = cfg.sft.num_processes
    assert ranks == 8 and not cfg.ray.enabled and cfg.data.train_batch_size % ranks == 0
    params, trainable = (int(n) for n in PAPER_MODELS[size])
    assert state_bytes_per_rank(params, trainable, ranks) < GPU / 4  # 8B: 15.5 GiB of 80
    if size == "8b":  # the old default (one rank): 124 GiB of state on one GPU, refused
        with pytest.raises(UserError, match="124.2 GiB per rank"):
            refuse_state_memory(
                params, trainable, 1, state_bytes_per_rank(params, trainable, 1), GPU, "cuda:0"
            )
