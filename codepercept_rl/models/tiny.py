"""Build, save and load tiny random-weight Qwen2.5-VL / Qwen3-VL models, fully offline.

    model, processor = build_tiny_model("qwen3_vl", preset="nano", out_dir="runs/nano-q3")
    model, processor = load_model("runs/nano-q3")

The model is the stock transformers class (``Qwen2_5_VLForConditionalGeneration`` /
``Qwen3VLForConditionalGeneration``) with sizes from ``spec.PRESETS`` and the tokenizer from ``tokenizer.py``;
the saved folder loads with ``AutoModelForImageTextToText`` like a hub checkpoint. Set
``torch.set_num_threads(1)`` in the process first: on models this small, intra-op threads cost more than
they give, and the CPU is shared.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen3VLConfig,
    Qwen3VLForConditionalGeneration,
)
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.models.patch_embed import use_linear_patch_embed
from codepercept_rl.models.processor import (
    VISION_TOKENS,
    load_processor,
    make_processor,
    write_vllm_processor_files,
)
from codepercept_rl.models.spec import ARCHS, Arch, TinyModelSpec, get_spec
from codepercept_rl.models.tokenizer import build_tokenizer

MODEL_CLASSES = {
    "qwen2_5_vl": Qwen2_5_VLForConditionalGeneration,
    "qwen3_vl": Qwen3VLForConditionalGeneration,
}
META_FILE = "codepercept_model.json"  # arch, preset and spec of a folder written here (read by `models info`)


def _token_ids(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """The config's vision token ids (``image_token_id``, ...) looked up in ``tokenizer``."""
    return {f"{name}_id": tokenizer.convert_tokens_to_ids(token) for name, token in VISION_TOKENS.items()}


def padded_vocab(spec_vocab: int, tokenizer: PreTrainedTokenizerBase) -> int:
    """Embedding rows: at least the tokenizer's length, rounded up to a multiple of 64 (like Qwen's)."""
    return -(-max(spec_vocab, len(tokenizer)) // 64) * 64


def make_config(arch: Arch, spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase) -> PretrainedConfig:
    """The transformers config of a tiny ``arch`` model at ``spec``'s sizes, token ids from ``tokenizer``.

    Raises:
        ValueError: unknown ``arch``.
    """
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; choose one of {ARCHS}")
    rope = {"rope_type": "default", "rope_theta": spec.rope_theta, "mrope_section": spec.mrope_section(arch)}
    text = {
        "vocab_size": padded_vocab(spec.vocab_size, tokenizer),
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_kv_heads,
        "max_position_embeddings": spec.max_position_embeddings,
        "rms_norm_eps": spec.rms_norm_eps,
        "bos_token_id": tokenizer.pad_token_id,  # Qwen: <|endoftext|>; never prepended by the tokenizer
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    vision = {
        "depth": spec.vision_depth,
        "hidden_size": spec.vision_hidden_size,
        "intermediate_size": spec.vision_intermediate_size,
        "num_heads": spec.vision_heads,
        "patch_size": spec.patch_for(arch),
        "spatial_merge_size": spec.spatial_merge_size,
        "temporal_patch_size": 2,
        "out_hidden_size": spec.hidden_size,
    }
    if arch == "qwen2_5_vl":
        # Window attention everywhere but the last block, like the real model's pattern.
        vision.update(window_size=112, fullatt_block_indexes=[spec.vision_depth - 1])
        return Qwen2_5_VLConfig(
            text_config={**text, "rope_parameters": rope}, vision_config=vision,
            tie_word_embeddings=True, **_token_ids(tokenizer),
        )  # fmt: skip
    depth = spec.vision_depth
    vision.update(
        hidden_act="gelu_pytorch_tanh",
        num_position_embeddings=16 * 16,  # learned 16x16 grid, interpolated to each image's patch grid
        deepstack_visual_indexes=[depth // 2 - 1] if depth < 4 else [depth // 4, depth // 2],
    )
    text.update(head_dim=spec.head_dim, rope_parameters={**rope, "mrope_interleaved": True})
    return Qwen3VLConfig(
        text_config=text, vision_config=vision, tie_word_embeddings=True, **_token_ids(tokenizer)
    )


def set_generation_defaults(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Stop at the end of the assistant turn (``<|im_end|>``) or at ``<|endoftext|>``; pad with the latter."""
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, tokenizer.pad_token_id]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.pad_token_id


def save_model(
    model: PreTrainedModel,
    processor: ProcessorMixin,
    out_dir: str | Path,
    meta: dict,
    save_for_vllm: bool = False,
) -> Path:
    """Saves model + processor (+ ``codepercept_model.json`` with ``meta``) as a hub-style folder.

    Args:
        model: the model.
        processor: its processor (image-only).
        out_dir: destination folder (created).
        meta: what to record about the build (arch, preset, spec, ...).
        save_for_vllm: also write the stock processor layout with a video processor config (see
            ``processor.write_vllm_processor_files``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    if save_for_vllm:
        write_vllm_processor_files(out, model.config.model_type, get_spec(TinyModelSpec(**meta["spec"])))
    (out / META_FILE).write_text(json.dumps({**meta, "save_for_vllm": save_for_vllm}, indent=2) + "\n")
    return out


def build_tiny_model(
    arch: Arch,
    preset: str | TinyModelSpec = "nano",
    out_dir: str | Path | None = None,
    seed: int = 0,
    save_for_vllm: bool = False,
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Builds a random-weight tiny Qwen-VL model and its processor, offline.

    Args:
        arch: ``"qwen2_5_vl"`` or ``"qwen3_vl"``.
        preset: a name in ``spec.PRESETS`` (``nano``, ``tiny``, ``small``) or a ``TinyModelSpec``.
        out_dir: if given, save model + processor there (``load_model(out_dir)`` reads it back).
        seed: weight-initialisation seed (the same seed gives the same weights).
        save_for_vllm: with ``out_dir``, also write the processor files vLLM needs.

    Returns:
        ``(model, processor)``; the model is float32, in eval mode, on CPU.
    """
    spec = get_spec(preset)
    tokenizer = build_tokenizer(spec.vocab_size, model_max_length=spec.max_position_embeddings)
    config = make_config(arch, spec, tokenizer)
    torch.manual_seed(seed)
    model = MODEL_CLASSES[arch](config).eval()
    use_linear_patch_embed(model)
    set_generation_defaults(model, tokenizer)
    processor = make_processor(arch, spec, tokenizer)
    if out_dir is not None:
        preset_name = preset if isinstance(preset, str) else "custom"
        meta = {"arch": arch, "preset": preset_name, "seed": seed, "spec": dataclasses.asdict(spec)}
        save_model(model, processor, out_dir, meta, save_for_vllm=save_for_vllm)
    return model, processor


def load_model(path: str | Path) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Loads a folder written by ``build_tiny_model`` / ``build_smollm2_vl`` (or any Qwen-VL checkpoint).

    The processor is the image-only one (no torchvision needed), whichever processor layout was saved.

    Raises:
        ValueError: the folder's model type is not Qwen2.5-VL or Qwen3-VL.
    """
    config = AutoConfig.from_pretrained(path)
    if config.model_type not in ARCHS:
        raise ValueError(f"{path}: model_type {config.model_type!r} is not one of {ARCHS}")
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    use_linear_patch_embed(model)
    return model, load_processor(path, config.model_type)
