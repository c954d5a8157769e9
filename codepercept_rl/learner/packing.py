"""Sequence packing without padding (verl's ``model.use_remove_padding``) for Qwen-VL forwards.

A padded micro-batch ``(B, T)`` becomes one row of its ``N`` real tokens ``(1, N)``: no attention, MLP or LM-head
work is spent on padding. Each sequence keeps its own positions, and the model keeps the sequences apart:

- the 3-D M-RoPE positions (temporal, height, width) come from the model's own ``get_rope_index`` on the padded
  batch, then the real tokens' columns are kept, so image tokens keep their grid positions;
- a fourth, text-only row (``0 .. len-1`` per sequence) is put first, ``position_ids`` of shape ``(4, 1, N)``:
  with no attention mask, transformers reads the restarts in that row as packed sequences and builds a
  block-diagonal causal mask (sdpa / eager) or variable-length kernels (flash attention);
- the image features need no change: a row-major walk over the real tokens meets the image placeholders in the
  order of ``pixel_values``.

:func:`unpack` puts per-token values of the packed row back into the padded ``(B, T)`` layout, with the value
of ``log p(x_t | x_<t)`` at column ``t`` and 0 where a sequence starts (as the padded forward's column 0), so
the loss code cannot tell the two apart.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codepercept_rl.learner.batch import MicroBatch

__all__ = ["PackedBatch", "pack", "unpack"]


@dataclass
class PackedBatch:
    """The model inputs of one packed row and where its tokens came from."""

    inputs: dict[str, torch.Tensor]  # input_ids (1, N), position_ids (4, 1, N), images, no attention_mask
    real: torch.Tensor  # (B, T) bool: the padded layout's real tokens, in packing order (row-major)

    @property
    def input_ids(self) -> torch.Tensor:
        """(1, N)."""
        return self.inputs["input_ids"]


def _rope_positions(model: torch.nn.Module, mb: MicroBatch) -> torch.Tensor:
    """(3, B, T) M-RoPE positions of the padded batch, by the model's own ``get_rope_index``."""
    text = (mb.attention_mask.long().cumsum(-1) - 1).clamp_min(0)
    if mb.pixel_values is None:
        return text[None].expand(3, -1, -1)
    inner = model.model  # Qwen2_5_VLModel / Qwen3VLModel: get_rope_index reads the config only
    if mb.mm_token_type_ids is None:
        raise ValueError("packing a micro-batch with images needs its mm_token_type_ids (the M-RoPE layout)")
    positions, _ = inner.get_rope_index(
        mb.input_ids, mm_token_type_ids=mb.mm_token_type_ids, image_grid_thw=mb.image_grid_thw,
        attention_mask=mb.attention_mask,
    )  # fmt: skip
    return positions


def pack(model: torch.nn.Module, mb: MicroBatch) -> PackedBatch:
    """The packed row of ``mb`` (see the module docstring); ``model`` is the Hugging Face Qwen-VL model.

    Raises:
        ValueError: a row whose real tokens are not contiguous (padding inside a sequence), or images without
            ``mm_token_type_ids``.
    """
    real = mb.attention_mask.bool()
    lengths = real.sum(-1)
    # Left or right padding only: the real tokens of a row must be one run, or positions would not restart.
    first = real.long().argmax(-1)
    inside = torch.arange(real.shape[1], device=real.device)[None] - first[:, None]
    if not torch.equal(real, (inside >= 0) & (inside < lengths[:, None])):
        raise ValueError(
            "sequence packing needs each row's real tokens in one contiguous run (left/right padding)"
        )
    rope = _rope_positions(model, mb)  # (3, B, T)
    text = (real.long().cumsum(-1) - 1).clamp_min(0)
    position_ids = torch.cat([text[None], rope.to(text.dtype)], 0)[:, real][:, None, :]  # (4, 1, N)
    inputs: dict[str, torch.Tensor] = {"input_ids": mb.input_ids[real][None], "position_ids": position_ids}
    if mb.pixel_values is not None:
        inputs["pixel_values"] = mb.pixel_values
        inputs["image_grid_thw"] = mb.image_grid_thw
    if mb.mm_token_type_ids is not None:
        inputs["mm_token_type_ids"] = mb.mm_token_type_ids[real][None]
    return PackedBatch(inputs, real)


def unpack(values: torch.Tensor, packed: PackedBatch) -> torch.Tensor:
    """``(B, T)`` from per-token values of the packed row, aligned as ``values[0, k]`` = the value for packed
    token ``k + 1`` predicted from token ``k`` (shape ``(1, N - 1)``); 0 at each sequence's first token and on
    padding. Differentiable (a scatter into zeros)."""
    real = packed.real
    B, T = real.shape
    # Packed index of each real token; a token whose left neighbour is real is predicted at (its index - 1).
    index = (real.reshape(-1).long().cumsum(0) - 1).reshape(B, T)
    predicted = real.clone()
    predicted[:, 1:] &= real[:, :-1]
    predicted[:, 0] = False
    out = values.new_zeros(B, T)
    out[predicted] = values[0, index[predicted] - 1]
    return out
