"""HFRolloutEngine on a tiny offline Qwen2.5-VL: shapes, log-probs, stops, limits, weight updates."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from codepercept_rl.models import build_tiny_model
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams, to_structured_messages


@pytest.fixture(scope="module")
def engine():
    torch.set_num_threads(1)
    model, processor = build_tiny_model("qwen2_5_vl", preset="nano", seed=0)
    return HFRolloutEngine(model, processor, micro_batch_size=4)


def _prompts():
    return [
        RolloutPrompt(
            [{"role": "user", "content": "<image>Write matplotlib code."}],
            [Image.new("RGB", (64, 64), "red")],
        ),
        RolloutPrompt(
            [{"role": "user", "content": "<image>Describe it."}], [Image.new("RGB", (96, 64), "blue")]
        ),
    ]


def test_groups_callbacks_and_logprobs(engine):
    seen = []
    out = engine.generate(_prompts(), SamplingParams(n=3, max_tokens=8, seed=0), on_complete=seen.append)
    assert [len(g) for g in out] == [3, 3]
    assert len(seen) == 6 and {(c.prompt_index, c.sample_index) for c in seen} == {
        (i, j) for i in (0, 1) for j in range(3)
    }
    for group in out:
        for c in group:
            assert 1 <= len(c.token_ids) <= 8 and len(c.logprobs) == len(c.token_ids)
            assert c.finish_reason in ("stop", "length")
            assert all(lp <= 0.0 for lp in c.logprobs)
    # The engine's log-probs are the model's: recompute one completion with a plain forward pass.
    c = out[0][0]
    proc, model = engine.processor, engine.model
    enc = proc(
        text=[engine._prompt_text(_prompts()[0])], images=_prompts()[0].pil_images(), return_tensors="pt"
    )
    ids = torch.cat([enc["input_ids"], torch.tensor([c.token_ids])], 1)
    with torch.no_grad():
        logits = model(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            pixel_values=enc["pixel_values"],
            image_grid_thw=enc["image_grid_thw"],
        ).logits
    n_prompt = enc["input_ids"].shape[1]
    lp = torch.log_softmax(logits[0, n_prompt - 1 : -1].float(), -1).gather(
        -1, torch.tensor(c.token_ids)[:, None]
    )
    assert torch.allclose(lp[:, 0], torch.tensor(c.logprobs), atol=2e-3)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(engine):
    params = SamplingParams(n=2, temperature=0.0, max_tokens=6)
    a = engine.generate(_prompts()[:1], params)
    b = engine.generate(_prompts()[:1], params)
    assert a[0][0].token_ids == a[0][1].token_ids == b[0][0].token_ids
    s1 = engine.generate(_prompts(), SamplingParams(n=2, max_tokens=6, seed=7))
    s2 = engine.generate(_prompts(), SamplingParams(n=2, max_tokens=6, seed=7))
    assert [c.token_ids for g in s1 for c in g] == [c.token_ids for g in s2 for c in g]


def test_eval_chunks_continue_the_seed_sequence(engine):
    # EngineGenerator hands the engine one chunk of requests at a time. Sampled answers must not depend on the
    # chunking, and the same prompt in two chunks must not get the same random draws (it did when every
    # chunk restarted from the same seed).
    import asyncio

    from codepercept_rl.eval.generate import EngineGenerator, GenRequest

    png = _png(Image.new("RGB", (64, 64), "red"))
    requests = [GenRequest(f"r{i}", png, "<image>Write matplotlib code.") for i in range(4)]
    params = SamplingParams(n=1, temperature=1.0, max_tokens=10, seed=11)

    pairs = HFRolloutEngine(engine.model, engine.processor, micro_batch_size=2)

    def run(batch_size):
        async def go():
            gen = EngineGenerator(pairs, params, batch_size=batch_size)
            return {i: g.text async for i, g in gen.generate(requests)}

        return asyncio.run(go())

    one_call, chunked = run(4), run(2)  # micro-batches seeded 11, 13 either way
    assert one_call == chunked
    assert len(set(chunked.values())) > 1, chunked


def _png(image):
    import io

    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def test_prompt_too_long_is_skipped_and_counted(engine):
    short = HFRolloutEngine(engine.model, engine.processor, max_prompt_tokens=5)
    out = short.generate(_prompts(), SamplingParams(n=2, max_tokens=4))
    assert all(c.finish_reason == "prompt_too_long" and c.token_ids == [] for g in out for c in g)
    assert short.stats["prompts_too_long"] == 2


def test_update_weights_changes_generation(engine):
    model = engine.model
    params = SamplingParams(n=1, temperature=0.0, max_tokens=5)
    before = engine.generate(_prompts()[:1], params)[0][0]
    name = "lm_head.weight" if "lm_head.weight" in model.state_dict() else next(iter(model.state_dict()))
    old = model.state_dict()[name].clone()
    try:
        new = torch.zeros_like(old)
        target = (before.token_ids[0] + 1) % new.shape[0]
        new[target] = 50.0  # make one token overwhelmingly likely
        engine.update_weights([(name, new)])
        after = engine.generate(_prompts()[:1], params)[0][0]
        assert after.token_ids[0] == target
        with pytest.raises(KeyError, match="no parameter"):
            engine.update_weights([("not.a.param", new)])
    finally:
        engine.update_weights([(name, old)])


def test_image_placeholders_become_structured():
    msgs = to_structured_messages(
        [{"role": "user", "content": "A<image>B<image>"}, {"role": "assistant", "content": "x"}]
    )
    assert msgs[0]["content"] == [
        {"type": "text", "text": "A"},
        {"type": "image"},
        {"type": "text", "text": "B"},
        {"type": "image"},
    ]
    assert msgs[1]["content"] == "x"
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0.0)


def test_vision_placeholders_are_never_generated(engine):
    from codepercept_rl.rollout.hf import vision_token_ids

    model = engine.model
    name = "lm_head.weight"
    old = model.state_dict()[name].clone()
    banned = vision_token_ids(engine.processor.tokenizer)
    assert banned, "the tiny tokenizer has Qwen's vision tokens"
    try:
        new = old.clone()
        new[banned[0]] = 50.0  # the image placeholder would win every step
        engine.update_weights([(name, new)])
        out = engine.generate(_prompts()[:1], SamplingParams(n=2, temperature=0.0, max_tokens=5))
        assert all(t not in banned for c in out[0] for t in c.token_ids)
    finally:
        engine.update_weights([(name, old)])
