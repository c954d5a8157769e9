"""benchmarks/hf_decode.py runs end to end on a nano model: its three engines, the check that the lean loop with
the ``"hf"`` sampler draws generate's tokens, and both ratio lines. The figures themselves are the benchmark's."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "hf_decode.py"


@pytest.mark.timeout(300)
def test_hf_decode_times_three_engines_and_prints_both_ratios() -> None:
    args = ["--preset", "nano", "--prompts", "2", "--n", "2", "--max-tokens", "12", "--micro-batch", "4",
            "--top-p", "0.9", "--repeats", "2"]  # fmt: skip
    proc = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=280)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "tokens drawn by lean and generate identical in every call: True" in out
    for engine in ("lean", "generate", "lean-fast"):
        assert re.search(rf"^{engine}\s+\S+\s+\d+\.\d+", out, re.M), f"no row for {engine}:\n{out}"
    assert float(re.search(r"^lean_decode_ratio_vs_generate=(\d+\.\d+)$", out, re.M).group(1)) > 0
    assert float(re.search(r"^fast_sampler_ratio_vs_hf=(\d+\.\d+)$", out, re.M).group(1)) > 0
