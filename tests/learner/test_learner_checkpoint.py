"""The learner in one process (a 1-rank gloo group): exact resume, atomic checkpoints, HF export."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from transformers import AutoModelForImageTextToText

from codepercept_rl.config.schema import ModelConfig, OptimConfig
from codepercept_rl.data import S1Dataset, collate
from codepercept_rl.learner import Learner, LearnerConfig, MicroBatch, sft_loss
from codepercept_rl.learner.checkpoint import latest_checkpoint, list_checkpoints
from codepercept_rl.models.tiny import load_model
from tests.learner.s1_rows import render_png, row, write_jsonl

CFG = LearnerConfig(
    model=ModelConfig(tiny_preset="nano"),
    optim=OptimConfig(lr=3e-3, lr_warmup_steps_ratio=0.25, warmup_style="cosine", min_lr_ratio=0.1),
    total_steps=6,
    grad_clip=0.5,
)


@pytest.fixture(scope="module")
def batches(tmp_path_factory) -> list[list[MicroBatch]]:
    """Three steps of two micro-batches each, from real rendered images."""
    torch.set_num_threads(1)
    folder = tmp_path_factory.mktemp("s1")
    rows = []
    for i in range(12):
        (folder / f"{i}.png").write_bytes(render_png(1.0 + i % 4))
        rows.append(
            row(f"r{i}", "code", f"{i}.png", f"```python\nplt.bar(['a', 'b'], [1, {i % 4 + 1}])\n```")
        )
    processor = load_processor_only()
    ds = S1Dataset([write_jsonl(folder / "s1.jsonl", rows)], processor, max_length=512)
    mk = lambda idx: collate([ds[i] for i in idx], processor.tokenizer.pad_token_id, processor.image_token_id)  # noqa: E731
    return [[mk([4 * s, 4 * s + 1]), mk([4 * s + 2, 4 * s + 3])] for s in range(3)]


def load_processor_only():
    from codepercept_rl.models.tiny import build_tiny_model

    return build_tiny_model("qwen2_5_vl", "nano")[1]


def step(learner: Learner, micro: list[MicroBatch]) -> dict[str, float]:
    return learner.train_step(micro, sft_loss, normalizer=sum(mb.loss_mask.sum().item() for mb in micro))


def test_resume_continues_bit_exactly(batches, tmp_path: Path) -> None:
    a = Learner(CFG)
    first = step(a, batches[0])
    a.save_checkpoint(tmp_path, extra={"cursor": 7})
    expected = [step(a, batches[1])["loss"], step(a, batches[2])["loss"]]
    assert first["loss"] > 0 and first["lr"] == pytest.approx(3e-3 / 2)  # warm-up: step 1 of 2

    b = Learner(CFG)
    extra = b.load_checkpoint(latest_checkpoint(tmp_path))
    assert extra == {"cursor": 7, "learner_step": 1} and b.step == 1
    resumed = [step(b, batches[1])["loss"], step(b, batches[2])["loss"]]
    assert resumed == expected  # exact, not approximate


def test_checkpoints_are_atomic_and_pruned(batches, tmp_path: Path) -> None:
    learner = Learner(CFG)
    for s in range(3):
        step(learner, batches[s])
        learner.save_checkpoint(tmp_path, keep=2)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]
    # What a crash mid-save leaves behind: a temp folder, and a step folder without its meta.json.
    (tmp_path / ".tmp-step_000004" / "model_optim").mkdir(parents=True)
    shutil.copytree(tmp_path / "step_000003", tmp_path / "step_000005")
    (tmp_path / "step_000005" / "meta.json").unlink()
    assert latest_checkpoint(tmp_path) == tmp_path / "step_000003"
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        learner.load_checkpoint(tmp_path / "step_000005")
    learner.save_checkpoint(tmp_path, keep=2)  # step 3 again: replaces it whole, cleans the temp folder
    assert not (tmp_path / ".tmp-step_000004").exists()
    assert [s for s, _ in list_checkpoints(tmp_path)] == [2, 3]


def test_single_rank_checkpoint_runs_no_collectives(batches, tmp_path: Path) -> None:
    # DCP's collectives through gloo leave OpenMP teams on gloo's threads, and every later step with two
    # torch threads then slows down (checkpoint module docstring): one rank saves and loads without them.
    a = Learner(CFG)
    step(a, batches[0])
    assert dist.is_initialized() and dist.get_world_size() == 1
    group = dist.distributed_c10d._get_default_group()
    before = group._get_sequence_number_for_group()
    a.load_checkpoint(a.save_checkpoint(tmp_path))
    assert group._get_sequence_number_for_group() == before
    assert a.step == 1


def test_export_reloads_with_from_pretrained_and_generates(batches, tmp_path: Path) -> None:
    learner = Learner(CFG)
    step(learner, batches[0])
    out = learner.export_hf(tmp_path / "hf")
    reloaded = AutoModelForImageTextToText.from_pretrained(out, dtype=torch.float32).eval()
    mb = batches[1][0]
    with torch.no_grad():
        ours = learner.forward_logprobs(mb)
        logits = reloaded(**mb.model_inputs()).logits
    theirs = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, mb.input_ids[:, 1:, None])[..., 0]
    real = mb.attention_mask[:, 1:].bool()
    torch.testing.assert_close(ours[:, 1:][real], theirs[real], atol=1e-5, rtol=1e-5)
    model, processor = load_model(out)  # the project's loader reads the processor back too
    first = mb.input_ids[:1, : int(mb.loss_mask[0].nonzero()[0])]  # the prompt of the first row
    n_images = 1
    generated = model.generate(
        input_ids=first,
        attention_mask=torch.ones_like(first),
        pixel_values=mb.pixel_values[: int(mb.image_grid_thw[0].prod())],
        image_grid_thw=mb.image_grid_thw[:n_images],
        max_new_tokens=5,
        do_sample=False,
    )
    assert generated.shape[1] > first.shape[1]
    assert processor.tokenizer.decode(generated[0, first.shape[1] :]) is not None


def test_frozen_vision_tower_does_not_move(batches) -> None:
    cfg = LearnerConfig(
        model=ModelConfig(tiny_preset="nano", freeze_vision_tower=True), optim=CFG.optim, total_steps=2
    )
    learner = Learner(cfg)
    before = learner.state_dict_for_rollout()
    step(learner, batches[0])
    after = learner.state_dict_for_rollout()
    assert all(torch.equal(before[k], after[k]) for k in before if ".visual." in k)
    assert any(not torch.equal(before[k], after[k]) for k in before if "language_model" in k)


def test_gradient_checkpointing_is_exact_and_bf16_is_close(batches) -> None:
    def losses(**model_kwargs) -> list[float]:
        cfg = LearnerConfig(
            model=ModelConfig(tiny_preset="nano", **model_kwargs), optim=CFG.optim, total_steps=6
        )
        learner = Learner(cfg)
        return [step(learner, micro)["loss"] for micro in batches[:2]]

    plain = losses()
    assert losses(enable_gradient_checkpointing=True) == pytest.approx(plain, rel=1e-6)
    assert losses(dtype="bfloat16") == pytest.approx(plain, rel=2e-2)


def test_qwen3_vl_learns_from_image_rows(tmp_path: Path) -> None:
    learner = Learner(
        LearnerConfig(model=ModelConfig(tiny_arch="qwen3_vl", tiny_preset="nano"), optim=CFG.optim)
    )
    rows = []
    for i in range(2):
        (tmp_path / f"{i}.png").write_bytes(render_png(2.0 + i))
        rows.append(row(f"q{i}", "caption", f"{i}.png", f"Two bars, the second {2 + i} high."))
    processor = learner.processor
    ds = S1Dataset([write_jsonl(tmp_path / "s1.jsonl", rows)], processor, max_length=512)
    mb = collate(ds.examples, processor.tokenizer.pad_token_id, processor.image_token_id)
    assert (
        mb.pixel_values is not None and mb.pixel_values.shape[1] == 3 * 2 * 16 * 16
    )  # Qwen3-VL: 16 px patches
    learner.set_total_steps(4)
    seen = [step(learner, [mb])["loss"] for _ in range(4)]
    assert seen[-1] < seen[0]


def test_forward_logprobs_batches_matches_single_forwards(batches) -> None:
    learner = Learner(CFG)
    outs = learner.forward_logprobs_batches(batches[0])
    assert len(outs) == 2 and not outs[0].requires_grad and outs[0].device.type == "cpu"
    with torch.no_grad():
        for mb, out in zip(batches[0], outs, strict=True):
            assert out.shape == mb.input_ids.shape and (out[:, 0] == 0).all()
            torch.testing.assert_close(out, learner.forward_logprobs(mb))
    assert (outs[0][batches[0][0].attention_mask.bool()] <= 0).all()  # log-probabilities
