"""Throughput of ``data build`` at 1 and 2 sandbox workers (items/s), side by side with 1 worker as baseline.

    python benchmarks/data_build.py [--families all] [--num 56] [--shard-size 14] [--workers 1 2]

Each run builds the same dataset (same families, seed, count) into a fresh temp directory through the real
pipeline: generate -> render in the sandbox pool -> trace captions -> atomic shards -> dedup. Two figures per
run: end-to-end items/s (wall time of ``build``, sandbox start-up included) and steady-state items/s (sum of
the shards' own times: rendering + captioning + writing, start-up and the final dedup excluded). On a shared
2-core machine the numbers move with the neighbours' load; run it twice before trusting a ratio.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from data_tools.build import BuildSpec, build
from data_tools.store import Dataset


def run(spec: BuildSpec, workers: int) -> dict[str, float]:
    """One build; returns its throughput figures."""
    with tempfile.TemporaryDirectory(prefix="data-build-bench-") as tmp:
        out = Path(tmp) / "ds"
        start = time.perf_counter()
        summary = build(spec, out, workers=workers, progress=False)
        wall = time.perf_counter() - start
        ds = Dataset(out)
        shard_s = sum(ds.shard_stats(k)["seconds"] for k in ds.shard_indices())
    return {
        "items": summary.rendered,
        "wall_s": wall,
        "e2e_items_s": summary.rendered / wall,
        "steady_items_s": summary.rendered / shard_s,
        "exec_rate": summary.exec_rate,
    }


def main() -> None:
    """Parse the arguments, run one build per worker count, print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", default="all")
    parser.add_argument("--num", type=int, default=56)
    parser.add_argument("--shard-size", type=int, default=14)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    spec = BuildSpec(args.families.split(","), args.num, seed=0, shard_size=args.shard_size)
    print(f"data build: {args.num} items of {len(spec.families)} families, shards of {args.shard_size}")
    results = {w: run(spec, w) for w in args.workers}
    base = results[args.workers[0]]
    print(
        f"{'workers':>8} {'items':>6} {'wall s':>8} {'e2e it/s':>9} {'ratio':>6} {'steady it/s':>12} {'ratio':>6}"
    )
    for w, r in results.items():
        print(
            f"{w:>8} {r['items']:>6} {r['wall_s']:>8.1f} {r['e2e_items_s']:>9.2f} "
            f"{r['e2e_items_s'] / base['e2e_items_s']:>6.2f} {r['steady_items_s']:>12.2f} "
            f"{r['steady_items_s'] / base['steady_items_s']:>6.2f}"
        )


if __name__ == "__main__":
    main()
