"""``trainer.one_step_off_policy``: the split rollout worker (a Ray actor) samples step k+1's first batch while the
learner trains on step k's. Checked through train.py's own steps: the prefetched rollouts are token for token
what the weights *before* the update sample for those prompts and seeds (one policy version old), the update
recomputes the old log-probs, the weights reach the rollout only after it has sampled, a checkpoint keeps the
prompts in flight for a resumed run, and the colocated placement refuses the setting."""

from __future__ import annotations

import pytest

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError
from codepercept_rl.grpo.data import PromptSampler
from codepercept_rl.grpo.workers import RolloutWorker
from codepercept_rl.jobs.train import _round_seed, _sampling, cleanup, grpo_step, save_checkpoint, setup
from tests.grpo.test_train import RECIPE, TOY_REWARD, _overrides, ray_config


def _resample(cfg, state, prompts, step):
    """What a rollout engine holding ``state`` samples for ``step``'s first round, chunk by chunk as train.py
    submits it (same prompts, same seeds)."""
    worker = RolloutWorker(cfg.model, cfg.rollout, cfg.data.max_prompt_length, cfg.trainer.seed)
    worker.update_weights(state)
    params = _sampling(cfg, _round_seed(cfg, step, 1))
    per_chunk = max(1, cfg.rollout.micro_batch_size // params.n)
    tokens = []
    for c in range(0, len(prompts), per_chunk):
        seed = params.seed + 7919 * (c // per_chunk)
        chunk_params = type(params)(**{**params.__dict__, "seed": seed})
        tokens += [comp.token_ids for group in worker.generate(prompts[c : c + per_chunk], chunk_params)
                   for comp in group]  # fmt: skip
    return tokens


@pytest.mark.timeout(600)
def test_one_step_off_policy_samples_with_the_previous_weights_through_ray(r1_files, tmp_path):
    ray = pytest.importorskip("ray")
    cfg = ray_config(r1_files, tmp_path, "one_step_off", "ray.num_cpus=2", "rollout.hybrid_engine=false",
                     "trainer.one_step_off_policy=true", "trainer.total_training_steps=3",
                     "data.train_batch_size=2", "actor.ppo_mini_batch_size=2")  # fmt: skip
    run = setup(cfg)
    try:
        before = run.learners.call("state_dict_for_rollout")[0]
        first = grpo_step(run)
        run.step += 1
        # Step 0 had nothing prefetched: sampled then and there, then step 1's batch was submitted before the update.
        assert "timing_s/gen_overlapped" not in first and first["batch/off_policy_rollouts"] == 0
        assert first["actor/old_log_prob_recomputed"] == 1.0
        assert first["timing_s/wait_rollout"] >= 0 and first["timing_s/update_weights"] > 0
        assert run.prefetch is not None
        # Its prompts are the sampler's next ones, as a synchronous run would take them.
        sampler = PromptSampler(len(run.train_data), cfg.trainer.seed, cfg.data.shuffle)
        sampler.take(cfg.data.train_batch_size)
        assert run.prefetch.items == sampler.take(cfg.data.train_batch_size)

        after = run.learners.call("state_dict_for_rollout")[0]
        assert any(not v.equal(after[k]) for k, v in before.items())  # the update moved the policy
        batch, _, _ = run.prefetch.batch.result()
        prompts = [p for p in batch.prompts]
        prefetched = [r.token_ids for r in batch.rollouts]
        assert len(prefetched) == cfg.data.train_batch_size * cfg.rollout.n
        # One policy version old: exactly the pre-update weights' samples, not the updated ones'.
        assert _resample(cfg, before, prompts, 1) == prefetched
        assert _resample(cfg, after, prompts, 1) != prefetched

        second = grpo_step(run)
        run.step += 1
        assert second["batch/off_policy_rollouts"] == cfg.data.train_batch_size * cfg.rollout.n
        assert second["timing_s/gen_overlapped"] > 0 and second["timing_s/gen"] == 0.0
        assert second["actor/old_log_prob_recomputed"] == 1.0
        # Recomputed, the old log-probs are those of the weights starting the update: no gap to them.
        assert abs(second["actor/ppo_kl"]) < 1e-6
        assert run.prefetch is not None  # the last step's batch, submitted as this step took its own

        last = grpo_step(run)
        run.step += 1
        assert last["batch/off_policy_rollouts"] == cfg.data.train_batch_size * cfg.rollout.n
        assert run.prefetch is None and "timing_s/wait_rollout" not in last  # nothing is sampled past the end
    finally:
        cleanup(run)
        ray.shutdown()


def test_one_step_off_policy_needs_the_split_placement(r1_files, tmp_path):
    cfg = load_config(RECIPE, _overrides(r1_files, tmp_path, "refused", "ray.enabled=false",
                                         "trainer.one_step_off_policy=true", "rollout.hybrid_engine=true",
                                         f"reward.path={TOY_REWARD}"), schema=JobConfig)  # fmt: skip
    with pytest.raises(UserError, match="rollout.hybrid_engine=false"):
        setup(cfg)


@pytest.mark.timeout(600)
def test_bypass_mode_takes_the_old_log_probs_from_the_engine(r1_files, tmp_path):
    """verl's bypass mode: the engine's log-probs are the ratio's old ones and phase 3 does not run. On step 0
    (sampled by the weights the update starts from) they agree with the learner's forward; one step off-policy,
    step 1's ratio is taken against the weights that sampled it, one update behind the learner. A checkpoint
    taken with a batch in flight keeps its prompts, and the resumed run samples them as its first round."""
    cfg = load_config(RECIPE, _overrides(r1_files, tmp_path, "bypass", "ray.enabled=false",
                                         "rollout.hybrid_engine=false", "trainer.one_step_off_policy=true",
                                         "algorithm.rollout_correction.bypass_mode=true",
                                         "trainer.total_training_steps=2", "trainer.val_before_train=false",
                                         "data.train_batch_size=2", "actor.ppo_mini_batch_size=2",
                                         f"reward.path={TOY_REWARD}"), schema=JobConfig)  # fmt: skip
    run = setup(cfg)
    try:
        steps = [grpo_step(run)]
        run.step += 1
        save_checkpoint(run)
        in_flight = list(run.prefetch.items)
        steps.append(grpo_step(run))
        run.step += 1
    finally:
        cleanup(run)
    resumed = setup(cfg, resume=True)
    try:
        assert resumed.step == 1 and resumed.resume_items == in_flight
        position = resumed.sampler.state()
        again = grpo_step(resumed)
        # Its first round took the checkpoint's prompts, not the sampler's next ones, and sampled them now.
        assert resumed.sampler.state() == position and resumed.resume_items is None
        assert again["batch/off_policy_rollouts"] == 0 and again["batch/num_prompts"] == len(in_flight)
    finally:
        cleanup(resumed)
    for m in steps:
        assert m["actor/old_log_prob_recomputed"] == 0.0 and m["actor/entropy"] > 0
    assert abs(steps[0]["actor/ppo_kl"]) < 1e-6  # engine and learner: the same distribution
    assert abs(steps[1]["actor/ppo_kl"]) > 100 * abs(steps[0]["actor/ppo_kl"])  # one update between them


@pytest.mark.timeout(600)
def test_a_later_round_of_dynamic_sampling_does_not_take_the_next_steps_prefetch(
    r1_files, tmp_path, monkeypatch
):
    """One of step 1's prefetched groups scores alike and is dropped; the second round samples a prompt then and
    there, while the batch prefetched for step 2 (submitted by the first round) stays in flight for step 2."""
    overrides = _overrides(r1_files, tmp_path, "rounds", "ray.enabled=false", "rollout.hybrid_engine=false",
                           "trainer.one_step_off_policy=true", "trainer.total_training_steps=3",
                           "trainer.val_before_train=false", "data.train_batch_size=2", "actor.ppo_mini_batch_size=2",
                           "algorithm.filter_groups=true", "algorithm.max_num_gen_batches=2",
                           f"reward.path={TOY_REWARD.rsplit(':', 1)[0]}:flat_for_listed")  # fmt: skip
    cfg = load_config(RECIPE, overrides, schema=JobConfig)
    run = setup(cfg)
    try:
        want = cfg.data.train_batch_size
        sampler = PromptSampler(len(run.train_data), cfg.trainer.seed, cfg.data.shuffle)
        sampler.take(want)  # step 0's prompts
        step1 = sampler.take(want)  # prefetched for step 1
        step2 = sampler.take(want)  # prefetched for step 2, by step 1's first round
        round2 = sampler.take(1)  # step 1's second round: the one prompt still missing
        flat = next(i for i in step1 if i not in round2)
        monkeypatch.setenv("FLAT_ITEMS", run.train_data[flat].item_id)
        first = grpo_step(run)
        run.step += 1
        assert first["batch/filtered_groups"] == 0 and run.prefetch.items == step1
        second = grpo_step(run)
        run.step += 1
        assert second["batch/num_gen_batches"] == 2 and second["batch/filtered_groups"] == 1
        assert second["batch/num_prompts"] == want
        # the kept prefetched group, and a second round sampled now (not the prefetch for step 2)
        assert second["batch/off_policy_rollouts"] == cfg.rollout.n and second["timing_s/gen"] > 0
        assert run.prefetch is not None and run.prefetch.items == step2
        third = grpo_step(run)
        assert "timing_s/gen_overlapped" in third and run.prefetch is None
    finally:
        cleanup(run)
