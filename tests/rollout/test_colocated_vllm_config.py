"""``rollout.name=vllm rollout.hybrid_engine=true`` passes the R1 job's checks when the tensor-parallel size
divides the learner ranks (one engine per group of ranks), and is refused in one line otherwise."""

from __future__ import annotations

import pytest

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError
from codepercept_rl.jobs.train import _validate

BASE = ("data.train_files=[r1/train.parquet]", "rollout.name=vllm", "rollout.hybrid_engine=true")


def _cfg(*extra: str) -> JobConfig:
    return load_config("recipes/r1_tiny_cpu.yaml", (*BASE, *extra), schema=JobConfig)


def test_colocated_vllm_is_accepted_when_the_tensor_parallel_groups_tile_the_ranks() -> None:
    one = _cfg()
    _validate(one)
    assert one.rollout.update_weights_bucket_megabytes == 512  # verl's default
    _validate(_cfg("trainer.n_gpus_per_node=8", "ray.enabled=true"))  # 8 engines
    _validate(_cfg("trainer.n_gpus_per_node=8", "ray.enabled=true", "rollout.tensor_model_parallel_size=2"))
    with pytest.raises(UserError, match="tensor_model_parallel_size=3: .* must divide"):
        _validate(
            _cfg("trainer.n_gpus_per_node=8", "ray.enabled=true", "rollout.tensor_model_parallel_size=3")
        )
