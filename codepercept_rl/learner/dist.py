"""Process-group set-up for the learner: NCCL on CUDA, gloo on CPU, one code path for 1..N ranks.

The learner always runs inside a process group, even alone (world size 1, an in-memory store), so FSDP2,
distributed checkpoints and the collectives are the same code on a laptop, in CI and on a cluster.

How ranks are found, in order:

- ``torchrun`` (or a Ray actor set up by :mod:`codepercept_rl.learner.actor`): ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the environment;
- nothing set: a single rank with a private in-memory store (no port is opened).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh

__all__ = ["DistInfo", "init_distributed", "destroy_distributed", "free_port", "resolve_device"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: its rank, the world size, its device and the 1-D FSDP mesh."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    backend: str
    mesh: DeviceMesh

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the one that writes shared files and logs)."""
        return self.rank == 0


def resolve_device(device: str, local_rank: int = 0) -> torch.device:
    """``auto`` -> this rank's CUDA device when CUDA is present, else CPU.

    Raises:
        ValueError: ``cuda`` was asked for on a machine without CUDA.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("trainer.device=cuda but CUDA is not available on this machine; use auto or cpu")
        return torch.device("cuda", local_rank)
    if device != "cpu":
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    return torch.device("cpu")


def init_distributed(device: str = "auto", timeout_s: float = 600.0) -> DistInfo:
    """Joins (or creates) the default process group and builds the FSDP device mesh.

    Re-entrant: if the default group already exists (a test harness, a second ``Learner`` in the same
    process) it is reused; a lone rank's group of the other backend (gloo vs NCCL) is replaced.

    Args:
        device: ``auto``, ``cpu`` or ``cuda``.
        timeout_s: collective timeout; a rank that dies makes the others fail after this long, not hang.

    Returns:
        This process's :class:`DistInfo`.

    Raises:
        ValueError: a multi-rank group of the other backend already exists (CPU vs CUDA mismatch).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if dist.is_initialized() and dist.get_backend() != backend:
        if dist.get_world_size() > 1:
            raise ValueError(f"the process group uses {dist.get_backend()} but device {dev} needs {backend}")
        dist.destroy_process_group()  # a lone rank's group from an earlier learner on another device type
    if not dist.is_initialized():
        timeout = datetime.timedelta(seconds=timeout_s)
        if "WORLD_SIZE" in os.environ:
            dist.init_process_group(
                backend=backend, timeout=timeout, device_id=dev if dev.type == "cuda" else None
            )
        else:
            # A lone rank needs no rendezvous: a private in-memory store opens no port.
            dist.init_process_group(
                backend=backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout
            )
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(dev.type, (world,), mesh_dim_names=("fsdp",))
    return DistInfo(
        rank=rank, world_size=world, local_rank=local_rank, device=dev, backend=backend, mesh=mesh
    )


def destroy_distributed() -> None:
    """Leaves the default process group if this process is in one (safe to call twice)."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host`` (for MASTER_PORT of a local group)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]
