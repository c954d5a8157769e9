"""recipes/slurm for real: a two-node Slurm cluster on this machine and the real ``s1_r1.sbatch`` through it.

The set-up starts Debian's slurm-wlm from a temp dir (munged, slurmctld, and two slurmd, ``n1`` and ``n2``, each
with one GPU gres backed by /dev/null, so the script's GPU path runs; the jobs themselves run on CPU). The job
starts Ray across both nodes, runs S1 (two ranks, one per GPU) then R1 on the tiny model; it is cancelled in the
middle of R1 and resubmitted: S1 is skipped, R1 resumes from its checkpoint and finishes. After each job no
process of it is left (found by a marker in their environment), Ray included. A job with a mistyped override
fails in seconds, before Ray starts.

Needs root (slurmd runs job steps as the submitting user from its own spool) and slurm-wlm, which the set-up
installs with apt-get when it is missing; otherwise the test skips and says why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from codepercept_rl.learner.dist import free_port
from codepercept_rl.tracking import read_metrics

REPO = Path(__file__).resolve().parents[2]
SBATCH = REPO / "recipes" / "slurm" / "s1_r1.sbatch"
RAY_CLUSTER = REPO / "recipes" / "slurm" / "ray_cluster.sh"
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING")
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "scancel", "scontrol", "sinfo", "squeue", "srun")


def test_scripts_parse_and_pass_shellcheck() -> None:
    for script in (SBATCH, RAY_CLUSTER):
        done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    # shellcheck is a linter, not a dependency (`apt-get install shellcheck` runs this part).
    if shutil.which("shellcheck"):
        done = subprocess.run(["shellcheck", "-x", str(SBATCH), str(RAY_CLUSTER)], cwd=REPO, capture_output=True,
                              text=True)  # fmt: skip
        assert done.returncode == 0, done.stdout


# ----------------------------------------------------------------------------------------------------------------
# the cluster


@dataclass
class Slurm:
    """A running two-node cluster: ``env`` points the client commands at its slurm.conf."""

    root: Path
    env: dict[str, str]

    def run(self, *args: str, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
        kwargs.setdefault("timeout", 60)
        done = subprocess.run(args, env=kwargs.pop("env", self.env), capture_output=True, text=True, **kwargs)
        if check and done.returncode:
            raise AssertionError(f"{' '.join(args)}: exit {done.returncode}: {done.stderr.strip()}")
        return done

    def job(self, job_id: str) -> dict[str, str]:
        """The job's fields from ``scontrol show job`` (JobState, ExitCode, ...)."""
        line = self.run("scontrol", "show", "job", "-o", job_id).stdout
        return dict(re.findall(r"(\w+)=(\S*)", line))

    def wait(self, job_id: str, timeout: float) -> dict[str, str]:
        """Polls the job until it has ended (faster than ``sbatch --wait``); returns its fields."""
        deadline = time.monotonic() + timeout
        while (fields := self.job(job_id))["JobState"] in ACTIVE and time.monotonic() < deadline:
            time.sleep(0.5)
        return fields


def _install_reason() -> str | None:
    """None once the slurm-wlm commands are here (installed with apt-get when root), else why not."""
    if all(shutil.which(d) for d in DAEMONS):
        return None
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        return f"slurm-wlm is not installed ({', '.join(d for d in DAEMONS if not shutil.which(d))} missing)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-qq", "slurm-wlm"]
    done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode:  # the package lists may be missing or stale
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        done = subprocess.run(install, env=env, capture_output=True, text=True, timeout=900)
    if done.returncode or not all(shutil.which(d) for d in DAEMONS):
        return f"apt-get install slurm-wlm failed: {done.stderr.strip()[-300:]}"
    return None


def _slurm_conf(root: Path, host: str) -> str:
    nodes = "".join(
        f"NodeName=n{i} NodeHostname={host} NodeAddr=127.0.0.1 Port={free_port()} CPUs=2 RealMemory=4000 "
        "Gres=gpu:1 State=UNKNOWN\n"
        for i in (1, 2)
    )
    return f"""ClusterName=cpr
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={free_port()}
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/socket
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool/%n
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd-%n.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd-%n.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
ReturnToService=2
KillWait=10
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
GresTypes=gpu
{nodes}PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP
"""


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in reversed(procs):
        proc.terminate()
    for proc in reversed(procs):
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def slurm() -> Iterator[Slurm]:
    if os.geteuid() != 0:
        pytest.skip("needs root: slurmd runs as root (it starts each job step as the submitting user)")
    reason = _install_reason()
    if reason:
        pytest.skip(reason)
    # Short paths under /tmp: munge's and Ray's socket paths must stay under 107 characters.
    root = Path(tempfile.mkdtemp(prefix="cpr-slurm-", dir="/tmp"))
    for sub in ("state", "spool/n1", "spool/n2", "log"):
        (root / sub).mkdir(parents=True)
    (root / "munge").mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, host))
    (root / "gres.conf").write_text("NodeName=n[1-2] Name=gpu File=/dev/null\n")  # a device file, no device
    # Client commands and daemons read this conf only: nothing of a surrounding Slurm job leaks in.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "RAY_"))}
    env["SLURM_CONF"] = str(conf)
    log = (root / "log" / "daemons.out").open("w")
    munge = [f"--key-file={key}", f"--socket={root}/munge/socket", f"--pid-file={root}/munge/munged.pid",
             f"--log-file={root}/log/munged.log", f"--seed-file={root}/munge/seed"]  # fmt: skip
    commands = [["munged", "--foreground", "--force", *munge], ["slurmctld", "-D", "-i", "-f", str(conf)],
                ["slurmd", "-D", "-N", "n1", "-f", str(conf)], ["slurmd", "-D", "-N", "n2", "-f", str(conf)]]  # fmt: skip
    procs: list[subprocess.Popen] = []
    cluster = Slurm(root, env)
    try:
        for command in commands:
            procs.append(subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT))
            deadline = time.monotonic() + 10
            while (
                command[0] == "munged"
                and not (root / "munge" / "socket").exists()
                and time.monotonic() < deadline
            ):
                time.sleep(0.1)  # the daemons authenticate through munged from their first message
        deadline = time.monotonic() + 60
        states = ""
        while time.monotonic() < deadline:
            if any(p.poll() is not None for p in procs):
                break
            states = cluster.run("sinfo", "-h", "-N", "-o", "%N %t", check=False).stdout.split()
            if states == ["n1", "idle", "n2", "idle"]:
                break
            time.sleep(0.5)
        else:
            states = "timeout"
        if states != ["n1", "idle", "n2", "idle"]:
            _stop(procs)
            tail = (root / "log" / "daemons.out").read_text()[-1500:]
            pytest.skip(f"the Slurm daemons did not come up here (nodes: {states}); their output:\n{tail}")
        yield cluster
    finally:
        _stop(procs)
        log.close()
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# the job


def _tiny_dataset(root: Path) -> Path:
    """A data_tools-shaped dataset dir: exports/s1/{train,validation}.jsonl and exports/r1/*.parquet."""
    from reward_servers.sandbox import Sandbox, SandboxConfig
    from tests.grpo.conftest import write_r1_parquet
    from tests.learner.s1_rows import render_png, row, write_jsonl

    s1, r1 = root / "exports" / "s1", root / "exports" / "r1"
    s1.mkdir(parents=True)
    r1.mkdir(parents=True)
    rows = []
    for i in range(6):
        (s1 / f"{i}.png").write_bytes(render_png(1.0 + i))
        code = f"```python\nimport matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, {1 + i}])\n```"
        rows.append(row(f"r{i}", "code", f"{i}.png", code) if i % 2 == 0 else
                    row(f"r{i}", "caption", f"{i}.png", f"Two bars, the second {1 + i} high."))  # fmt: skip
    write_jsonl(s1 / "train.jsonl", rows[:4])
    write_jsonl(s1 / "validation.jsonl", rows[4:])
    with Sandbox(SandboxConfig(timeout_s=20)) as sandbox:
        write_r1_parquet(r1 / "train.parquet", range(0, 2), sandbox)
        write_r1_parquet(r1 / "validation.parquet", range(100, 101), sandbox)
    return root


# Two ranks for S1 (2 nodes x 1 GPU), R1 with 2 learner ranks; the shortest lengths that still run real jobs.
S1_EXTRA = ("model.tiny_preset=nano trainer.total_training_steps=2 data.train_batch_size=2 "
            "actor.ppo_micro_batch_size_per_device=1 sft.gen_num_samples=0 trainer.test_freq=-1")  # fmt: skip
R1_EXTRA = ("data.train_batch_size=2 actor.ppo_mini_batch_size=2 rollout.n=2 rollout.response_length=16 "
            "rollout.micro_batch_size=4 algorithm.filter_groups=false reward.num_workers=1 "
            "trainer.val_before_train=false trainer.log_val_generations=0 trainer.log_train_generations=0")  # fmt: skip


def _leftovers(mark: str) -> list[str]:
    """Command lines of the processes that carry ``mark`` in their environment (the job's, Ray's included)."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if mark.encode() in (proc / "environ").read_bytes():
                found.append((proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _assert_nothing_left(mark: str, log: str) -> None:
    deadline = time.monotonic() + 30  # steps end after KillWait at the latest
    while (left := _leftovers(mark)) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left, f"processes of the job survived it: {left}\n{log[-3000:]}"


def _job_env(slurm: Slurm, mark: str, data: Path, out: Path, ray_tmp: Path) -> dict[str, str]:
    activate = Path(sys.prefix) / "bin" / "activate"
    return {
        **slurm.env,
        "CPR_TEST_MARK": mark,
        "PATH": f"{Path(sys.executable).parent}:{slurm.env['PATH']}",
        "VENV_ACTIVATE": str(activate) if activate.is_file() else "",
        "DATA_DIR": str(data),
        "OUT_DIR": str(out),
        "RECIPE_S1": "recipes/s1_tiny_cpu.yaml",
        "RECIPE_R1": "recipes/r1_tiny_cpu.yaml",
        "EXTRA": "tracking.backends=[jsonl] trainer.save_freq=1",
        "S1_EXTRA": S1_EXTRA,
        "R1_EXTRA": R1_EXTRA,
        "RAY_PORT": str(free_port()),
        "RAY_CLUSTER_TMPDIR": str(ray_tmp),
        "RAY_START_ARGS": "--object-store-memory=100000000",
        "OMP_NUM_THREADS": "1",
    }


def _submit(slurm: Slurm, env: dict[str, str], out_dir: Path) -> tuple[str, Path]:
    """Submits s1_r1.sbatch from the repository root (as a user would) on both nodes; returns (job id, log)."""
    command = ["sbatch", "--parsable", "--nodes=2", "--gpus-per-node=1", "--cpus-per-task=2", "--time=15",
               f"--output={out_dir}/job-%j.out", str(SBATCH)]  # fmt: skip
    job = slurm.run(*command, cwd=REPO, env=env).stdout.strip().split(";")[0]
    return job, out_dir / f"job-{job}.out"


def test_a_bad_override_fails_the_job_before_ray_starts(slurm: Slurm, tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("s1/train.jsonl", "r1/train.parquet"):  # only their presence is checked before the config
        (data / "exports" / name).parent.mkdir(parents=True, exist_ok=True)
        (data / "exports" / name).touch()
    mark = f"cpr-slurm-test-{uuid.uuid4().hex}"
    env = _job_env(slurm, mark, data, tmp_path / "runs", tmp_path / "ray")
    env["R1_EXTRA"] += " rollout.temprature=0.5"
    job, log_path = _submit(slurm, env, tmp_path)
    fields = slurm.wait(job, timeout=120)
    log = log_path.read_text()
    assert (fields["JobState"], fields["ExitCode"]) == ("FAILED", "2:0"), (fields, log)
    assert "unknown key 'rollout.temprature'" in log and "R1's config is invalid" in log, log
    assert "ray_cluster" not in log and not (tmp_path / "runs").exists(), log  # no Ray, no run dir
    _assert_nothing_left(mark, log)


@pytest.mark.timeout(900)
def test_sbatch_runs_s1_then_r1_on_a_two_node_ray_cluster_and_resumes_after_scancel(
    slurm: Slurm, tmp_path: Path
) -> None:
    data = _tiny_dataset(tmp_path / "data")
    out = tmp_path / "runs"
    mark = f"cpr-slurm-test-{uuid.uuid4().hex}"
    ray_tmp = Path(tempfile.mkdtemp(prefix="cpr-ray-", dir="/tmp"))  # short: Ray's socket paths
    env = _job_env(slurm, mark, data, out, ray_tmp)
    # Far more steps than it will get to: the job is cancelled mid-R1; the resubmission finishes at step 2.
    env["R1_EXTRA"] = R1_EXTRA + " trainer.total_training_steps=1000"
    s1_run, r1_run = out / "s1", out / "r1"
    try:
        # 1. S1, then R1 until its first checkpoint; scancel.
        job, log_path = _submit(slurm, env, tmp_path)
        first_ckpt = r1_run / "checkpoints" / "step_000001" / "meta.json"
        deadline = time.monotonic() + 480
        while not first_ckpt.is_file() and time.monotonic() < deadline:
            state = slurm.job(job)["JobState"]
            assert state in ACTIVE, (
                f"job {job} {state} before R1's first checkpoint:\n{log_path.read_text()[-4000:]}"
            )
            time.sleep(0.5)
        assert first_ckpt.is_file(), log_path.read_text()[-4000:]
        slurm.run("scancel", job)
        fields = slurm.wait(job, timeout=60)
        log = log_path.read_text()
        assert fields["JobState"] == "CANCELLED", (fields, log[-4000:])
        _assert_nothing_left(mark, log)

        # Ray ran as a two-node cluster (head on n1, a worker on n2) that both stages joined as clients.
        assert "head on n1" in log and "worker on n2" in log, log[-4000:]
        assert log.count("Ray runtime started.") == 2, log[-4000:]
        assert "ray cluster: 2/2 nodes alive" in log and "CPU 4, GPU 2" in log, log[-4000:]
        assert log.count("Connecting to existing Ray cluster") >= 2, log[-4000:]  # S1's driver, then R1's
        assert "rank 1/2" in log, log[-4000:]  # S1 ran two ranks
        # scancel reached the traps (whether Ray's steps end before Slurm's SIGKILL depends on the load here; that
        # nothing outlived the job is checked above).
        assert "signal received" in log and "stopping Ray on 2 node(s)" in log, log[-4000:]
        assert (s1_run / "hf" / "model.safetensors").is_file() and (s1_run / "hf.done").is_file()
        assert [r["step"] for r in read_metrics(s1_run) if r["step"] > 0] == [1, 2]
        s1_cfg = json.loads((s1_run / "config.json").read_text())
        assert s1_cfg["sft"]["num_processes"] == 2 and s1_cfg["ray"]["address"] == "auto"
        r1_cfg = json.loads((r1_run / "config.json").read_text())
        assert r1_cfg["trainer"]["nnodes"] == 2 and r1_cfg["trainer"]["n_gpus_per_node"] == 1
        assert r1_cfg["ray"]["address"] == "auto" and r1_cfg["model"]["path"] == str(s1_run / "hf")
        done_before = max(r["step"] for r in read_metrics(r1_run))
        assert done_before >= 1

        # 2. The same job again (with a 2-step budget): S1 is skipped, R1 resumes from its checkpoint.
        env["R1_EXTRA"] = R1_EXTRA + " trainer.total_training_steps=2"
        job, log_path = _submit(slurm, env, tmp_path)
        fields = slurm.wait(job, timeout=480)
        log = log_path.read_text()
        assert (fields["JobState"], fields["ExitCode"]) == ("COMPLETED", "0:0"), (fields, log[-4000:])
        assert "=== S1: skipped, already finished" in log and "=== S1: codepercept-rl" not in log, log[-4000:]
        assert re.search(r"resumed from \S+/r1/checkpoints/step_\d+ at step \d+", log), log[-4000:]
        steps = sorted({r["step"] for r in read_metrics(r1_run)})
        assert steps[:2] == [1, 2] and steps[-1] == max(2, done_before), steps
        assert "actor/pg_loss" in read_metrics(r1_run)[0]
        assert (r1_run / "hf" / "model.safetensors").is_file()
        assert "Ray stopped" in log, log[-4000:]
        _assert_nothing_left(mark, log)
    finally:
        for job_id in slurm.run("squeue", "-h", "-o", "%i", check=False).stdout.split():
            slurm.run("scancel", job_id, check=False)
        shutil.rmtree(ray_tmp, ignore_errors=True)
