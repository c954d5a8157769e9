"""The reward HTTP service: a FastAPI app over a RewardPool, served by uvicorn.

Run::

    codepercept-rl reward-server --host 127.0.0.1 --port 8000 --workers 4
    python -m reward_servers.server --port 8000 --workers 2 --timeout-s 10 --memory-mb 2048
    RAY_ADDRESS=auto python -m reward_servers.server --backend ray --workers 32     # workers as Ray actors

In-process (tests, notebooks, a trainer hosting its own service)::

    with RewardPool(workers=2) as pool, BackgroundServer(create_app(pool)) as srv:
        RewardClient(srv.url).score(items)

Endpoints (JSON in and out; docs/reward_servers_contract.md has the statuses):
- ``POST /v1/score``   ``{"items": [{"code", "target_png_b64"?, "target_id"?, "reference_code"?, "reward"?,
  "timeout_s"?, "id"?}]}`` -> ``{"results": [{"score", "status", "error", "metrics", "id"?}]}``, one result per
  item, in order; a bad item gets ``bad_request`` without touching the others. ``id`` is echoed when given.
- ``POST /v1/targets`` ``{"targets": {"<id>": "<png base64>"}}`` -> ``{"registered": [ids]}`` (all or nothing).
- ``POST /v1/render``  ``{"code", "timeout_s"?}`` -> the RenderResult as JSON (``images_b64``, ``trace``, ...).
- ``GET /healthz``     pool snapshot; 200 while at least one worker is alive, else 503.
- ``GET /metrics``     Prometheus text: HTTP latency histogram, item statuses, queue depth, cache hits and misses,
  busy workers, worker restarts.

HTTP errors: malformed JSON 400, wrong body shape 422, too many items or too large a body 413, pool full 503 with
``Retry-After`` (the client retries with back-off), pool stopped 503.

Security. Covered: binds 127.0.0.1 by default and warns loudly on any other host (and on ``--isolation none``);
every item is validated before it reaches a worker; a request cannot grow the queue past ``--max-pending``;
request bodies are capped (``max_body_mb``, counted while reading, chunked bodies included).
Not covered: no authentication, no TLS, no per-client rate limit. The code it runs is isolated by the Sandbox,
not here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from reward_servers.pool import PoolBusy, PoolClosed, RewardPool
from reward_servers.prom import CONTENT_TYPE, Registry
from reward_servers.sandbox import SandboxConfig

log = logging.getLogger("reward_servers.server")

_HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class _HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def create_app(
    pool: RewardPool,
    *,
    request_timeout_s: float | None = None,
    max_items: int = 1024,
    max_body_mb: float = 256.0,
    retry_after_s: int = 1,
) -> FastAPI:
    """Builds the FastAPI app serving ``pool`` (the caller starts and closes the pool).

    Args:
        pool: A started RewardPool.
        request_timeout_s: Per-request deadline; items not done by then get status ``timeout`` (None: wait).
        max_items: Most items in one /v1/score request (413 above).
        max_body_mb: Largest request body accepted, by Content-Length (413 above).
        retry_after_s: ``Retry-After`` seconds sent with 503 when the pool is full.
    """
    app = FastAPI(title="CodePercept-RL reward service", version="1")
    http = Registry()
    m_requests = http.counter(
        "reward_http_requests_total", "HTTP requests by endpoint and code.", ["endpoint", "code"]
    )
    m_latency = http.histogram(
        "reward_http_request_seconds",
        "HTTP request latency by endpoint.",
        ["endpoint"],
        buckets=_HTTP_BUCKETS,
    )
    max_body = int(max_body_mb * 1024 * 1024)

    def _done(endpoint: str, code: int, t0: float) -> None:
        m_requests.inc(endpoint=endpoint, code=str(code))
        m_latency.observe(time.perf_counter() - t0, endpoint=endpoint)

    async def _body(request: Request) -> Any:
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > max_body:
            raise _HTTPError(413, f"request body of {length} bytes is over the limit of {max_body} bytes")
        chunks, size = [], 0
        async for chunk in request.stream():  # counted while reading: a chunked body has no Content-Length
            size += len(chunk)
            if size > max_body:
                raise _HTTPError(413, f"request body is over the limit of {max_body} bytes")
            chunks.append(chunk)
        raw = b"".join(chunks)
        try:
            return json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise _HTTPError(400, f"request body is not valid JSON: {exc}") from exc

    def _error(exc: _HTTPError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status, headers=exc.headers)

    def _busy(exc: Exception) -> _HTTPError:
        if isinstance(exc, PoolBusy):
            return _HTTPError(503, str(exc), {"Retry-After": str(retry_after_s)})
        return _HTTPError(503, str(exc))

    @app.post("/v1/score")
    async def score(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            body = await _body(request)
            if not isinstance(body, dict) or not isinstance(body.get("items"), list):
                raise _HTTPError(422, 'body must be a JSON object {"items": [...]} with a list of items')
            items = body["items"]
            if len(items) > max_items:
                raise _HTTPError(
                    413, f"{len(items)} items in one request; at most {max_items}, split the batch"
                )
            try:
                results = await pool.ascore(items, deadline_s=request_timeout_s, block=False)
            except (PoolBusy, PoolClosed) as exc:
                raise _busy(exc) from exc
        except _HTTPError as exc:
            _done("score", exc.status, t0)
            return _error(exc)
        out = []
        for item, result in zip(items, results, strict=True):
            d = {
                "score": result.score,
                "status": result.status,
                "error": result.error,
                "metrics": result.metrics,
            }
            if isinstance(item, dict) and "id" in item:
                d["id"] = item["id"]
            out.append(d)
        _done("score", 200, t0)
        return Response(json.dumps({"results": out}), media_type="application/json")

    @app.post("/v1/targets")
    async def targets(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            body = await _body(request)
            if not isinstance(body, dict) or not isinstance(body.get("targets"), dict):
                raise _HTTPError(422, 'body must be a JSON object {"targets": {"<id>": "<png base64>", ...}}')
            pngs: dict[str, bytes] = {}
            for target_id, b64 in body["targets"].items():
                if not isinstance(b64, str):
                    raise _HTTPError(400, f"target {target_id!r}: image must be a base64 string")
                try:
                    pngs[target_id] = base64.b64decode(b64, validate=True)
                except binascii.Error as exc:
                    raise _HTTPError(400, f"target {target_id!r}: invalid base64: {exc}") from exc
            try:
                # Decoding the images to validate them is CPU work: keep it off the event loop.
                registered = await asyncio.to_thread(pool.register_targets, pngs)
            except ValueError as exc:
                raise _HTTPError(400, str(exc)) from exc
        except _HTTPError as exc:
            _done("targets", exc.status, t0)
            return _error(exc)
        _done("targets", 200, t0)
        return JSONResponse({"registered": registered})

    @app.post("/v1/render")
    async def render(request: Request) -> Response:
        t0 = time.perf_counter()
        try:
            body = await _body(request)
            if not isinstance(body, dict) or "code" not in body:
                raise _HTTPError(422, 'body must be a JSON object {"code": "...", "timeout_s"?: float}')
            timeout_s = body.get("timeout_s")
            if timeout_s is not None and (
                isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0
            ):
                raise _HTTPError(422, f"'timeout_s' must be a positive number, got {timeout_s!r}")
            try:
                result = await pool.arender(body["code"], timeout_s=timeout_s, block=False)
            except (PoolBusy, PoolClosed) as exc:
                raise _busy(exc) from exc
        except _HTTPError as exc:
            _done("render", exc.status, t0)
            return _error(exc)
        _done("render", 200, t0)
        return Response(json.dumps(result.to_dict()), media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        t0 = time.perf_counter()
        stats = pool.stats()
        ok = stats["running"] and stats["workers_alive"] > 0
        stats["status"] = (
            "ok" if ok and stats["workers_alive"] == stats["workers"] else ("degraded" if ok else "down")
        )
        code = 200 if ok else 503
        _done("healthz", code, t0)
        return JSONResponse(stats, status_code=code)

    @app.get("/metrics")
    async def metrics() -> Response:
        t0 = time.perf_counter()
        text = pool.registry.render() + http.render()
        _done("metrics", 200, t0)
        return Response(text, media_type=CONTENT_TYPE)

    return app


class BackgroundServer:
    """Serves an app with uvicorn in a daemon thread (tests, notebooks, a trainer hosting its own service).

    The socket is bound before the thread starts, so ``url`` is valid (and connections queue) at once; port 0
    picks a free port. Use as a context manager or call ``stop()``.
    """

    def __init__(
        self, app: FastAPI, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(
            2048
        )  # why: a load test opens many connections at once; the default backlog drops some
        self.port = self._sock.getsockname()[1]
        self.url = f"http://{host if family == socket.AF_INET else f'[{host}]'}:{self.port}"
        config = uvicorn.Config(app, log_level=log_level, access_log=False, timeout_keep_alive=30)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._sock]}, daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Asks uvicorn to exit and waits for the thread."""
        self._server.should_exit = True
        self._thread.join(timeout=timeout_s)
        self._sock.close()

    def __enter__(self) -> BackgroundServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name other than localhost: assume it is reachable from elsewhere
        return False


def build_parser() -> argparse.ArgumentParser:
    """The ``reward-server`` command line."""
    p = argparse.ArgumentParser(
        prog="codepercept-rl reward-server", description="Serve the reward pool over HTTP."
    )
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback; no authentication!)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (one zygote process each)")
    p.add_argument("--timeout-s", type=float, default=10.0, help="wall-clock limit per sample")
    p.add_argument("--memory-mb", type=int, default=2048, help="address-space limit per sample")
    p.add_argument("--cache-size", type=int, default=4096, help="LRU result-cache entries (0: off)")
    p.add_argument("--max-pending", type=int, default=1024, help="computations queued or running before 503")
    p.add_argument(
        "--request-timeout-s", type=float, default=None, help="per-request deadline (default: none)"
    )
    p.add_argument(
        "--isolation", choices=("auto", "strict", "none"), default="auto", help="'none': debugging only"
    )
    p.add_argument("--backend", choices=("local", "ray"), default="local", help="local zygotes or Ray actors")
    p.add_argument("--ray-num-cpus", type=float, default=1.0, help="CPUs per Ray actor (--backend ray)")
    p.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"))
    return p


def main(argv: list[str] | None = None) -> int:
    """Runs the reward server until interrupted; returns the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not is_loopback(args.host):
        banner = (
            f"WARNING: binding the reward server to {args.host!r}, which is not loopback. The service has NO "
            "authentication: anyone who can reach this port can run code in its sandboxes. Use it only on a "
            "trusted network."
        )
        log.warning(banner)
        print(banner, file=sys.stderr, flush=True)
    if args.isolation == "none":
        banner = (
            "WARNING: --isolation none: model code runs with rlimits only (no namespaces, no uid switch)."
        )
        log.warning(banner)
        print(banner, file=sys.stderr, flush=True)
    if args.workers < 1 or args.max_pending < 1 or args.cache_size < 0:
        print("error: --workers and --max-pending must be >= 1, --cache-size >= 0", file=sys.stderr)
        return 2
    config = SandboxConfig(timeout_s=args.timeout_s, memory_mb=args.memory_mb, isolation=args.isolation)
    if args.backend == "ray":
        import ray

        ray.init()  # joins the cluster named by RAY_ADDRESS, else starts a local one
    pool = RewardPool(
        workers=args.workers,
        config=config,
        cache_size=args.cache_size,
        max_pending=args.max_pending,
        backend=args.backend,
        ray_num_cpus=args.ray_num_cpus,
    )
    # uvicorn shuts down gracefully on SIGINT/SIGTERM and then re-raises the signal with the previous handler in
    # place; this handler turns that SIGTERM into an exception, so the pool below is closed (zygotes stopped).
    signal.signal(signal.SIGTERM, _raise_stop)
    pool.start()
    try:
        app = create_app(pool, request_timeout_s=args.request_timeout_s)
        server = uvicorn.Server(
            uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)
        )
        server.run()
    except (KeyboardInterrupt, _Stop):
        log.info("reward server stopped by signal")
    finally:
        pool.close()
    return 0


class _Stop(Exception):
    """Raised by the SIGTERM handler to unwind main()."""


def _raise_stop(signum: int, frame: object) -> None:
    raise _Stop(signal.Signals(signum).name)


if __name__ == "__main__":
    sys.exit(main())
