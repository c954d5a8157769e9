"""The GRPO step's fast paths and placements against the slow, separate ones: the on-policy update without the
old_log_prob forward, the colocated (hybrid engine) rollout against the split one through real Ray actors; and
non-finite updates: skipped, counted, and the run stopped with its reason."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError
from codepercept_rl.jobs.train import cleanup, grpo_step, setup, train, validate
from codepercept_rl.tracking import read_metrics
from tests.grpo.test_train import RECIPE, _overrides, ray_config

HERE = Path(__file__).resolve().parent
SKIP = ("timing_s/", "perf/throughput")  # wall-clock figures differ between any two runs
PLACEMENT_ONLY = ("weight_sync/",)  # what the split placement's sync sent: no sync to count when colocated


def _local(r1_files, root, name, *extra):
    overrides = _overrides(r1_files, root, name, "ray.enabled=false", "trainer.val_before_train=false",
                           f"reward.path={HERE / 'toy_reward.py'}:digit_share", *extra)  # fmt: skip
    return load_config(RECIPE, overrides, schema=JobConfig)


def _learner(run):
    return run.learners._workers[0].learner  # the in-process rank (ray.enabled=false)


def test_on_policy_update_skips_the_old_log_prob_forward_and_matches_the_recompute(r1_files, tmp_path):
    # One epoch over one mini-batch (both prompts): the update is on-policy.
    common = ("actor.ppo_mini_batch_size=2", "trainer.total_training_steps=1", "rollout.hybrid_engine=true")
    results = {}
    for recompute in (True, False):
        run = setup(_local(r1_files, tmp_path, f"recompute_{recompute}", *common,
                           f"actor.recompute_log_prob={str(recompute).lower()}"))  # fmt: skip
        try:
            learner = _learner(run)
            initial = learner.state_dict_for_rollout()
            forwards = []  # a spy on the real method: how many no-grad log-prob passes the step ran

            def counted(*args, _real=learner.forward_logprobs_batches, _seen=forwards, **kwargs):
                _seen.append(1)
                return _real(*args, **kwargs)

            learner.forward_logprobs_batches = counted
            metrics = grpo_step(run)
            del learner.forward_logprobs_batches
            weights = {k: v.clone() for k, v in learner.state_dict_for_rollout().items()}
            if not recompute:
                # Colocated on one fp32 rank: the rollout module's parameters are the learner's own storage,
                # so the update is what the next generation uses, with nothing copied.
                rollout = learner.rollout_module
                for name, param in rollout.named_parameters():
                    source = learner.model.get_parameter(name).to_local()
                    assert param.data_ptr() == source.data_ptr(), name
        finally:
            cleanup(run)
        assert len(forwards) == (1 if recompute else 0)
        results[recompute] = (metrics, weights)
        assert any(not torch.equal(weights[k], initial[k]) for k in initial)  # the step updated the policy
    (slow, slow_w), (fast, fast_w) = results[True], results[False]
    assert slow["actor/old_log_prob_recomputed"] == 1.0 and fast["actor/old_log_prob_recomputed"] == 0.0
    # Same rollouts (same seeds, same weights), same rewards ...
    for key in ("critic/score/mean", "critic/advantages/max", "response_length/mean"):
        assert fast[key] == slow[key], key
    # ... and the same update: the recomputed old log-probs equal the update's own up to float noise, so the
    # ratio is 1 within ~1e-6 either way and no token is clipped.
    assert fast["actor/ppo_kl"] == 0.0 and abs(slow["actor/ppo_kl"]) < 1e-5
    assert fast["actor/pg_clipfrac"] == slow["actor/pg_clipfrac"] == 0.0
    assert fast["actor/pg_loss"] == pytest.approx(slow["actor/pg_loss"], abs=1e-6)
    assert fast["actor/grad_norm"] == pytest.approx(slow["actor/grad_norm"], rel=1e-4)
    assert fast["actor/grad_norm"] > 0
    # Entropy of the sampling policy: from the update's forward on the fast path, from phase 3 on the slow one.
    assert fast["actor/entropy"] == pytest.approx(slow["actor/entropy"], rel=1e-5)
    for name, slow_value in slow_w.items():
        assert torch.allclose(fast_w[name], slow_value, rtol=1e-5, atol=1e-6), name


def test_prefix_grouper_step_matches_the_padded_step(r1_files, tmp_path):
    # actor.use_prefix_grouper: each prompt runs once per micro-batch for its group; the step (old log-probs
    # recomputed, a KL loss to the reference: every learner forward) is the padded step's up to float noise.
    common = ("actor.ppo_mini_batch_size=2", "trainer.total_training_steps=1", "rollout.hybrid_engine=true",
              "actor.recompute_log_prob=true", "actor.use_kl_loss=true")  # fmt: skip
    results = {}
    for grouped in (False, True):
        run = setup(_local(r1_files, tmp_path, f"grouped_{grouped}", *common,
                           f"actor.use_prefix_grouper={str(grouped).lower()}"))  # fmt: skip
        try:
            learner = _learner(run)
            assert learner.cfg.use_prefix_grouper is grouped
            calls = []

            def spy(mb, *args, _real=learner._forward_grouped, _seen=calls, **kwargs):
                _seen.append(mb.num_sequences)
                return _real(mb, *args, **kwargs)

            learner._forward_grouped = spy
            metrics = grpo_step(run)
            weights = {k: v.clone() for k, v in learner.state_dict_for_rollout().items()}
        finally:
            cleanup(run)
        assert bool(calls) is grouped  # old log-probs and the update went through the grouped forward
        results[grouped] = (metrics, weights)
    (padded, padded_w), (fast, fast_w) = results[False], results[True]
    for key in ("critic/score/mean", "critic/advantages/max", "response_length/mean"):
        assert fast[key] == padded[key], key  # the same rollouts
    for key in ("actor/pg_loss", "actor/kl_loss", "actor/ppo_kl"):
        assert fast[key] == pytest.approx(padded[key], abs=1e-5), key
    for key in ("actor/grad_norm", "actor/entropy"):
        assert fast[key] == pytest.approx(padded[key], rel=1e-4), key
    for name, value in padded_w.items():
        assert torch.allclose(fast_w[name], value, rtol=1e-5, atol=1e-6), name


@pytest.mark.timeout(600)
def test_colocated_rollout_matches_split_through_ray(r1_files, tmp_path):
    ray = pytest.importorskip("ray")
    # Two mini-batches per step: the recompute path runs too (the on-policy path is covered above).
    placements = {}
    try:
        for hybrid in ("false", "true"):
            run = setup(ray_config(r1_files, tmp_path, f"hybrid_{hybrid}", "ray.num_cpus=2",
                                   f"rollout.hybrid_engine={hybrid}"))  # fmt: skip
            try:
                steps = []
                for _ in range(2):
                    steps.append(grpo_step(run))
                    run.step += 1
                steps.append(validate(run))  # greedy, through the same engine
                # CPUs the actors hold: the learner rank (1) and, split, the rollout worker (1); reward: 0.
                held = ray.cluster_resources()["CPU"] - ray.available_resources().get("CPU", 0.0)
                engine_stats = run.rollout.call("stats")
            finally:
                cleanup(run)
            placements[hybrid] = (steps, held)
            # Both engines decode with the lean loop (the colocated one over the learner's own tensors).
            assert engine_stats["lean_sequences"] == engine_stats["generated_sequences"] > 0, engine_stats
    finally:
        ray.shutdown()
    (split, split_cpus), (colocated, colocated_cpus) = placements["false"], placements["true"]
    assert (split_cpus, colocated_cpus) == (2.0, 1.0)  # colocated: no rollout actor, generation on rank 0
    # Both generate with the same fp32 weights, the same kernels (one thread) and the same seeds: every
    # number is bitwise the same; only the wall-clock figures differ.
    for s, c in zip(split, colocated, strict=True):
        s = {k: v for k, v in s.items() if not k.startswith(SKIP + PLACEMENT_ONLY)}
        c = {k: v for k, v in c.items() if not k.startswith(SKIP)}
        assert s == c
    assert split[1]["actor/old_log_prob_recomputed"] == 1.0
    assert math.isfinite(colocated[1]["actor/entropy"])


def test_non_finite_updates_are_skipped_counted_and_stop_the_run(r1_files, tmp_path):
    # A broken reward (scores near float32's limit) and no std normalisation: the loss overflows, the gradient
    # is not finite, and every update is skipped; the third in a row stops the run with its reason.
    cfg = _local(r1_files, tmp_path, "overflow", "actor.ppo_mini_batch_size=2", "trainer.total_training_steps=6",
                 "algorithm.norm_adv_by_std_in_grpo=false", f"reward.path={HERE / 'toy_reward.py'}:overflowing",
                 "rollout.hybrid_engine=true")  # fmt: skip
    run = setup(cfg)
    try:
        before = {k: v.clone() for k, v in _learner(run).state_dict_for_rollout().items()}
        with pytest.raises(
            UserError, match=r"stopping at step 3: 3 updates in a row had a non-finite gradient"
        ):
            train(run)
        after = _learner(run).state_dict_for_rollout()
        assert all(torch.equal(before[k], after[k]) for k in before)  # no step reached the weights
    finally:
        cleanup(run)
    records = [r for r in read_metrics(tmp_path / "overflow") if r["step"] > 0]
    assert [r["step"] for r in records] == [1, 2, 3]  # logged, step by step, before stopping
    for r in records:
        assert r["actor/skipped_updates"] == 1.0
        assert r["actor/grad_norm"] is None  # not finite: written as null
        assert r["critic/score/max"] > 1e37
