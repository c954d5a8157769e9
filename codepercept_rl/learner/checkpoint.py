"""Sharded, atomic training checkpoints: model + optimizer (DCP), scheduler, RNG, data position, step.

Layout under a checkpoint root (``<run_dir>/checkpoints``)::

    step_000040/
        model_optim/          torch.distributed.checkpoint files: every rank writes its own shards
        extra_rank0.pt        per-rank: scheduler state, RNG states, caller's state (data position ...)
        meta.json             written last: its presence marks the checkpoint complete
    step_000020/ ...          older ones, pruned to the last ``keep`` after each save

Atomicity: everything is written into ``.tmp-step_000040/``; after a barrier rank 0 writes ``meta.json``,
fsyncs and renames the folder to ``step_000040`` (one ``rename`` on one filesystem), then prunes old ones.
A crash (kill -9, power loss) at any point leaves either the previous complete checkpoints untouched, or the
new one complete; a leftover ``.tmp-*`` folder is ignored by :func:`latest_checkpoint` and removed by the
next save. All ranks must see the same folder (a shared filesystem on multi-node runs).

Model and optimizer state are loaded with DCP, so a checkpoint also loads on a different world size; the
per-rank RNG files then come from rank ``rank % old_world_size`` (logged), which keeps training going but
not bit-exact. Files are read with ``torch.load(weights_only=True)``: a checkpoint cannot run code on load.

A single-rank run saves and loads without DCP's collectives (``no_dist``). Through gloo they would run tensor
copies on gloo's worker threads, each of which then keeps an OpenMP team of its own; with more OpenMP
threads than cores, libgomp stops spin-waiting, and every later training step with two or more torch threads
pays futex sleeps and wake-ups at each parallel region (measured on 2 cores: S1 steps 0.21 s before the first
save, 0.33-0.37 s after it; unchanged with this).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from codepercept_rl.utils.io import atomic_write_json

log = logging.getLogger(__name__)

__all__ = [
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "rng_state",
    "set_rng_state",
]

_STEP_DIR = re.compile(r"^step_(\d+)$")
META = "meta.json"


def _step_dir(root: Path, step: int) -> Path:
    return root / f"step_{step:06d}"


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints under ``root`` (those with ``meta.json``), oldest first, as ``(step, path)``."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for child in root.iterdir():
        m = _STEP_DIR.match(child.name)
        if m and (child / META).is_file():
            found.append((int(m.group(1)), child))
    return sorted(found)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch (and CUDA) RNG states as tensors / plain lists (loadable with weights_only)."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores what :func:`rng_state` captured."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if _world() > 1:
        dist.barrier()


def _dcp(fn: Any, state: dict[str, Any], path: Path, **kwargs: Any) -> Any:
    """``dcp.save`` / ``dcp.load`` of ``state`` at ``path``, without collectives on a single rank (module
    docstring: they would slow later multi-threaded steps down)."""
    if _world() > 1:
        return fn(state, checkpoint_id=str(path), **kwargs)
    with warnings.catch_warnings():  # "assuming the intent is to save in a single process": it is
        warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
        return fn(state, checkpoint_id=str(path), no_dist=True, **kwargs)


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: dict[str, Any] | None = None,
    keep: int | None = 2,
) -> Path:
    """Writes a checkpoint of ``step`` atomically; every rank must call it.

    Args:
        root: checkpoint root folder (created).
        step: optimizer steps done so far (names the folder).
        model: the FSDP2-wrapped model.
        optimizer: its optimizer.
        scheduler: its LR scheduler.
        extra: this rank's caller state (data position, counters ...): tensors and plain Python only.
        keep: complete checkpoints to keep after this one is in place (None or <= 0: keep all).

    Returns:
        The final folder ``root/step_XXXXXX``.
    """
    root = Path(root)
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = _world()
    final = _step_dir(root, step)
    tmp = root / f".tmp-{final.name}"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".tmp-*"):  # left by a crash mid-save
            shutil.rmtree(stale, ignore_errors=False)
        tmp.mkdir()
    _barrier()
    t0 = time.perf_counter()
    model_sd, optim_sd = get_state_dict(model, optimizer)
    _dcp(dcp.save, {"model": model_sd, "optim": optim_sd}, tmp / "model_optim")
    per_rank = {"scheduler": scheduler.state_dict(), "rng": rng_state(), "extra": extra or {}}
    with open(tmp / f"extra_rank{rank}.pt", "wb") as f:
        torch.save(per_rank, f)
        f.flush()
        os.fsync(f.fileno())
    _barrier()
    if rank == 0:
        atomic_write_json(tmp / META, {"step": step, "world_size": world, "time": time.time()})
        if final.exists():  # the same step saved again (a resumed run re-saving): replace it whole
            trash = root / f".tmp-old-{final.name}"
            os.rename(final, trash)
            os.rename(tmp, final)
            shutil.rmtree(trash)
        else:
            os.rename(tmp, final)
        _fsync_dir(root)
        if keep is not None and keep > 0:
            for _, old in list_checkpoints(root)[:-keep]:
                shutil.rmtree(old)
        log.info("checkpoint step %d saved to %s in %.2fs", step, final, time.perf_counter() - t0)
    _barrier()
    return final


def load_checkpoint(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> tuple[int, dict[str, Any]]:
    """Restores model, optimizer, scheduler and RNG from a complete checkpoint; every rank must call it.

    Returns:
        ``(step, extra)``: the step saved and this rank's caller state.

    Raises:
        FileNotFoundError: ``path`` is not a complete checkpoint (no ``meta.json``), naming the path.
    """
    path = Path(path)
    meta_path = path / META
    if not meta_path.is_file():
        raise FileNotFoundError(f"{path} is not a complete checkpoint (no {META})")
    meta = json.loads(meta_path.read_text())
    rank = dist.get_rank() if dist.is_initialized() else 0
    model_sd, optim_sd = get_state_dict(model, optimizer)
    state = {"model": model_sd, "optim": optim_sd}
    # Partial: parameters that never received a gradient before the save (e.g. the vision tower after
    # text-only batches) have no optimizer state in the checkpoint; they keep the fresh optimizer's.
    _dcp(dcp.load, state, path / "model_optim", planner=DefaultLoadPlanner(allow_partial_load=True))
    set_state_dict(
        model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
        options=StateDictOptions(strict=False),
    )  # fmt: skip
    src_rank = rank % int(meta["world_size"])
    if src_rank != rank or int(meta["world_size"]) != _world():
        log.warning(
            "checkpoint %s was written by %d rank(s); rank %d takes RNG/extra state of rank %d (not bit-exact)",
            path, meta["world_size"], rank, src_rank,
        )  # fmt: skip
    per_rank = torch.load(path / f"extra_rank{src_rank}.pt", weights_only=True)
    scheduler.load_state_dict(per_rank["scheduler"])
    set_rng_state(per_rank["rng"])
    return int(meta["step"]), per_rank["extra"]


def _fsync_dir(path: Path) -> None:
    # The rename is durable only once the directory entry is on disk.
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
