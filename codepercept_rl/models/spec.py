"""Size presets for the tiny offline Qwen-VL models.

A ``TinyModelSpec`` holds every size that matters for speed; ``PRESETS`` names three:

- ``nano``: the fastest thing that is still a real Qwen-VL (unit tests: build + forward + generate in ~1 s);
- ``tiny``: the CPU miniature pipeline (learns short matplotlib programs in minutes on 2 cores);
- ``small``: hidden 384, for runs that want some capacity.

Constraints the presets respect (``TinyModelSpec.validate`` checks them):

- ``head_dim >= 32`` and ``hidden_size == heads * head_dim`` in both towers: vLLM's CPU attention only has
  kernels for head sizes 32, 64, 80, ...; Qwen2.5-VL's text config has no ``head_dim`` field;
- ``mrope_section`` (derived here) sums to ``head_dim // 2``;
- images are small (64-128 px): ``max_pixels`` caps an image at a handful of tokens
  (``(H / patch / merge) * (W / patch / merge)``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

Arch = Literal["qwen2_5_vl", "qwen3_vl"]
ARCHS: tuple[Arch, ...] = ("qwen2_5_vl", "qwen3_vl")
VLLM_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 256)


@dataclass(frozen=True)
class TinyModelSpec:
    """Sizes of a tiny Qwen-VL model (language model, vision tower, tokenizer, image budget)."""

    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vision_depth: int
    vision_hidden_size: int
    vision_heads: int
    vision_intermediate_size: int
    patch_size: int = 14  # Qwen2.5-VL's; Qwen3-VL uses qwen3_patch_size
    qwen3_patch_size: int = 16
    spatial_merge_size: int = 2
    vocab_size: int = 2048
    max_position_embeddings: int = 4096
    min_pixels: int = 56 * 56
    max_pixels: int = 112 * 112
    rope_theta: float = 10_000.0
    rms_norm_eps: float = 1e-6

    def patch_for(self, arch: str) -> int:
        """Vision patch size used by ``arch`` (14 for Qwen2.5-VL, 16 for Qwen3-VL, like the real models)."""
        return self.qwen3_patch_size if arch == "qwen3_vl" else self.patch_size

    def mrope_section(self, arch: str) -> list[int]:
        """Multimodal RoPE split of ``head_dim // 2`` frequencies into (temporal, height, width).

        Keeps the real models' proportions: Qwen2.5-VL [16, 24, 24] of 64, Qwen3-VL [24, 20, 20] of 64.
        """
        half = self.head_dim // 2
        if arch == "qwen3_vl":
            hw = half * 20 // 64
            return [half - 2 * hw, hw, hw]
        t = half // 4
        return [t, (half - t) // 2, half - t - (half - t) // 2]

    def validate(self) -> None:
        """Raises ValueError naming the first size constraint this spec breaks."""
        if self.hidden_size != self.num_heads * self.head_dim:
            raise ValueError(
                f"hidden_size {self.hidden_size} != num_heads {self.num_heads} * head_dim {self.head_dim}"
            )
        if self.head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"head_dim {self.head_dim} not in {VLLM_CPU_HEAD_DIMS} (vLLM CPU attention kernels)"
            )
        if self.num_heads % self.num_kv_heads:
            raise ValueError(
                f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}"
            )
        vision_head_dim, rem = divmod(self.vision_hidden_size, self.vision_heads)
        if rem or vision_head_dim not in VLLM_CPU_HEAD_DIMS:
            raise ValueError(
                f"vision head dim {self.vision_hidden_size}/{self.vision_heads} must be one of {VLLM_CPU_HEAD_DIMS}"
            )
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels {self.min_pixels} > max_pixels {self.max_pixels}")
        for arch in ARCHS:
            if sum(self.mrope_section(arch)) != self.head_dim // 2:
                raise ValueError(f"mrope_section {self.mrope_section(arch)} does not sum to head_dim / 2")

    def max_image_tokens(self, arch: str) -> int:
        """Upper bound of LM tokens per image (``max_pixels`` / (patch * merge)^2)."""
        return self.max_pixels // (self.patch_for(arch) * self.spatial_merge_size) ** 2

    def replace(self, **changes: int | float) -> TinyModelSpec:
        """A copy with some fields changed (validated)."""
        spec = dataclasses.replace(self, **changes)
        spec.validate()
        return spec


PRESETS: dict[str, TinyModelSpec] = {
    "nano": TinyModelSpec(
        hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, head_dim=32, intermediate_size=128,
        vision_depth=2, vision_hidden_size=64, vision_heads=2, vision_intermediate_size=128,
        vocab_size=1024, max_position_embeddings=2048, min_pixels=56 * 56, max_pixels=64 * 64,
    ),
    "tiny": TinyModelSpec(
        hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, head_dim=32, intermediate_size=384,
        vision_depth=2, vision_hidden_size=64, vision_heads=2, vision_intermediate_size=192,
        vocab_size=2048, max_position_embeddings=4096, min_pixels=56 * 56, max_pixels=112 * 112,
    ),
    "small": TinyModelSpec(
        hidden_size=384, num_layers=8, num_heads=6, num_kv_heads=2, head_dim=64, intermediate_size=1024,
        vision_depth=4, vision_hidden_size=128, vision_heads=2, vision_intermediate_size=512,
        vocab_size=2048, max_position_embeddings=8192, min_pixels=56 * 56, max_pixels=128 * 128,
    ),
}  # fmt: skip


def get_spec(preset: str | TinyModelSpec) -> TinyModelSpec:
    """Looks up a named preset (or validates and passes through a spec).

    Raises:
        ValueError: unknown preset name, or a spec that breaks a size constraint.
    """
    if isinstance(preset, TinyModelSpec):
        spec = preset
    elif preset in PRESETS:
        spec = PRESETS[preset]
    else:
        raise ValueError(
            f"unknown preset {preset!r}; choose one of {sorted(PRESETS)} or pass a TinyModelSpec"
        )
    spec.validate()
    return spec
