"""Peak extra host memory of a learner -> rollout weight sync: bucketed channel vs one whole state-dict object.

    python benchmarks/weight_sync_memory.py                      # 48 tensors of 4 MiB (192 MiB), 16 MiB buckets
    python benchmarks/weight_sync_memory.py --tensors 96 --bucket-mib 32

Two fresh processes per method (a sender standing in for learner rank 0, a receiver for the rollout engine):

- ``bucketed``: :func:`codepercept_rl.rollout.weight_sync.send_weights` over a private gloo group; the sender's
  generator makes each full tensor when it is needed (as gathering one FSDP2 parameter at a time does) and the
  receiver drops each bucket after "loading" it;
- ``object``: today's split-placement sync: the sender gathers the whole state dict, serialises it as one object
  (what ``ray.put`` / an actor call does) and the receiver deserialises all of it before loading.

Each side reports its peak resident memory above what it held before the sync (``ru_maxrss``), in MiB. The last
line is ``weight_sync_peak_ratio=<bucketed / object>`` of the larger side's peak (default allocator). The bucketed
method runs again with glibc's mmap threshold fixed at 1 MiB (``MALLOC_MMAP_THRESHOLD_``): by default glibc keeps
freed blocks of a size it has seen freed resident, which the peak then counts although the code no longer holds
them.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import pickle
import resource
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codepercept_rl.learner.dist import free_port  # noqa: E402
from codepercept_rl.rollout.weight_sync import WeightChannel, receive_weights, send_weights  # noqa: E402

MIB = 2**20


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _params(n: int, numel: int):
    """The sender's parameters, made one at a time (a gathered FSDP2 parameter is new memory too)."""
    for i in range(n):
        yield f"layers.{i}.weight", torch.full((numel,), float(i))


def _bucketed(rank: int, port: int, n: int, numel: int, bucket: int, out) -> None:
    torch.set_num_threads(1)
    channel = WeightChannel("127.0.0.1", port, rank=rank)
    before = _peak_mib()
    if rank == 0:
        send_weights(channel, _params(n, numel), bucket)
    else:
        total = 0.0
        for b in receive_weights(channel):
            total += sum(float(t[0]) for _, t in b)  # "load" it, then let it go
        assert total == sum(range(n))
    out.put((rank, _peak_mib() - before))


def _object(rank: int, conn, n: int, numel: int, out) -> None:
    torch.set_num_threads(1)
    before = _peak_mib()
    if rank == 0:
        state = dict(_params(n, numel))  # the whole gathered state dict
        conn.send_bytes(pickle.dumps(state, protocol=5))
    else:
        state = pickle.loads(conn.recv_bytes())
        assert sum(float(t[0]) for t in state.values()) == sum(range(n))
    out.put((rank, _peak_mib() - before))


def _run(method: str, n: int, numel: int, bucket: int) -> dict[int, float]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    if method == "bucketed":
        port = free_port()
        procs = [ctx.Process(target=_bucketed, args=(r, port, n, numel, bucket, out)) for r in (0, 1)]
    else:
        a, b = ctx.Pipe()
        procs = [ctx.Process(target=_object, args=(r, c, n, numel, out)) for r, c in ((0, a), (1, b))]
    for p in procs:
        p.start()
    peaks = dict(out.get(timeout=600) for _ in procs)
    for p in procs:
        p.join()
        if p.exitcode:
            raise SystemExit(f"{method}: a process exited with {p.exitcode}")
    return peaks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tensors", type=int, default=48)
    p.add_argument("--tensor-mib", type=float, default=4.0)
    p.add_argument("--bucket-mib", type=float, default=16.0)
    args = p.parse_args()
    numel = int(args.tensor_mib * MIB) // 4
    bucket = int(args.bucket_mib * MIB)
    total = args.tensors * numel * 4 / MIB
    print(
        f"weights: {args.tensors} x {args.tensor_mib} MiB = {total:.0f} MiB fp32, bucket {args.bucket_mib} MiB"
    )
    peaks = {m: _run(m, args.tensors, numel, bucket) for m in ("bucketed", "object")}
    # glibc raises its mmap threshold after freeing a large block, so later blocks come from the heap and freed
    # ones stay resident; a fixed threshold returns each freed block at once (what the code itself holds).
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(MIB)
    peaks["bucketed, fixed mmap threshold"] = _run("bucketed", args.tensors, numel, bucket)
    del os.environ["MALLOC_MMAP_THRESHOLD_"]
    for m, side in peaks.items():
        print(f"{m:31s} sender +{side[0]:7.1f} MiB  receiver +{side[1]:7.1f} MiB  "
              f"(largest = {max(side.values()) / args.bucket_mib:.2f} buckets)")  # fmt: skip
    ratio = max(peaks["bucketed"].values()) / max(peaks["object"].values())
    print(f"weight_sync_peak_ratio={ratio:.3f}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
