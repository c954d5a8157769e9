"""Both ends of the weight-channel check (``test_weight_sync.py``), one per spawned process."""

from __future__ import annotations

import os

import torch

from codepercept_rl.rollout.weight_sync import WeightChannel, receive_weights, send_weights


def weights(seed: int) -> list[tuple[str, torch.Tensor]]:
    """Tensors of every kind a state dict holds: bf16 and fp32 matrices, a 0-dim scalar, an int buffer, an empty
    tensor and a non-contiguous view; the largest is 4 x 64 KiB."""
    g = torch.Generator().manual_seed(seed)
    big = torch.randn(256, 256, generator=g)
    return [
        ("embed.weight", torch.randn(300, 64, generator=g).to(torch.bfloat16)),
        ("layers.0.weight", big),
        ("layers.0.bias", torch.randn(256, generator=g)),
        ("scale", torch.tensor(3.5)),
        ("position_ids", torch.arange(17)),
        ("empty", torch.empty(0, 4)),
        ("transposed", big.t()[:100]),
    ]


def run_end(port: int, bucket_bytes: int) -> dict:
    """Rank 0 sends ``weights(0)``; rank 1 receives and compares with its own ``weights(0)`` bit for bit."""
    rank = int(os.environ["RANK"])
    channel = WeightChannel("127.0.0.1", port, rank=rank, world_size=2)
    if rank == 0:
        return send_weights(channel, iter(weights(0)), bucket_bytes)
    expected = dict(weights(0))
    seen, buckets, largest = [], 0, 0
    for bucket in receive_weights(channel):
        buckets += 1
        largest = max(largest, sum(t.numel() * t.element_size() for _, t in bucket))
        for name, t in bucket:
            ref = expected[name]
            assert t.dtype == ref.dtype and t.shape == ref.shape, name
            assert torch.equal(t, ref), name
            seen.append(name)
    return {"names": seen, "buckets": buckets, "largest_bucket": largest}
