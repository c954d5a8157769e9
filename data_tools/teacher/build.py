"""``data teacher``: run a teacher pipeline over seed images into a dataset directory, resumably.

    codepercept-rl data teacher reproduce --seeds seeds/ --out data/teacher --endpoint http://host:8000/v1 \\
        --model Qwen3-VL-32B-Instruct --workers 2 --concurrency 8 [--variants 4 for diversity]

Seeds are sorted by path and cut into shards of ``shard_size`` seeds; each shard runs its seeds
``concurrency`` at a time and is committed atomically (``data_tools.store``). Item ids derive from the seed
image's sha256 (``reproduce-<sha12>-0``, ``diversity-<sha12>-<k>``), so a resumed build (same command) skips
finished shards, redoes the unfinished one without duplicates, and gets its already-answered requests from
the client's disk cache (``--cache``, default ``OUT/teacher_cache``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import io
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from codepercept_rl.errors import UserError
from data_tools.build import BuildSummary, summarize
from data_tools.render import Renderer
from data_tools.store import Dataset
from data_tools.teacher.client import ChatClient, TeacherError
from data_tools.teacher.pipelines import MODES, Outcome, TeacherConfig, TeacherPipeline

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp")
MAX_SEED_PIXELS = 40_000_000


def load_seed_images(paths: list[str | os.PathLike]) -> list[tuple[str, bytes]]:
    """Expand files and directories into (name, PNG bytes), sorted by path; every image converted to PNG.

    Raises:
        UserError: a path is missing, a file is not a readable image, or there is no image at all.
    """
    files: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.is_file():
            files.append(p)
        else:
            raise UserError(f"seed image {p}: no such file or directory")
    if not files:
        raise UserError(f"no seed images found in {', '.join(map(str, paths))}")
    out = []
    for f in files:
        try:
            with Image.open(f) as im:
                if im.width * im.height > MAX_SEED_PIXELS:
                    raise UserError(
                        f"seed image {f}: {im.width}x{im.height} is over {MAX_SEED_PIXELS} pixels"
                    )
                im.load()
                buf = io.BytesIO()
                im.convert("RGBA" if "A" in im.getbands() else "RGB").save(buf, format="PNG")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
            raise UserError(f"seed image {f}: not a readable image ({type(e).__name__}: {e})") from None
        out.append((str(f), buf.getvalue()))
    return out


@dataclass
class TeacherSpec:
    """What a teacher build is; stored in the manifest to refuse resuming a different build."""

    mode: str
    seeds_sha256: str
    n_seeds: int
    model: str
    variants: int = 4
    max_attempts: int = 3
    judges: bool = True
    refine_captions: bool = True
    shard_size: int = 16

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown teacher mode {self.mode!r}; choose from {', '.join(MODES)}")


def _seeds_digest(seeds: list[tuple[str, bytes]]) -> str:
    h = hashlib.sha256()
    for _, png in seeds:
        h.update(hashlib.sha256(png).digest())
    return h.hexdigest()


def build_teacher(
    mode: str,
    seeds: list[tuple[str, bytes]],
    out: str | os.PathLike,
    client: ChatClient,
    *,
    config: TeacherConfig | None = None,
    workers: int = 1,
    concurrency: int = 4,
    shard_size: int = 16,
    progress: bool = True,
) -> BuildSummary:
    """Run ``mode`` ("reproduce" | "diversity") over ``seeds`` into the dataset at ``out`` (resumable).

    Raises:
        UserError: a different build already in ``out``, the endpoint keeps failing (finished shards are kept;
            rerun to resume), or the disk is full.
    """
    config = config or TeacherConfig()
    spec = TeacherSpec(
        mode,
        _seeds_digest(seeds),
        len(seeds),
        client.model,
        config.variants,
        config.max_attempts,
        config.judges,
        config.refine_captions,
        shard_size,
    )
    ds = Dataset(out)
    manifest = ds.read_manifest()
    if manifest is not None and manifest.get("spec") != asdict(spec):
        raise UserError(f"{ds.root}: holds a different build ({manifest.get('spec')}); use another --out")
    started = time.perf_counter()
    ds.write_manifest({"spec": asdict(spec), "kind": "teacher"})
    n_shards = -(-len(seeds) // shard_size)
    done = set(ds.shard_indices())
    per_seed = config.variants if mode == "diversity" else 1
    with (
        Renderer(workers) as renderer,
        concurrent.futures.ThreadPoolExecutor(concurrency) as pool,
        tqdm(total=len(seeds), unit="seed", disable=not progress, desc=f"teacher {mode}") as bar,
    ):
        bar.update(sum(len(seeds[k * shard_size : (k + 1) * shard_size]) for k in done))
        pipeline = TeacherPipeline(client, renderer, config)
        run = pipeline.reproduce if mode == "reproduce" else pipeline.diversity
        for k in range(n_shards):
            if k in done:
                continue
            chunk = seeds[k * shard_size : (k + 1) * shard_size]
            t0 = time.perf_counter()
            try:
                results: list[list[Outcome]] = []
                for outcomes in pool.map(lambda s: run(s[1], s[0]), chunk):
                    results.append(outcomes)
                    bar.update(1)
            except TeacherError as e:
                raise UserError(
                    f"teacher endpoint failed in shard {k}: {e}; rerun the same command to resume"
                ) from None
            flat = [o for outcomes in results for o in outcomes]
            kept = [o for o in flat if o.item is not None]
            if flat and all((o.rejected or "").startswith("no code") for o in flat):
                # why stop: a teacher that never answers with code is misconfigured (wrong model, a chat
                # template that eats the fence); writing empty shards would look like a finished build
                raise UserError(
                    f"the teacher returned no code for any of the {len(flat)} programs of shard {k} "
                    f"({flat[0].rejected[:160]}); check --endpoint and --model"
                )
            reasons = Counter((o.rejected or "").split(":")[0] for o in flat if o.item is None)
            stats = {
                "planned": len(chunk) * per_seed,
                "rendered": len(kept),
                "failed": dict(reasons),
                "rejections": {o.item_id: o.rejected for o in flat if o.item is None},
                "caption_sentences_dropped": sum(
                    o.item.params.get("caption_sentences_dropped", 0) for o in kept
                ),
                "seconds": round(time.perf_counter() - t0, 3),
            }
            try:
                ds.write_shard(k, [o.item for o in kept], {o.item_id: o.png for o in kept}, stats)
            except OSError as e:
                raise UserError(
                    f"cannot write shard {k} under {ds.root}: {e.strerror or e}; rerun to resume"
                ) from None
    summary = summarize(ds)
    summary.shards_skipped = len(done)
    summary.seconds = round(time.perf_counter() - started, 3)
    ds.write_manifest({"spec": asdict(spec), "kind": "teacher", "summary": asdict(summary)})
    return summary
