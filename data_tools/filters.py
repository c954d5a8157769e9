"""Filters over a dataset: blank/degenerate images, executability, near-duplicates, and R1 difficulty.

    python -m codepercept_rl.cli data filter DIR --out DIR2 --blank --exec --dedup
    python -m codepercept_rl.cli data filter DIR --out DIR2 --difficulty --policy-url URL --policy-model M

* ``blank_reason(png)``: why an image is degenerate ("blank", "tiny", "solid ...") or None.
* ``executable(items, renderer)``: re-renders every item through the sandbox; keeps those that render ``ok``
  with a non-blank image.
* ``dedup(items, pngs)``: near-duplicate groups (``data_tools.dedup``); keeps the first item of each group.
* ``difficulty_filter(items, pngs, policy, pool)``: samples ``k`` answers per prompt from ``policy``, scores
  each with the reward pool (sandboxed render, compared with the item's image), and keeps items whose pass
  rate (score >= ``threshold``) lies in ``band`` (DAPO-style: neither always solved nor never).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from data_tools.dedup import code_hash, find_duplicates, image_signature
from data_tools.policy import Policy, PolicyPrompt
from data_tools.prompts import R1_PROMPT
from data_tools.render import Renderer
from data_tools.store import Item
from reward_servers.pool import RewardPool
from reward_servers.scoring import decode_png

MIN_SIDE_PX = 16
MIN_INK_FRACTION = 0.002  # share of pixels that differ from the background; below this the image is "blank"


def blank_reason(png: bytes | None) -> str | None:
    """Why the image is unusable as a training target, or None if it is fine.

    "missing" (no image), "undecodable: ..." , "tiny WxH" (a side under 16 px), "blank" (under 0.2 % of pixels
    differ from the most common colour by more than 16 levels).
    """
    if not png:
        return "missing"
    try:
        rgb = decode_png(png)
    except ValueError as e:
        return f"undecodable: {e}"
    h, w = rgb.shape[:2]
    if min(h, w) < MIN_SIDE_PX:
        return f"tiny {w}x{h}"
    flat = rgb.reshape(-1, 3).astype(np.int16)
    colours, counts = np.unique(flat[:: max(1, len(flat) // 20000)], axis=0, return_counts=True)
    background = colours[np.argmax(counts)]
    ink = np.abs(flat - background).max(axis=1) > 16
    if ink.mean() < MIN_INK_FRACTION:
        return "blank"
    return None


@dataclass
class FilterReport:
    """Which items a filter kept, and why each other one was removed."""

    kept: list[Item]
    removed: dict[str, str] = field(default_factory=dict)  # id -> reason
    details: dict[str, float] = field(default_factory=dict)  # id -> pass rate (difficulty filter)


def executable(items: Sequence[Item], renderer: Renderer) -> FilterReport:
    """Keep the items whose code re-renders ``ok`` in the sandbox with a non-blank image."""
    results = renderer.render_many([it.code for it in items])
    kept, removed = [], {}
    for item, res in zip(items, results, strict=True):
        reason = res.status if res.status != "ok" else blank_reason(res.png)
        if reason is None:
            kept.append(item)
        else:
            removed[item.id] = f"re-render: {reason}" + (f" ({res.error[:120]})" if res.error else "")
    return FilterReport(kept, removed)


def blank(items: Sequence[Item], pngs: Sequence[bytes]) -> FilterReport:
    """Drop items whose stored image is blank or degenerate."""
    kept, removed = [], {}
    for item, png in zip(items, pngs, strict=True):
        reason = blank_reason(png)
        if reason is None:
            kept.append(item)
        else:
            removed[item.id] = reason
    return FilterReport(kept, removed)


def drawn_texts(item: Item) -> tuple[str, ...] | None:
    """The sorted texts the item's program drew (from its trace), or None when it has no trace."""
    texts = item.trace.get("texts") if isinstance(item.trace, dict) else None
    return tuple(sorted(str(t) for t in texts)) if isinstance(texts, list) else None


def dedup(
    items: Sequence[Item], pngs: Sequence[bytes], max_distance: int = 4, max_mad: float = 1.0
) -> FilterReport:
    """Drop items that duplicate an earlier kept one (``data_tools.dedup.find_duplicates``)."""
    dups = find_duplicates(
        [image_signature(p) for p in pngs],
        [code_hash(it.code) for it in items],
        [drawn_texts(it) for it in items],
        max_distance=max_distance,
        max_mad=max_mad,
    )
    kept = [it for j, it in enumerate(items) if j not in dups]
    removed = {items[j].id: f"near-duplicate of {items[i].id}" for j, i in dups.items()}
    return FilterReport(kept, removed)


def difficulty_filter(
    items: Sequence[Item],
    pngs: Sequence[bytes],
    policy: Policy,
    pool: RewardPool,
    *,
    k: int = 8,
    band: tuple[float, float] = (0.25, 0.75),
    threshold: float = 0.9,
    reward: str = "render",
    prompt: str = R1_PROMPT,
) -> FilterReport:
    """R1's difficulty filter: keep items whose pass rate over ``k`` policy samples lies in ``band``.

    Args:
        items: candidate prompts (their image is the target).
        pngs: the items' images, same order.
        policy: anything with ``generate(prompts_with_images, n) -> list[list[str]]``.
        pool: reward pool that renders (sandboxed) and scores each sample against the item's image.
        k: samples per prompt.
        band: inclusive [low, high] pass-rate band kept.
        threshold: a sample passes when its reward score is >= this.
        reward: reward name (``reward_servers.scoring.SCORERS``).
        prompt: the text sent with each image.

    Raises:
        ValueError: bad ``k``/``band``, or the policy returned the wrong number of samples.
    """
    if k < 1 or not 0.0 <= band[0] <= band[1] <= 1.0:
        raise ValueError(f"need k >= 1 and 0 <= low <= high <= 1; got k={k}, band={band}")
    samples = policy.generate([PolicyPrompt(prompt, png) for png in pngs], k)
    if len(samples) != len(items) or any(len(s) != k for s in samples):
        raise ValueError(
            f"policy returned {[len(s) for s in samples]} samples for {len(items)} prompts x {k}"
        )
    batch = [
        {"code": text, "target_png": png, "reward": reward}
        for png, texts in zip(pngs, samples, strict=True)
        for text in texts
    ]
    scores = [r.score for r in pool.score(batch)]
    kept, removed, rates = [], {}, {}
    for i, item in enumerate(items):
        rate = sum(s >= threshold for s in scores[i * k : (i + 1) * k]) / k
        rates[item.id] = rate
        if band[0] <= rate <= band[1]:
            kept.append(item)
        else:
            removed[item.id] = f"pass rate {rate:.3f} outside [{band[0]}, {band[1]}]"
    return FilterReport(kept, removed, rates)
