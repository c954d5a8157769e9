"""S1 data: the messages-JSONL dataset (:mod:`.s1`) and its batching (:mod:`.batching`)."""

from codepercept_rl.data.batching import (
    collate,
    global_batches,
    mixture_order,
    padding_share,
    rank_micro_batches,
)
from codepercept_rl.data.s1 import BadRow, S1Dataset, S1Example, render_prompt, tokenize_conversation

__all__ = [
    "BadRow",
    "S1Dataset",
    "S1Example",
    "collate",
    "global_batches",
    "mixture_order",
    "padding_share",
    "rank_micro_batches",
    "render_prompt",
    "tokenize_conversation",
]
