"""Tiny offline Qwen2.5-VL / Qwen3-VL: build, train step, generate, save/load, tokenizer, processor, CLI.

Run: pytest tests/models/test_tiny_models.py (about 20 s on 2 cores).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import textwrap

import pytest
import torch
from PIL import Image, ImageDraw
from transformers import AutoModelForImageTextToText, AutoProcessor, AutoTokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from codepercept_rl.models import (
    ARCHS,
    PRESETS,
    SPECIAL_TOKENS,
    TinyModelSpec,
    build_tiny_model,
    build_tokenizer,
    get_spec,
    load_model,
)
from codepercept_rl.models.cli import main as models_cli
from codepercept_rl.models.corpus import iter_corpus
from codepercept_rl.models.tokenizer import train_bpe

torch.set_num_threads(1)

ANSWER = "```python\nimport matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0], 'r--')\nplt.show()\n```"


def stem_image(size: tuple[int, int] = (96, 80)) -> Image.Image:
    """A small drawn figure: axes, a red circle, a blue line."""
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    draw.line([(5, size[1] - 5), (size[0] - 5, size[1] - 5)], fill="black", width=2)
    draw.ellipse([20, 15, 50, 45], outline="red", width=3)
    draw.line([(10, 60), (90, 10)], fill="blue", width=2)
    return image


def chat(with_answer: bool) -> list[dict]:
    messages = [
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Write matplotlib code."}]}
    ]
    if with_answer:
        messages.append({"role": "assistant", "content": ANSWER})
    return messages


def encode(processor, with_answer: bool, images: list[Image.Image] | None = None) -> dict:
    text = processor.apply_chat_template(
        chat(with_answer), tokenize=False, add_generation_prompt=not with_answer
    )
    return processor(text=[text], images=images or [stem_image()], return_tensors="pt")


@pytest.fixture(scope="module", params=ARCHS)
def built(request, tmp_path_factory):
    """(arch, model, processor, saved folder) for a nano model of each architecture."""
    out = tmp_path_factory.mktemp(request.param)
    model, processor = build_tiny_model(request.param, "nano", out_dir=out, seed=0)
    return request.param, model, processor, out


def test_forward_backward_reaches_vision_and_language(built):
    arch, model, processor, _ = built
    batch = encode(processor, with_answer=True)
    labels = batch["input_ids"].clone()
    labels[labels == processor.image_token_id] = -100
    model.train()
    try:
        loss = model(**batch, labels=labels).loss
        loss.backward()
        grads = {
            part: sum(p.grad.abs().sum().item() for p in module.parameters() if p.grad is not None)
            for part, module in (("vision", model.model.visual), ("language", model.model.language_model))
        }
    finally:
        model.zero_grad(set_to_none=True)
        model.eval()
    assert math.isfinite(loss.item())
    # A random model over a vocab of V guesses near-uniformly: loss close to log(V).
    assert abs(loss.item() - math.log(model.config.text_config.vocab_size)) < 1.0, loss.item()
    assert grads["vision"] > 0 and grads["language"] > 0, (arch, grads)


def test_image_placeholders_match_vision_tokens(built):
    _, model, processor, _ = built
    batch = encode(processor, with_answer=False)
    merge = processor.image_processor.merge_size
    expected = int(batch["image_grid_thw"].prod()) // merge**2
    ids = batch["input_ids"][0].tolist()
    assert ids.count(processor.image_token_id) == expected
    assert ids.count(model.config.vision_start_token_id) == 1
    assert ids.count(model.config.vision_end_token_id) == 1
    assert expected <= get_spec("nano").max_image_tokens(built[0])


def test_generate_with_image(built):
    _, model, processor, _ = built
    batch = encode(processor, with_answer=False)
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=8, min_new_tokens=8, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :]
    assert new.numel() == 8
    text = processor.decode(new, skip_special_tokens=False)
    assert isinstance(text, str) and text
    assert processor.tokenizer(text, add_special_tokens=False)["input_ids"]  # decodes to real text


def test_save_load_roundtrip_identical_logits(built):
    arch, model, processor, out = built
    batch = encode(processor, with_answer=True)
    with torch.no_grad():
        expected = model(**batch).logits
    auto_model = AutoModelForImageTextToText.from_pretrained(out).eval()
    auto_processor = AutoProcessor.from_pretrained(out)
    loaded_model, loaded_processor = load_model(out)
    assert auto_model.config.model_type == arch
    for proc in (auto_processor, loaded_processor):
        assert isinstance(proc.image_processor, Qwen2VLImageProcessorPil)
        reencoded = encode(proc, with_answer=True)
        assert torch.equal(reencoded["input_ids"], batch["input_ids"])
        assert torch.equal(reencoded["pixel_values"], batch["pixel_values"])
    with torch.no_grad():
        assert torch.equal(loaded_model(**batch).logits, expected)
        # The stock class computes the vision tower's patch conv as a convolution, ours as a matmul
        # (codepercept_rl/models/patch_embed.py): the same weights, equal up to fp32 summation order.
        torch.testing.assert_close(auto_model(**batch).logits, expected, rtol=1e-5, atol=1e-5)


def test_seed_gives_same_weights(built):
    arch, model, _, _ = built
    same, _ = build_tiny_model(arch, "nano", seed=0)
    other, _ = build_tiny_model(arch, "nano", seed=1)
    ref = model.state_dict()
    assert all(torch.equal(t, ref[k]) for k, t in same.state_dict().items())
    assert not torch.equal(other.state_dict()["lm_head.weight"], ref["lm_head.weight"])


def test_processor_needs_no_torchvision():
    """Builds a processor and encodes an image in a process where importing torchvision fails."""
    script = textwrap.dedent(
        """
        import sys
        sys.modules["torchvision"] = None  # any `import torchvision` now raises ImportError
        from PIL import Image
        from codepercept_rl.models import build_tokenizer, make_processor, get_spec
        for arch in ("qwen2_5_vl", "qwen3_vl"):
            proc = make_processor(arch, get_spec("nano"), build_tokenizer(1024, model_max_length=2048))
            assert "video_processor" not in proc.get_attributes(), proc.get_attributes()
            out = proc(text=["<|vision_start|><|image_pad|><|vision_end|>hi"], images=[Image.new("RGB", (64, 64))])
            print(arch, type(proc.image_processor).__name__, tuple(out["pixel_values"].shape))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "qwen2_5_vl Qwen2VLImageProcessorPil (16, 1176)" in result.stdout
    assert "qwen3_vl Qwen2VLImageProcessorPil (16, 1536)" in result.stdout


@pytest.mark.parametrize(
    "text",
    [
        next(d for d in iter_corpus(seed=7, n_programs=4) if d.startswith("import")),
        "def f(x):\n\tif x:  # tab-indented\n\t\treturn {'a': [1, 2.5e-3]}\n\n\n    \n",
        "s = 'héllo wörld ∑ π → 漢字 🙂'\r\nprint(f\"{s!r:>10}\")  \n",
        "<|im_start|>user\nliteral specials<|im_end|>\n",
    ],
)
def test_tokenizer_roundtrips_exactly(text):
    tokenizer = build_tokenizer(1024, model_max_length=2048)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text


def test_tokenizer_specials_and_determinism():
    tokenizer = build_tokenizer(1024, model_max_length=2048)
    for i, token in enumerate(SPECIAL_TOKENS):
        assert tokenizer.convert_tokens_to_ids(token) == i
        assert tokenizer(token, add_special_tokens=False)["input_ids"] == [i]
    # Code words became single tokens (the corpus is code), and training is deterministic.
    assert len(tokenizer.tokenize(" matplotlib")) == 1
    assert train_bpe(512, n_programs=300).to_str() == train_bpe(512, n_programs=300).to_str()
    with pytest.raises(ValueError, match="vocab_size=100"):
        train_bpe(100)


def test_tokenizer_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("CODEPERCEPT_CACHE", str(tmp_path))
    first = build_tokenizer(512, n_programs=300)
    (cached,) = tmp_path.glob("tokenizers/*/tokenizer.json")
    stamp = cached.stat().st_mtime_ns
    second = build_tokenizer(512, n_programs=300)
    assert cached.stat().st_mtime_ns == stamp  # read back, not retrained and rewritten
    assert second.backend_tokenizer.to_str() == first.backend_tokenizer.to_str()
    build_tokenizer(512, n_programs=301)  # another corpus: another cache entry
    assert len(list(tmp_path.glob("tokenizers/*/tokenizer.json"))) == 2


def test_chat_template_is_chatml_with_placeholders():
    tokenizer = build_tokenizer(1024, model_max_length=2048)
    text = tokenizer.apply_chat_template(chat(with_answer=True), tokenize=False)
    assert text == (
        "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>Write matplotlib code.<|im_end|>\n"
        f"<|im_start|>assistant\n{ANSWER}<|im_end|>\n"
    )
    prompt = tokenizer.apply_chat_template(
        chat(with_answer=False), tokenize=False, add_generation_prompt=True
    )
    assert prompt.endswith("<|im_end|>\n<|im_start|>assistant\n")


def test_presets_respect_vllm_and_mrope_constraints():
    for name, spec in PRESETS.items():
        spec.validate()
        assert spec.head_dim >= 32, name
        for arch in ARCHS:
            assert sum(spec.mrope_section(arch)) == spec.head_dim // 2
    assert PRESETS["nano"].replace(num_layers=1).num_layers == 1
    with pytest.raises(ValueError, match="head_dim 16"):
        PRESETS["nano"].replace(hidden_size=32, num_heads=2, head_dim=16)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        get_spec("huge")
    custom = TinyModelSpec(**{**PRESETS["nano"].__dict__, "num_layers": 1})
    model, _ = build_tiny_model("qwen3_vl", custom)
    assert model.config.text_config.num_hidden_layers == 1


def test_save_for_vllm_writes_stock_processor_layout(tmp_path):
    build_tiny_model("qwen2_5_vl", "nano", out_dir=tmp_path, save_for_vllm=True)
    processor_config = json.loads((tmp_path / "processor_config.json").read_text())
    video = json.loads((tmp_path / "video_preprocessor_config.json").read_text())
    image = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor_config["processor_class"] == "Qwen2_5_VLProcessor"
    assert video["video_processor_type"] == "Qwen2VLVideoProcessor"
    assert image["patch_size"] == 14 and image["max_pixels"] == PRESETS["nano"].max_pixels
    assert AutoTokenizer.from_pretrained(tmp_path).convert_tokens_to_ids("<|image_pad|>") == 12
    _, processor = load_model(tmp_path)  # still loads without torchvision
    batch = encode(processor, with_answer=False)
    assert int((batch["input_ids"] == processor.image_token_id).sum()) == 4


def test_cli_build_and_info(tmp_path, capsys):
    out = tmp_path / "tiny-q3"
    assert models_cli(["build", "--arch", "qwen3_vl", "--preset", "tiny", "--out", str(out)]) == 0
    capsys.readouterr()
    assert models_cli(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    model, _ = load_model(out)
    unique = {id(p): p.numel() for p in model.parameters()}
    assert info["arch"] == "qwen3_vl" and info["preset"] == "tiny"
    assert info["params"]["total"] == sum(unique.values())
    assert info["params"]["vision"] + info["params"]["language"] == info["params"]["total"]
    assert info["vision_tokens_per_image"]["64x64"] == 4  # 64 px / (16 px patch * 2 merge) = 2 per side
    assert models_cli(["info", str(tmp_path / "missing")]) == 2
