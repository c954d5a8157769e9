"""Parity with verl 0.9.1's own code: a full GRPO update through our ``Learner`` + ``GRPOLoss`` against verl's
``ppo_loss`` on a plain model (``tests/grpo/verl_reference.py``), and our tensor helpers against
``verl.trainer.ppo.core_algos``.

Covered: every ``loss_agg_mode``, every KL estimator we accept (``+`` included), dual clip on and off,
temperatures 0.7 / 1.0 / 1.3, 1 and 2 ranks (FSDP2 over gloo), micro-batches of 1, 3 and 8 sequences, the
on-policy shortcut on and off, an empty response, a group of identical rewards, a group of one, and a stress case
with log-prob gaps of +-100 (in float32). Loss, gradients and metrics agree within ``TOL`` (1e-6) unless a line
says why not.

Deliberate differences (also in ``docs/rl_math.md``), each pinned by a test here:
- a group of one gets advantage 0 (verl: its score / (1 + eps), a signal with no baseline);
- the ``seq-mean-*`` modes count the sequences with at least one response token (verl's trainer passes the
  mini-batch size, empty responses included; its ``agg_loss`` without it counts as we do); we feed verl that count.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch

from codepercept_rl.config.schema import ModelConfig, RayConfig
from codepercept_rl.grpo.algos import (
    KL_ESTIMATORS,
    LOSS_AGG_MODES,
    aggregate_loss,
    grpo_advantages,
    kl_penalty,
)
from codepercept_rl.grpo.batch import build_micro_batches
from codepercept_rl.grpo.loss import GRPOLoss
from codepercept_rl.learner import Learner, LearnerConfig
from codepercept_rl.learner.actor import run_on_ranks
from codepercept_rl.learner.dist import destroy_distributed, init_distributed
from tests.grpo.verl_reference import RESPONSE_LENGTH, Settings, make_case, verl_update

core_algos = pytest.importorskip("verl.trainer.ppo.core_algos", reason="verl is installed by `make install`")

TOL = 1e-6
# The learner's weights come from the case (float64). Chunks of 5 tokens: the LM head runs in several chunks per
# micro-batch (learner/logprobs.py), against verl's full-logits log-probs.
NANO64 = ModelConfig(tiny_preset="nano", dtype="float64", logprob_chunk_size=5)
TEMPERATURES = (0.7, 1.0, 1.3)
DUAL_CLIP = {"dual clip on": 3.0, "dual clip off": 1e9}  # c = 1e9: -A c is never below the clipped loss


@pytest.fixture(scope="module")
def case():
    torch.set_num_threads(1)
    return make_case()


@pytest.fixture(scope="module")
def learners(case):
    """One single-rank learner per temperature, on copies of the case's weights (FSDP2 wraps in place)."""
    made = {}

    def get(temperature: float) -> Learner:
        if temperature not in made:
            cfg = LearnerConfig(model=NANO64, grad_clip=0.0, temperature=temperature)
            made[temperature] = Learner(cfg, model=copy.deepcopy(case.model), processor=case.processor)
        return made[temperature]

    yield get
    destroy_distributed()


def our_update(learner: Learner, case, s: Settings, ref: dict, micro_batch_size: int = 3, rank: int = 0,
               world_size: int = 1) -> dict:  # fmt: skip
    """Our loss, metrics and gradients of the same update: the GRPO driver's packing, this rank's share."""
    loss = GRPOLoss(
        clip_ratio_low=s.clip_ratio_low, clip_ratio_high=s.clip_ratio_high, clip_ratio_c=s.clip_ratio_c,
        loss_agg_mode=s.loss_agg_mode, use_kl_loss=s.use_kl_loss, kl_loss_coef=s.kl_loss_coef,
        kl_loss_type=s.kl_loss_type, max_response_length=RESPONSE_LENGTH, on_policy=s.on_policy,
    )  # fmt: skip
    seqs = case.trainable
    share = seqs[rank::world_size]  # the driver's split (jobs/train.py _split)
    mbs = build_micro_batches(
        case.batch, share, case.encoder, micro_batch_size,
        old_logprobs=None if s.on_policy else [ref["old"][i] for i in share],
        ref_logprobs=[ref["ref"][i] for i in share] if s.use_kl_loss else None,
    )  # fmt: skip
    tokens = sum(len(case.batch.rollouts[i].token_ids) for i in seqs)
    normalizer = loss.normalizer(tokens, len(seqs))
    out = learner.backward(mbs, loss, normalizer, with_entropy=True)
    grads = learner.full_gradients()
    learner.zero_grad()
    n = out["stats/tokens"]
    metrics = {
        "actor/pg_loss": out["stats/pg_loss"] / normalizer,
        "actor/pg_clipfrac": out["stats/pg_clipfrac"] / n,
        "actor/pg_clipfrac_lower": out["stats/pg_clipfrac_lower"] / n,
        "actor/ppo_kl": out["stats/ppo_kl"] / n,
    }
    if s.use_kl_loss:
        metrics["kl_loss"] = out["stats/kl_loss"] / normalizer
    return {"loss": out["loss"], "metrics": metrics, "entropy": out["stats/entropy"] / n, "grads": grads}


def assert_same_update(ours: dict, theirs: dict, tol: float = TOL) -> float:
    """Loss, metrics and every gradient within ``tol``; returns the largest gradient difference."""
    assert ours["loss"] == pytest.approx(theirs["loss"], abs=tol)
    for name, value in ours["metrics"].items():
        assert value == pytest.approx(theirs["metrics"][name], abs=tol), name
    assert ours["entropy"] == pytest.approx(theirs["entropy"], abs=tol)
    assert ours["grads"].keys() == theirs["grads"].keys()
    worst = 0.0
    for name, g in theirs["grads"].items():
        assert torch.isfinite(ours["grads"][name]).all(), name
        worst = max(worst, float((ours["grads"][name] - g).abs().max()))
    assert worst <= tol, f"max |grad difference| {worst:.3g} > {tol}"
    return worst


# ------------------------------------------------------------------------------------------------------------
# a full update through the learner, one rank


@pytest.mark.parametrize("temperature", TEMPERATURES)
@pytest.mark.parametrize("dual", DUAL_CLIP)
@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
def test_update_matches_verl_for_each_mode_temperature_and_dual_clip(case, learners, mode, dual, temperature):
    s = Settings(loss_agg_mode=mode, temperature=temperature, clip_ratio_c=DUAL_CLIP[dual])
    theirs = verl_update(case, s)
    if dual == "dual clip on":
        assert theirs["metrics"]["actor/pg_clipfrac_lower"] > 0  # the case reaches the dual clip
    else:
        assert theirs["metrics"]["actor/pg_clipfrac_lower"] == 0
    assert theirs["metrics"]["actor/pg_clipfrac"] > 0
    assert_same_update(our_update(learners(temperature), case, s, theirs), theirs)


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_update_matches_verl_for_each_kl_estimator(case, learners, estimator):
    s = Settings(
        kl_loss_type=estimator, temperature=0.7, loss_agg_mode="seq-mean-token-mean", kl_loss_coef=0.5
    )
    theirs = verl_update(case, s)
    assert_same_update(our_update(learners(0.7), case, s, theirs), theirs)


def test_update_without_kl_matches_verl(case, learners):
    s = Settings(use_kl_loss=False, temperature=1.3)
    theirs = verl_update(case, s)
    assert "kl_loss" not in theirs["metrics"]
    assert_same_update(our_update(learners(1.3), case, s, theirs), theirs)


@pytest.mark.parametrize("mode", LOSS_AGG_MODES)
@pytest.mark.parametrize("temperature", (0.7, 1.3))
def test_on_policy_shortcut_matches_verl_with_recomputed_old_logprobs(case, learners, mode, temperature):
    # Ours: no old log-probs travel, the update's own detached ones stand in; verl: old = the recomputed ones.
    s = Settings(loss_agg_mode=mode, temperature=temperature, on_policy=True)
    theirs = verl_update(case, s)
    ours = our_update(learners(temperature), case, s, theirs)
    assert ours["metrics"]["actor/ppo_kl"] == 0.0 and ours["metrics"]["actor/pg_clipfrac"] == 0.0
    assert_same_update(ours, theirs)


@pytest.mark.parametrize("micro_batch_size", (1, 3, 8))
@pytest.mark.parametrize("mode", ("token-mean", "seq-mean-token-sum-norm"))
def test_micro_batch_split_does_not_change_the_update(case, learners, mode, micro_batch_size):
    s = Settings(loss_agg_mode=mode, temperature=0.7)
    theirs = verl_update(case, s)
    assert_same_update(our_update(learners(0.7), case, s, theirs, micro_batch_size=micro_batch_size), theirs)


@pytest.fixture(scope="module")
def case32():
    return make_case(dtype=torch.float32)


# policy - reference (and policy - old) gaps of -100 and +100 nats. In float32, where the recipes train: exp(100)
# overflows, so k3 needs verl's clamp of the log-ratio before exp (without it the gradient is 0 * inf = NaN).
GAPS = [(100.0, 0.0), (-100.0, 0.0), (0.0, 100.0), (0.0, -100.0), (100.0, 100.0)]


@pytest.mark.parametrize("ref_shift,old_shift", GAPS)
def test_extreme_logprob_gaps_give_finite_gradients_equal_to_verl(case32, ref_shift, old_shift):
    s = Settings(temperature=0.7, ref_shift=ref_shift, old_shift=old_shift, kl_loss_coef=1.0)
    theirs = verl_update(case32, s)
    assert all(torch.isfinite(g).all() for g in theirs["grads"].values())
    cfg = LearnerConfig(
        model=ModelConfig(tiny_preset="nano", logprob_chunk_size=5), grad_clip=0.0, temperature=0.7
    )
    learner = Learner(cfg, model=copy.deepcopy(case32.model), processor=case32.processor)
    ours = our_update(learner, case32, s, theirs)
    # float32 on both sides, two batch layouts: equal to fp32 rounding, not to 1e-6 (see the float64 cases above).
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5, abs=1e-5)
    for name, g in theirs["grads"].items():
        assert torch.isfinite(ours["grads"][name]).all(), name
        assert torch.allclose(ours["grads"][name], g, rtol=1e-4, atol=1e-5), name
    # Whatever is in range still pulls (the clipped ratio and the clamped k3 are flat: no gradient from those).
    flows = any(float(g.abs().max()) > 0 for g in ours["grads"].values())
    assert flows == (ref_shift == 0.0 or old_shift == 0.0)


def test_kl_on_padding_with_very_negative_logprobs_stays_finite(case32):
    # A policy whose logits are huge puts log-probs far below -88.7 on the padding after short responses, where
    # the reference log-prob is 0: k3 must not be evaluated there (exp overflows, the gradient turns NaN).
    model = copy.deepcopy(case32.model)
    with torch.no_grad():
        model.lm_head.weight.mul_(400.0)
    cfg = LearnerConfig(model=ModelConfig(tiny_preset="nano"), grad_clip=0.0, temperature=0.7)
    learner = Learner(cfg, model=model, processor=case32.processor)
    loss = GRPOLoss(use_kl_loss=True, kl_loss_type="low_var_kl", kl_loss_coef=1.0, on_policy=True,
                    max_response_length=RESPONSE_LENGTH)  # fmt: skip
    seqs = case32.trainable
    ref = [torch.zeros(len(case32.batch.rollouts[i].token_ids)) - 5.0 for i in seqs]
    (mb,) = build_micro_batches(case32.batch, seqs, case32.encoder, len(seqs), ref_logprobs=ref)
    with torch.no_grad():
        logprobs = learner.forward_logprobs(mb)
    padding = (mb.attention_mask == 0) & (mb.loss_mask == 0)
    assert float(logprobs[:, 1:][padding[:, 1:]].min()) < -89.0  # exp(-d) overflows fp32 there
    out = learner.backward([mb], loss, normalizer=float(mb.loss_mask.sum()))
    assert math.isfinite(out["loss"])
    assert all(torch.isfinite(g).all() for g in learner.full_gradients().values())
    learner.zero_grad()


# ------------------------------------------------------------------------------------------------------------
# two ranks: FSDP2 over gloo, each rank with its share of the mini-batch

RANK_CASES = [
    Settings(loss_agg_mode="token-mean", temperature=0.7),
    Settings(loss_agg_mode="token-sum", temperature=1.3, kl_loss_type="k3+"),
    Settings(loss_agg_mode="seq-mean-token-sum", temperature=1.0, kl_loss_type="kl"),
    Settings(loss_agg_mode="seq-mean-token-mean", temperature=1.3, on_policy=True),
    Settings(loss_agg_mode="seq-mean-token-sum-norm", temperature=0.7, clip_ratio_c=1e9),
]
RANK_MICRO_BATCHES = (1, 2)


def _two_rank_updates(references: list[dict]) -> list[dict]:
    """On each rank: every RANK_CASES update with each micro-batch size; rank 0 returns them."""
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    case = make_case()
    results, learner_of = [], {}
    for s, ref in zip(RANK_CASES, references, strict=True):
        if s.temperature not in learner_of:
            cfg = LearnerConfig(model=NANO64, grad_clip=0.0, temperature=s.temperature)
            learner_of[s.temperature] = Learner(cfg, model=copy.deepcopy(case.model), processor=case.processor,
                                                dist_info=info)  # fmt: skip
        for mbs in RANK_MICRO_BATCHES:
            out = our_update(learner_of[s.temperature], case, s, ref, mbs, info.rank, info.world_size)
            results.append(out)
    destroy_distributed()
    return results if info.rank == 0 else []


@pytest.mark.timeout(300)
def test_two_ranks_match_verl(case):
    references = [verl_update(case, s) for s in RANK_CASES]
    light = [{"old": r["old"], "ref": r["ref"]} for r in references]  # what the ranks need of them
    rank0 = run_on_ranks(_two_rank_updates, 2, light, ray_cfg=RayConfig(enabled=False))[0]
    for k, ours in enumerate(rank0):
        assert_same_update(ours, references[k // len(RANK_MICRO_BATCHES)])


# ------------------------------------------------------------------------------------------------------------
# the tensor helpers against core_algos


def test_aggregate_loss_matches_verl_agg_loss_in_every_mode():
    g = torch.Generator().manual_seed(0)
    loss = torch.randn(6, 9, generator=g)
    mask = (torch.rand(6, 9, generator=g) > 0.3).float()
    mask[2] = 0.0  # an empty sequence
    for mode in LOSS_AGG_MODES:
        theirs = core_algos.agg_loss(loss, mask, mode)
        assert float(aggregate_loss(loss, mask, mode)) == pytest.approx(float(theirs), abs=TOL), mode


@pytest.mark.parametrize("estimator", KL_ESTIMATORS)
def test_kl_penalty_value_and_gradient_match_verl(estimator):
    g = torch.Generator().manual_seed(1)
    base = torch.randn(4, 7, generator=g) * 3.0
    base[0, :3] = torch.tensor([-100.0, 60.0, -30.0])  # beyond k3's clamps
    ref = torch.randn(4, 7, generator=g) * 3.0
    ours_lp, theirs_lp = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = kl_penalty(ours_lp, ref, estimator)
    theirs = core_algos.kl_penalty(theirs_lp, ref, estimator)
    assert torch.allclose(ours, theirs, atol=TOL, rtol=0)
    weights = torch.randn(4, 7, generator=g)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    assert torch.isfinite(ours_lp.grad).all()
    assert torch.allclose(ours_lp.grad, theirs_lp.grad, atol=TOL, rtol=0)


def test_kl_penalty_mask_zeroes_value_and_gradient_off_the_response():
    lp = torch.tensor([[-300.0, -1.0, -2.0]], requires_grad=True)  # a padding log-prob far below -88.7
    ref = torch.tensor([[0.0, -1.5, -1.0]])
    mask = torch.tensor([[0.0, 1.0, 1.0]])
    kl = kl_penalty(lp, ref, "low_var_kl", mask=mask)
    kl.sum().backward()
    assert kl[0, 0] == 0.0 and lp.grad[0, 0] == 0.0
    assert torch.isfinite(lp.grad).all() and lp.grad[0, 1:].abs().min() > 0


def test_advantages_match_verl_except_for_a_group_of_one():
    g = torch.Generator().manual_seed(2)
    scores = torch.randn(9, generator=g)
    scores[4:7] = 0.5  # a group of identical rewards
    index = np.array([0, 0, 0, 0, 1, 1, 1, 2, 3])  # groups 2 and 3 have one member each
    mask = torch.ones(9, 3)
    token_rewards = torch.zeros(9, 3)
    token_rewards[:, -1] = scores
    for norm in (True, False):
        theirs, _ = core_algos.compute_grpo_outcome_advantage(
            token_rewards, mask, index, norm_adv_by_std_in_grpo=norm
        )
        ours = grpo_advantages(scores, index.tolist(), norm_by_std=norm)
        assert torch.allclose(ours[:7], theirs[:7, 0], atol=TOL)
        assert ours[4:7].abs().max() == 0.0
        # Deliberate: a lone answer has no baseline to be better or worse than; verl pushes its raw score.
        assert ours[7:].tolist() == [0.0, 0.0]
        assert torch.allclose(theirs[7:, 0], scores[7:] / (1.0 + 1e-6) if norm else scores[7:], atol=TOL)
