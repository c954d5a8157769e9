"""``rollout.name=vllm rollout.hybrid_engine=true`` passes the R1 job's checks on one learner rank only."""

from __future__ import annotations

import pytest

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError
from codepercept_rl.jobs.train import _validate

BASE = ("data.train_files=[r1/train.parquet]", "rollout.name=vllm", "rollout.hybrid_engine=true")


def test_colocated_vllm_is_accepted_on_one_rank_and_refused_on_several() -> None:
    one = load_config("recipes/r1_tiny_cpu.yaml", BASE, schema=JobConfig)
    _validate(one)  # before: "rollout.hybrid_engine=true colocates HF generate ..." for any vLLM rollout
    assert one.rollout.update_weights_bucket_megabytes == 512  # verl's default
    two = load_config("recipes/r1_tiny_cpu.yaml", (*BASE, "trainer.n_gpus_per_node=2", "ray.enabled=true"),
                      schema=JobConfig)  # fmt: skip
    with pytest.raises(UserError, match="one learner rank"):
        _validate(two)
