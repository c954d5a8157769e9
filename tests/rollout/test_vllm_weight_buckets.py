"""The weight buckets ``VLLMRolloutEngine.update_weights`` sends through ``collective_rpc`` (no vLLM needed).

A bucket must survive msgpack (vLLM's engine-core RPC) and pickle (its multi-GPU executor) as plain data, and
come back bit for bit, whatever the dtypes and shapes. tests/rollout/test_vllm_multiproc.py sends them to a
real multi-process engine.
"""

from __future__ import annotations

import pickle

import pytest
import torch

from codepercept_rl.rollout.vllm_engine import pack_bucket, unpack_bucket, weight_buckets


def _weights() -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    return [
        (
            "a.weight",
            torch.randn(3, 5, generator=g),
        ),  # 60 bytes: the next tensor starts unaligned unless padded
        ("b.weight", torch.randn(7, generator=g).to(torch.bfloat16)),
        ("c.scale", torch.tensor(2.5, dtype=torch.float64)),  # 0-dim
        ("d.ids", torch.arange(6, dtype=torch.int64).reshape(2, 3)),
        ("e.empty", torch.zeros(0, 4)),
        ("f.view", torch.randn(4, 6, generator=g).t()),  # not contiguous
    ]


def test_bucket_round_trips_through_pickle_bit_for_bit():
    weights = _weights()
    meta, payload = pack_bucket([(n, t.contiguous()) for n, t in weights])
    # Plain lists, strings, ints and one byte string: what an RPC encoder carries without a tensor codec.
    meta, payload = pickle.loads(pickle.dumps((meta, bytes(payload))))
    back = unpack_bucket(meta, payload)
    assert [n for n, _ in back] == [n for n, _ in weights]
    for (_, want), (_, got) in zip(weights, back, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got, want)


def test_buckets_are_bounded_ordered_and_cast():
    weights = [(f"w{i}", torch.randn(256)) for i in range(10)]  # 1 KiB each in float32
    big = ("big", torch.randn(1024))  # 4 KiB: larger than a bucket, travels alone
    ids = ("ids", torch.arange(4))
    buckets = list(
        weight_buckets([*weights[:5], big, *weights[5:], ids], max_bytes=2048, dtype=torch.bfloat16)
    )
    assert [[n for n, _ in b] for b in buckets] == [
        ["w0", "w1", "w2", "w3"], ["w4"], ["big"], ["w5", "w6", "w7", "w8"], ["w9", "ids"],
    ]  # fmt: skip
    assert all(t.dtype == torch.bfloat16 for b in buckets for n, t in b if n != "ids")
    assert dict(buckets[-1])["ids"].dtype == torch.int64  # integer tensors keep their dtype
    assert torch.equal(dict(buckets[0])["w0"], weights[0][1].to(torch.bfloat16))


def test_unpack_refuses_a_truncated_payload():
    meta, payload = pack_bucket([("a", torch.randn(16))])
    with pytest.raises(ValueError, match="needs bytes 0..64"):
        unpack_bucket(meta, payload[:32])
