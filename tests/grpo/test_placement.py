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
        cfg = ray_config(r1_files, tmp_path, "cluster", f"ray.address={cluster.address}")
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
