"""`codepercept-rl eval --model` end to end with the tiny (nano) Qwen2.5-VL and HF generate, few tokens."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codepercept_rl.eval.results import read_results
from codepercept_rl.jobs.eval import main
from codepercept_rl.models import build_tiny_model
from tests.eval.conftest import Bench

MAX_TOKENS = 12


def test_tiny_model_eval_end_to_end(bench: Bench, reward_url: str, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    model_dir = tmp_path / "nano"
    build_tiny_model("qwen2_5_vl", "nano", out_dir=model_dir, seed=0)
    out = tmp_path / "out"
    argv = [
        "--model", str(model_dir), "--bench", str(bench.dir), "--out", str(out), "--limit", "3",
        "--max-tokens", str(MAX_TOKENS), "--batch-size", "2", "--reward-url", reward_url, "--n-boot", "50",
    ]  # fmt: skip
    assert main(argv) == 0
    records = read_results(out)
    assert set(records) == {"good1", "good2", "broken"}
    for rec in records.values():
        gen = rec["generation"]
        assert isinstance(gen["text"], str) and gen["error"] is None
        assert 1 <= gen["tokens"] <= MAX_TOKENS and gen["finish_reason"] in ("stop", "length")
        # A random-weight model writes no fenced code: every item is a counted 0, not dropped.
        assert rec["status"] == "no_code" and rec["scores"]["exec"] == 0.0 and rec["scores"]["code"] == 0.0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["n"] == 3 and summary["overall"]["scores"]["final_det"] == 0.0
    assert summary["meta"]["generator"] == "HFRolloutEngine"
    # Greedy decoding is deterministic: a fresh run directory gets the same answers.
    out2 = tmp_path / "out2"
    assert main([*argv[:5], str(out2), *argv[6:]]) == 0
    again = read_results(out2)
    assert {k: r["generation"]["text"] for k, r in again.items()} == {
        k: r["generation"]["text"] for k, r in records.items()
    }
