"""GRPO end to end on CPU: the tiny model, real reward pool, real learner; in-process and through Ray actors;
kill -9 mid-run and resume reproduces the uninterrupted run."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.jobs.train import cleanup, grpo_step, setup, validate
from codepercept_rl.tracking import read_metrics

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "r1_tiny_cpu.yaml"
TOY_REWARD = f"{Path(__file__).resolve().parent / 'toy_reward.py'}:digit_share"


def _overrides(r1_files, run_root, name, *extra):
    train, val = r1_files
    return [
        f"trainer.default_local_dir={run_root}",
        f"trainer.experiment_name={name}",
        "model.path=null",
        "model.tiny_preset=nano",
        f"data.train_files=[{train}]",
        f"data.val_files=[{val}]",
        "data.train_batch_size=2",
        "actor.ppo_mini_batch_size=1",  # two optimizer steps per GRPO step (overridden below)
        "actor.optim.lr=1e-3",
        "rollout.n=4",
        "rollout.response_length=24",
        "rollout.micro_batch_size=4",
        "algorithm.filter_groups=false",
        "reward.num_workers=1",
        "tracking.backends=[jsonl]",
        "trainer.log_val_generations=1",
        *extra,
    ]


VERL_KEYS = [
    "actor/pg_loss",
    "actor/ppo_kl",
    "actor/entropy",
    "actor/pg_clipfrac",
    "actor/grad_norm",
    "actor/lr",
    "critic/score/mean",
    "critic/advantages/mean",
    "response_length/mean",
    "timing_s/gen",
    "timing_s/reward",
    "timing_s/old_log_prob",
    "timing_s/update_actor",
    "timing_s/update_weights",
    "timing_s/step",
    "perf/throughput",
]


def test_grpo_in_process_steps_with_kl_and_dynamic_sampling(r1_files, tmp_path):
    cfg = load_config(
        RECIPE,
        _overrides(
            r1_files, tmp_path, "local", "ray.enabled=false", "trainer.total_training_steps=2",
            "actor.use_kl_loss=true", "actor.kl_loss_coef=0.01", "algorithm.filter_groups=true",
            "algorithm.max_num_gen_batches=2", "trainer.val_before_train=false", "trainer.test_freq=2",
            f"reward.path={TOY_REWARD}",
        ),
        schema=JobConfig,
    )  # fmt: skip
    run = setup(cfg)
    try:
        before = run.learners.call("state_dict_for_rollout")[0]
        m = grpo_step(run)
        run.step += 1
        for key in VERL_KEYS + ["actor/kl_loss", "timing_s/ref", "reward/digits/mean"]:
            assert key in m, key
            assert math.isfinite(m[key]), key
        # Two mini-batches: the first is on-policy (ratio 1), the second sees the first's update.
        assert m["actor/kl_loss"] >= 0.0
        assert (
            m["batch/num_prompts"] == 2
            and sum(v for k, v in m.items() if k.startswith("reward/status/")) == 8
        )
        assert abs(m["critic/advantages/mean"]) < 1e-5  # group-normalised
        assert 0.0 < m["actor/entropy"] < math.log(4096)  # nats; the nano vocabulary is at most 4096
        after = run.learners.call("state_dict_for_rollout")[0]
        assert any(not torch.equal(before[k], after[k]) for k in before)  # the policy moved
        # ... and the rollout worker generates with the new weights.
        pushed = run.rollout.call("stats")
        # A later round of dynamic sampling samples only the prompts still missing: every prompt sampled was kept
        # or filtered, each with rollout.n = 4 completions.
        assert m["batch/num_gen_batches"] >= 1
        assert pushed["generated_sequences"] == 4 * (m["batch/num_prompts"] + m["batch/filtered_groups"])
        val = validate(run)
        assert 0.0 <= val["val/exec_rate"] <= 1.0 and "val/digits/mean" in val
        rows = (tmp_path / "local" / "tables" / "val" / "generations" / "rows.jsonl").read_text().splitlines()
        assert len(rows) == 1
    finally:
        cleanup(run)


def _run_cli(args, env=None, timeout=600):
    return subprocess.Popen(
        [sys.executable, "-m", "codepercept_rl.cli", "train", str(RECIPE), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, **(env or {})},
    )


def _step_metrics(run_dir):
    drop = ("timing_s/", "perf/throughput", "time")
    return {
        r["step"]: {k: v for k, v in r.items() if not k.startswith(drop)}
        for r in read_metrics(run_dir)
        if r["step"] > 0
    }


GATED_REWARD = """
import pathlib, sys, time
sys.path.insert(0, {tests!r})
from grpo.toy_reward import digit_share as _digit_share

CHECKPOINT = pathlib.Path({checkpoint!r})
BLOCKED, RELEASE = pathlib.Path({blocked!r}), pathlib.Path({release!r})

def digit_share(samples, backend):
    # Once the gate's checkpoint is complete, hold the next scoring until released: the run is then
    # provably mid-step, after that checkpoint, when the test kills it.
    if CHECKPOINT.is_file() and not RELEASE.exists():
        BLOCKED.touch()
        while not RELEASE.exists():
            time.sleep(0.05)
    return _digit_share(samples, backend)
"""


def _gated_reward(tmp_path, run_dir, step):
    """A copy of the toy reward that blocks once ``run_dir``'s checkpoint of ``step`` is complete (same scores)."""
    gate = {"blocked": str(tmp_path / "gate.blocked"), "release": str(tmp_path / "gate.release")}
    source = GATED_REWARD.format(tests=str(Path(__file__).resolve().parents[1]), checkpoint=str(
        run_dir / "checkpoints" / f"step_{step:06d}" / "meta.json"), **gate)  # fmt: skip
    path = tmp_path / "gated_reward.py"
    path.write_text(source)
    return f"{path}:digit_share", Path(gate["blocked"]), Path(gate["release"])


@pytest.mark.timeout(900)
def test_ray_actors_kill9_resume_matches_uninterrupted(r1_files, tmp_path):
    # One optimizer step per GRPO step, so checkpoint step_00000N is GRPO step N.
    steps = ["actor.ppo_mini_batch_size=2", "trainer.total_training_steps=4", "trainer.save_freq=1",
             "trainer.test_freq=-1", "trainer.val_before_train=false", "ray.enabled=true", "ray.num_cpus=2"]  # fmt: skip
    # Uninterrupted reference run.
    ref = _run_cli(_overrides(r1_files, tmp_path, "full", *steps, f"reward.path={TOY_REWARD}"))
    out, _ = ref.communicate(timeout=600)
    assert ref.returncode == 0, out[-4000:]
    for record in read_metrics(tmp_path / "full")[1:]:
        for key in [*VERL_KEYS, "reward/render/mean"]:
            assert key in record, (record["step"], key)
    assert "val/score/mean" in read_metrics(tmp_path / "full")[-1]
    full = _step_metrics(tmp_path / "full")
    assert sorted(full) == [1, 2, 3, 4]

    # Same run, killed with SIGKILL in step 3 (its scoring held by the gated reward, so step 2's checkpoint is
    # complete and no later one exists), then resumed. No timing is involved: the run cannot end on its own.
    reward, blocked, release = _gated_reward(tmp_path, tmp_path / "killed", step=2)
    args = _overrides(r1_files, tmp_path, "killed", *steps, f"reward.path={reward}")
    with open(tmp_path / "killed.log", "w") as log:
        killed = subprocess.Popen([sys.executable, "-m", "codepercept_rl.cli", "train", str(RECIPE), *args],
                                  stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
        while not blocked.exists():
            assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-4000:]
            time.sleep(0.1)
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    assert sorted(p.name for p in (tmp_path / "killed" / "checkpoints").glob("step_*")) == [
        "step_000001",
        "step_000002",
    ]
    release.touch()
    resumed = _run_cli(args + ["--resume"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out[-4000:]
    again = _step_metrics(tmp_path / "killed")
    assert sorted(again) == [1, 2, 3, 4]
    for step in (3, 4):
        assert again[step].keys() == full[step].keys()
        for key, value in full[step].items():
            assert again[step][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (step, key)
    assert json.loads((tmp_path / "killed" / "config.json").read_text())["rollout"]["n"] == 4


def ray_config(r1_files, run_root, name, *extra):
    """A two-step Ray run with the toy reward (shared with the placement test)."""
    overrides = _overrides(r1_files, run_root, name, "ray.enabled=true", "trainer.total_training_steps=2",
                           "trainer.val_before_train=false", f"reward.path={TOY_REWARD}", *extra)  # fmt: skip
    return load_config(RECIPE, overrides, schema=JobConfig)


@pytest.mark.timeout(600)
def test_reward_worker_killed_mid_run_is_replaced(r1_files, tmp_path):
    ray = pytest.importorskip("ray")
    cfg = ray_config(r1_files, tmp_path, "restart", "ray.num_cpus=2")
    run = setup(cfg)
    try:
        first = grpo_step(run)
        run.step += 1
        assert first["reward/worker_restarts"] == 0
        ray.kill(run.reward._handle, no_restart=True)  # the reward actor's process dies
        second = grpo_step(run)  # the step goes on with a replacement
        assert second["reward/worker_restarts"] == 1
        assert sum(v for k, v in second.items() if k.startswith("reward/status/")) == 8
        assert "actor/pg_loss" in second
    finally:
        cleanup(run)
        ray.shutdown()
