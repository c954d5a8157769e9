"""From examples to micro-batches: task mixture, global batches, rank shards, length grouping, collation.

One optimizer step consumes one *global batch* of ``data.train_batch_size`` examples. Every rank computes
the same epoch order (seeded by ``seed`` and the epoch), takes the same global batch and keeps its share:

- ``group_by_length=True``: the global batch is sorted by length and cut into micro-batches of neighbouring
  lengths, dealt round-robin to the ranks (so ranks get similar token counts): little padding, and the *set* of examples in each optimizer step is unchanged (the learner's loss is normalised
  by the global target-token count, so the gradient does not depend on the grouping);
- ``group_by_length=False``: contiguous shards in epoch order, micro-batches in that order.

:func:`padding_share` measures what the grouping saves (``benchmarks/sft_step.py`` prints it side by side).
:func:`lockstep_shard` splits the generation check's rows over ranks that must call ``generate`` together.
"""

from __future__ import annotations

import math
import random
from collections.abc import Hashable, Mapping, Sequence

import torch

from codepercept_rl.data.s1 import S1Example
from codepercept_rl.learner.batch import MicroBatch

__all__ = [
    "mixture_order",
    "global_batches",
    "rank_micro_batches",
    "padding_share",
    "collate",
    "lockstep_shard",
]


def mixture_order(
    tasks: Sequence[str], ratio: Mapping[str, float], seed: int, epoch: int, shuffle: bool = True
) -> list[int]:
    """The example indices of one epoch, mixing tasks by ``ratio``, shuffled reproducibly.

    An epoch has as many items as the dataset. With ``ratio`` empty every example appears once. Otherwise
    task ``t`` contributes ``round(ratio[t] / sum(ratio) * len(tasks))`` items: a random subset of its
    examples when it has more, all of them plus random repeats when it has fewer; tasks ``ratio`` does not
    name contribute nothing. ``shuffle=False`` keeps file order (task by task when mixing).

    Raises:
        ValueError: a ratio for a task with no example, a negative ratio, or all ratios zero.
    """
    rng = random.Random(seed * 1_000_003 + epoch)
    if not ratio:
        order = list(range(len(tasks)))
        if shuffle:
            rng.shuffle(order)
        return order
    by_task: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        by_task.setdefault(t, []).append(i)
    total = sum(ratio.values())
    if any(r < 0 for r in ratio.values()) or total <= 0:
        raise ValueError(f"sft.task_ratio must be non-negative with a positive sum, got {dict(ratio)}")
    order = []
    for task, r in ratio.items():
        pool = by_task.get(task)
        if not pool:
            raise ValueError(
                f"sft.task_ratio names task '{task}' but no training row has it (tasks: {sorted(by_task)})"
            )
        want = round(r / total * len(tasks))
        reps, rest = divmod(want, len(pool))
        order += pool * reps + (rng.sample(pool, rest) if shuffle else pool[:rest])
    if shuffle:
        rng.shuffle(order)
    return order


def global_batches(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Consecutive global batches of ``batch_size``; the incomplete tail is dropped (every step equal)."""
    return [list(order[i : i + batch_size]) for i in range(0, len(order) - batch_size + 1, batch_size)]


def rank_micro_batches(
    batch: Sequence[int],
    lengths: Sequence[int],
    rank: int,
    world_size: int,
    micro_batch_size: int,
    group_by_length: bool = True,
) -> list[list[int]]:
    """This rank's micro-batches (lists of example indices) of one global batch.

    Raises:
        ValueError: the global batch does not split evenly over the ranks.
    """
    if len(batch) % world_size:
        raise ValueError(f"global batch of {len(batch)} does not split over {world_size} ranks")
    if group_by_length:
        ranked = sorted(batch, key=lambda i: (-lengths[i], i))
        if len(batch) % (world_size * micro_batch_size) == 0:
            # Deal whole micro-batches of neighbours round-robin: as little padding as on one rank.
            chunks = [ranked[i : i + micro_batch_size] for i in range(0, len(ranked), micro_batch_size)]
            return chunks[rank::world_size]
        share = ranked[rank::world_size]  # uneven split: deal single rows so every rank gets as many
    else:
        per_rank = len(batch) // world_size
        share = list(batch[rank * per_rank : (rank + 1) * per_rank])
    return [share[i : i + micro_batch_size] for i in range(0, len(share), micro_batch_size)]


def lockstep_shard(kinds: Sequence[Hashable], rank: int, world_size: int) -> list[tuple[int, bool]]:
    """This rank's share of items that all ranks process together, one call each: ``(item, counted)`` pairs.

    Items are dealt round-robin within each kind (kinds in order of first appearance), and a rank short of items
    of a kind repeats that kind's first item with ``counted=False``: every rank makes the same number of calls,
    and call ``k`` is of the same kind on every rank (the generation check's kind: the row has images or not, so
    the vision tower's sharded blocks run on all ranks or on none). Every item is counted exactly once.
    """
    by_kind: dict[Hashable, list[int]] = {}
    for i, kind in enumerate(kinds):
        by_kind.setdefault(kind, []).append(i)
    calls: list[tuple[int, bool]] = []
    for items in by_kind.values():
        mine = items[rank::world_size]
        calls += [(i, True) for i in mine] + [(items[0], False)] * (-(-len(items) // world_size) - len(mine))
    return calls


def padding_share(micro_batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> tuple[int, int]:
    """``(padding slots, total slots)`` when each micro-batch is padded to its longest sequence."""
    pad = slots = 0
    for mb in micro_batches:
        longest = max(lengths[i] for i in mb)
        slots += longest * len(mb)
        pad += sum(longest - lengths[i] for i in mb)
    return pad, slots


def collate(
    examples: Sequence[S1Example], pad_id: int, image_token_id: int, pad_to_multiple: int = 1
) -> MicroBatch:
    """Right-pads examples into one :class:`MicroBatch`; images are concatenated in example order.

    Args:
        examples: the micro-batch's examples.
        pad_id: the tokenizer's pad id.
        image_token_id: the image placeholder id (marks ``mm_token_type_ids``).
        pad_to_multiple: round the padded length up to a multiple of this (tensor-core friendly on GPU).
    """
    longest = max(e.length for e in examples)
    longest = math.ceil(longest / pad_to_multiple) * pad_to_multiple
    batch = len(examples)
    input_ids = torch.full((batch, longest), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((batch, longest), dtype=torch.long)
    loss_mask = torch.zeros((batch, longest), dtype=torch.float32)
    for b, e in enumerate(examples):
        input_ids[b, : e.length] = e.input_ids
        attention_mask[b, : e.length] = 1
        loss_mask[b, : e.length] = e.loss_mask
    pixels = [e.pixel_values for e in examples if e.pixel_values is not None]
    grids = [e.image_grid_thw for e in examples if e.image_grid_thw is not None]
    return MicroBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        loss_mask=loss_mask,
        pixel_values=torch.cat(pixels) if pixels else None,
        image_grid_thw=torch.cat(grids) if grids else None,
        mm_token_type_ids=(input_ids == image_token_id).long(),
        ids=[e.id for e in examples],
    )
