"""Qwen-VL processors that work without torchvision, and a hub-style processor layout for vLLM.

transformers' Qwen2.5-VL / Qwen3-VL processors insist on a video processor, and every Qwen video processor
(and the *fast* image processor) needs torchvision, which CPU installs here do not have. So:

- ``Qwen2_5_VLImageOnlyProcessor`` / ``Qwen3VLImageOnlyProcessor`` subclass the real processors, take only
  an image processor (the PIL ``Qwen2VLImageProcessorPil``) and a tokenizer, and are registered so that
  ``AutoProcessor.from_pretrained(folder)`` finds them by name once ``codepercept_rl.models`` is imported.
  Text + image processing, placeholder expansion and ``mm_token_type_ids`` are the parent's code.
- ``write_vllm_processor_files(folder, ...)`` (a tiny model's sizes) and ``save_processor_for_vllm(processor,
  folder, ...)`` (a loaded processor's settings: ``Learner.export_hf``) write the files a hub checkpoint has
  (``preprocessor_config.json``, ``video_preprocessor_config.json``, ``processor_class`` = the stock class),
  because vLLM loads the processor with ``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor.from_pretrained`` and
  needs the video processor config ("Can't load video processor" without it). Loading that folder with the
  stock processor needs torchvision (transformers 5.x); ``load_processor`` here reads it without.
"""

from __future__ import annotations

import json
from pathlib import Path

from transformers import (
    AutoProcessor,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedTokenizerBase,
    Qwen2_5_VLProcessor,
    Qwen3VLProcessor,
)
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
from transformers.processing_utils import ProcessorMixin

from codepercept_rl.models.spec import TinyModelSpec

# The real models' normalisation constants: CLIP's for Qwen2.5-VL, 0.5 for Qwen3-VL.
IMAGE_MEAN = {"qwen2_5_vl": [0.48145466, 0.4578275, 0.40821073], "qwen3_vl": [0.5, 0.5, 0.5]}
IMAGE_STD = {"qwen2_5_vl": [0.26862954, 0.26130258, 0.27577711], "qwen3_vl": [0.5, 0.5, 0.5]}
STOCK_PROCESSOR = {"qwen2_5_vl": "Qwen2_5_VLProcessor", "qwen3_vl": "Qwen3VLProcessor"}
STOCK_VIDEO_PROCESSOR = {"qwen2_5_vl": "Qwen2VLVideoProcessor", "qwen3_vl": "Qwen3VLVideoProcessor"}
VIDEO_PROCESSOR_FILE = "video_preprocessor_config.json"
# Processor attribute -> Qwen's token (the default when the tokenizer does not name its own).
VISION_TOKENS = {
    "image_token": "<|image_pad|>",
    "video_token": "<|video_pad|>",
    "vision_start_token": "<|vision_start|>",
    "vision_end_token": "<|vision_end|>",
}


def _init_image_only(processor: ProcessorMixin, image_processor, tokenizer, chat_template) -> None:
    """The parents' ``__init__`` minus the video processor (their token attributes, then the mixin's).

    Tokenizers built here carry ``image_token`` etc.; a hub Qwen tokenizer may not, hence Qwen's defaults.
    """
    for name, default in VISION_TOKENS.items():
        token = getattr(tokenizer, name, None) or default
        token_id = tokenizer.convert_tokens_to_ids(token)
        if token_id is None or token_id == tokenizer.unk_token_id:
            raise ValueError(f"tokenizer has no {token} token ({name}); it cannot serve a Qwen-VL model")
        setattr(processor, name, token)
        setattr(processor, f"{name}_id", token_id)
    # ProcessorMixin derives its sub-processor list from this class's __init__ signature (no video_processor).
    ProcessorMixin.__init__(processor, image_processor, tokenizer, chat_template=chat_template)


class Qwen2_5_VLImageOnlyProcessor(Qwen2_5_VLProcessor):
    """Qwen2.5-VL processor with no video processor (so no torchvision). Images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        _init_image_only(self, image_processor, tokenizer, chat_template)


class Qwen3VLImageOnlyProcessor(Qwen3VLProcessor):
    """Qwen3-VL processor with no video processor (so no torchvision). Images and text only."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs) -> None:
        _init_image_only(self, image_processor, tokenizer, chat_template)


IMAGE_ONLY_PROCESSOR = {"qwen2_5_vl": Qwen2_5_VLImageOnlyProcessor, "qwen3_vl": Qwen3VLImageOnlyProcessor}


# AutoProcessor resolves a saved ``processor_class`` name through the classes registered with it, keyed by a
# config class. Private keys (never a real model's config) leave the stock qwen2_5_vl / qwen3_vl mapping as is.
class _Qwen2_5_VLImageOnlyKey(PretrainedConfig):
    model_type = "codepercept_qwen2_5_vl_image_only"


class _Qwen3VLImageOnlyKey(PretrainedConfig):
    model_type = "codepercept_qwen3_vl_image_only"


AutoProcessor.register(_Qwen2_5_VLImageOnlyKey, Qwen2_5_VLImageOnlyProcessor, exist_ok=True)
AutoProcessor.register(_Qwen3VLImageOnlyKey, Qwen3VLImageOnlyProcessor, exist_ok=True)


def image_processor_kwargs(arch: str, spec: TinyModelSpec) -> dict:
    """The image processor settings for ``arch`` at ``spec``'s patch size and pixel budget."""
    return {
        "min_pixels": spec.min_pixels,
        "max_pixels": spec.max_pixels,
        "patch_size": spec.patch_for(arch),
        "temporal_patch_size": 2,
        "merge_size": spec.spatial_merge_size,
        "image_mean": IMAGE_MEAN[arch],
        "image_std": IMAGE_STD[arch],
    }


def make_processor(arch: str, spec: TinyModelSpec, tokenizer: PreTrainedTokenizerBase) -> ProcessorMixin:
    """An image-only processor (PIL image processor + ``tokenizer``) for ``arch`` at ``spec``'s sizes."""
    image_processor = Qwen2VLImageProcessorPil(**image_processor_kwargs(arch, spec))
    return IMAGE_ONLY_PROCESSOR[arch](image_processor, tokenizer, chat_template=tokenizer.chat_template)


def write_vllm_processor_files(folder: str | Path, arch: str, spec: TinyModelSpec) -> None:
    """Adds the hub-style processor files vLLM needs next to a saved tiny model (image + video processor).

    Overwrites ``processor_config.json`` so that ``processor_class`` names the stock processor, and writes
    flat ``preprocessor_config.json`` / ``video_preprocessor_config.json`` as Qwen's hub checkpoints have them;
    the tokenizer class becomes ``PreTrainedTokenizerFast`` (read from ``tokenizer.json`` by any version).
    """
    settings = image_processor_kwargs(arch, spec)
    settings["size"] = {"shortest_edge": spec.min_pixels, "longest_edge": spec.max_pixels}
    _write_hub_processor_files(Path(folder), arch, settings)


def save_processor_for_vllm(
    processor: ProcessorMixin, folder: str | Path, arch: str, source: str | Path | None = None
) -> None:
    """Saves ``processor`` into a model folder in the hub layout, which vLLM and the stock processor load.

    The image settings are ``processor``'s own (a hub checkpoint's, or a tiny model's); the video processor
    config is copied from ``source`` (the folder the model was loaded from) when it has one, so a fine-tuned
    Qwen3-VL keeps the hub's video settings, and is derived from the image settings otherwise. The files are
    those of :func:`write_vllm_processor_files`; :func:`load_processor` still reads the folder without
    torchvision.

    Raises:
        ValueError: ``arch`` is not a Qwen-VL architecture served here.
    """
    if arch not in STOCK_PROCESSOR:
        raise ValueError(
            f"no stock processor for model type {arch!r}; choose one of {sorted(STOCK_PROCESSOR)}"
        )
    folder = Path(folder)
    processor.save_pretrained(folder)
    image = processor.image_processor.to_dict()  # plain JSON types
    settings = {k: image[k] for k in ("patch_size", "temporal_patch_size", "merge_size", "size")}
    settings.update(image_mean=list(image["image_mean"]), image_std=list(image["image_std"]))
    settings.update(min_pixels=image["size"]["shortest_edge"], max_pixels=image["size"]["longest_edge"])
    video = Path(source) / VIDEO_PROCESSOR_FILE if source is not None else None
    _write_hub_processor_files(
        folder, arch, settings, video if video is not None and video.is_file() else None
    )


def _write_hub_processor_files(
    folder: Path, arch: str, settings: dict, video_config: Path | None = None
) -> None:
    """The hub layout from image ``settings``: flat image / video processor configs, the stock processor
    class, a tokenizer class every transformers version reads. ``video_config``: a file to copy instead."""
    common = {**settings, "do_convert_rgb": True, "do_normalize": True, "do_rescale": True, "do_resize": True,
              "resample": 3, "rescale_factor": 1 / 255, "processor_class": STOCK_PROCESSOR[arch]}  # fmt: skip
    image = {**common, "image_processor_type": "Qwen2VLImageProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(image, indent=2) + "\n")
    if video_config is not None:
        video = json.loads(video_config.read_text())
    else:
        video = {**common, "video_processor_type": STOCK_VIDEO_PROCESSOR[arch]}
        if arch == "qwen3_vl":  # Qwen3-VL samples frames itself and needs these
            video.update(fps=2, do_sample_frames=True, min_frames=4, max_frames=768)
    (folder / VIDEO_PROCESSOR_FILE).write_text(json.dumps(video, indent=2) + "\n")
    (folder / "processor_config.json").write_text(
        json.dumps({"processor_class": STOCK_PROCESSOR[arch]}) + "\n"
    )
    config_path = folder / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def load_processor(folder: str | Path, arch: str) -> ProcessorMixin:
    """Loads the image-only processor from a saved folder, whichever layout it was saved in.

    Reads the tokenizer and the image processor settings only, so it works without torchvision also on a
    folder written with ``write_vllm_processor_files``.
    """
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    flat = folder / "preprocessor_config.json"
    if flat.is_file():
        settings = json.loads(flat.read_text())
    else:
        settings = json.loads((folder / "processor_config.json").read_text())["image_processor"]
    # Hub checkpoints give either `size` or the older min_pixels / max_pixels: pass whichever is there.
    keys = ("patch_size", "temporal_patch_size", "merge_size", "image_mean", "image_std", "size",
            "min_pixels", "max_pixels")  # fmt: skip
    image_processor = Qwen2VLImageProcessorPil(**{k: settings[k] for k in keys if k in settings})
    return IMAGE_ONLY_PROCESSOR[arch](image_processor, tokenizer, chat_template=tokenizer.chat_template)
