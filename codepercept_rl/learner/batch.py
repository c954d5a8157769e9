"""``MicroBatch``: the one tensor contract between data (SFT collator, GRPO rollouts) and the learner.

Shapes: ``B`` sequences of padded length ``T``; ``P`` image patches in all of the batch's images; ``N`` images.
Targets are aligned with ``input_ids``: ``loss_mask[b, t] = 1`` means token ``input_ids[b, t]`` is trained on
(predicted from the tokens before it); :meth:`Learner.forward_logprobs` returns log-probs with the same (B, T)
alignment (``logprobs[:, 0] = 0``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["MicroBatch"]


@dataclass
class MicroBatch:
    """One forward/backward's worth of sequences on one rank.

    Attributes:
        input_ids: (B, T) token ids, right-padded with the pad id.
        attention_mask: (B, T) 1 for real tokens, 0 for padding.
        loss_mask: (B, T) float, 1 where ``input_ids`` is a target (assistant tokens in SFT).
        pixel_values: (P, D) flattened image patches of all images of the batch, in order, or None.
        image_grid_thw: (N, 3) the (t, h, w) patch grid of each image, or None.
        mm_token_type_ids: (B, T) 1 on image placeholder tokens (Qwen processors return it), or None.
        extras: per-token or per-sequence tensors a loss needs (advantages, old log-probs ...); moved with
            the batch, never passed to the model.
        ids: the row ids, for logging.
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    loss_mask: torch.Tensor
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    mm_token_type_ids: torch.Tensor | None = None
    extras: dict[str, torch.Tensor] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)

    def to(self, device: torch.device) -> MicroBatch:
        """A copy with every tensor on ``device``."""
        moved: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if isinstance(value, torch.Tensor):
                value = value.to(device, non_blocking=True)
            elif f.name == "extras":
                value = {k: v.to(device, non_blocking=True) for k, v in value.items()}
            moved[f.name] = value
        return MicroBatch(**moved)

    def model_inputs(self) -> dict[str, torch.Tensor]:
        """Keyword arguments for the Hugging Face model's forward (no labels, no cache)."""
        kwargs = {"input_ids": self.input_ids, "attention_mask": self.attention_mask}
        if self.pixel_values is not None:
            kwargs["pixel_values"] = self.pixel_values
            kwargs["image_grid_thw"] = self.image_grid_thw
        if self.mm_token_type_ids is not None:
            kwargs["mm_token_type_ids"] = self.mm_token_type_ids
        return kwargs

    @property
    def num_sequences(self) -> int:
        """B."""
        return int(self.input_ids.shape[0])

    @property
    def num_loss_tokens(self) -> int:
        """Tokens that carry loss (sum of ``loss_mask``)."""
        return int(self.loss_mask.sum().item())

    @property
    def num_real_tokens(self) -> int:
        """Non-padding tokens (sum of ``attention_mask``)."""
        return int(self.attention_mask.sum().item())

    @property
    def num_slots(self) -> int:
        """B * T: tokens the model computes, padding included."""
        return int(self.input_ids.numel())
