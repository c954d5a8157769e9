"""FSDP2 over 2 gloo processes (torchrun) gives the same steps as plain single-process PyTorch.

The ranks load a saved model folder the way a cluster run does: rank 0 reads it, rank 1 builds a meta-device
skeleton and receives its shards by broadcast, so that path is checked by the same numbers.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from codepercept_rl.data import S1Dataset, collate
from codepercept_rl.learner.dist import free_port
from codepercept_rl.learner.optim import build_scheduler
from codepercept_rl.models.tiny import build_tiny_model
from tests.learner.parity_worker import CFG
from tests.learner.s1_rows import render_png, row, write_jsonl

STEPS, BATCH = 2, 4
WORKER = Path(__file__).with_name("parity_worker.py")


def reference_run(jsonl: Path) -> dict:
    """The same training, written out by hand: one process, no FSDP, one padded micro-batch per step."""
    torch.manual_seed(0)
    model, processor = build_tiny_model("qwen2_5_vl", "nano", seed=CFG.seed)
    model.set_attn_implementation("sdpa")
    model.train()
    matrices = [p for p in model.parameters() if p.ndim >= 2]  # decayed; biases and norms are not
    others = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": matrices, "weight_decay": CFG.optim.weight_decay},
                             {"params": others, "weight_decay": 0.0}],
                            lr=CFG.optim.lr, betas=tuple(CFG.optim.betas), foreach=True)  # fmt: skip
    sched = build_scheduler(opt, CFG.optim, CFG.total_steps)
    ds = S1Dataset([jsonl], processor, max_length=512)
    losses, norms = [], []
    for s in range(STEPS):
        mb = collate(
            ds.examples[s * BATCH : (s + 1) * BATCH],
            processor.tokenizer.pad_token_id,
            processor.image_token_id,
        )
        logits = model(**mb.model_inputs(), use_cache=False).logits
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1), mb.input_ids[:, 1:].flatten(), reduction="none")
        loss = (nll * mb.loss_mask[:, 1:].flatten()).sum() / mb.loss_mask.sum()
        loss.backward()
        norms.append(torch.nn.utils.clip_grad_norm_(model.parameters(), CFG.grad_clip).item())
        opt.step()
        opt.zero_grad()
        sched.step()
        losses.append(loss.item())
    return {"losses": losses, "grad_norms": norms, "state": model.state_dict()}


@pytest.mark.timeout(240)
def test_two_gloo_ranks_match_a_single_process_step(tmp_path: Path) -> None:
    rows = []
    for i in range(STEPS * BATCH):
        (tmp_path / f"{i}.png").write_bytes(render_png(1.0 + i, color="tab:red" if i % 2 else "tab:green"))
        # Different lengths, so ranks and micro-batches really differ from the padded reference batch.
        answer = "```python\n" + "plt.bar(['a', 'b'], [1, 2])\n" * (1 + i % 3) + "```"
        rows.append(row(f"r{i}", "code", f"{i}.png", answer))
    jsonl = write_jsonl(tmp_path / "s1.jsonl", rows)
    out = tmp_path / "rank0.pt"
    build_tiny_model("qwen2_5_vl", "nano", out_dir=tmp_path / "model", seed=CFG.seed)  # what rank 0 loads
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(free_port()),
           str(WORKER), str(jsonl), str(out), str(STEPS), str(BATCH), str(tmp_path / "model")]  # fmt: skip
    proc = subprocess.run(
        cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=200
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    fsdp = torch.load(out, weights_only=True)
    assert fsdp["world"] == 2

    ref = reference_run(jsonl)
    assert fsdp["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert fsdp["grad_norms"] == pytest.approx(ref["grad_norms"], rel=1e-4)
    assert ref["grad_norms"][0] > CFG.grad_clip  # clipping was active, so the global norm had to be right
    assert fsdp["state"].keys() == ref["state"].keys()
    for name, value in fsdp["state"].items():
        torch.testing.assert_close(value, ref["state"][name], atol=2e-5, rtol=1e-4, msg=name)
    initial = build_tiny_model("qwen2_5_vl", "nano", seed=CFG.seed)[0].state_dict()
    assert any(not torch.equal(v, initial[k]) for k, v in fsdp["state"].items())  # training did move weights
