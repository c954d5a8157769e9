"""The LR schedule's shape (warm-up, decay styles, floor) and the optimizer's refusals."""

from __future__ import annotations

import math

import pytest
import torch

from codepercept_rl.config.schema import OptimConfig
from codepercept_rl.learner.optim import build_optimizer, build_scheduler, lr_multiplier


def test_cosine_with_warmup_matches_the_paper_s1_schedule() -> None:
    # S1: 3e-6 -> 2e-7, cosine, 5 % warm-up.
    cfg = OptimConfig(lr=3e-6, lr_warmup_steps_ratio=0.05, warmup_style="cosine", min_lr_ratio=2e-7 / 3e-6)
    total = 100
    lrs = [cfg.lr * lr_multiplier(s, total, cfg) for s in range(total)]
    assert lrs[0] == pytest.approx(3e-6 / 5)  # first of 5 warm-up steps
    assert lrs[4] == pytest.approx(3e-6)  # warm-up done
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:], strict=False))  # then never rises
    assert lrs[-1] == pytest.approx(2e-7 + (3e-6 - 2e-7) * 0.5 * (1 + math.cos(math.pi * 94 / 95)))
    assert cfg.lr * lr_multiplier(total, total, cfg) == pytest.approx(2e-7)  # the floor at the very end


def test_linear_and_constant_styles() -> None:
    linear = OptimConfig(lr=1.0, warmup_style="linear", min_lr_ratio=0.0)
    assert [lr_multiplier(s, 4, linear) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    constant = OptimConfig(lr=1.0, warmup_style="constant", lr_warmup_steps_ratio=0.5)
    assert [lr_multiplier(s, 4, constant) for s in range(4)] == pytest.approx([0.5, 1.0, 1.0, 1.0])


def test_scheduler_drives_the_optimizer_lr() -> None:
    param = torch.nn.Parameter(torch.zeros(2))
    cfg = OptimConfig(lr=0.1, lr_warmup_steps_ratio=0.5, warmup_style="linear")
    opt = build_optimizer([param], cfg)
    sched = build_scheduler(opt, cfg, total_steps=4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([0.05, 0.1, 0.1, 0.05])


def test_refuses_nothing_to_train_and_bad_settings() -> None:
    frozen = torch.nn.Parameter(torch.zeros(1), requires_grad=False)
    with pytest.raises(ValueError, match="no trainable parameters"):
        build_optimizer([frozen], OptimConfig())
    with pytest.raises(ValueError, match="betas"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(betas=[0.9]))
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig())
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, OptimConfig(), total_steps=0)


def test_weight_decay_skips_biases_and_norms() -> None:
    layer = torch.nn.Linear(3, 2)
    norm = torch.nn.LayerNorm(2)
    opt = build_optimizer([*layer.parameters(), *norm.parameters()], OptimConfig(weight_decay=0.1))
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [(2, 3)]
    assert plain["weight_decay"] == 0.0 and len(plain["params"]) == 3  # bias, norm weight, norm bias


def test_vision_lr_gives_the_vision_tower_its_own_rate_under_the_schedule() -> None:
    from codepercept_rl.models import build_tiny_model

    model, _ = build_tiny_model("qwen2_5_vl", preset="nano", seed=0)
    cfg = OptimConfig(lr=1e-3, vision_lr=4e-3, lr_warmup_steps_ratio=0.5, warmup_style="linear")
    opt = build_optimizer(model.named_parameters(), cfg)
    visual = {id(p) for n, p in model.named_parameters() if ".visual." in f".{n}"}
    for group in opt.param_groups:
        in_tower = {id(p) in visual for p in group["params"]}
        assert len(in_tower) == 1  # no group mixes tower and language model
        assert group["lr"] == (4e-3 if in_tower == {True} else 1e-3)
    assert sum(len(g["params"]) for g in opt.param_groups) == len(list(model.parameters()))
    sched = build_scheduler(opt, cfg, total_steps=4)
    opt.step()
    sched.step()  # warm-up scales both rates alike
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([1e-3, 4e-3])
    with pytest.raises(ValueError, match="vision_lr"):
        build_optimizer(torch.nn.Linear(2, 2).named_parameters(), cfg)
