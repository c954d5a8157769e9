"""Sequence packing (``model.use_remove_padding``): the packed forward gives the padded forward's per-token
log-probs, entropy and gradients, on tiny Qwen2.5-VL / Qwen3-VL models with images of different sizes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from codepercept_rl.config.schema import ModelConfig
from codepercept_rl.data import S1Dataset, collate
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss
from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.learner.packing import pack
from tests.learner.s1_rows import render_png, row, write_jsonl


def _micro_batch(tmp_path: Path, processor) -> MicroBatch:
    rows = []
    for i, height in enumerate((1.0, 2.5, 0.5)):
        (tmp_path / f"{i}.png").write_bytes(render_png(height))
        rows.append(row(f"r{i}", "code", f"{i}.png", "```python\nplt.bar(['a'], [1])\n```" * (1 + 2 * i)))
    rows.append(row("text", "caption", None, "A bar chart with two bars."))  # a text-only row between images
    ds = S1Dataset([write_jsonl(tmp_path / "s1.jsonl", rows)], processor, max_length=512)
    examples = [ds[i] for i in range(len(ds))]
    return collate(examples, processor.tokenizer.pad_token_id, processor.image_token_id)


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_packed_forward_equals_padded(arch, tmp_path):
    torch.set_num_threads(1)
    cfg = LearnerConfig(model=ModelConfig(tiny_preset="nano", tiny_arch=arch), device="cpu", temperature=0.7)
    learner = Learner(cfg)
    mb = _micro_batch(tmp_path, learner.processor)
    lengths = mb.attention_mask.sum(-1)
    assert len(set(lengths.tolist())) == mb.num_sequences  # every row padded by a different amount
    packed = pack(learner.model, mb)
    assert packed.input_ids.shape == (1, int(lengths.sum()))  # no padding left
    positions = packed.inputs["position_ids"]
    assert (
        positions.shape == (4, 1, int(lengths.sum()))
        and int((positions[0, 0] == 0).sum()) == mb.num_sequences
    )

    def run(remove_padding: bool):
        learner.cfg.model = dataclasses.replace(cfg.model, use_remove_padding=remove_padding)
        with torch.no_grad():
            lp, ent = learner._forward(mb, with_entropy=True)
        learner.zero_grad()
        learner.backward([mb], sft_loss, normalizer=float(mb.loss_mask.sum()))
        grads = learner.full_gradients()
        learner.zero_grad()
        return lp, ent, grads

    lp_pad, ent_pad, g_pad = run(False)
    lp_pack, ent_pack, g_pack = run(True)
    real = mb.attention_mask.bool()
    real[:, 0] = False  # column 0 predicts nothing in either layout
    torch.testing.assert_close(lp_pack[real], lp_pad[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(ent_pack[real], ent_pad[real], rtol=0, atol=1e-5)
    assert torch.count_nonzero(lp_pack[~mb.attention_mask.bool()]) == 0  # padding holds zeros
    assert g_pad.keys() == g_pack.keys() and g_pad
    for name in g_pad:
        torch.testing.assert_close(g_pack[name], g_pad[name], rtol=1e-4, atol=1e-5, msg=name)
