"""Cost per sample of each built-in reward through a local reward pool, against the peers' baseline.

    python benchmarks/reward_cost.py                 # 2 workers, 3 rounds of 16 samples per reward
    python benchmarks/reward_cost.py --workers 4 --batch 32 --rounds 5

Ours: ``compute_rewards(reward, batch, pool)`` with a started ``RewardPool`` (pre-forked sandbox zygotes); every
sample's code is distinct (a bar height varies), so the pool's result cache never answers.

Baseline: what the CodePercept evaluation script and most peers do, a fresh ``python`` subprocess per sample
that imports matplotlib, runs the code and saves a PNG, then the same image metrics as the ``render``
scorer (SSIM, edge F1, R_recon) in the calling process; run with as many samples in parallel as the pool has
workers. It has no sandbox (no namespaces, no rlimits), so it is the cheaper side of the comparison.

Figures: median over rounds of (batch wall time / batch size), in ms per sample, and baseline / ours. The
``codepercept`` row uses the deterministic stand-ins (no judge endpoint here; a judge adds its HTTP latency
and one more render per sample). ``caption_grounded`` renders each distinct reference once and caches it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from codepercept_rl.rewards import RewardSample, compute_rewards, get_reward  # noqa: E402
from reward_servers import metrics  # noqa: E402
from reward_servers.pool import RewardPool  # noqa: E402
from reward_servers.scoring import decode_png  # noqa: E402

TEMPLATE = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 4))
ax.bar(["a", "b", "c"], [3, {h}, 2], color="tab:blue")
ax.set_title("Sales")
ax.text(0.5, 2.5, "peak", fontsize=14)
"""
CAPTION = "A bar chart titled 'Sales' with three blue bars of heights 3, {h} and 2; 'peak' is written at (0.5, 2.5)."
REWARDS = ("format", "exec", "render_similarity", "rlrf", "codepercept", "caption_grounded")
# These run no candidate code (format: a regex; caption_grounded: trace facts of a cached reference render),
# so a ratio against a render baseline would mean nothing.
NO_RENDER = ("format", "caption_grounded")


def _code(i: int) -> str:
    return TEMPLATE.format(h=round(0.5 + 0.01 * i, 3))


def _samples(name: str, start: int, n: int) -> list[RewardSample]:
    if name == "caption_grounded":
        return [
            RewardSample(CAPTION.format(h=round(0.5 + 0.01 * i, 3)), task="caption", reference_code=_code(0))
            for i in range(start, start + n)
        ]
    return [
        RewardSample(f"```python\n{_code(i)}```", target_id="ref", reference_code=_code(0))
        for i in range(start, start + n)
    ]


def bench_ours(pool: RewardPool, name: str, batch: int, rounds: int, offset: int) -> float:
    """Median ms per sample of one reward over ``rounds`` batches of distinct samples."""
    reward = get_reward(name)
    compute_rewards(reward, _samples(name, offset, 2), pool)  # warm: imports, reference render
    per_sample = []
    for r in range(rounds):
        samples = _samples(name, offset + 10 + r * batch, batch)
        t0 = time.perf_counter()
        out = compute_rewards(reward, samples, pool)
        per_sample.append((time.perf_counter() - t0) * 1000 / batch)
        assert all(s is not None for s in out.scores), out.errors
    return statistics.median(per_sample)


def _subprocess_sample(code: str, target: object, workdir: str, i: int) -> float:
    png = os.path.join(workdir, f"s{i}.png")
    script = code + f"\nplt.savefig({png!r}, dpi=100)\n"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=30, capture_output=True)
    pred = metrics.to_canvas(decode_png(Path(png).read_bytes()))
    ssim = metrics.ssim_gray(pred, target)
    edge = metrics.edge_similarity(pred, target)
    pixel = metrics.pixel_rms_reward(pred, target)
    return 0.25 * max(0.0, ssim) + 0.5 * edge + 0.25 * (pixel + 1) / 2


def bench_baseline(target_png: bytes, workers: int, batch: int, rounds: int) -> float:
    """Median ms per sample of subprocess-per-sample render + the same image metrics."""
    target = metrics.to_canvas(decode_png(target_png))
    per_sample = []
    with tempfile.TemporaryDirectory() as workdir, ThreadPoolExecutor(workers) as ex:
        for r in range(rounds):
            codes = [_code(1000 + r * batch + i) for i in range(batch)]
            t0 = time.perf_counter()
            list(ex.map(_subprocess_sample, codes, [target] * batch, [workdir] * batch, range(batch)))
            per_sample.append((time.perf_counter() - t0) * 1000 / batch)
    return statistics.median(per_sample)


def main() -> None:
    parser = argparse.ArgumentParser(description="cost per sample of each built-in reward")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with RewardPool(workers=args.workers) as pool:
        target_png = pool.render(_code(0)).png
        pool.register_targets({"ref": target_png})
        baseline = bench_baseline(target_png, args.workers, args.batch, args.rounds)
        print(
            f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; pool: {args.workers} workers; {args.rounds} x {args.batch} samples"
        )
        print(
            f"baseline (subprocess per sample + render metrics, {args.workers} parallel): {baseline:8.1f} ms/sample"
        )
        print(f"{'reward':20s} {'ms/sample':>10s} {'baseline/ours':>14s}")
        for k, name in enumerate(REWARDS):
            ours = bench_ours(pool, name, args.batch, args.rounds, offset=10_000 * (k + 1))
            ratio = "n/a (no render)" if name in NO_RENDER else f"{baseline / ours:.1f}x"
            print(f"{name:20s} {ours:10.2f} {ratio:>14s}")


if __name__ == "__main__":
    main()
