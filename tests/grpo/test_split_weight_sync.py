"""The split placement's weight sync: learner rank 0 streams buckets over a private gloo group to the rollout
worker (a Ray actor, or a thread of this process with Ray disabled), through train.py's own set-up and phase 6;
every tensor of the rollout engine ends bit-exact equal to the learner's, and a dead or silent peer fails the
sync within the channel's timeout."""

from __future__ import annotations

import time

import pytest
import torch

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.jobs import train as train_job
from codepercept_rl.jobs.train import _sync_weights, cleanup, grpo_step, setup
from tests.grpo.test_train import RECIPE, TOY_REWARD, _overrides, ray_config

# Smaller than the nano model's largest tensor (the patch embedding, 301,056 bytes in fp32): ~20 buckets, one
# tensor travelling alone. rollout.update_weights_bucket_megabytes is in MiB, so this goes in as bytes.
SMALL_BUCKET = 100_000
# The channel's timeout in the Ray run (train.WEIGHT_SYNC_TIMEOUT_S, 600 s by default). It also bounds the rollout
# actor's join at set-up, which took over 20 s on a loaded machine; a dead peer must fail the sync by its
# connection's reset, long before this.
TIMEOUT_S = 300.0


def _rollout_state(run) -> dict[str, torch.Tensor]:
    """The rollout engine's own model state, read where it lives (the actor, or this process)."""

    def read(worker):
        return {k: v.detach().clone() for k, v in worker.engine.model.state_dict().items()}

    if run.cfg.ray.enabled:
        import ray

        return ray.get(run.rollout._handle.__ray_call__.remote(read))
    return read(run.rollout._obj)


def _assert_rollout_equals_learner(run) -> dict[str, torch.Tensor]:
    learner = run.learners.call("state_dict_for_rollout")[0]
    rollout = _rollout_state(run)
    assert set(rollout) == set(learner)
    for name, value in learner.items():
        assert rollout[name].dtype == value.dtype and torch.equal(rollout[name], value), name
    return learner


def _check_split_sync(run) -> None:
    """A real GRPO step moves the learner and phase 6 delivers it; then, with the rollout's weights zeroed, a
    sync in buckets smaller than the largest tensor restores every one of them."""
    initial = _assert_rollout_equals_learner(run)  # setup's sync
    buckets0 = run.counters["weight_sync/buckets"]
    metrics = grpo_step(run)
    run.step += 1
    assert metrics["timing_s/update_weights"] > 0
    after = _assert_rollout_equals_learner(run)
    assert any(not torch.equal(initial[k], after[k]) for k in initial)  # the step moved the policy
    assert run.counters["weight_sync/buckets"] - buckets0 == 1  # 512 MiB: the whole nano model in one bucket
    # ... and the step's metrics say so (split placement only)
    assert metrics["weight_sync/buckets"] == 1
    tensor_bytes = sum(v.numel() * v.element_size() for v in after.values())
    # the payload: every tensor, each padded to a 64-byte boundary
    assert tensor_bytes <= metrics["weight_sync/bytes"] < tensor_bytes + 64 * len(after)

    run.rollout.call("update_weights", {k: torch.zeros_like(v) for k, v in after.items()})
    assert all(not v.any() for v in _rollout_state(run).values())
    buckets0, bytes0 = run.counters["weight_sync/buckets"], run.counters["weight_sync/bytes"]
    seconds = _sync_weights(run, bucket_bytes=SMALL_BUCKET)
    _assert_rollout_equals_learner(run)
    buckets = run.counters["weight_sync/buckets"] - buckets0
    total = sum(v.numel() * v.element_size() for v in after.values())
    # 1.7 MB in buckets of <= 100 kB, the tensors above that one per bucket: 13 buckets.
    assert buckets >= 10 and run.counters["weight_sync/bytes"] - bytes0 >= total
    print(f"small-bucket sync: {buckets} buckets, {total} bytes, {seconds:.3f} s")


@pytest.mark.timeout(600)
def test_split_sync_through_ray_is_bit_exact_and_a_dead_rollout_fails_it(r1_files, tmp_path, monkeypatch):
    ray = pytest.importorskip("ray")
    monkeypatch.setattr(train_job, "WEIGHT_SYNC_TIMEOUT_S", TIMEOUT_S)
    cfg = ray_config(r1_files, tmp_path, "split_ray", "ray.num_cpus=2", "rollout.hybrid_engine=false")
    try:
        run = setup(cfg)
        try:
            _check_split_sync(run)
            # The rollout actor's process dies: rank 0's next send fails with the reason, not a hang.
            ray.kill(run.rollout._handle, no_restart=True)
            t0 = time.perf_counter()
            with pytest.raises(Exception, match="weight sync to the rollout engine failed") as failed:
                _sync_weights(run)
            assert time.perf_counter() - t0 < TIMEOUT_S and "timed out" not in str(failed.value).lower()
            run.rollout.restart()  # a live actor for cleanup to close
        finally:
            cleanup(run)
    finally:
        ray.shutdown()


@pytest.mark.timeout(600)
def test_split_sync_in_process_is_bit_exact_and_a_silent_learner_fails_it(r1_files, tmp_path, monkeypatch):
    # Ray disabled: the rollout worker runs on a thread of this process, the learner on this one; the same
    # channel joins the two threads.
    monkeypatch.setattr(train_job, "WEIGHT_SYNC_TIMEOUT_S", 5.0)
    overrides = _overrides(r1_files, tmp_path, "split_local", "ray.enabled=false", "rollout.hybrid_engine=false",
                           "trainer.total_training_steps=2", "trainer.val_before_train=false",
                           f"reward.path={TOY_REWARD}")  # fmt: skip
    run = setup(load_config(RECIPE, overrides, schema=JobConfig))
    try:
        _check_split_sync(run)
        # The rollout waits for a stream rank 0 never sends: it gives up after the timeout, with the reason.
        t0 = time.perf_counter()
        with pytest.raises(RuntimeError, match=r"weight sync from learner rank 0 failed .* within 5 s"):
            run.rollout.call("receive_weights")
        assert 4.0 < time.perf_counter() - t0 < 5.0 + 15
    finally:
        cleanup(run)


def test_a_rollout_that_never_joins_fails_the_set_up_within_the_timeout():
    from codepercept_rl.config.schema import ModelConfig
    from codepercept_rl.learner import Learner, LearnerConfig
    from codepercept_rl.learner.dist import free_port

    learner = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano"), device="cpu"))
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match=r"the rollout engine did not join within 2 s"):
        learner.open_weight_channel("127.0.0.1", free_port(), "gloo", timeout_s=2.0)
    assert time.perf_counter() - t0 < 2.0 + 10
    with pytest.raises(RuntimeError, match="before open_weight_channel"):
        learner.send_weights_to_rollout(1 << 20)
