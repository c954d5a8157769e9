"""``data build``: generate programs, render them in the sandbox, caption them from their traces, write shards.

    codepercept-rl data build --families solid,plane --num 200 --out data/icc --workers 2 --seed 0

Item ``i`` of a build is fully determined by (families, seed, i): family ``families[i % F]``, item seed
``sha256("{seed}:{i}")``, id ``<family>-<seed as 12 hex>``. Items are grouped into shards of ``shard_size``;
a shard is rendered in parallel (``--workers`` sandbox processes) and committed atomically
(``data_tools.store``). Rerunning the same command resumes: finished shards are skipped and the unfinished one
is redone from scratch, so nothing is duplicated or lost. A different spec on an existing directory is refused.
After the last shard, near-duplicates are grouped (pHash + normalised code hash) and recorded in dedup.json.
"""

from __future__ import annotations

import concurrent.futures
import errno
import hashlib
import itertools
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from codepercept_rl.errors import UserError
from data_tools.captions import template_caption, verify_caption
from data_tools.dedup import ImageSignature, code_hash, find_duplicates, hamming, image_signature
from data_tools.filters import blank_reason, drawn_texts
from data_tools.generators import FAMILIES, GENERATORS_VERSION, resolve_families
from data_tools.render import Renderer
from data_tools.store import Dataset, Item
from data_tools.teacher.client import ChatClient, TeacherError
from data_tools.teacher.refine import refine_caption
from reward_servers.sandbox import SandboxConfig

REFINE_CONCURRENCY = 4  # caption-refinement requests in flight per shard


@dataclass
class BuildSpec:
    """What to build; stored in the manifest so that a resumed build can check it is the same build."""

    families: list[str]
    num: int
    seed: int = 0
    shard_size: int = 64
    timeout_s: float = 20.0
    dpi: int = 100
    refine_model: str | None = None  # LLM that rewrites template captions (None: template captions only)
    generators_version: int = GENERATORS_VERSION

    def __post_init__(self) -> None:
        try:
            self.families = resolve_families(self.families)
        except KeyError as e:
            raise UserError(str(e.args[0])) from None
        if self.num < 1 or self.shard_size < 1:
            raise UserError(f"--num and --shard-size must be >= 1 (got {self.num}, {self.shard_size})")

    @property
    def n_shards(self) -> int:
        """Number of shards: ceil(num / shard_size)."""
        return math.ceil(self.num / self.shard_size)


def plan_item(spec: BuildSpec, index: int) -> tuple[str, int, str]:
    """(family, item seed, item id) of item ``index``: deterministic in (families, seed, index)."""
    family = spec.families[index % len(spec.families)]
    item_seed = int(hashlib.sha256(f"{spec.seed}:{index}".encode()).hexdigest()[:12], 16)
    return family, item_seed, f"{family}-{item_seed:012x}"


@dataclass
class BuildSummary:
    """What a build produced (also written to the manifest under "summary")."""

    planned: int = 0
    rendered: int = 0
    failed: dict[str, int] = field(default_factory=dict)  # status (or "blank") -> count
    per_family: dict[str, int] = field(default_factory=dict)  # kept after dedup
    dedup_removed: int = 0
    caption_sentences_dropped: int = 0
    shards_skipped: int = 0
    seconds: float = 0.0
    diversity: dict[str, Any] = field(default_factory=dict)

    @property
    def exec_rate(self) -> float:
        """Share of planned items that rendered a usable image."""
        return self.rendered / self.planned if self.planned else 0.0

    def lines(self) -> list[str]:
        """Human-readable summary."""
        kept = sum(self.per_family.values())
        out = [
            f"items: {kept} kept of {self.planned} planned ({self.rendered} rendered, exec rate "
            f"{self.exec_rate:.1%}, {self.dedup_removed} near-duplicates removed)",
            f"time: {self.seconds:.1f} s ({self.shards_skipped} finished shards skipped)",
        ]
        if self.failed:
            out.append("failed: " + ", ".join(f"{k}={v}" for k, v in sorted(self.failed.items())))
        out += [f"  {fam:<18} {n}" for fam, n in self.per_family.items()]
        if self.diversity:
            d = self.diversity
            out.append(
                f"diversity: unique code {d['unique_code']:.1%}, unique pictures {d['unique_pictures']:.1%} "
                f"(pHash {d['unique_phash']:.1%}), mean pHash distance within family "
                f"{d['mean_phash_distance']:.1f} bits"
            )
        return out


def _render_shard(
    spec: BuildSpec, index: int, renderer: Renderer, bar: tqdm, refine_client: ChatClient | None = None
) -> tuple[list[Item], dict[str, bytes], dict[str, Any]]:
    start = time.perf_counter()
    indices = range(index * spec.shard_size, min(spec.num, (index + 1) * spec.shard_size))
    plans = [plan_item(spec, i) for i in indices]
    programs = [FAMILIES[fam].generate(seed) for fam, seed, _ in plans]
    results = renderer.render_many([p.code for p in programs], on_result=lambda i, r: bar.update(1))
    items, images, failed, dropped = [], {}, Counter(), 0
    for (_, _, item_id), prog, res in zip(plans, programs, results, strict=True):
        reason = res.status if res.status != "ok" else blank_reason(res.png)
        if reason is not None:
            failed[reason] += 1  # a sandbox status, or "blank"/"tiny ..." for an unusable image
            continue
        caption = template_caption(res.trace, prog.subject)
        checked = verify_caption(caption, res.trace, prog.subject)
        # why count: a template sentence the checker refuses is a bug; it is reported, never kept
        dropped += len(checked.dropped)
        items.append(
            Item(
                id=item_id,
                family=prog.family,
                seed=prog.seed,
                code=prog.code,
                caption=checked.text,
                image=f"images/{item_id}.png",
                params=prog.params,
                subject=prog.subject,
                source="generator",
                trace=res.trace,
            )
        )
        images[item_id] = res.png
    refine_dropped = 0
    if refine_client is not None:
        with concurrent.futures.ThreadPoolExecutor(REFINE_CONCURRENCY) as pool:
            refined = list(
                pool.map(lambda it: refine_caption(refine_client, it.caption, it.trace, it.subject), items)
            )
        for item, (caption, n_dropped) in zip(items, refined, strict=True):
            item.caption = caption
            refine_dropped += n_dropped
    stats = {
        "planned": len(plans),
        "rendered": len(items),
        "failed": dict(failed),
        "caption_sentences_dropped": dropped,
        "refine_sentences_dropped": refine_dropped,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return items, images, stats


def _check_spec(ds: Dataset, spec: BuildSpec) -> None:
    manifest = ds.read_manifest()
    if manifest is None:
        if ds.shard_indices():
            raise UserError(f"{ds.root}: has shards but no manifest.json; use an empty directory")
        return
    if manifest.get("spec") != asdict(spec):
        raise UserError(
            f"{ds.root}: holds a different build ({manifest.get('spec')}); rerun with the same arguments to "
            "resume, or use another --out"
        )


def build(
    spec: BuildSpec,
    out: str | Path,
    workers: int = 1,
    progress: bool = True,
    renderer: Renderer | None = None,
    refine_client: ChatClient | None = None,
) -> BuildSummary:
    """Build (or resume) the dataset ``spec`` in ``out``; returns the summary (also stored in the manifest).

    Args:
        spec: what to build.
        out: the dataset directory.
        workers: sandbox processes (ignored when ``renderer`` is given).
        progress: show a tqdm bar on stderr.
        renderer: an already started renderer to use (tests, benchmarks); its sandbox config should match
            ``spec.timeout_s``/``spec.dpi``. By default one is started for the build and closed after it.
        refine_client: endpoint serving ``spec.refine_model``; each template caption is rewritten by it and
            re-verified against the trace (``data_tools.teacher.refine``). Required iff ``spec.refine_model``.

    Raises:
        UserError: unknown family, a different build already in ``out``, or the disk is full / not writable
            (the shard being written is then absent, and the same command resumes).
    """
    if (spec.refine_model is None) != (refine_client is None):
        raise UserError(
            "caption refinement needs both a model name and an endpoint (--refine-url, --refine-model)"
        )
    ds = Dataset(out)
    started = time.perf_counter()
    _check_spec(ds, spec)
    try:
        ds.write_manifest({"spec": asdict(spec), "kind": "generator"})
    except OSError as e:
        raise UserError(f"cannot write {ds.manifest_path}: {e.strerror or e}") from None
    done = set(ds.shard_indices())
    todo = [k for k in range(spec.n_shards) if k not in done]
    done_items = sum(min(spec.num, (k + 1) * spec.shard_size) - k * spec.shard_size for k in done)
    config = SandboxConfig(timeout_s=spec.timeout_s, dpi=spec.dpi, trace=True)
    with (
        tqdm(total=spec.num, initial=done_items, unit="item", disable=not progress, desc="data build") as bar,
        Renderer(workers, config) if todo and renderer is None else _NoRenderer() as own,
    ):
        for k in todo:
            try:
                items, images, stats = _render_shard(spec, k, renderer or own, bar, refine_client)
            except TeacherError as e:
                raise UserError(f"caption refinement failed in shard {k}: {e}; rerun to resume") from None
            try:
                ds.write_shard(k, items, images, stats)
            except OSError as e:
                full = e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
                why = "disk full" if full else (e.strerror or str(e))
                raise UserError(
                    f"cannot write shard {k} under {ds.root}: {why}; finished shards are kept, "
                    "free space and rerun the same command to resume"
                ) from None
    summary = summarize(ds, spec)
    summary.shards_skipped = len(done)
    summary.seconds = round(time.perf_counter() - started, 3)
    ds.write_manifest({"spec": asdict(spec), "kind": "generator", "summary": asdict(summary)})
    return summary


class _NoRenderer:
    """Stands in for the Renderer when every shard is finished (no sandbox to start)."""

    def __enter__(self) -> _NoRenderer:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


def summarize(ds: Dataset, spec: BuildSpec | None = None, max_distance: int = 4) -> BuildSummary:
    """Dedup the finished shards (writes dedup.json) and compute counts, exec rate and diversity.

    Dedup uses ``data_tools.dedup.find_duplicates`` (equal code, or the same picture: close pHash and
    thumbnail, same drawn texts); the first item of each duplicate set is kept.
    """
    summary = BuildSummary()
    for k in ds.shard_indices():
        stats = ds.shard_stats(k)
        summary.planned += stats.get("planned", 0)
        summary.rendered += stats.get("rendered", 0)
        summary.caption_sentences_dropped += stats.get("caption_sentences_dropped", 0)
        for status, n in stats.get("failed", {}).items():
            summary.failed[status] = summary.failed.get(status, 0) + n
    items = ds.load_items(dedup=False)
    signatures = [image_signature(ds.image_path(it).read_bytes()) for it in items]
    codes = [code_hash(it.code) for it in items]
    dups = find_duplicates(signatures, codes, [drawn_texts(it) for it in items], max_distance=max_distance)
    removed = {items[j].id: items[i].id for j, i in dups.items()}
    ds.write_dedup(removed)
    summary.dedup_removed = len(removed)
    families = spec.families if spec else sorted({it.family for it in items})
    counts = Counter(it.family for it in items if it.id not in removed)
    summary.per_family = {f: counts.get(f, 0) for f in families}
    summary.diversity = diversity(items, signatures, codes)
    return summary


def diversity(
    items: list[Item], signatures: list[ImageSignature], codes: list[str], max_pairs: int = 2000
) -> dict[str, Any]:
    """Diversity: shares of unique normalised code, unique pictures (pHash + thumbnail) and unique pHashes, and
    the mean pHash distance between same-family items.

    The mean distance is over at most ``max_pairs`` pairs per family (the first items, deterministic); 64
    random bits would average 32, identical images 0.
    """
    n = len(items)
    phashes = [s.phash for s in signatures]
    if n == 0:
        return {"unique_code": 0.0, "unique_pictures": 0.0, "unique_phash": 0.0, "mean_phash_distance": 0.0}
    per_family: dict[str, float] = {}
    by_family: dict[str, list[int]] = {}
    for i, it in enumerate(items):
        by_family.setdefault(it.family, []).append(i)
    for fam, idx in by_family.items():
        pairs = list(itertools.islice(itertools.combinations(idx, 2), max_pairs))
        per_family[fam] = (
            sum(hamming(phashes[a], phashes[b]) for a, b in pairs) / len(pairs) if pairs else 0.0
        )
    weights = {f: len(v) for f, v in by_family.items() if len(v) > 1}
    mean = sum(per_family[f] * w for f, w in weights.items()) / sum(weights.values()) if weights else 0.0
    return {
        "unique_code": len(set(codes)) / n,
        "unique_pictures": len(set(signatures)) / n,
        "unique_phash": len(set(phashes)) / n,
        "mean_phash_distance": round(mean, 2),
        "per_family": {f: round(v, 2) for f, v in per_family.items()},
    }
