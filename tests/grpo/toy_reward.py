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
