"""Weights from the learner to a rollout engine in another process, in buckets over a private process group.

The split placement (``rollout.hybrid_engine=false``) keeps the rollout engine in a process of its own. Instead of
one object holding the whole state dict (~16 GB of bf16 for an 8B model, through host memory and Ray's object
store), the learner's rank 0 streams the parameters in buckets of at most ``bucket_bytes`` over a two-party
process group (verl / OpenRLHF's weight-update group): gloo on CPU, NCCL between GPUs. Only one bucket exists
on each side at a time::

    # both processes, with the same address (rank 0's node and a free port):
    channel = WeightChannel(host, port, rank=0 or 1, backend="gloo")
    send_weights(channel, learner_named_tensors, bucket_bytes=512 << 20)   # rank 0 (the learner)
    for bucket in receive_weights(channel):                              # rank 1 (the rollout engine)
        engine.load_weight_bucket(bucket)                                # a list of (name, tensor)

Each bucket is a header (JSON: names, dtypes, shapes, byte offsets) and one flat byte tensor; a header of length
-1 ends the stream. Headers always travel on a gloo group (host bytes); with ``backend="nccl"`` the payload is a
CUDA tensor on the data group, so GPU weights never touch host memory.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["WeightChannel", "send_weights", "receive_weights"]

_END = -1


def _aligned(nbytes: int) -> int:
    """``nbytes`` rounded up to 64: every tensor starts at a multiple, so its bytes can be viewed as any dtype."""
    return -(-nbytes // 64) * 64


class WeightChannel:
    """A private process group of the sender (rank 0) and its receivers (ranks 1..), apart from any default group.

    Args:
        host: rank 0's address; rank 0 opens the rendezvous store on ``port`` there.
        port: a free TCP port on ``host``.
        rank: 0 for the sender, 1.. for receivers.
        world_size: sender + receivers (2 for one rollout engine).
        backend: ``gloo`` (CPU tensors) or ``nccl`` (the payload on ``device``).
        device: where payloads live with NCCL (this process's GPU).
        timeout_s: how long a side waits for the other (a dead peer fails the sync instead of hanging).
    """

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int = 2,
        backend: str = "gloo",
        device: torch.device | str = "cpu",
        timeout_s: float = 600.0,
    ) -> None:
        if backend not in ("gloo", "nccl"):
            raise ValueError(f"WeightChannel backend {backend!r}: use gloo (CPU) or nccl (GPU)")
        timeout = datetime.timedelta(seconds=timeout_s)
        store = dist.TCPStore(host, port, world_size, is_master=rank == 0, timeout=timeout)
        self.rank, self.world_size, self.backend, self.timeout_s = rank, world_size, backend, timeout_s
        self.device = torch.device(device) if backend == "nccl" else torch.device("cpu")
        self._control = dist.ProcessGroupGloo(dist.PrefixStore("control", store), rank, world_size, timeout)
        if backend == "nccl":
            self._data: Any = dist.ProcessGroupNCCL(dist.PrefixStore("data", store), rank, world_size)
        else:
            self._data = self._control
        self._store = store  # kept alive with the groups

    def broadcast_control(self, tensor: torch.Tensor) -> None:
        """Broadcasts a CPU tensor from rank 0 (in place on the receivers)."""
        self._control.broadcast(tensor, 0).wait()

    def broadcast_data(self, tensor: torch.Tensor) -> None:
        """Broadcasts a payload tensor (on :attr:`device`) from rank 0."""
        self._data.broadcast(tensor, 0).wait()


class _Sender:
    """Packs tensors into one reused payload buffer as they come, and sends it when the next would not fit."""

    def __init__(self, channel: WeightChannel, bucket_bytes: int) -> None:
        self.channel = channel
        self.buffer = torch.empty(bucket_bytes, dtype=torch.uint8, device=channel.device)
        self.header: list[list[Any]] = []
        self.offset = 0
        self.stats = {"tensors": 0, "buckets": 0, "bytes": 0}

    def add(self, name: str, t: torch.Tensor) -> None:
        raw = t.contiguous().reshape(-1).view(torch.uint8)
        size = _aligned(raw.numel())
        if self.header and self.offset + size > self.buffer.numel():
            self.flush()
        entry = [name, str(t.dtype).removeprefix("torch."), list(t.shape), self.offset]
        if size > self.buffer.numel():  # larger than a bucket: it travels alone, from its own memory
            self._send([entry], raw.to(self.channel.device))
            return
        self.buffer[self.offset : self.offset + raw.numel()].copy_(raw)
        self.header.append(entry)
        self.offset += size

    def flush(self) -> None:
        if self.header:
            self._send(self.header, self.buffer[: self.offset])
            self.header, self.offset = [], 0

    def _send(self, header: list[list[Any]], payload: torch.Tensor) -> None:
        encoded = torch.frombuffer(bytearray(json.dumps(header).encode()), dtype=torch.uint8)
        self.channel.broadcast_control(torch.tensor([encoded.numel(), payload.numel()], dtype=torch.int64))
        self.channel.broadcast_control(encoded)
        self.channel.broadcast_data(payload)
        self.stats["tensors"] += len(header)
        self.stats["buckets"] += 1
        self.stats["bytes"] += payload.numel()


def send_weights(
    channel: WeightChannel,
    named_tensors: Iterable[tuple[str, torch.Tensor]],
    bucket_bytes: int,
    dtype: torch.dtype | None = None,
) -> dict[str, int]:
    """Streams ``(name, tensor)`` pairs to every receiver in buckets of at most ``bucket_bytes`` (a larger
    tensor travels alone); floating tensors are cast to ``dtype`` when given. The iterable is consumed lazily and
    each tensor is copied into one reused bucket buffer as it arrives, so a generator that gathers one parameter
    at a time holds one bucket and one parameter at most. Returns ``tensors``, ``buckets`` and ``bytes`` sent.

    Raises:
        ValueError: ``bucket_bytes`` < 1, or this process is not the channel's rank 0.
    """
    if bucket_bytes < 1:
        raise ValueError(f"bucket_bytes={bucket_bytes} must be >= 1")
    if channel.rank != 0:
        raise ValueError(f"send_weights runs on the channel's rank 0, not rank {channel.rank}")
    sender = _Sender(channel, bucket_bytes)
    for name, t in named_tensors:
        t = t.detach()
        sender.add(name, t.to(dtype) if dtype is not None and t.is_floating_point() else t)
        del t  # the caller's generator may free it now
    sender.flush()
    channel.broadcast_control(torch.tensor([_END, 0], dtype=torch.int64))
    return sender.stats


def receive_weights(channel: WeightChannel) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """The buckets :func:`send_weights` streams, as lists of ``(name, tensor)`` viewing one reused receive
    buffer (on the channel's device); stops at the sender's end mark. Load (copy) each bucket before asking for
    the next: the next bucket overwrites the buffer."""
    if channel.rank == 0:
        raise ValueError("receive_weights runs on a receiver (rank >= 1) of the channel")
    buffer = torch.empty(0, dtype=torch.uint8, device=channel.device)
    while True:
        sizes = torch.empty(2, dtype=torch.int64)
        channel.broadcast_control(sizes)
        header_len, payload_len = (int(v) for v in sizes)
        if header_len == _END:
            return
        encoded = torch.empty(header_len, dtype=torch.uint8)
        channel.broadcast_control(encoded)
        header = json.loads(bytes(encoded.numpy()).decode())
        if payload_len > buffer.numel():
            buffer = torch.empty(0, dtype=torch.uint8, device=channel.device)  # free the old one first
            buffer = torch.empty(payload_len, dtype=torch.uint8, device=channel.device)
        payload = buffer[:payload_len]
        channel.broadcast_data(payload)
        bucket = []
        for name, dtype_name, shape, start in header:
            dt = getattr(torch, dtype_name)
            nbytes = math.prod(shape) * dt.itemsize
            bucket.append((name, payload[start : start + nbytes].view(dt).reshape(shape)))
        yield bucket
        del bucket, payload
