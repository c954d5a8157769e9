"""Typed data that crosses actor boundaries in a GRPO step, and its packing into learner micro-batches.

``Rollout`` (one completion with its prompt index, score and components) -> ``TrainBatch`` (the step's kept
groups) -> ``MicroBatch`` (tensors for :class:`~codepercept_rl.learner.Learner`). Response tokens are aligned
with ``input_ids`` (``loss_mask`` = 1 on response tokens), and per-token tensors the GRPO loss needs travel in
``MicroBatch.extras``: ``advantages``, ``old_logprobs``, ``ref_logprobs``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from codepercept_rl.data.batching import collate
from codepercept_rl.data.s1 import S1Example
from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.rollout import RolloutPrompt, to_structured_messages


@dataclass
class Rollout:
    """One sampled completion and what the reward made of it."""

    prompt_index: int  # position of the prompt in the step's prompt list
    item_index: int  # row of the dataset
    token_ids: list[int]
    text: str
    finish_reason: str
    score: float | None = None
    components: dict[str, float | None] = field(default_factory=dict)
    status: str = "ok"
    advantage: float = 0.0
    logprobs: list[float] | None = (
        None  # the engine's, of token_ids at the sampling temperature, when it gives them
    )


@dataclass
class TrainBatch:
    """The groups a step trains on: ``rollouts[i]`` answers ``prompts[rollouts[i].prompt_index]``."""

    prompts: list[RolloutPrompt]
    rollouts: list[Rollout]


# (input_ids (L,), pixel_values (P, D) | None, image_grid_thw (N, 3) | None) of one prompt
Encoding = tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]


class PromptEncoder:
    """Tokenises prompts (chat template + images); a group's G rollouts share one encoding.

    The cache holds the last ``max_cached`` prompts (least recently used out first): a step encodes its prompts
    once for packing and again for its metrics, and the next step brings new ones, so an unbounded cache would
    keep every prompt's pixel values of an epoch in the driver (hundreds of GB for the paper's R1 set). Entries
    keep a reference to their prompt, so an ``id`` is never reused while it is a key.
    """

    def __init__(self, processor: Any, max_cached: int = 256) -> None:
        if max_cached < 1:
            raise ValueError(f"PromptEncoder.max_cached must be >= 1, got {max_cached}")
        self.processor = processor
        self.max_cached = max_cached
        self._cache: OrderedDict[int, tuple[RolloutPrompt, Encoding]] = OrderedDict()

    def encode(self, prompt: RolloutPrompt) -> Encoding:
        """``(input_ids (L,), pixel_values (P, D) | None, image_grid_thw (N, 3) | None)`` of a prompt."""
        key = id(prompt)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key][1]
        text = self.processor.apply_chat_template(
            to_structured_messages(prompt.messages), add_generation_prompt=True, tokenize=False
        )
        images = prompt.pil_images()
        enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        encoded = (enc["input_ids"][0], enc.get("pixel_values"), enc.get("image_grid_thw"))
        self._cache[key] = (prompt, encoded)
        if len(self._cache) > self.max_cached:
            self._cache.popitem(last=False)
        return encoded

    def __len__(self) -> int:
        """Prompts cached now."""
        return len(self._cache)


def build_micro_batches(
    batch: TrainBatch,
    order: Sequence[int],
    encoder: PromptEncoder,
    micro_batch_size: int,
    *,
    old_logprobs: Sequence[torch.Tensor] | None = None,
    ref_logprobs: Sequence[torch.Tensor] | None = None,
) -> list[MicroBatch]:
    """Pack the rollouts ``order`` (indices into ``batch.rollouts``) into micro-batches of at most
    ``micro_batch_size`` sequences, with per-token advantages and (when given) old/reference log-probs.

    ``old_logprobs[k]`` / ``ref_logprobs[k]`` are the (T_k,) response log-probs of ``order[k]``.
    """
    processor = encoder.processor
    pad_id = processor.tokenizer.pad_token_id
    image_token_id = processor.tokenizer.convert_tokens_to_ids(processor.image_token)
    out = []
    for start in range(0, len(order), micro_batch_size):
        chunk = list(range(start, min(start + micro_batch_size, len(order))))
        examples, prompt_lens = [], []
        for k in chunk:
            r = batch.rollouts[order[k]]
            ids, pixels, grid = encoder.encode(batch.prompts[r.prompt_index])
            resp = torch.tensor(r.token_ids, dtype=torch.long)
            input_ids = torch.cat([ids, resp])
            loss_mask = torch.cat([torch.zeros(len(ids)), torch.ones(len(resp))])
            examples.append(S1Example(str(order[k]), "rl", input_ids, loss_mask, pixels, grid, [], []))
            prompt_lens.append(len(ids))
        mb = collate(examples, pad_id, image_token_id)
        B, T = mb.input_ids.shape
        adv = torch.zeros(B, T)
        for b, k in enumerate(chunk):
            adv[b] = batch.rollouts[order[k]].advantage
        mb.extras["advantages"] = (
            adv * mb.loss_mask
        )  # (B, T): the sequence's advantage on its response tokens
        for name, per_seq in (("old_logprobs", old_logprobs), ("ref_logprobs", ref_logprobs)):
            if per_seq is None:
                continue
            full = torch.zeros(B, T, dtype=per_seq[chunk[0]].dtype if chunk else torch.float32)
            for b, k in enumerate(chunk):
                lp = per_seq[k]
                full[b, prompt_lens[b] : prompt_lens[b] + len(lp)] = lp
            mb.extras[name] = full
        mb.ids = [str(order[k]) for k in chunk]
        out.append(mb)
    return out


def response_logprobs(logprobs: torch.Tensor, mb: MicroBatch) -> list[torch.Tensor]:
    """Split a micro-batch's (B, T) log-probs into each row's response part (where ``loss_mask`` is 1)."""
    return [logprobs[b][mb.loss_mask[b].bool()].detach().cpu() for b in range(logprobs.shape[0])]
