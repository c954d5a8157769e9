"""Per-call cost of each reward metric and of the default "render" blend, on one CPU thread.

Run: python benchmarks/metrics_cost.py [--repeats 30] [--width 640 --height 480]

Prints the median (and min) milliseconds per call over ``--repeats`` calls (after one warm-up call) for a
pair of real matplotlib renders of the given size: PNG decoding, canonicalisation to the 256x256 canvas,
each image metric on canvases, the trace F1s on a 200-element trace, and ``score_render`` end to end
(render PNG in, target canvas cached as the sandbox's zygote may do). Our figures only: there is no
baseline implementation of these rewards to compare against (the paper uses LLM judges), so unlike the
other benchmarks this one prints no ratios.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy / scipy load their thread pools

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from reward_servers import metrics  # noqa: E402
from reward_servers.scoring import decode_png, score_render  # noqa: E402


@dataclass
class _Render:
    """The RenderResult fields score_render reads."""

    status: str = "ok"
    images: list[bytes] = field(default_factory=list)
    trace: dict = field(default_factory=dict)

    @property
    def png(self) -> bytes | None:
        return self.images[0] if self.images else None


def _chart_png(width: int, height: int, phase: float) -> bytes:
    fig = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    ax = fig.add_subplot(111)
    x = np.linspace(0, 10, 300)
    for k in range(3):
        ax.plot(x, np.sin(x + phase + k), label=f"series {k}")
    ax.bar(np.arange(10), np.abs(np.cos(np.arange(10) + phase)), alpha=0.3)
    ax.set_title("Benchmark chart")
    ax.legend()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def _trace(n: int, shift: int) -> dict:
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd"]
    return {
        "axes": [
            {"grid": [2, 2, i // 2, i // 2 + 1, i % 2, i % 2 + 1], "projection": "rectilinear"}
            for i in range(4)
        ],
        "calls": {"plot": n // 2, "bar": n // 4 + shift, "text": n // 4},
        "elements": [{"type": "line", "color": palette[(i + shift) % 5]} for i in range(n)],
        "texts": [f"label {i + shift}" for i in range(n // 4)],
    }


def _times_ms(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median, min) milliseconds per call; the min shows the floor on a machine shared with other jobs."""
    fn()  # warm-up: imports, caches
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times), 1e3 * min(times)


def main() -> None:
    """Measures and prints the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    args = parser.parse_args()

    png_a, png_b = _chart_png(args.width, args.height, 0.0), _chart_png(args.width, args.height, 0.4)
    img_a, img_b = decode_png(png_a), decode_png(png_b)
    ca, cb = metrics.to_canvas(img_a), metrics.to_canvas(img_b)
    ta, tb = _trace(200, 0), _trace(200, 1)
    reference = _Render(images=[png_a], trace=ta)
    cases: dict[str, Callable[[], object]] = {
        f"decode_png {args.width}x{args.height}": lambda: decode_png(png_b),
        "to_canvas -> 256x256": lambda: metrics.to_canvas(img_b),
        "ssim_gray": lambda: metrics.ssim_gray(ca, cb),
        "ssim_rgb": lambda: metrics.ssim_rgb(ca, cb),
        "pixel_rms_reward": lambda: metrics.pixel_rms_reward(ca, cb),
        "edge_similarity (F1)": lambda: metrics.edge_similarity(ca, cb),
        "edge_recon (RLRF)": lambda: metrics.edge_recon(ca, cb),
        "trace_f1s (200 elements)": lambda: metrics.trace_f1s(ta, tb),
    }
    for reward in ("render", "rlrf", "ssim"):
        cases[f"score_render {reward!r} (PNG in)"] = lambda r=reward: score_render(
            _Render(images=[png_b]), ca, None, r
        )
    cases["score_render 'render' + trace"] = lambda: score_render(
        _Render(images=[png_b], trace=tb), ca, reference
    )

    print(
        f"median ms per call, {args.repeats} repeats, renders {args.width}x{args.height}, OMP_NUM_THREADS=1"
    )
    print("(our figures only: no baseline implementation exists for these rewards)")
    print(f"  {'':<36} {'median':>8}    {'min':>8}")
    for name, fn in cases.items():
        median, fastest = _times_ms(fn, args.repeats)
        print(f"  {name:<36} {median:8.2f} ms {fastest:8.2f} ms")


if __name__ == "__main__":
    main()
