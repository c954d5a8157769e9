"""Your own STEM images into training data, with a strong VLM as the teacher (the paper's Image Reproduce).

    export CODEPERCEPT_TEACHER_API_KEY=sk-...     # only if the endpoint wants one (sent as a bearer header)
    python examples/teacher_dataset.py --seeds my_figures/ --out data/mine \\
        --endpoint http://host:8000/v1 --model Qwen3-VL-32B-Instruct

Any OpenAI-compatible chat-completions endpoint works (vLLM, SGLang, a hosted API); ``--endpoint`` and
``--model`` default to ``$CODEPERCEPT_TEACHER_URL`` and ``$CODEPERCEPT_TEACHER_MODEL``. For every seed image
(PNG/JPG; folders are searched recursively) the teacher captions the image and writes matplotlib code from its
caption. The code runs in the sandbox (never in this process); when it fails, the teacher gets the error back
and repairs it (``--max-attempts`` renders in all). A program that renders a usable image faces three judge
checks (code quality, image sanity, image-code consistency); its caption is then rewritten against the
execution trace and every sentence the trace does not support is dropped. Near-duplicates are removed, and
the kept items are exported as S1 JSONL (SFT) and R1 parquet (GRPO, verl format) under ``OUT/exports``.

The same with the CLI (``reproduce`` or ``diversity``, which writes new variants of each seed's principle):

    codepercept-rl data teacher reproduce --seeds my_figures/ --out data/mine --endpoint URL --model M
    codepercept-rl data export data/mine --formats r1,s1

Rerun the same command after a crash: finished shards are kept and answered requests come from
``OUT/teacher_cache``. Before R1, ``codepercept-rl data filter OUT --out OUT2 --difficulty --policy-url URL``
keeps only the items your S1 policy solves sometimes but not always.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from codepercept_rl.errors import UserError
from data_tools.exports import export
from data_tools.store import Dataset
from data_tools.teacher.build import build_teacher, load_seed_images
from data_tools.teacher.client import ChatClient
from data_tools.teacher.pipelines import TeacherConfig, seed_id


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", required=True, help="seed image files or folders")
    parser.add_argument("--out", required=True, help="dataset folder (rerun to resume)")
    parser.add_argument("--endpoint", default=os.environ.get("CODEPERCEPT_TEACHER_URL"), help="base URL")
    parser.add_argument("--model", default=os.environ.get("CODEPERCEPT_TEACHER_MODEL"), help="teacher model")
    parser.add_argument("--api-key", help="default: $CODEPERCEPT_TEACHER_API_KEY")
    parser.add_argument("--max-attempts", type=int, default=3, help="renders per program, repairs included")
    parser.add_argument("--workers", type=int, default=1, help="sandbox processes")
    parser.add_argument("--val", type=float, default=0.05, help="validation share of the export")
    parser.add_argument("--test", type=float, default=0.05, help="test share of the export")
    args = parser.parse_args()
    if not args.endpoint or not args.model:
        parser.error(
            "give --endpoint and --model (or set CODEPERCEPT_TEACHER_URL and CODEPERCEPT_TEACHER_MODEL)"
        )

    try:
        # 1. the seeds, converted to PNG; item ids derive from each image's sha256
        seeds = load_seed_images(args.seeds)
        print(f"{len(seeds)} seed images")
        name_of = {f"reproduce-{seed_id(png)}-0": name for name, png in seeds}

        # 2. the teacher pipeline: caption -> code -> render-and-repair -> judges -> trace-grounded caption
        config = TeacherConfig(max_attempts=args.max_attempts)
        cache = Path(args.out) / "teacher_cache"
        with ChatClient(args.endpoint, args.model, api_key=args.api_key, cache_dir=cache) as client:
            summary = build_teacher(
                "reproduce", seeds, args.out, client, config=config, workers=args.workers, progress=False
            )
        print("\n".join(summary.lines()))

        # 3. what was kept, and why the rest was dropped
        ds = Dataset(args.out)
        for shard in ds.shard_indices():
            for item_id, reason in ds.shard_stats(shard).get("rejections", {}).items():
                print(f"dropped {name_of[item_id]}: {reason[:200]}")
        kept = ds.load_items()
        if not kept:
            sys.exit("error: no seed image gave a kept item (reasons above); nothing to export")
        kept_ids = {item.id for item in kept}
        for item in ds.load_items(dedup=False):
            if item.id not in kept_ids:
                print(f"dropped {name_of[item.id]}: near-duplicate of another kept item")
        for item in kept:
            renders = item.params["attempts"]
            print(f"kept {name_of[item.id]} ({renders} render{'s' * (renders > 1)}): {item.caption[:100]}")

        # 4. exports: S1 JSONL (image -> caption, image -> code) and R1 parquet (verl), split without leaks
        report = export(args.out, ["s1", "r1"], val_fraction=args.val, test_fraction=args.test)
    except (UserError, ValueError) as e:
        sys.exit(f"error: {e}")
    print("splits: " + ", ".join(f"{split}={n}" for split, n in report.counts.items()))
    print("\n".join(report.paths))


if __name__ == "__main__":
    main()
