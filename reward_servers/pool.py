"""RewardPool: N sandbox workers behind one batch API, with a content cache, targets by id and back-pressure.

Run it in-process::

    from reward_servers.pool import RewardPool
    with RewardPool(workers=2) as pool:
        pool.register_targets({"fig1": png_bytes})
        results = pool.score([{"code": completion, "target_id": "fig1"}])   # list[ScoreResult], same order

or as Ray actors (the remote pool of the training engine): ``RewardPool(workers=4, backend="ray")``, see
``reward_servers/ray_pool.py``. The HTTP service (``reward_servers/server.py``) is a thin layer over this class.

How a batch flows:
1. Each item is validated and its code extracted in this (trusted) process. Items that need no worker get their
   result at once: ``no_code`` (nothing to run) and ``bad_request`` (non-string code, unknown target id, bad
   base64, undecodable image, unknown reward name, oversized code). Other items of the batch are unaffected.
2. Each remaining item gets a content key: sha256 of (extracted code, target key, reference-code hash, reward,
   timeout). A key already in the LRU cache is answered from it; a key already being computed shares that
   computation (GRPO groups often repeat a completion verbatim).
3. New computations are admitted against ``max_pending``: the sync API and ``ascore`` wait for room, the
   server's non-blocking path raises ``PoolBusy`` (HTTP 503 + Retry-After).
4. Worker threads, one per worker, take jobs from one shared queue (a free worker takes the next job, so a slow
   sample never holds up the others) and call their ``Sandbox``. Registered targets reach a worker the first
   time one of its jobs needs them; the Sandbox re-sends them to a restarted zygote.
5. Results land in the cache (except transient statuses: ``timeout``, ``killed``) and in the metrics.

What is not covered here: isolation of the untrusted code itself (that is ``Sandbox``'s job) and authentication
(the service binds loopback by default; put it behind a trusted network).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import concurrent.futures
import dataclasses
import functools
import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

from reward_servers.extract import extract_code
from reward_servers.prom import Registry
from reward_servers.sandbox import STATUSES, RenderResult, Sandbox, SandboxConfig, ScoreResult
from reward_servers.scoring import SCORERS, decode_png

log = logging.getLogger(__name__)

__all__ = ["STATUSES", "PoolBusy", "PoolClosed", "RewardPool"]

# Results that depend on load or on a crash rather than on the code: computed again next time.
_UNCACHED_STATUSES = frozenset({"timeout", "killed"})
_MAX_TARGET_ID_CHARS = 256
_ITEM_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class PoolBusy(RuntimeError):
    """Raised by non-blocking submission when admitting a batch would exceed ``max_pending``."""

    def __init__(self, pending: int, needed: int, max_pending: int) -> None:
        super().__init__(
            f"reward pool is full: {pending} items pending, {needed} more needed, max {max_pending}"
        )
        self.pending = pending
        self.needed = needed
        self.max_pending = max_pending


class PoolClosed(RuntimeError):
    """Raised when work is submitted to a pool that is not running."""


@dataclasses.dataclass
class Job:
    """One unit of worker work, built from a validated item (crosses the Ray boundary too)."""

    kind: str  # "score" | "render"
    code: str
    target_id: str | None = None
    target_png: bytes | None = None  # inline target (not registered); None when target_id is used
    reference_code: str | None = None
    reward: str = "render"
    timeout_s: float | None = None


class Worker(Protocol):
    """What the pool needs from a worker: a local Sandbox or a Ray actor handle."""

    index: int

    def score(self, job: Job) -> ScoreResult: ...

    def render(self, job: Job) -> RenderResult: ...

    def ensure_target(self, target_id: str, png: bytes, digest: str) -> None: ...

    @property
    def alive(self) -> bool: ...

    @property
    def restarts(self) -> int: ...

    def close(self) -> None: ...


class LocalWorker:
    """One ``Sandbox`` (its own zygote process) driven by one pool thread.

    The Sandbox restarts a dead zygote by itself (re-sending its registered targets) and counts it in
    ``Sandbox.restarts``; this class only forwards calls and remembers which targets the zygote already holds.
    """

    def __init__(self, config: SandboxConfig, index: int) -> None:
        self.index = index
        self.sandbox = Sandbox(config, worker_index=index)
        self.sandbox.start()
        self._sent: dict[str, str] = {}  # target id -> digest already registered in this sandbox

    def score(self, job: Job) -> ScoreResult:
        return self.sandbox.score(
            job.code,
            target_id=job.target_id,
            target_png=job.target_png,
            reference_code=job.reference_code,
            reward=job.reward,
            timeout_s=job.timeout_s,
        )

    def render(self, job: Job) -> RenderResult:
        return self.sandbox.run(job.code, timeout_s=job.timeout_s)

    def ensure_target(self, target_id: str, png: bytes, digest: str) -> None:
        if self._sent.get(target_id) != digest:
            self.sandbox.register_target(target_id, png)
            self._sent[target_id] = digest

    @property
    def alive(self) -> bool:
        return self.sandbox.alive

    @property
    def restarts(self) -> int:
        return self.sandbox.restarts

    @property
    def zygote_pid(self) -> int | None:
        """PID of this worker's zygote (tests kill it to check restarts)."""
        return self.sandbox.zygote_pid

    def close(self) -> None:
        self.sandbox.close()


@dataclasses.dataclass
class _Task:
    job: Job
    key: str | None  # cache key; None for renders (never cached or shared)
    future: concurrent.futures.Future
    enqueued: float


def _fail(status: str, error: str) -> ScoreResult:
    return ScoreResult(score=0.0, status=status, error=error, metrics={})


def _render_fail(status: str, error: str) -> RenderResult:
    return RenderResult(status=status, error=error)


def _utf8(text: str) -> bytes:
    # surrogatepass: JSON may carry lone surrogates ("\ud800"); they must reach the sandbox, not crash here.
    return text.encode("utf-8", "surrogatepass")


def _sha(data: bytes | str) -> str:
    return hashlib.sha256(_utf8(data) if isinstance(data, str) else data).hexdigest()


class RewardPool:
    """A pool of reward workers with a batch API (sync and async), content cache and back-pressure.

    Args:
        workers: Number of workers (each one Sandbox zygote, locally or inside a Ray actor).
        config: Sandbox limits shared by all workers; ``config.timeout_s`` is also the largest per-item timeout.
        cache_size: Entries in the LRU result cache (0 disables it; in-flight sharing stays on).
        max_pending: Computations admitted but not finished (queued + running) before back-pressure.
        backend: ``"local"`` (threads + local zygotes) or ``"ray"`` (one Ray actor per worker).
        ray_num_cpus: CPUs reserved per Ray actor (``backend="ray"`` only).
    """

    def __init__(
        self,
        workers: int = 2,
        config: SandboxConfig | None = None,
        *,
        cache_size: int = 4096,
        max_pending: int = 1024,
        backend: str = "local",
        ray_num_cpus: float = 1.0,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        if backend not in ("local", "ray"):
            raise ValueError(f"backend must be 'local' or 'ray', got {backend!r}")
        self.n_workers = workers
        self.config = config or SandboxConfig()
        self.cache_size = cache_size
        self.max_pending = max_pending
        self.backend = backend
        self.ray_num_cpus = ray_num_cpus

        self._workers: list[Worker] = []
        self._threads: list[threading.Thread] = []
        self._queue: queue.Queue[_Task | None] = queue.Queue()
        self._cond = threading.Condition()  # guards everything below
        self._pending = 0
        self._busy = 0
        self._running = False
        self._inflight: dict[str, concurrent.futures.Future] = {}
        self._cache: OrderedDict[str, ScoreResult] = OrderedDict()
        self._targets: dict[str, tuple[bytes, str]] = {}  # id -> (png, sha256)
        self._valid_pngs: OrderedDict[str, None] = OrderedDict()  # digests of inline targets that decoded

        self.registry = Registry()
        reg = self.registry
        self._m_items = reg.counter(
            "reward_items_total", "Scored items delivered, by result status.", ["status"]
        )
        self._m_renders = reg.counter(
            "reward_renders_total", "Renders delivered, by result status.", ["status"]
        )
        self._m_item_latency = reg.histogram(
            "reward_item_latency_seconds",
            "Time from admission to result, per computed item.",
            buckets=_ITEM_BUCKETS,
        )
        self._m_cache_hits = reg.counter("reward_cache_hits_total", "Items answered from the result cache.")
        self._m_cache_misses = reg.counter("reward_cache_misses_total", "Items that needed a computation.")
        self._m_shared = reg.counter(
            "reward_inflight_shared_total", "Items that joined an identical computation already in flight."
        )
        self._m_rejected = reg.counter(
            "reward_rejected_total", "Batches refused by back-pressure (PoolBusy)."
        )
        self._m_worker_errors = reg.counter(
            "reward_worker_errors_total", "Jobs whose worker raised instead of returning a result."
        )
        reg.gauge("reward_queue_depth", "Jobs waiting in the queue for a free worker.", self._queue.qsize)
        reg.gauge(
            "reward_pending_items",
            "Jobs admitted and not finished (queued + running).",
            lambda: self._pending,
        )
        reg.gauge("reward_busy_workers", "Workers running a job now.", lambda: self._busy)
        reg.gauge("reward_workers", "Workers in the pool.", lambda: len(self._workers))
        reg.gauge("reward_workers_alive", "Workers whose zygote (or actor) is alive.", self._alive_count)
        reg.counter_fn("reward_worker_restarts_total", "Zygote / actor restarts seen.", self.restarts)
        reg.gauge("reward_cache_entries", "Entries in the result cache.", lambda: len(self._cache))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> RewardPool:
        """Starts the workers (zygotes or Ray actors) and their dispatch threads; returns self."""
        if self._running:
            return self
        if self.backend == "ray":
            from reward_servers.ray_pool import RayWorker  # ray is heavy: import only when asked for

            make = functools.partial(RayWorker, self.config, num_cpus=self.ray_num_cpus)
        else:
            make = functools.partial(LocalWorker, self.config)
        # Start the zygotes / actors side by side: each one spends a second or two importing and warming up.
        with concurrent.futures.ThreadPoolExecutor(self.n_workers) as ex:
            starting = [ex.submit(make, i) for i in range(self.n_workers)]
            concurrent.futures.wait(starting)
        failed = [f.exception() for f in starting if f.exception() is not None]
        if failed:
            for f in starting:
                if f.exception() is None:
                    f.result().close()
            raise RuntimeError(
                f"{len(failed)} of {self.n_workers} reward workers failed to start"
            ) from failed[0]
        self._workers = [f.result() for f in starting]
        self._running = True
        for worker in self._workers:
            t = threading.Thread(
                target=self._worker_loop, args=(worker,), name=f"reward-worker-{worker.index}"
            )
            t.daemon = True
            t.start()
            self._threads.append(t)
        log.info("reward pool started: %d %s workers", self.n_workers, self.backend)
        return self

    def close(self) -> None:
        """Stops the threads and workers; jobs still queued get status ``killed`` ("pool closed")."""
        with self._cond:
            if not self._running:
                return
            self._running = False
            self._cond.notify_all()
        while True:  # queued jobs are answered now rather than run: nobody should wait on a closing pool
            try:
                task = self._queue.get_nowait()
            except queue.Empty:
                break
            if task is not None:
                why = "reward pool closed before this item ran"
                result = _fail("killed", why) if task.key is not None else _render_fail("killed", why)
                self._finish(task, result, ran=False)
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:  # a running sample finishes (bounded by its timeout) before its worker closes
            t.join(timeout=2 * self.config.timeout_s + 30)
        for worker in self._workers:
            worker.close()
        self._threads.clear()

    def __enter__(self) -> RewardPool:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ introspection
    @property
    def workers(self) -> list[Worker]:
        """The worker handles (for tests and health checks)."""
        return list(self._workers)

    def _alive_count(self) -> int:
        return sum(1 for w in self._workers if w.alive)

    def restarts(self) -> int:
        """Zygote / actor restarts seen across all workers."""
        return sum(w.restarts for w in self._workers)

    def stats(self) -> dict[str, Any]:
        """A JSON-able snapshot for health checks."""
        with self._cond:
            pending, busy, cached = self._pending, self._busy, len(self._cache)
        return {
            "running": self._running,
            "backend": self.backend,
            "workers": len(self._workers),
            "workers_alive": self._alive_count(),
            "busy_workers": busy,
            "pending": pending,
            "max_pending": self.max_pending,
            "queue_depth": self._queue.qsize(),
            "cache_entries": cached,
            "restarts": self.restarts(),
            "targets": len(self._targets),
            "cache_hits": int(self._m_cache_hits.get()),
            "cache_misses": int(self._m_cache_misses.get()),
            "inflight_shared": int(self._m_shared.get()),
            "rejected": int(self._m_rejected.get()),
        }

    # ------------------------------------------------------------------ targets
    def register_targets(self, targets: Mapping[str, bytes]) -> list[str]:
        """Registers target images (PNG bytes) by id; items then send only ``target_id``.

        All images are validated first; on any error nothing is registered. Re-registering an id replaces
        its image (cached results for the old image are not reused: the image digest is part of the key).

        Raises:
            ValueError: an id is empty, too long or not a string, or an image does not decode as PNG/RGB.
        """
        checked: dict[str, tuple[bytes, str]] = {}
        for target_id, png in targets.items():
            if not isinstance(target_id, str) or not target_id or len(target_id) > _MAX_TARGET_ID_CHARS:
                raise ValueError(
                    f"target id must be a non-empty string of at most {_MAX_TARGET_ID_CHARS} chars"
                )
            if not isinstance(png, bytes | bytearray):
                raise ValueError(f"target {target_id!r}: image must be bytes, got {type(png).__name__}")
            try:
                decode_png(bytes(png))
            except ValueError as exc:
                raise ValueError(f"target {target_id!r}: image does not decode: {exc}") from exc
            checked[target_id] = (bytes(png), _sha(bytes(png)))
        with self._cond:
            self._targets.update(checked)
        return list(checked)

    def _inline_target(self, png: bytes) -> str:
        """Validates an inline target image once per digest; returns its digest."""
        digest = _sha(png)
        with self._cond:
            known = digest in self._valid_pngs
            if known:
                self._valid_pngs.move_to_end(digest)
        if not known:
            decode_png(png)  # ValueError propagates to the item as bad_request
            with self._cond:
                self._valid_pngs[digest] = None
                while len(self._valid_pngs) > 1024:
                    self._valid_pngs.popitem(last=False)
        return digest

    # ------------------------------------------------------------------ item preparation
    def _prepare(self, item: Any) -> tuple[Job, str] | ScoreResult:
        """Validates one item; returns (job, cache key) or an immediate result (no_code / bad_request)."""
        if not isinstance(item, Mapping):
            return _fail("bad_request", f"item must be a JSON object, got {type(item).__name__}")
        code_field = item.get("code")
        if code_field is None:
            return _fail("no_code", "no code given")
        if not isinstance(code_field, str):
            return _fail("bad_request", f"'code' must be a string, got {type(code_field).__name__}")
        limit = self.config.max_code_bytes
        if len(code_field) > 4 * limit:  # a completion may carry prose around the code, but not megabytes
            return _fail(
                "bad_request", f"'code' is {len(code_field)} chars, over 4 x max_code_bytes ({limit})"
            )
        code = extract_code(code_field)
        if code is None or not code.strip():
            return _fail("no_code", "no code found in the completion")
        n_bytes = len(_utf8(code))
        if n_bytes > limit:
            return _fail("bad_request", f"code is {n_bytes} bytes, over max_code_bytes ({limit})")

        reward = item.get("reward") or "render"
        if not isinstance(reward, str) or reward not in SCORERS:
            return _fail("bad_request", f"unknown reward {reward!r}; known: {sorted(SCORERS)}")
        reference = item.get("reference_code")
        if reference is not None and not isinstance(reference, str):
            return _fail("bad_request", f"'reference_code' must be a string, got {type(reference).__name__}")
        timeout_s = item.get("timeout_s")
        if timeout_s is not None:
            if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not timeout_s > 0:
                return _fail("bad_request", f"'timeout_s' must be a positive number, got {timeout_s!r}")
            timeout_s = min(float(timeout_s), self.config.timeout_s)  # never above the server's limit

        target_id, target_png, target_key = item.get("target_id"), None, ""
        png_field = item.get("target_png_b64")
        raw_png = item.get("target_png")  # Python callers may pass bytes directly
        if target_id is not None and (png_field is not None or raw_png is not None):
            return _fail("bad_request", "give either 'target_id' or an inline target image, not both")
        if target_id is not None:
            if not isinstance(target_id, str):
                return _fail("bad_request", f"'target_id' must be a string, got {type(target_id).__name__}")
            with self._cond:
                entry = self._targets.get(target_id)
            if entry is None:
                return _fail(
                    "bad_request", f"unknown target_id {target_id!r}: register it with /v1/targets first"
                )
            target_key = f"id:{target_id}:{entry[1]}"
        elif png_field is not None or raw_png is not None:
            if raw_png is not None:
                if not isinstance(raw_png, bytes | bytearray):
                    return _fail("bad_request", f"'target_png' must be bytes, got {type(raw_png).__name__}")
                target_png = bytes(raw_png)
            else:
                if not isinstance(png_field, str):
                    return _fail("bad_request", "'target_png_b64' must be a base64 string")
                try:
                    target_png = base64.b64decode(png_field, validate=True)
                except binascii.Error as exc:
                    return _fail("bad_request", f"'target_png_b64' is not valid base64: {exc}")
            try:
                target_key = "png:" + self._inline_target(target_png)
            except ValueError as exc:
                return _fail("bad_request", f"target image does not decode: {exc}")

        if not target_key and reference is None:
            return _fail(
                "bad_request", "nothing to compare with: give target_id, target_png_b64 or reference_code"
            )
        job = Job(
            kind="score",
            code=code,
            target_id=target_id,
            target_png=target_png,
            reference_code=reference,
            reward=reward,
            timeout_s=timeout_s,
        )
        ref_key = _sha(reference) if reference is not None else ""
        key = _sha("\x00".join((code, target_key, ref_key, reward, repr(timeout_s))))
        return job, key

    # ------------------------------------------------------------------ submission
    def _submit(self, items: Sequence[Any], block: bool) -> list[concurrent.futures.Future]:
        """Prepares items and admits new computations; returns one future per item (in order)."""
        prepared = [self._prepare(item) for item in items]
        with self._cond:
            while True:
                if not self._running:
                    raise PoolClosed(
                        "reward pool is not running (call start() or use it as a context manager)"
                    )
                new_keys = {
                    p[1]
                    for p in prepared
                    if not isinstance(p, ScoreResult)
                    and p[1] not in self._inflight
                    and p[1] not in self._cache
                }
                needed = len(new_keys)
                # A batch larger than max_pending is admitted when the pool is idle, so it cannot wait forever.
                if needed == 0 or self._pending + needed <= self.max_pending or self._pending == 0:
                    break
                if not block:
                    self._m_rejected.inc()
                    raise PoolBusy(self._pending, needed, self.max_pending)
                self._cond.wait()
            futures: list[concurrent.futures.Future] = []
            now = time.monotonic()
            for p in prepared:
                fut: concurrent.futures.Future = concurrent.futures.Future()
                if isinstance(p, ScoreResult):
                    fut.set_result(p)
                    futures.append(fut)
                    continue
                job, key = p
                cached = self._cache.get(key)
                if cached is not None:
                    self._cache.move_to_end(key)
                    self._m_cache_hits.inc()
                    fut.set_result(dataclasses.replace(cached))
                    futures.append(fut)
                    continue
                shared = self._inflight.get(key)
                if shared is not None:
                    self._m_shared.inc()
                    futures.append(shared)
                    continue
                self._m_cache_misses.inc()
                self._inflight[key] = fut
                self._pending += 1
                self._queue.put(_Task(job, key, fut, now))
                futures.append(fut)
        return futures

    def score(
        self, items: Sequence[Any], *, deadline_s: float | None = None, block: bool = True
    ) -> list[ScoreResult]:
        """Scores a batch; one result per item, in order, whatever happened to the other items.

        Args:
            items: Mappings with ``code`` and optionally ``target_id`` | ``target_png_b64`` | ``target_png``
                (bytes), ``reference_code``, ``reward`` (a name in ``scoring.SCORERS``), ``timeout_s``.
            deadline_s: Wait at most this long; items not done by then get status ``timeout`` (their computation
                continues and fills the cache).
            block: Wait for room when the pool is full (else raise ``PoolBusy``).

        Raises:
            PoolBusy: ``block=False`` and the batch does not fit under ``max_pending``.
            PoolClosed: the pool is not running.
        """
        futures = self._submit(items, block)
        concurrent.futures.wait(futures, timeout=deadline_s)
        return self._collect(futures, deadline_s)

    async def ascore(
        self, items: Sequence[Any], *, deadline_s: float | None = None, block: bool = True
    ) -> list[ScoreResult]:
        """Async ``score``: awaits room under back-pressure (``block=True``) and the results."""
        try:
            futures = self._submit(items, block=False)
        except PoolBusy:
            if not block:
                raise
            futures = await asyncio.to_thread(self._submit, items, True)
        wrapped = [asyncio.wrap_future(f) for f in futures]
        if wrapped:
            await asyncio.wait(wrapped, timeout=deadline_s)
        return self._collect(futures, deadline_s)

    def _collect(
        self, futures: list[concurrent.futures.Future], deadline_s: float | None
    ) -> list[ScoreResult]:
        """Results in order; items not done by the deadline get ``timeout``. Counts statuses as delivered."""
        results = []
        for fut in futures:
            if fut.done():
                result = fut.result()
            else:
                result = _fail(
                    "timeout", f"no result within the request deadline of {deadline_s}s (pool saturated)"
                )
            self._m_items.inc(status=result.status)
            results.append(result)
        return results

    def render(self, code: str, *, timeout_s: float | None = None, block: bool = True) -> RenderResult:
        """Renders code in a worker (PNG images + trace); not cached. Code may be a whole completion."""
        result = self._submit_render(code, timeout_s, block).result()
        self._m_renders.inc(status=result.status)
        return result

    async def arender(self, code: str, *, timeout_s: float | None = None, block: bool = True) -> RenderResult:
        """Async ``render``."""
        try:
            fut = self._submit_render(code, timeout_s, block=False)
        except PoolBusy:
            if not block:
                raise
            fut = await asyncio.to_thread(self._submit_render, code, timeout_s, True)
        result = await asyncio.wrap_future(fut)
        self._m_renders.inc(status=result.status)
        return result

    def _submit_render(self, code: Any, timeout_s: float | None, block: bool) -> concurrent.futures.Future:
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if not isinstance(code, str):
            fut.set_result(_render_fail("bad_request", f"'code' must be a string, got {type(code).__name__}"))
            return fut
        extracted = extract_code(code)
        if extracted is None or not extracted.strip():
            fut.set_result(_render_fail("no_code", "no code found"))
            return fut
        if len(_utf8(extracted)) > self.config.max_code_bytes:
            fut.set_result(
                _render_fail("bad_request", f"code over max_code_bytes ({self.config.max_code_bytes})")
            )
            return fut
        if timeout_s is not None:
            timeout_s = min(float(timeout_s), self.config.timeout_s)
        with self._cond:
            while True:
                if not self._running:
                    raise PoolClosed("reward pool is not running")
                if self._pending < self.max_pending:
                    break
                if not block:
                    self._m_rejected.inc()
                    raise PoolBusy(self._pending, 1, self.max_pending)
                self._cond.wait()
            self._pending += 1
            self._queue.put(
                _Task(Job(kind="render", code=extracted, timeout_s=timeout_s), None, fut, time.monotonic())
            )
        return fut

    # ------------------------------------------------------------------ workers
    def _worker_loop(self, worker: Worker) -> None:
        while True:
            task = self._queue.get()
            if task is None:
                return
            with self._cond:
                self._busy += 1
            job = task.job
            try:
                if job.kind == "render":
                    result: ScoreResult | RenderResult = worker.render(job)
                else:
                    if job.target_id is not None:
                        with self._cond:
                            png, digest = self._targets[job.target_id]
                        worker.ensure_target(job.target_id, png, digest)
                    result = worker.score(job)
            except Exception as exc:  # noqa: BLE001 - any worker failure must still answer its item
                # The Sandbox never raises for bad code; this is an infrastructure failure (zygote cannot start,
                # Ray actor lost twice, ...). Log it with its traceback and answer the item rather than lose it.
                log.exception("reward worker %d failed on a %s job", worker.index, job.kind)
                self._m_worker_errors.inc()
                error = f"worker {worker.index} failed: {type(exc).__name__}: {exc}"
                result = _render_fail("killed", error) if job.kind == "render" else _fail("killed", error)
            self._finish(task, result, ran=True)

    def _finish(self, task: _Task, result: ScoreResult | RenderResult, ran: bool) -> None:
        elapsed = time.monotonic() - task.enqueued
        with self._cond:
            if ran:
                self._busy -= 1
            self._pending -= 1
            if task.key is not None:
                self._inflight.pop(task.key, None)
                if (
                    self.cache_size
                    and isinstance(result, ScoreResult)
                    and result.status not in _UNCACHED_STATUSES
                ):
                    self._cache[task.key] = result
                    self._cache.move_to_end(task.key)
                    while len(self._cache) > self.cache_size:
                        self._cache.popitem(last=False)
            self._cond.notify_all()
        self._m_item_latency.observe(elapsed)
        task.future.set_result(result)
