"""A reward with signal for an untrained model (tests only): the render reward through the real sandboxed pool,
plus the share of the answer that is digits.

A random tiny policy almost never writes code that draws, so the render reward alone gives every group the same
score and GRPO would have nothing to learn from; the digit share varies within groups, so every phase runs.
"""

from codepercept_rl.rewards import RewardOutput


def digit_share(samples, backend):
    items = [{"code": s.completion, "target_id": s.target_id, "reward": "render"} for s in samples]
    results = backend.score(items)  # sandboxed renders: the completions are untrusted code
    render = [r.score for r in results]
    digits = [sum(ch.isdigit() for ch in s.completion) / max(1, len(s.completion)) for s in samples]
    scores = [r + d for r, d in zip(render, digits, strict=True)]
    return RewardOutput(
        scores, components={"digits": digits, "render": render}, statuses=[r.status for r in results]
    )


def overflowing(samples, backend):
    """A broken reward (tests only): finite scores so large (up to 3e38, near float32's limit) that, without std
    normalisation, the policy loss overflows and its gradient is not finite. Scores differ within a group (they
    depend on the completion's characters), so every step has a non-zero advantage."""
    scores = [3e38 * (sum(map(ord, s.completion)) % 97) / 96 for s in samples]
    return RewardOutput(scores, statuses=["ok"] * len(samples))


def flat_for_listed(samples, backend):
    """For dynamic sampling (tests only): answers to the items named in ``$FLAT_ITEMS`` (comma-separated item ids)
    all score 0.5, so their groups are dropped; the others score ``digit_share`` plus a term of their characters,
    so that different answers to one prompt score differently and their groups are kept."""
    import os

    flat = set(filter(None, os.environ.get("FLAT_ITEMS", "").split(",")))
    out = digit_share(samples, backend)
    scores = [0.5 if s.extra.get("item_id") in flat else v + (sum(map(ord, s.completion)) % 97) / 97
              for s, v in zip(samples, out.scores, strict=True)]  # fmt: skip
    return RewardOutput(scores, components=out.components, statuses=out.statuses)
