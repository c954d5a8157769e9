"""Training curves of a run as PNGs: ``codepercept-rl plot RUN_DIR [--keys actor/ critic/] [--out DIR]``.

Reads ``RUN_DIR/metrics.jsonl`` (the Tracker's file) and draws one PNG per metric group (the part of the name
before the first ``/``: ``actor``, ``critic``, ``timing_s`` ...), one panel per metric, step on the x axis, with a
moving average over noisy series. Plots go to ``RUN_DIR/plots/`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import argparse
import math
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from codepercept_rl.errors import UserError
from codepercept_rl.tracking import read_metrics


def plot_run(
    run_dir: str | os.PathLike, out_dir: str | os.PathLike | None = None, keys: Sequence[str] | None = None
) -> list[Path]:
    """Draw the run's numeric metrics, grouped by prefix, to PNG files.

    Args:
        run_dir: a run directory with ``metrics.jsonl``.
        out_dir: where the PNGs go (default ``run_dir/plots``).
        keys: only metrics whose name starts with one of these prefixes (default: all).

    Returns:
        The PNG paths written, one per group.

    Raises:
        UserError: no metrics file, or no numeric metric matched.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    try:
        records = read_metrics(run_dir)
    except FileNotFoundError as e:
        raise UserError(f"{e}: is '{run_dir}' a run directory?") from None
    series: dict[str, tuple[list[int], list[float]]] = defaultdict(lambda: ([], []))
    for rec in records:
        for name, value in rec.items():
            if name in ("step", "time") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if keys and not any(name.startswith(k) for k in keys):
                continue
            if not math.isfinite(value):
                continue
            xs, ys = series[name]
            xs.append(rec["step"])
            ys.append(float(value))
    if not series:
        raise UserError(f"no numeric metrics{' matching ' + str(list(keys)) if keys else ''} in {run_dir}")

    groups: dict[str, list[str]] = defaultdict(list)
    for name in sorted(series):
        groups[name.split("/", 1)[0] if "/" in name else "metrics"].append(name)

    out = Path(out_dir) if out_dir is not None else Path(run_dir) / "plots"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for group, names in groups.items():
        cols = min(3, len(names))
        rows = math.ceil(len(names) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for ax, name in zip(axes.flat, names, strict=False):
            xs, ys = series[name]
            ax.plot(
                xs,
                ys,
                lw=1.0,
                alpha=0.45 if len(ys) > 20 else 1.0,
                marker="o" if len(ys) < 30 else None,
                ms=3,
            )
            if len(ys) > 20:
                ax.plot(xs, _moving_average(ys, max(3, len(ys) // 20)), lw=1.8, label="moving avg")
                ax.legend(fontsize=7, loc="best")
            ax.set_title(name, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[len(names) :]:
            ax.axis("off")
        fig.suptitle(f"{Path(run_dir).name}: {group}", fontsize=10)
        fig.tight_layout()
        path = out / f"{group.replace(os.sep, '_')}.png"
        tmp = path.with_suffix(".png.tmp")
        fig.savefig(tmp, dpi=100, format="png")
        plt.close(fig)
        os.replace(tmp, path)
        written.append(path)
    return written


def _moving_average(ys: list[float], window: int) -> list[float]:
    out, acc = [], 0.0
    for i, y in enumerate(ys):
        acc += y
        if i >= window:
            acc -= ys[i - window]
        out.append(acc / min(i + 1, window))
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """``codepercept-rl plot RUN_DIR``: write the run's training curves as PNGs and print their paths."""
    parser = argparse.ArgumentParser(prog="codepercept-rl plot", description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="a run directory holding metrics.jsonl")
    parser.add_argument("--out", default=None, help="output directory (default RUN_DIR/plots)")
    parser.add_argument("--keys", nargs="*", default=None, help="metric name prefixes to draw (default: all)")
    args = parser.parse_args(argv)
    for path in plot_run(args.run_dir, args.out, args.keys):
        print(path)
    return 0
