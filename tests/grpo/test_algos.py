"""GRPO's numbers against hand-computed values (against verl's own code: test_verl_parity.py)."""

from __future__ import annotations

import math

import pytest
import torch

from codepercept_rl.grpo.algos import (
    aggregate_loss,
    grpo_advantages,
    kl_penalty,
    policy_loss,
)


def test_grpo_advantages_by_hand():
    scores = torch.tensor([1.0, 3.0, 0.0, 0.0, 2.0, float("nan")])
    groups = [0, 0, 1, 1, 2, 2]
    adv = grpo_advantages(scores, groups)
    s = math.sqrt(2.0)  # unbiased std of {1, 3}
    assert adv.tolist()[:2] == pytest.approx([-1 / (s + 1e-6), 1 / (s + 1e-6)])
    assert adv[2:4].tolist() == [0.0, 0.0]  # zero-variance group: no signal
    assert adv[4:].tolist() == [0.0, 0.0]  # one scored member (the NaN is "could not score") -> 0
    dr = grpo_advantages(scores, groups, norm_by_std=False)
    assert dr[:2].tolist() == [-1.0, 1.0]


def test_kl_estimators_by_hand():
    lp = torch.tensor([[-1.0, -2.0]])
    ref = torch.tensor([[-1.5, -1.0]])
    d = lp - ref  # [0.5, -1.0]
    assert kl_penalty(lp, ref, "k1")[0].tolist() == pytest.approx(d[0].tolist())
    assert kl_penalty(lp, ref, "abs")[0].tolist() == pytest.approx([0.5, 1.0])
    assert kl_penalty(lp, ref, "mse")[0].tolist() == pytest.approx([0.125, 0.5])
    k3 = [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1]
    assert kl_penalty(lp, ref, "low_var_kl").tolist()[0] == pytest.approx(k3)
    assert float(kl_penalty(lp, lp, "k3").abs().max()) == 0.0
    # "+": the value of the estimator, the gradient of k2 (d, here)
    lp_st = lp.clone().requires_grad_()
    st = kl_penalty(lp_st, ref, "low_var_kl+")
    assert st.tolist()[0] == pytest.approx(k3)
    st.sum().backward()
    assert lp_st.grad.tolist()[0] == pytest.approx(d[0].tolist())
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_penalty(lp, ref, "k9")


def test_aggregation_modes_by_hand():
    loss = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert float(aggregate_loss(loss, mask, "token-mean")) == pytest.approx(10 / 4)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum")) == pytest.approx((6 + 4) / 2)
    assert float(aggregate_loss(loss, mask, "seq-mean-token-mean")) == pytest.approx((2 + 4) / 2)
    assert float(aggregate_loss(loss, mask, "token-sum")) == pytest.approx(10)
    # Dr. GRPO: sum / (sequences x horizon), a constant weight per token (verl 0.9, TRL's dr_grpo).
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum-norm")) == pytest.approx(10 / (2 * 3))
    assert float(aggregate_loss(loss, mask, "seq-mean-token-sum-norm", horizon=5)) == pytest.approx(
        10 / (2 * 5)
    )
    with pytest.raises(ValueError, match="unknown loss_agg_mode"):
        aggregate_loss(loss, mask, "mean")


def test_policy_loss_clipping_by_hand():
    old = torch.zeros(1, 4)
    # ratios e^{0.5}=1.65 (A>0: clipped at 1.28), e^{-0.5}=0.61 (A>0: unclipped), 1.65 with A<0 (unclipped, worse),
    # e^{2}=7.39 with A<0 (dual clip caps the loss at 3 * |A|)
    new = torch.tensor([[0.5, -0.5, 0.5, 2.0]], requires_grad=True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    mask = torch.ones(1, 4)
    loss, stats = policy_loss(new, old, adv, mask, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0)
    expected = [-1.28, -math.exp(-0.5), math.exp(0.5), 3.0]
    assert float(loss) == pytest.approx(sum(expected) / 4, rel=1e-5)
    loss.backward()
    # Clipped tokens carry no gradient; the others d(-A rho)/d logp = -A rho.
    assert new.grad.tolist()[0] == pytest.approx([0.0, -math.exp(-0.5) / 4, math.exp(0.5) / 4, 0.0], rel=1e-5)
    assert float(stats["pg_clipfrac"]) == pytest.approx(0.25)
    assert float(stats["pg_clipfrac_lower"]) == pytest.approx(0.25)
