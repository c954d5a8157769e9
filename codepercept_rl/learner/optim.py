"""AdamW and its learning-rate schedule: linear warm-up, then constant, linear or cosine decay to a floor.

``OptimConfig.warmup_style`` names the decay after warm-up (verl's meaning of the key); the warm-up itself is
always linear from 0 over ``ceil(lr_warmup_steps_ratio * total_steps)`` steps. The floor is
``min_lr_ratio * lr`` (the paper's S1: lr 3e-6, min_lr_ratio 2e-7 / 3e-6, cosine, 5 % warm-up).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch.optim.lr_scheduler import LambdaLR

from codepercept_rl.config.schema import OptimConfig

__all__ = ["build_optimizer", "build_scheduler", "lr_multiplier"]


def build_optimizer(
    params: Iterable[torch.nn.Parameter] | Iterable[tuple[str, torch.nn.Parameter]], cfg: OptimConfig
) -> torch.optim.AdamW:
    """AdamW over the trainable ``params`` with ``cfg``'s lr, betas and weight decay.

    Weight decay applies to matrices only (``ndim >= 2``); biases and norm scales are not decayed, as in
    Hugging Face's Trainer. ``foreach`` is used (DTensor-aware under FSDP2); ``fused`` is CUDA-only.
    Given ``named_parameters()``, the vision tower's parameters (a ``visual`` module in the name, as in
    Qwen-VL) get ``cfg.vision_lr`` when it is set; the schedule scales every group alike.

    Raises:
        ValueError: no trainable parameter, betas that are not two numbers in [0, 1), or ``vision_lr`` set
            for parameters without names or without a vision tower.
    """
    named = [(n, p) for n, p in map(_pair, params) if p.requires_grad]
    if not named:
        raise ValueError("no trainable parameters: is everything frozen?")
    if len(cfg.betas) != 2 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise ValueError(f"actor.optim.betas must be two numbers in [0, 1), got {cfg.betas}")
    vision = {id(p) for n, p in named if cfg.vision_lr is not None and "visual" in n.split(".")}
    if cfg.vision_lr is not None and not vision:
        raise ValueError(
            "actor.optim.vision_lr is set but no trainable parameter belongs to a vision tower ('visual.*')"
        )
    groups = []
    for is_vision in (False, True):
        lr = cfg.vision_lr if is_vision else cfg.lr
        chosen = [p for _, p in named if (id(p) in vision) == is_vision]
        groups += [
            {"params": [p for p in chosen if p.ndim >= 2], "weight_decay": cfg.weight_decay, "lr": lr},
            {"params": [p for p in chosen if p.ndim < 2], "weight_decay": 0.0, "lr": lr},
        ]
    groups = [g for g in groups if g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.betas[0], cfg.betas[1]), foreach=True)


def _pair(item: torch.nn.Parameter | tuple[str, torch.nn.Parameter]) -> tuple[str, torch.nn.Parameter]:
    return item if isinstance(item, tuple) else ("", item)


def lr_multiplier(step: int, total_steps: int, cfg: OptimConfig) -> float:
    """The factor applied to ``cfg.lr`` at optimizer step ``step`` (0-based).

    Warm-up: ``(step + 1) / warmup`` for ``step < warmup``. Decay over the remaining steps, with progress
    ``p = (step - warmup) / max(1, total - warmup)`` clipped to [0, 1] and floor ``m = min_lr_ratio``:
    constant ``1``; linear ``m + (1 - m)(1 - p)``; cosine ``m + (1 - m)(1 + cos(pi p)) / 2``.
    """
    warmup = math.ceil(cfg.lr_warmup_steps_ratio * total_steps)
    if step < warmup:
        return (step + 1) / warmup
    if cfg.warmup_style == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total_steps - warmup)))
    floor = cfg.min_lr_ratio
    if cfg.warmup_style == "linear":
        return floor + (1.0 - floor) * (1.0 - progress)
    return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int) -> LambdaLR:
    """A ``LambdaLR`` following :func:`lr_multiplier`; its ``state_dict`` is its position (checkpointed).

    Raises:
        ValueError: ``total_steps`` < 1 or a warm-up ratio outside [0, 1].
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    if not 0.0 <= cfg.lr_warmup_steps_ratio <= 1.0:
        raise ValueError(
            f"actor.optim.lr_warmup_steps_ratio must be in [0, 1], got {cfg.lr_warmup_steps_ratio}"
        )
    return LambdaLR(optimizer, lambda step: lr_multiplier(step, total_steps, cfg))
