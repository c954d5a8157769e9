"""The split placement's weight channel: two real processes on a private gloo group, buckets smaller than the
largest tensor, every tensor arriving bit-exact and in order."""

from __future__ import annotations

import pytest

from codepercept_rl.config.schema import RayConfig
from codepercept_rl.learner.actor import run_on_ranks
from codepercept_rl.learner.dist import free_port
from tests.rollout.weight_channel_worker import run_end, weights


@pytest.mark.timeout(120)
def test_every_tensor_arrives_bit_exact_in_small_buckets():
    bucket = 100_000  # bytes; the largest tensor (256 x 256 fp32) is 262,144: it travels alone
    sent, got = run_on_ranks(run_end, 2, free_port(), bucket, ray_cfg=RayConfig(enabled=False))
    names = [n for n, _ in weights(0)]
    assert got["names"] == names
    assert sent["tensors"] == len(names) and sent["buckets"] == got["buckets"] >= 4
    # no bucket holds more than the limit, except one tensor travelling alone
    assert got["largest_bucket"] == 256 * 256 * 4


def test_bad_use_is_refused():
    from codepercept_rl.rollout.weight_sync import WeightChannel

    with pytest.raises(ValueError, match="gloo .* or nccl"):
        WeightChannel("127.0.0.1", free_port(), rank=0, backend="mpi")
