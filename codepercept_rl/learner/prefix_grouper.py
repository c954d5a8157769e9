"""Shared-prefix forward for GRPO groups (verl's ``actor.use_prefix_grouper``, after Liu et al. 2025, "Prefix
Grouper: Efficient GRPO Training through Shared-Prefix Forward").

A GRPO micro-batch holds G responses to one prompt, and the usual forward runs the prompt, image included, G
times: the vision tower, every decoder layer and the KV of the prompt tokens, G times, for the same result. Here
the rows of a micro-batch whose prefix (every token before the first loss token, and the images in it) is the
same form one *group*, and each group becomes one row of the model's input::

    [ prompt | response 1 | response 2 | ... | response G ]   (then padding to the longest group)

with a 4-D attention mask in which the prompt is causal on itself and each response attends to the whole prompt
and causally to its own tokens, never to another response. Each response keeps the positions it has after its
prompt (the M-RoPE positions of the padded row it came from), and the LM head scores each response token from
the hidden state before it in its own sequence: the first from the prompt's last token, so that one hidden
state scores G first tokens. Every attention score a response computes is one the padded forward computes, over
the same keys, so the log-probs are the padded forward's and the gradients too: the prompt's activations are
used G times and their gradient is the sum of the G uses, exactly as in G copies (``tests/learner/
test_prefix_grouper.py`` checks log-probs, entropy and every parameter's gradient against the padded forward).

What it saves is the prompt's share of the work: a micro-batch of G rows of ``p`` prompt and ``r`` response
tokens costs ``p + G r`` token-forwards instead of ``G (p + r)``, and the vision tower runs once per group. What
it costs is a dense ``(L, L)`` mask per group row; with no group of two rows in a micro-batch it is a packed
forward with one more mask. It needs SDPA or eager attention (a 4-D mask); flash attention's kernels take no
mask (verl's PrefixGrouper splits the attention in two for them instead).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from codepercept_rl.learner.batch import MicroBatch
from codepercept_rl.learner.packing import _rope_positions

__all__ = ["GroupedBatch", "group_prefixes", "scatter"]

MASK_ATTENTION = ("sdpa", "eager")


@dataclass
class GroupedBatch:
    """The model inputs of a micro-batch with one row per group, and where each scored token goes back to.

    ``source[k]`` is the flat index (into the ``(groups * L)`` hidden states) of the state that predicts token
    ``targets[k]``, which is ``input_ids[rows[k], cols[k]]`` of the padded micro-batch.
    """

    inputs: dict[
        str, torch.Tensor
    ]  # input_ids (R, L), position_ids (4, R, L), attention_mask (R, 1, L, L), images
    source: torch.Tensor  # (M,) long
    targets: torch.Tensor  # (M,) long
    rows: torch.Tensor  # (M,) long
    cols: torch.Tensor  # (M,) long
    shape: tuple[int, int]  # (B, T) of the padded micro-batch
    num_groups: int
    num_tokens: int  # real tokens of the grouped rows (each prompt once): what the model's layers compute on


def _row_images(mb: MicroBatch, merge: int) -> list[list[int]]:
    """The image indices (into ``image_grid_thw``) of each row: images are concatenated in row order, each with
    ``t*h*w / merge**2`` placeholder tokens."""
    B = mb.num_sequences
    if mb.image_grid_thw is None:
        return [[] for _ in range(B)]
    if mb.mm_token_type_ids is None:
        raise ValueError("use_prefix_grouper: a micro-batch with images needs its mm_token_type_ids")
    per_image = (mb.image_grid_thw.prod(-1) // (merge * merge)).tolist()
    placeholders = (mb.mm_token_type_ids * mb.attention_mask).sum(-1).tolist()
    out, image = [], 0
    for b in range(B):
        mine, count = [], 0
        while count < placeholders[b]:
            if image >= len(per_image):
                raise ValueError(
                    f"row {b} has more image placeholders than the micro-batch has image patches"
                )
            mine.append(image)
            count += per_image[image]
            image += 1
        if count != placeholders[b]:
            raise ValueError(f"row {b}: {placeholders[b]} image placeholders do not match whole images")
        out.append(mine)
    if image != len(per_image):
        raise ValueError(f"{len(per_image) - image} image(s) of the micro-batch belong to no row")
    return out


def group_prefixes(
    model: torch.nn.Module, mb: MicroBatch, attn_implementation: str, dtype: torch.dtype
) -> GroupedBatch:
    """The grouped layout of ``mb`` (module docstring). ``mb`` is right-padded (``collate``); ``model`` is the
    Hugging Face Qwen-VL model (its ``get_rope_index`` and vision config); ``dtype`` the compute dtype (for the
    additive mask of eager attention).

    Raises:
        ValueError: an attention implementation that takes no 4-D mask, a row with padding inside it or image
            placeholders after its prefix, images that do not add up to the rows' placeholders.
    """
    if attn_implementation not in MASK_ATTENTION:
        raise ValueError(
            f"actor.use_prefix_grouper needs attention that takes a 4-D mask ({MASK_ATTENTION}), "
            f"not {attn_implementation!r}: set model.attn_implementation=sdpa or turn the prefix grouper off"
        )
    B, T = mb.input_ids.shape
    real = mb.attention_mask.bool()
    lengths = real.sum(-1)
    if not torch.equal(real, torch.arange(T, device=real.device)[None] < lengths[:, None]):
        raise ValueError("use_prefix_grouper: every row must be right-padded (its real tokens first)")
    has_loss = mb.loss_mask.bool() & real
    first_loss = torch.where(has_loss.any(-1), has_loss.float().argmax(-1), lengths)
    prefix = first_loss.clamp(min=1).minimum(lengths)  # column 0 is context even when it is trained on
    vision = getattr(getattr(model, "config", None), "vision_config", None)
    merge = int(getattr(vision, "spatial_merge_size", 2))
    images = _row_images(mb, merge)
    if mb.mm_token_type_ids is not None:
        for b in range(B):
            if bool(mb.mm_token_type_ids[b, int(prefix[b]) : int(lengths[b])].any()):
                raise ValueError(f"use_prefix_grouper: row {b} has image placeholders after its prompt")
    patch_start = [0]
    if mb.image_grid_thw is not None:
        patch_start = [0, *mb.image_grid_thw.prod(-1).cumsum(0).tolist()]

    def patches(b: int) -> list[torch.Tensor]:
        return [mb.pixel_values[patch_start[i] : patch_start[i + 1]] for i in images[b]]

    # Groups: rows with equal prefix tokens, equal image grids and equal pixels, in order of first appearance.
    groups: list[list[int]] = []
    for b in range(B):
        p = int(prefix[b])
        for g in groups:
            r = g[0]
            if (
                int(prefix[r]) == p
                and torch.equal(mb.input_ids[r, :p], mb.input_ids[b, :p])
                and len(images[r]) == len(images[b])
                and all(
                    torch.equal(mb.image_grid_thw[i], mb.image_grid_thw[j])
                    for i, j in zip(images[r], images[b], strict=True)
                )
                and all(torch.equal(x, y) for x, y in zip(patches(r), patches(b), strict=True))
            ):
                g.append(b)
                break
        else:
            groups.append([b])

    rope = _rope_positions(model, mb)  # (3, B, T)
    text = torch.arange(T, device=real.device)[None].expand(B, -1)
    positions = torch.cat([text[None], rope.to(text.dtype)], 0)  # (4, B, T)
    R = len(groups)
    widths = [int(prefix[g[0]]) + sum(int(lengths[b] - prefix[b]) for b in g) for g in groups]
    L = max(widths)
    config = getattr(model, "config", None)
    placeholders = {getattr(config, "image_token_id", None), getattr(config, "video_token_id", None)}
    pad_id = next(t for t in range(3) if t not in placeholders)  # masked out; never read as an image slot
    input_ids = mb.input_ids.new_full((R, L), pad_id)
    position_ids = positions.new_zeros((4, R, L))
    mm = mb.input_ids.new_zeros((R, L))
    member = torch.full(
        (R, L), -2, dtype=torch.long, device=real.device
    )  # -1 prompt, i response i, -2 padding
    source, targets, rows, cols = [], [], [], []
    for gi, g in enumerate(groups):
        r, p = g[0], int(prefix[g[0]])
        input_ids[gi, :p] = mb.input_ids[r, :p]
        position_ids[:, gi, :p] = positions[:, r, :p]
        if mb.mm_token_type_ids is not None:
            mm[gi, :p] = mb.mm_token_type_ids[r, :p]
        member[gi, :p] = -1
        at = p
        for i, b in enumerate(g):
            n = int(lengths[b]) - p
            input_ids[gi, at : at + n] = mb.input_ids[b, p : p + n]
            position_ids[:, gi, at : at + n] = positions[:, b, p : p + n]
            member[gi, at : at + n] = i
            # Token p + j of row b is predicted from the state before it in its own sequence: the prompt's last
            # token for j = 0, else response token j - 1.
            preds = torch.arange(at - 1, at + n - 1, device=real.device)
            preds[0:1] = p - 1
            source.append(gi * L + preds)
            targets.append(mb.input_ids[b, p : p + n])
            rows.append(torch.full((n,), b, dtype=torch.long, device=real.device))
            cols.append(torch.arange(p, p + n, device=real.device))
            at += n

    idx = torch.arange(L, device=real.device)
    causal = idx[None, :] <= idx[:, None]  # (L, L): key <= query
    q, k = member[:, :, None], member[:, None, :]  # (R, L, 1), (R, 1, L)
    allowed = causal[None] & (k != -2) & (q != -2) & ((k == -1) | (k == q))
    allowed |= torch.eye(L, dtype=torch.bool, device=real.device)[
        None
    ]  # padding attends to itself: no NaN rows
    mask = allowed[:, None]  # (R, 1, L, L)
    if attn_implementation == "eager":
        mask = torch.zeros(mask.shape, dtype=dtype, device=real.device).masked_fill(
            ~mask, torch.finfo(dtype).min
        )
    inputs: dict[str, torch.Tensor] = {
        "input_ids": input_ids,
        "position_ids": position_ids,
        "attention_mask": mask,
    }
    if mb.pixel_values is not None:
        reps = [i for g in groups for i in images[g[0]]]
        if reps:
            inputs["pixel_values"] = torch.cat(
                [mb.pixel_values[patch_start[i] : patch_start[i + 1]] for i in reps]
            )
            inputs["image_grid_thw"] = mb.image_grid_thw[reps]
    if mb.mm_token_type_ids is not None:
        inputs["mm_token_type_ids"] = mm

    def cat(parts: list[torch.Tensor]) -> torch.Tensor:
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long, device=real.device)

    return GroupedBatch(
        inputs, cat(source), cat(targets), cat(rows), cat(cols), (B, T), R, int((member != -2).sum())
    )


def scatter(values: torch.Tensor, grouped: GroupedBatch) -> torch.Tensor:
    """``(B, T)`` from per-scored-token values ``(M,)``: ``out[rows[k], cols[k]] = values[k]``, 0 elsewhere (the
    prompt's columns, padding). Differentiable."""
    out = values.new_zeros(grouped.shape)
    out[grouped.rows, grouped.cols] = values
    return out
