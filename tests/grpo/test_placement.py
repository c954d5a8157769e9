"""Multi-node placement: the GRPO actors spread over the nodes of a Ray cluster (``ray.cluster_utils.Cluster``
starts several raylets on this machine, each a node with its own resources)."""

from __future__ import annotations

import pytest

from codepercept_rl.jobs.train import cleanup, grpo_step, setup
from tests.grpo.test_train import ray_config

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402


@pytest.mark.timeout(600)
def test_grpo_actors_spread_over_two_nodes(r1_files, tmp_path):
    # Two 1-CPU nodes: the learner rank (1 CPU) and the rollout worker (1 CPU) cannot share a node.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    ray.init(address=cluster.address)
    try:
        # Split placement: the rollout worker is an actor of its own (colocated, it lives in the learner rank).
        cfg = ray_config(
            r1_files, tmp_path, "cluster", f"ray.address={cluster.address}", "rollout.hybrid_engine=false"
        )
        run = setup(cfg)
        try:
            metrics = grpo_step(run)
            assert metrics["batch/num_prompts"] == 2 and "actor/pg_loss" in metrics
            from ray.util.state import list_actors

            alive = [a for a in list_actors(filters=[("state", "=", "ALIVE")])]
            nodes = {a.class_name: a.node_id for a in alive}
            assert {"RankWorker", "RolloutWorker", "RewardWorker"} <= set(nodes)
            assert nodes["RankWorker"] != nodes["RolloutWorker"]
            assert len(set(nodes.values())) == 2
        finally:
            cleanup(run)
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.timeout(600)
def test_colocated_rollout_with_two_learner_ranks_uses_gathered_weights(r1_files, tmp_path):
    # Colocated with two ranks: rank 0 generates with a plain module the ranks refresh by gathering the shards
    # after every update. One rank generates with the learner's own tensors; both must sample the same.
    runs = {}
    try:
        for ranks in (1, 2):
            cfg = ray_config(r1_files, tmp_path, f"ranks{ranks}", "ray.num_cpus=2", "rollout.hybrid_engine=true",
                             f"trainer.n_gpus_per_node={ranks}", "actor.ppo_mini_batch_size=2")  # fmt: skip
            run = setup(cfg)
            try:
                steps = []
                for _ in range(2):
                    steps.append(grpo_step(run))
                    run.step += 1
            finally:
                cleanup(run)
            runs[ranks] = steps
    finally:
        ray.shutdown()
    one, two = runs[1], runs[2]
    # Step 2 samples with the weights step 1 wrote: had rank 0 kept the initial ones, its samples would differ.
    for step in (0, 1):
        for key in ("critic/score/mean", "critic/score/max", "reward/digits/mean", "response_length/mean"):
            assert two[step][key] == one[step][key], (step, key)
        # The update itself: the same gradient, summed over two ranks instead of one.
        assert two[step]["actor/grad_norm"] == pytest.approx(one[step]["actor/grad_norm"], rel=1e-4)


@pytest.mark.timeout(600)
def test_reference_runs_on_each_policy_ranks_own_gpu(r1_files, tmp_path):
    # Ray with two fake GPUs (this machine has none): Ray still assigns them and sets each actor's
    # CUDA_VISIBLE_DEVICES, which is what places ranks on a GPU node. The learners compute on the CPU.
    import torch

    from codepercept_rl.jobs.train import build_learners
    from codepercept_rl.learner import LearnerConfig
    from codepercept_rl.learner.batch import MicroBatch

    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cfg = ray_config(r1_files, tmp_path, "gpus", "trainer.n_gpus_per_node=2", "actor.use_kl_loss=true")
        learner_cfg = LearnerConfig(model=cfg.model, device="cpu", temperature=cfg.rollout.temperature)
        learners, reference = build_learners(cfg, learner_cfg, num_gpus_per_rank=1.0)
        try:
            assert reference is not None
            places = learners.placements()
            assert places == reference.placements()  # the same rank processes hold both roles
            assert sorted(p["gpu_ids"] for p in places) == [["0"], ["1"]]  # one GPU each, none shared
            for p in places:
                assert p["cuda_visible_devices"] == p["gpu_ids"][0] and p["local_rank"] == "0"
                assert set(p["devices"]) == {"actor", "ref"}
            ids = torch.randint(10, 100, (2, 9), generator=torch.Generator().manual_seed(0))
            mbs = [
                [MicroBatch(ids[r : r + 1], torch.ones_like(ids[r : r + 1]), torch.ones(1, 9))]
                for r in range(2)
            ]
            # Frozen, but the same initial weights: the reference's log-probs are the policy's.
            ours = learners.call("forward_logprobs_batches", per_rank_args=[(m,) for m in mbs])
            ref = reference.call("forward_logprobs_batches", per_rank_args=[(m,) for m in mbs])
            for a, b in zip(ours, ref, strict=True):
                torch.testing.assert_close(a[0], b[0])
            with pytest.raises(ray.exceptions.RayTaskError, match="frozen"):
                reference.call("zero_grad")
        finally:
            reference.shutdown()
            learners.shutdown()
    finally:
        ray.shutdown()
