"""A user's own reward, selected by config without touching the package::

    <any job> <recipe>.yaml reward.path=examples/custom_reward.py:ssim_with_length_cap
    # the trainer calls codepercept_rl.rewards.build_reward(cfg.reward), which loads this function

SSIM of the render against the target (the code runs in the reward backend's sandbox, never here), minus 0.2
for answers over 4,000 characters. ``None`` (could not score) where the backend refused the sample.
"""

from collections.abc import Sequence

from codepercept_rl.rewards import RewardBackend, RewardOutput, RewardSample

MAX_CHARS = 4000


def ssim_with_length_cap(samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
    """One score per sample: render SSIM against the target, minus 0.2 past ``MAX_CHARS`` characters."""
    keys = ("target_id", "target_png", "reference_code")
    items = [{"code": s.completion, "reward": "ssim", **{k: getattr(s, k) for k in keys}} for s in samples]
    results = backend.score(items)
    scores, ssim, too_long = [], [], []
    for sample, result in zip(samples, results, strict=True):
        long_answer = isinstance(sample.completion, str) and len(sample.completion) > MAX_CHARS
        ssim.append(max(0.0, result.metrics.get("ssim", 0.0)) if result.status == "ok" else 0.0)
        too_long.append(float(long_answer))
        scores.append(None if result.status == "bad_request" else ssim[-1] - 0.2 * long_answer)
    statuses = [r.status for r in results]
    return RewardOutput(scores, components={"ssim": ssim, "too_long": too_long}, statuses=statuses)
