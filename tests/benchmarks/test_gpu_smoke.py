"""benchmarks/gpu_smoke.py's flow on the CPU (``--device cpu``): data, a real-architecture model, S1 steps, then R1
steps from S1's export, and its report. The GPU figures themselves need a GPU; this keeps the script working."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_smoke.py"


@pytest.mark.timeout(600)
def test_gpu_smoke_runs_s1_then_r1_and_reports(tmp_path: Path) -> None:
    args = ["--device", "cpu", "--preset", "nano", "--rollout", "hf", "--num", "24", "--s1-steps", "2",
            "--r1-steps", "2", "--response-length", "16", "--out", str(tmp_path)]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=580)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["arch"] == "qwen3_vl" and report["parameters"] > 0
    assert report["s1"]["steps"] == 2 and report["s1"]["tokens_per_s"] > 0
    assert report["r1"]["steps"] == 2 and report["r1"]["tokens_per_s"] > 0
    for phase in ("gen", "reward", "update_actor", "update_weights"):
        assert report["r1"][f"timing_s/{phase}"] >= 0
    assert report["s1"]["mfu"] is None  # no peak FLOP/s to divide by on a CPU
    assert (tmp_path / "runs" / "r1" / "hf" / "config.json").is_file()
