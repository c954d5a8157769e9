"""``codepercept-rl submit`` against a real two-node Ray cluster on this machine (``ray.cluster_utils.Cluster``
with the dashboard's job server), driven as a user drives it: the real CLI in a subprocess.

A tiny GRPO job uploads this checkout as its working dir, runs two steps with the learner rank and the rollout
worker on different nodes and exits 0; a job with a bad override fails the command with the job's error in
view; a long-running job is followed by id and stopped.
"""

from __future__ import annotations

import math
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codepercept_rl.tracking import read_metrics
from tests.grpo.conftest import r1_files  # noqa: F401 - the tiny R1 parquet set (a session fixture)
from tests.grpo.test_train import RECIPE, TOY_REWARD, _overrides
from tests.service import free_port

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402
from ray.job_submission import JobStatus, JobSubmissionClient  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cluster():
    """A head node (1 CPU, dashboard + job server) and a worker node (1 CPU)."""
    # Nodes run `codepercept-rl` from PATH, as after `ray start` in an activated virtualenv.
    old_path = os.environ["PATH"]
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{old_path}"
    head = {
        "num_cpus": 1,
        "include_dashboard": True,
        "dashboard_host": "127.0.0.1",
        "dashboard_port": free_port(),
        # The agent's default port (52365) is taken by any other Ray on this machine; the job server needs it.
        "dashboard_agent_listen_port": free_port(),
    }
    c = Cluster(initialize_head=True, head_node_args=head)
    try:
        c.add_node(num_cpus=1)
        c.wait_for_nodes()
        yield c
    finally:
        c.shutdown()
        os.environ["PATH"] = old_path


def submit(*args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    # No RAY_ADDRESS & co. from the test process; but how to authenticate to the cluster it started, yes: a Ray
    # started in this process earlier (ray.init) switched it to token auth when ~/.ray/auth_token exists.
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_") or k.startswith("RAY_AUTH_")}
    return subprocess.run(
        [sys.executable, "-m", "codepercept_rl.cli", "submit", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**env, "OMP_NUM_THREADS": "1"},
    )


def _url(cluster) -> str:
    return f"http://{cluster.webui_url}"


@pytest.mark.timeout(600)
def test_grpo_job_runs_on_two_nodes_and_exits_0(cluster, r1_files, tmp_path):  # noqa: F811
    # Split placement: the rollout worker is an actor of its own, so it and the learner rank (1 CPU each)
    # cannot share a 1-CPU node.
    overrides = _overrides(r1_files, tmp_path, "submitted", "trainer.total_training_steps=2",
                           "trainer.val_before_train=false", "trainer.test_freq=-1", "actor.ppo_mini_batch_size=2",
                           f"reward.path={TOY_REWARD}", "rollout.hybrid_engine=false", "ray.enabled=true")  # fmt: skip
    proc = submit("--address", _url(cluster), "--working-dir", str(REPO), "--job-id", "cp-grpo-ok",
                  "--env", "CP_LAUNCH_TEST=1", "--", "train", str(RECIPE), *overrides)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "job cp-grpo-ok SUCCEEDED" in proc.stderr
    assert "Running entrypoint for job cp-grpo-ok" in proc.stdout  # the job's logs were streamed

    # The run directory has both steps' metrics.
    records = [r for r in read_metrics(tmp_path / "submitted") if r["step"] > 0]
    assert [r["step"] for r in records] == [1, 2]
    assert all(math.isfinite(r["actor/pg_loss"]) and "critic/score/mean" in r for r in records)

    # The job carried the runtime env: an uploaded working dir, the launcher's env, the cluster overrides.
    client = JobSubmissionClient(_url(cluster))
    info = client.get_job_info("cp-grpo-ok")
    assert info.status == JobStatus.SUCCEEDED
    assert info.runtime_env["working_dir"].startswith("gcs://_ray_pkg_")
    env_vars = info.runtime_env["env_vars"]
    assert env_vars["OMP_NUM_THREADS"] == "1" and env_vars["CP_LAUNCH_TEST"] == "1"
    assert info.entrypoint.startswith("codepercept-rl train ")
    assert "ray.address=auto" in info.entrypoint and "ray.num_cpus=null" in info.entrypoint

    # Its actors ran on both nodes of the cluster: the learner rank on one, the rollout worker on the other.
    from ray.util.state import list_actors

    actors = list_actors(address=cluster.address, filters=[("job_id", "=", info.job_id)], detail=True)
    nodes = {a.class_name: a.node_id for a in actors}
    assert {"RankWorker", "RolloutWorker", "RewardWorker"} <= set(nodes), nodes
    assert nodes["RankWorker"] != nodes["RolloutWorker"]
    cluster_nodes = {cluster.head_node.node_id, *(n.node_id for n in cluster.worker_nodes)}
    assert {nodes["RankWorker"], nodes["RolloutWorker"]} == cluster_nodes


@pytest.mark.timeout(300)
def test_bad_override_fails_the_command_with_the_jobs_error(cluster, r1_files, tmp_path):  # noqa: F811
    # No upload: the job runs the codepercept-rl installed on the nodes.
    proc = submit("--address", _url(cluster), "--working-dir", "none", "--job-id", "cp-bad-override", "--",
                  "train", str(RECIPE), *_overrides(r1_files, tmp_path, "bad"), "rollout.temprature=0.5")  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-4000:] + proc.stderr[-4000:]
    # The job's own one-line error, streamed from the cluster ...
    assert "unknown key 'rollout.temprature'" in proc.stdout
    # ... and the launcher's verdict naming the job and how to follow it up.
    verdict = proc.stderr.strip().splitlines()[-1]
    assert "job cp-bad-override FAILED" in verdict and "--logs cp-bad-override" in verdict
    assert not (tmp_path / "bad" / "metrics.jsonl").exists()
    status = submit("--address", _url(cluster), "--status", "cp-bad-override", timeout=120)
    assert status.returncode == 0 and status.stdout.startswith("cp-bad-override FAILED")
    assert len(status.stdout.strip().splitlines()) == 1  # not the logs Ray appends to a failed job's message


@pytest.mark.timeout(300)
def test_no_wait_status_and_stop(cluster):
    # A command that runs until stopped (and is not a Ray job: nothing is appended to it).
    port = free_port()
    proc = submit("--address", _url(cluster), "--working-dir", "none", "--no-wait", "--",
                  "reward-server", "--port", str(port), "--workers", "1", timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    job_id = proc.stdout.strip()
    assert job_id.startswith("raysubmit_") and "--stop " + job_id in proc.stderr
    client = JobSubmissionClient(_url(cluster))
    assert client.get_job_info(job_id).entrypoint == f"codepercept-rl reward-server --port {port} --workers 1"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:  # the server answers on the head node: the job really runs
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                break
        except OSError:
            time.sleep(0.5)
    else:
        pytest.fail(f"the reward server never listened; logs:\n{client.get_job_logs(job_id)[-3000:]}")
    assert submit("--address", _url(cluster), "--status", job_id, timeout=120).stdout.startswith(
        f"{job_id} RUNNING"
    )
    stop = submit("--address", _url(cluster), "--stop", job_id, timeout=120)
    assert stop.returncode == 0 and stop.stdout.strip() == f"{job_id} stop requested"
    deadline = time.time() + 60
    while client.get_job_status(job_id) != JobStatus.STOPPED and time.time() < deadline:
        time.sleep(0.5)
    assert client.get_job_status(job_id) == JobStatus.STOPPED
    # Following a stopped job's logs ends at once, with exit status 1.
    assert submit("--address", _url(cluster), "--logs", job_id, timeout=120).returncode == 1
    unknown = submit("--address", _url(cluster), "--status", "no-such-job", timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.startswith(
        "codepercept-rl submit: error: job no-such-job:"
    )
    assert len(unknown.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--", "train", "r.yaml", "ray.num_cpus=4"], "ray.num_cpus=4: a job joining a cluster cannot set"),
        (["--env", "NOEQUALS", "--", "train", "r.yaml"], "--env 'NOEQUALS': expected NAME=VALUE"),
        (["--working-dir", "/no/such/dir", "--", "train", "r.yaml"], "--working-dir /no/such/dir: not a dir"),
        (["--"], "no command to submit"),
        (["--", "eval"], "cannot reach the Ray job server at http://127.0.0.1:{port}"),
    ],
)
def test_user_errors_are_one_line(args, fragment):
    port = free_port()  # nothing listens there
    proc = submit("--address", f"127.0.0.1:{port}", *args, timeout=120)
    assert proc.returncode == 2
    assert fragment.format(port=port) in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
