"""The README's main job, shrunk: data -> S1 -> R1 (Ray actors, sandboxed reward pool) -> eval -> report.

Real everything (sandbox renders, SFT, GRPO through Ray, greedy eval, reward scoring), with a nano model and a
handful of steps so it fits in CI; the figures the issue targets come from the full-size run (README).
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

FAST = [
    "--num", "30", "--rl-num", "8", "--families", "shapes", "bars", "--test-fraction", "0.2", "--preset", "nano",
    "--s1-epochs", "1", "--r1-steps", "1", "--max-tokens", "24", "--samples", "2", "--no-wandb",
    "--s1-override", "sft.gen_num_samples=2", "--s1-override", "sft.gen_max_new_tokens=16", "--s1-override", "tracking.backends=[jsonl]",
    "--r1-override", "rollout.n=2", "--r1-override", "rollout.response_length=24",
    "--r1-override", "data.train_batch_size=2", "--r1-override", "actor.ppo_mini_batch_size=2",
    "--r1-override", "algorithm.filter_groups=false", "--r1-override", "trainer.val_before_train=false",
    "--r1-override", "reward.num_workers=1", "--r1-override", "tracking.backends=[jsonl]",
]  # fmt: skip


def _run(out: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "codepercept_rl.cli", "quickstart", "--out", str(out), *FAST]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)


def _check_ci(mean: float, ci: list[float]) -> None:
    assert len(ci) == 2 and ci[0] <= mean + 1e-9 and mean <= ci[1] + 1e-9, (mean, ci)


@pytest.mark.timeout(1200)
def test_quickstart_end_to_end_and_resume(tmp_path: Path) -> None:
    out = tmp_path / "qs"
    first = _run(out)
    assert first.returncode == 0, first.stderr[-4000:]

    report = json.loads((out / "report.json").read_text())
    # The headline (avg@2 sampled answers) and the greedy protocol, each with every stage.
    for block in (report, report["greedy"]):
        assert set(block["stages"]) == {"base", "s1", "r1"}
        for name, row in block["stages"].items():
            assert {"exec_rate", "reward_mean", "reward_ci95", "components"} <= set(row), name
            assert 0.0 <= row["exec_rate"] <= 1.0
            # R1's reward (the tiny recipe's: codepercept, four unit-weight terms in [0, 1])
            assert 0.0 <= row["reward_mean"] <= 4.0
            _check_ci(row["reward_mean"], row["reward_ci95"])
            assert {"format", "exec", "code", "image"} <= set(row["components"])
            assert all(0.0 <= row["components"][k] <= 1.0 for k in ("format", "exec", "code", "image"))
            assert row["exec_rate"] == pytest.approx(row["components"]["exec"])
        _check_ci(block["r1_minus_s1"]["reward_mean"], block["r1_minus_s1"]["ci95"])
    assert report["details"]["protocol"].startswith("avg@2")
    diff = report["r1_minus_s1"]
    _check_ci(diff["reward_mean"], diff["ci95"])
    expected = report["stages"]["r1"]["reward_mean"] - report["stages"]["s1"]["reward_mean"]
    assert diff["reward_mean"] == pytest.approx(expected, abs=1e-9)  # same items on both sides
    assert report["seconds"] > 0
    # The phase table: every stage timed, R1's GRPO phases summed from its metrics, in report.md too.
    phases = report["phases"]
    assert {"data", "s1", "s1/train_steps", "r1", "r1/gen", "r1/update_actor", "eval_base", "eval_s1",
            "eval_r1", "eval_r1_sampled", "report"} <= set(phases), phases  # fmt: skip
    assert all(v >= 0 for v in phases.values()) and 0 < phases["r1/gen"] < phases["r1"] < report["seconds"]
    assert phases["s1/train_steps"] < phases["s1"]
    assert "## Where the time went" in (out / "report.md").read_text()
    n_items = report["details"]["n_items"]
    assert n_items["base"] == n_items["s1"] == n_items["r1"] >= 3

    # Real training ran: S1 and R1 logged their steps; R1 went through the reward pool.
    r1_metrics = [
        json.loads(line) for line in (out / "runs" / "r1" / "metrics.jsonl").read_text().splitlines()
    ]
    assert any(r.get("step") == 1 and "critic/score/mean" in r for r in r1_metrics)
    assert (out / "runs" / "s1" / "hf" / "config.json").is_file()
    # Sample tables with images: S1's held-out answers and R1's rollouts, each with its target image.
    for stage, table in (("s1", "val_generations"), ("r1", "train/generations")):
        rows = [json.loads(line) for line in (out / "runs" / stage / "tables" / table / "rows.jsonl").open()]
        target = rows[-1]["columns"].index("target")
        assert (out / "runs" / stage / rows[-1]["rows"][0][target]["image"]).is_file()
    assert (out / "runs" / "r1" / "hf" / "config.json").is_file()
    # R1 trained on the rl split: images S1 never trained on, none of them held out for the evaluation.
    exports = out / "data" / "exports"
    splits = json.loads((exports / "splits.json").read_text())
    assert list(splits.values()).count("rl") >= 8
    r1_config = json.loads((out / "runs" / "r1" / "config.json").read_text())
    assert r1_config["data"]["train_files"] == [str(exports / "r1" / "rl.parquet")]
    s1_items = {json.loads(line)["id"].rsplit("-", 1)[0] for line in (exports / "s1" / "train.jsonl").open()}
    assert s1_items and all(splits[i] == "train" for i in s1_items)

    # Report, gallery (every image it links exists), curves.
    md = (out / "report.md").read_text()
    assert "R1 - S1" in md and "| s1 |" in md
    gallery = (out / "gallery.html").read_text()
    links = re.findall(r'src="([^"]+)"', gallery)
    assert links and all((out / link).is_file() for link in links)
    assert any((out / "plots" / "s1").glob("*.png")) and any((out / "plots" / "r1").glob("*.png"))
    for stage in ("base", "s1", "r1"):
        assert (out / "eval" / stage / "gallery.html").is_file()
        rows = [json.loads(line) for line in (out / "eval" / f"{stage}-sampled" / "answers.jsonl").open()]
        assert len(rows) == n_items[stage]
        # every answer scored with R1's reward (base while S1 trained and S1 while R1 trained, in the child process)
        scores = json.loads((out / "eval" / f"{stage}-scores.json").read_text())
        assert len(scores["greedy"]) == n_items[stage] and len(scores["sampled"]) == len(rows[0]["answers"])
        # --samples 2 answers per item (the untrained model: one), each its own draw
        assert {len(r["answers"]) for r in rows} == ({1} if stage == "base" else {2})
    scores_r1 = json.loads((out / "eval" / "r1-scores.json").read_text())
    s1_rows = [json.loads(line) for line in (out / "eval" / "s1-sampled" / "answers.jsonl").open()]
    assert len({a for r in s1_rows for a in r["answers"]}) > len(s1_rows)

    # Rerunning resumes: every stage is found done, and the report is the same. R1's scores are removed first:
    # the rerun scores the saved answers afresh, so the same report also shows that scoring while sampling put
    # every score under its own answer.
    (out / "eval" / "r1-scores.json").unlink()
    again = _run(out)
    assert again.returncode == 0, again.stderr[-4000:]
    for stage in ("data", "s1", "r1"):
        assert re.search(rf"{stage}: .* exists, skipped", again.stderr), stage
    assert re.search(r"eval r1 sampled: .* exists, scoring it", again.stderr)
    assert json.loads((out / "eval" / "r1-scores.json").read_text()) == scores_r1
    second = json.loads((out / "report.json").read_text())
    for name in report["stages"]:
        assert math.isclose(second["stages"][name]["reward_mean"], report["stages"][name]["reward_mean"])
