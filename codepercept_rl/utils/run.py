"""Run-directory and process set-up shared by every job."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

from codepercept_rl.config.loader import dump_yaml
from codepercept_rl.errors import UserError
from codepercept_rl.utils.io import atomic_write_text, ensure_writable_dir


def prepare_run_dir(run_dir: str | os.PathLike, cfg: Any | None = None) -> Path:
    """Create the run directory, check it is writable, and save the resolved config as ``config.yaml``.

    Raises:
        UserError: the directory cannot be created or written (names the path and the OS reason).
    """
    path = Path(run_dir)
    try:
        ensure_writable_dir(path)
        if cfg is not None:
            atomic_write_text(path / "config.yaml", dump_yaml(cfg))
    except OSError as e:
        raise UserError(f"run directory '{path}' is not writable: {e.strerror or e}") from None
    return path


def seed_everything(seed: int, torch_num_threads: int | None = 1) -> None:
    """Seed Python, NumPy and torch (if imported), and set torch's intra-op threads.

    One thread is fastest for tiny models on these 2-core machines, where reward workers share the cores.
    """
    random.seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return
    torch.manual_seed(seed)
    if torch_num_threads:
        torch.set_num_threads(torch_num_threads)
