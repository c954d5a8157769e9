"""``codepercept-rl data``: build, inspect, filter, export and teacher-generate image-caption-code datasets.

    codepercept-rl data build --families solid,plane,mini --num 1000 --out data/icc --workers 2 --seed 0
    codepercept-rl data show data/icc                          # data/icc/contact_sheet.png
    codepercept-rl data filter data/icc --out data/icc_r1 --exec --dedup \\
        --difficulty --policy-url http://127.0.0.1:8000/v1 --policy-model policy --k 8
    codepercept-rl data export data/icc --formats r1,s1,hf
    codepercept-rl data teacher reproduce --seeds seeds/ --out data/teacher --endpoint URL --model M

Every render runs in the sandbox (``reward_servers``), never in this process. Errors a user can fix (an
unknown family, a seed that is not an image, a teacher reply without code, a full disk) end with one line and
exit status 2 (``UserError``). Dataset layout: ``data_tools/__init__.py``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from codepercept_rl.errors import UserError


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="generate programs from parametric families, render, caption, shard")
    p.add_argument(
        "--families", nargs="+", default=["all"], help="family or group names (solid, plane, mini, all)"
    )
    p.add_argument("--num", type=int, required=True, help="items to plan (failed renders are dropped)")
    p.add_argument("--out", required=True, help="dataset directory (rerun the same command to resume)")
    p.add_argument("--workers", type=int, default=1, help="sandbox processes rendering in parallel")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-size", type=int, default=64)
    p.add_argument("--timeout", type=float, default=20.0, help="seconds per render")
    p.add_argument("--dpi", type=int, default=100)
    p.add_argument("--refine-url", default=None, help="OpenAI-compatible endpoint that rewrites captions")
    p.add_argument("--refine-model", default=None, help="model name at --refine-url")
    p.add_argument("--no-progress", action="store_true")


def _add_show(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("show", help="write a contact sheet PNG of samples with their captions")
    p.add_argument("dir")
    p.add_argument("--n", type=int, default=12)
    p.add_argument("--columns", type=int, default=4)
    p.add_argument("--out", default=None, help="PNG path (default DIR/contact_sheet.png)")


def _add_filter(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("filter", help="write a filtered copy of a dataset")
    p.add_argument("dir")
    p.add_argument("--out", required=True, help="new dataset directory (must not hold a dataset)")
    p.add_argument("--blank", action="store_true", help="drop blank/degenerate images")
    p.add_argument("--dedup", action="store_true", help="drop near-duplicates (pHash, normalised code)")
    p.add_argument("--max-distance", type=int, default=4, help="pHash bits for --dedup")
    p.add_argument("--exec", action="store_true", help="drop items whose code no longer renders")
    p.add_argument("--difficulty", action="store_true", help="R1 pass-rate band filter (needs --policy-url)")
    p.add_argument("--policy-url", default=None, help="OpenAI-compatible endpoint of the policy")
    p.add_argument("--policy-model", default="policy")
    p.add_argument("--k", type=int, default=8, help="samples per prompt")
    p.add_argument("--band", type=float, nargs=2, default=[0.25, 0.75], metavar=("LOW", "HIGH"))
    p.add_argument("--threshold", type=float, default=0.9, help="reward score counted as a pass")
    p.add_argument("--reward", default="render", help="reward name (reward_servers.scoring.SCORERS)")
    p.add_argument("--workers", type=int, default=1)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export R1 parquet (verl), S1 JSONL and a HF dataset under DIR/exports")
    p.add_argument("dir")
    p.add_argument("--formats", default="r1,s1,hf")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val", type=float, default=0.05)
    p.add_argument("--test", type=float, default=0.05)
    p.add_argument("--rl", type=float, default=0.0,
                   help="share of the items for R1 only (exports/r1/rl.parquet), kept out of S1's train split")  # fmt: skip
    p.add_argument("--split-distance", type=int, default=8, help="pHash bits grouping items before splitting")


def _add_teacher(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("teacher", help="Image Reproduce / Image Diversity with an MLLM endpoint")
    p.add_argument("mode", choices=["reproduce", "diversity"])
    p.add_argument("--seeds", nargs="+", required=True, help="seed image files or directories")
    p.add_argument("--out", required=True)
    p.add_argument("--endpoint", required=True, help="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    p.add_argument("--model", required=True)
    p.add_argument("--variants", type=int, default=4, help="programs per seed (diversity)")
    p.add_argument("--max-attempts", type=int, default=3, help="renders per program, repairs included")
    p.add_argument("--no-judges", action="store_true")
    p.add_argument("--min-code-score", type=int, default=3, help="lowest code-quality judge score kept (1-5)")
    p.add_argument("--no-refine", action="store_true", help="template captions, no LLM rewrite")
    p.add_argument("--workers", type=int, default=1, help="sandbox processes")
    p.add_argument("--concurrency", type=int, default=4, help="seeds in flight")
    p.add_argument("--shard-size", type=int, default=16)
    p.add_argument("--cache", default=None, help="response cache directory (default OUT/teacher_cache)")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    p.add_argument("--no-progress", action="store_true")


def _cmd_build(args: argparse.Namespace) -> int:
    from data_tools.build import BuildSpec, build

    families = [f for arg in args.families for f in arg.split(",") if f]
    spec = BuildSpec(
        families, args.num, args.seed, args.shard_size, args.timeout, args.dpi, args.refine_model
    )
    _check_workers(args.workers)
    client = None
    if args.refine_url:
        from data_tools.teacher.client import ChatClient

        try:
            client = ChatClient(
                args.refine_url, args.refine_model or "", cache_dir=Path(args.out) / "teacher_cache"
            )
        except ValueError as e:
            raise UserError(str(e)) from None
    try:
        summary = build(
            spec, args.out, workers=args.workers, progress=not args.no_progress, refine_client=client
        )
    finally:
        if client is not None:
            client.close()
    print("\n".join(summary.lines()))
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from data_tools.show import contact_sheet

    print(contact_sheet(args.dir, n=args.n, columns=args.columns, out=args.out))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from data_tools.exports import export

    formats = [f for f in args.formats.split(",") if f]
    try:
        report = export(
            args.dir, formats, seed=args.seed, val_fraction=args.val, test_fraction=args.test,
            split_distance=args.split_distance, rl_fraction=args.rl,
        )  # fmt: skip
    except ValueError as e:
        raise UserError(str(e)) from None
    print("splits: " + ", ".join(f"{k}={v}" for k, v in report.counts.items()))
    print("\n".join(report.paths))
    return 0


def _check_workers(workers: int) -> None:
    if workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")


def _cmd_filter(args: argparse.Namespace) -> int:
    from data_tools import filters
    from data_tools.render import Renderer
    from data_tools.store import Dataset

    if not (args.blank or args.dedup or args.exec or args.difficulty):
        raise UserError("choose at least one filter: --blank, --dedup, --exec, --difficulty")
    if args.difficulty and not args.policy_url:
        raise UserError("--difficulty needs --policy-url (an OpenAI-compatible endpoint serving the policy)")
    _check_workers(args.workers)
    src, dst = Dataset(args.dir), Dataset(args.out)
    if dst.root.resolve() == src.root.resolve() or dst.shard_indices():
        raise UserError(f"--out {dst.root}: must be a new directory, not the source or another dataset")
    items = src.load_items()
    removed: dict[str, str] = {}
    pngs = {it.id: src.image_path(it).read_bytes() for it in items}

    def apply(report: filters.FilterReport, name: str) -> None:
        nonlocal items
        removed.update({k: f"{name}: {v}" for k, v in report.removed.items()})
        print(f"{name}: kept {len(report.kept)} of {len(items)}")
        items = report.kept

    if args.blank:
        apply(filters.blank(items, [pngs[i.id] for i in items]), "blank")
    if args.dedup:
        apply(filters.dedup(items, [pngs[i.id] for i in items], args.max_distance), "dedup")
    if args.exec:
        with Renderer(args.workers) as renderer:
            apply(filters.executable(items, renderer), "exec")
    if args.difficulty:
        from data_tools.policy import OpenAIPolicy
        from data_tools.teacher.client import ChatClient
        from reward_servers.pool import RewardPool

        with (
            ChatClient(args.policy_url, args.policy_model) as client,
            RewardPool(workers=args.workers) as pool,
        ):
            report = filters.difficulty_filter(
                items, [pngs[i.id] for i in items], OpenAIPolicy(client), pool,
                k=args.k, band=tuple(args.band), threshold=args.threshold, reward=args.reward,
            )  # fmt: skip
        apply(report, "difficulty")
    for start in range(0, len(items), 1000):
        chunk = items[start : start + 1000]
        dst.write_shard(start // 1000, chunk, {i.id: pngs[i.id] for i in chunk}, {"planned": len(chunk)})
    dst.write_manifest({"kind": "filtered", "source": str(src.root), "removed": removed})
    print(f"wrote {len(items)} items to {dst.root} ({len(removed)} removed)")
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from data_tools.teacher.build import build_teacher, load_seed_images
    from data_tools.teacher.client import ChatClient
    from data_tools.teacher.pipelines import TeacherConfig

    _check_workers(args.workers)
    seeds = load_seed_images(args.seeds)
    try:
        config = TeacherConfig(
            max_attempts=args.max_attempts,
            variants=args.variants,
            judges=not args.no_judges,
            min_code_score=args.min_code_score,
            refine_captions=not args.no_refine,
        )
        client = ChatClient(
            args.endpoint,
            args.model,
            timeout_s=args.timeout,
            cache_dir=args.cache or Path(args.out) / "teacher_cache",
        )
    except ValueError as e:
        raise UserError(str(e)) from None
    with client:
        summary = build_teacher(
            args.mode, seeds, args.out, client, config=config, workers=args.workers,
            concurrency=args.concurrency, shard_size=args.shard_size, progress=not args.no_progress,
        )  # fmt: skip
    print("\n".join(summary.lines()))
    return 0


COMMANDS = {
    "build": _cmd_build,
    "show": _cmd_show,
    "filter": _cmd_filter,
    "export": _cmd_export,
    "teacher": _cmd_teacher,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``codepercept-rl data <command> ...``; returns the exit code (UserError propagates to the CLI)."""
    parser = argparse.ArgumentParser(
        prog="codepercept-rl data",
        description="Build, inspect, filter, export and teacher-generate image-caption-code datasets.",
        epilog="examples:\n" + __doc__.split("\n\n")[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_build, _add_show, _add_filter, _add_export, _add_teacher):
        add(sub)
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return COMMANDS[args.command](args)


def run(argv: Sequence[str] | None = None) -> int:
    """``main`` with the CLI's error contract: a ``UserError`` prints one line and returns 2."""
    try:
        return main(argv)
    except UserError as e:
        print(f"codepercept-rl data: error: {e}", file=sys.stderr)
        return 2


if (
    __name__ == "__main__"
):  # python -m codepercept_rl.data_cli ... (before the lead wires `data` into the CLI)
    sys.exit(run())
