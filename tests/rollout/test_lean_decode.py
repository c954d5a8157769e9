"""LeanDecoder is generate: the same tokens, logits and random stream (with the ``"hf"`` sampler) on tiny offline
Qwen2.5-VL and Qwen3-VL models, a left-padded batch of prompts of different lengths with images; log-probs equal to
the learner's forward over prompt + response (its positions, its mask), with either sampler; the engine falls back
to generate where the loop does not apply. The fast sampler's distribution is checked in ``test_sampling.py``.
"""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from codepercept_rl.models import build_tiny_model
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams
from codepercept_rl.rollout.decode import LeanDecoder, Processors, supported

PROMPTS = [
    ("<image>Write matplotlib code that draws exactly this picture.", (64, 64), "red"),
    ("<image>Describe.", (96, 64), "blue"),
    ("<image>Write Python code for it.", (56, 80), "green"),
]


def _prompts() -> list[RolloutPrompt]:
    return [
        RolloutPrompt([{"role": "user", "content": text}], [Image.new("RGB", size, colour)])
        for text, size, colour in PROMPTS
    ]


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def model_processor(request):
    torch.set_num_threads(1)
    model, processor = build_tiny_model(request.param, preset="nano", seed=0)
    return model.eval(), processor


def _inputs(engine: HFRolloutEngine) -> dict:
    engine.processor.tokenizer.padding_side = "left"
    prompts = _prompts()
    enc = engine.processor(
        text=[engine._prompt_text(p) for p in prompts],
        images=[im for p in prompts for im in p.pil_images()],
        padding=True,
        return_tensors="pt",
    )
    return dict(enc)


@pytest.mark.parametrize("greedy", [True, False], ids=["greedy", "sampled"])
def test_tokens_logits_and_random_stream_equal_generate(model_processor, greedy):
    model, processor = model_processor
    assert supported(model) is None
    engine = HFRolloutEngine(model, processor, decode="generate")
    enc = _inputs(engine)
    assert len(set(enc["attention_mask"].sum(-1).tolist())) == 3, "rows of three lengths: left padding"
    sampling = {} if greedy else {"temperature": 0.8, "top_p": 0.9, "top_k": 20}
    torch.manual_seed(7)
    with torch.no_grad():
        ref = model.generate(**enc, max_new_tokens=40, do_sample=not greedy, eos_token_id=engine._eos_ids,
                             pad_token_id=engine._pad_id, return_dict_in_generate=True, output_logits=True,
                             suppress_tokens=engine._suppress_ids, **sampling)  # fmt: skip
    after_ref = torch.rand(4)
    ref_tokens = ref.sequences[:, enc["input_ids"].shape[1] :]
    ref_logits = torch.stack(ref.logits, dim=1)
    processors = Processors.build(greedy=greedy, temperature=sampling.get("temperature", 1.0),
                                  top_p=sampling.get("top_p", 1.0), top_k=sampling.get("top_k", -1),
                                  repetition_penalty=1.0, suppress_ids=engine._suppress_ids,
                                  sampler="hf")  # fmt: skip
    torch.manual_seed(7)
    tokens, logits = LeanDecoder(model).generate(enc, max_new_tokens=40, processors=processors, greedy=greedy,
                                                 eos_ids=engine._eos_ids, pad_id=engine._pad_id)  # fmt: skip
    after_lean = torch.rand(4)
    assert torch.equal(tokens, ref_tokens)
    assert logits.shape == ref_logits.shape
    assert (logits - ref_logits).abs().max().item() < 1e-5
    # both drew the same random numbers: the stream after the call is the same
    assert torch.equal(after_lean, after_ref)


@pytest.mark.parametrize("sampler", ["fast", "hf"])
def test_engine_logprobs_equal_the_learner_forward(model_processor, sampler):
    """The lean engine's sampled completions, fed back as the learner feeds them (prompt + response, one
    sequence, no padding), get the same log-probs: the decode positions are the learner's."""
    model, processor = model_processor
    engine = HFRolloutEngine(model, processor, micro_batch_size=6, sampler=sampler)
    assert engine.decode_fallback is None
    out = engine.generate(_prompts(), SamplingParams(n=2, temperature=1.0, top_p=0.9, max_tokens=24, seed=3))
    checked = 0
    for i, prompt in enumerate(_prompts()):
        enc = processor(text=[engine._prompt_text(prompt)], images=prompt.pil_images(), return_tensors="pt")
        for c in out[i]:
            ids = torch.cat([enc["input_ids"], torch.tensor([c.token_ids])], dim=1)
            extra = {k: v for k, v in enc.items() if k not in ("input_ids", "attention_mask")}
            if "mm_token_type_ids" in extra:
                pad = torch.zeros(1, len(c.token_ids), dtype=extra["mm_token_type_ids"].dtype)
                extra["mm_token_type_ids"] = torch.cat([extra["mm_token_type_ids"], pad], dim=1)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), **extra).logits
            n = enc["input_ids"].shape[1]
            lp = torch.log_softmax(logits[0, n - 1 : -1].float(), -1).gather(
                -1, torch.tensor(c.token_ids)[:, None]
            )
            assert (lp[:, 0] - torch.tensor(c.logprobs)).abs().max().item() < 1e-4
            checked += 1
    assert checked == 6


def test_engine_decodes_the_same_either_way(model_processor):
    """n=3 in micro-batches of 4: the lean engine prefills each prompt once per micro-batch for its samples
    there (7 prefills for 9 sequences) and still draws generate's tokens, which prefills every row."""
    model, processor = model_processor
    params = SamplingParams(n=3, temperature=1.0, top_p=0.95, max_tokens=16, seed=11)
    engine = HFRolloutEngine(model, processor, micro_batch_size=4, sampler="hf")
    lean = engine.generate(_prompts(), params)
    hf = HFRolloutEngine(model, processor, micro_batch_size=4, decode="generate").generate(_prompts(), params)
    assert [[c.token_ids for c in g] for g in lean] == [[c.token_ids for c in g] for g in hf]
    assert [[c.finish_reason for c in g] for g in lean] == [[c.finish_reason for c in g] for g in hf]
    assert engine.stats["lean_sequences"] == 9 and engine.stats["prefilled_prompts"] == 2 + 2 + 1


def test_shared_prefill_equals_repeated_rows(model_processor):
    """``repeats``: one prefill per prompt, its cache copied to the samples, gives the logits of every step of
    the batch with the rows repeated (greedy: the same tokens)."""
    model, processor = model_processor
    engine = HFRolloutEngine(model, processor)
    enc = _inputs(engine)
    repeats = [2, 1, 3]
    index = torch.repeat_interleave(torch.arange(3), torch.tensor(repeats))
    patches = enc["image_grid_thw"].prod(-1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), patches.cumsum(0)])
    repeated = {
        "input_ids": enc["input_ids"][index], "attention_mask": enc["attention_mask"][index],
        "pixel_values": torch.cat([enc["pixel_values"][starts[i] : starts[i + 1]] for i in index.tolist()]),
        "image_grid_thw": enc["image_grid_thw"][index],
    }  # fmt: skip
    if "mm_token_type_ids" in enc:
        repeated["mm_token_type_ids"] = enc["mm_token_type_ids"][index]
    lean = LeanDecoder(model)
    processors = Processors.build(greedy=True, temperature=1.0, top_p=1.0, top_k=0, repetition_penalty=1.0,
                                  suppress_ids=[])  # fmt: skip
    kwargs = {"max_new_tokens": 12, "processors": processors, "greedy": True, "eos_ids": engine._eos_ids,
              "pad_id": engine._pad_id}  # fmt: skip
    shared_tokens, shared_logits = lean.generate(enc, repeats=repeats, **kwargs)
    ref_tokens, ref_logits = lean.generate(repeated, **kwargs)
    assert shared_tokens.shape[0] == sum(repeats)
    assert torch.equal(shared_tokens, ref_tokens)
    torch.testing.assert_close(shared_logits, ref_logits, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="one count >= 1 per prompt row"):
        lean.generate(enc, repeats=[2, 1], **kwargs)


def test_mixed_and_text_only_batches(model_processor):
    """A micro-batch with a text-only row among image rows decodes lean, like generate; one with no image at all
    goes to generate (HF's forward and generate would place its padded rows differently)."""
    model, processor = model_processor
    text_only = RolloutPrompt([{"role": "user", "content": "Write matplotlib code for a red circle."}], [])
    prompts = [text_only, *_prompts()]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=16, seed=5)
    lean = HFRolloutEngine(model, processor, micro_batch_size=8, sampler="hf")
    hf = HFRolloutEngine(model, processor, micro_batch_size=8, decode="generate")
    out, ref = lean.generate(prompts, params), hf.generate(prompts, params)
    assert [[c.token_ids for c in g] for g in out] == [[c.token_ids for c in g] for g in ref]
    assert lean.stats["lean_sequences"] == 8 and hf.stats["lean_sequences"] == 0
    alone = HFRolloutEngine(model, processor, micro_batch_size=8)
    out = alone.generate([text_only], params)
    assert out[0][0].token_ids == hf.generate([text_only], params)[0][0].token_ids
    assert alone.stats["lean_sequences"] == 0 and alone.stats["generated_sequences"] == 2


def test_fallbacks_say_why():
    model, processor = build_tiny_model("qwen2_5_vl", preset="nano", seed=0)
    assert HFRolloutEngine(model, processor, decode="generate").decode_fallback == "decode='generate'"
    model.config._attn_implementation = "flash_attention_2"
    assert "attention implementation" in supported(model)
    with pytest.raises(ValueError, match="LeanDecoder cannot run this model"):
        LeanDecoder(model)
    with pytest.raises(ValueError, match="decode='fast'"):
        HFRolloutEngine(model, processor, decode="fast")
    with pytest.raises(ValueError, match="sampler='multinomial'"):
        HFRolloutEngine(model, processor, sampler="multinomial")
