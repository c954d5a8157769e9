"""Parallel rendering for the data builder, always through the sandbox (never in this process).

    from data_tools.render import Renderer
    with Renderer(workers=2) as r:
        results = r.render_many([code1, code2], on_result=lambda i, res: ...)   # list[RenderResult], in order

``Renderer`` owns a ``reward_servers.pool.RewardPool`` of ``workers`` sandbox zygotes and keeps every worker busy
by submitting from a small thread pool (``RewardPool.render`` is blocking, one program per call).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable, Sequence

from reward_servers.pool import RewardPool
from reward_servers.sandbox import RenderResult, SandboxConfig


class Renderer:
    """Renders programs in ``workers`` sandbox processes.

    Args:
        workers: sandbox zygotes (one core each is the sweet spot).
        config: sandbox limits; default: 20 s timeout, 100 dpi, tracing on.
    """

    def __init__(self, workers: int = 1, config: SandboxConfig | None = None) -> None:
        if workers < 1:
            raise ValueError(f"workers must be >= 1, got {workers}")
        self.workers = workers
        self.config = config or SandboxConfig(timeout_s=20.0, dpi=100, trace=True)
        self._pool: RewardPool | None = None
        self._threads: concurrent.futures.ThreadPoolExecutor | None = None

    def start(self) -> Renderer:
        """Start the sandbox workers (a few seconds: each zygote imports matplotlib once)."""
        if self._pool is None:
            self._pool = RewardPool(workers=self.workers, config=self.config, cache_size=0).start()
            # why 2x: a thread is blocked on each running render; the spare ones keep the queue non-empty.
            self._threads = concurrent.futures.ThreadPoolExecutor(
                2 * self.workers, thread_name_prefix="render"
            )
        return self

    def close(self) -> None:
        """Stop the worker threads and sandboxes."""
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        if self._pool is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> Renderer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def render(self, code: str, timeout_s: float | None = None) -> RenderResult:
        """Render one program (blocking)."""
        if self._pool is None:
            self.start()
        assert self._pool is not None
        return self._pool.render(code, timeout_s=timeout_s)

    def render_many(
        self, codes: Sequence[str], on_result: Callable[[int, RenderResult], None] | None = None
    ) -> list[RenderResult]:
        """Render all ``codes`` in parallel; results in input order. ``on_result(i, result)`` runs as each ends."""
        self.start()
        assert self._threads is not None
        futures = {self._threads.submit(self.render, code): i for i, code in enumerate(codes)}
        results: list[RenderResult | None] = [None] * len(codes)
        for fut in concurrent.futures.as_completed(futures):
            i = futures[fut]
            results[i] = fut.result()
            if on_result is not None:
                on_result(i, results[i])
        return [r for r in results if r is not None]
