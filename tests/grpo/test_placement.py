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
