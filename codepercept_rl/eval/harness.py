"""The evaluation loop: bench items -> answers -> sandboxed scores -> ``results.jsonl`` -> report.

    summary = asyncio.run(run_eval(items, generator, backend, out_dir, judge=None))

Flow: items already in ``out_dir/results.jsonl`` are skipped (resume); the others go to the generator, and
each answer is scored as soon as it arrives (at most ``score_concurrency`` items in scoring at once), so
rendering and judging overlap generation. Each item's reference is prepared (image read, reference code
rendered in the sandbox) while its answer is being generated. Every finished item is appended to the results
file and fsync'd before the next is written, so a killed run resumes where it stopped: no item is scored twice
and none is lost. Bad bench items are recorded (``bad_item``) without asking the model.

The report (``report.md``, ``gallery.html``, ``summary.png``, ``summary.json``) is rebuilt from the whole
results file at the end of each run, so it covers resumed items too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from codepercept_rl.eval.bench import BenchItem
from codepercept_rl.eval.generate import CODE_PROMPT, Generation, Generator, GenRequest
from codepercept_rl.eval.judges import ItemJudge
from codepercept_rl.eval.results import RESULTS_FILE, ResultsFile
from codepercept_rl.eval.scoring import ItemScorer, Reference
from codepercept_rl.rewards.backend import RewardBackend
from reward_servers.scoring import decode_png

log = logging.getLogger("codepercept_rl.eval")


async def run_eval(
    items: Sequence[BenchItem],
    generator: Generator,
    backend: RewardBackend,
    out_dir: str | Path,
    *,
    judge: ItemJudge | None = None,
    prompt: str = CODE_PROMPT,
    system: str | None = None,
    require_fence: bool = True,
    score_concurrency: int = 4,
    progress_every: int = 10,
) -> dict[str, Any]:
    """Evaluates ``items`` and appends their records to ``out_dir/results.jsonl`` (module docstring).

    Args:
        items: the bench.
        generator: answers the prompts (engine or endpoint).
        backend: reward pool / client where all code runs.
        out_dir: the run directory.
        judge: optional LLM judge (paper Image / Code scores).
        prompt: the instruction sent with each image.
        system: optional system prompt.
        require_fence: code must come in a fenced block (the benchmark's rule).
        score_concurrency: items scored at once.
        progress_every: log a progress line every this many items.

    Returns:
        Run statistics: items skipped (already done), generated, written, wall time.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Backend calls and metrics run on the default executor: size it for both stages plus the engine thread.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=2 * score_concurrency + 4))
    scorer = ItemScorer(backend, out, judge=judge, require_fence=require_fence)
    t0 = time.monotonic()
    with ResultsFile(out / RESULTS_FILE) as results:
        if results.dropped_tail_bytes:
            log.warning("dropped a torn last line (%d bytes) of %s", results.dropped_tail_bytes, results.path)
        todo = [it for it in items if it.id not in results.records]
        skipped = len(items) - len(todo)
        if skipped:
            log.info("resuming: %d of %d items already have results", skipped, len(items))
        semaphore = asyncio.Semaphore(max(1, score_concurrency))
        position = {it.id: i for i, it in enumerate(items)}
        written = 0

        async def finish(item: BenchItem, ref_task: asyncio.Future[Reference], gen: Generation) -> None:
            nonlocal written
            async with semaphore:
                record = await scorer.score(item, await ref_task, gen)
            record["index"] = position[item.id]  # bench order, for reports (the file is in completion order)
            refs.pop(item.id, None)  # drop the item's reference render and images once scored
            results.append(record)  # event-loop thread only: appends never interleave
            written += 1
            if progress_every and written % progress_every == 0:
                log.info("eval: %d/%d items written", written, len(todo))

        # References (reference code rendered in the sandbox) are prepared in the background while the model
        # answers; an item's answer is scored once both exist. Items whose own image is unusable go last: they
        # wait for their reference render, which stands in for the image (else the item is bad).
        prep_semaphore = asyncio.Semaphore(max(1, score_concurrency))

        async def prepare(item: BenchItem) -> Reference:
            async with prep_semaphore:
                return await scorer.prepare(item)

        refs = {it.id: asyncio.ensure_future(prepare(it)) for it in todo}
        pending: list[asyncio.Future[None]] = []
        generated = 0

        async def answer(batch: list[tuple[BenchItem, bytes]]) -> None:
            nonlocal generated
            requests = [GenRequest(it.id, png, prompt, system) for it, png in batch]
            async for index, gen in generator.generate(requests):
                generated += 1
                item = batch[index][0]
                pending.append(asyncio.ensure_future(finish(item, refs[item.id], gen)))

        try:
            ready, fallback = [], []
            for it in todo:
                png = await asyncio.to_thread(_usable_image, it)
                if png is None:
                    fallback.append(it)
                else:
                    ready.append((it, png))
            await answer(ready)
            stand_ins = []
            for it in fallback:
                png = (await refs[it.id]).target_png
                if png is None:
                    pending.append(
                        asyncio.ensure_future(finish(it, refs[it.id], Generation(None, "bad item")))
                    )
                else:
                    stand_ins.append((it, png))
            await answer(stand_ins)
            await asyncio.gather(*pending)
        finally:
            for task in (*pending, *refs.values()):
                task.cancel()
    return {
        "skipped": skipped,
        "generated": generated,
        "written": written,
        "wall_s": round(time.monotonic() - t0, 3),
    }


def _usable_image(item: BenchItem) -> bytes | None:
    """The item's image bytes if the file reads and decodes, else None."""
    try:
        png = item.read_image()
        decode_png(png)
    except (OSError, ValueError):
        return None
    return png
