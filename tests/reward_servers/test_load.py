"""Load test: 5,000 /v1/score requests over 64 concurrent connections; every one answered once, none lost.

Most requests are cheap on purpose (distinct tiny scripts, repeats that the cache answers, completions without
code, unknown targets), with real STEM plots mixed in, so the test checks the service's bookkeeping under
concurrency rather than the renderer's speed. Every response is checked: HTTP 200, its id, its status.

Run: ``pytest tests/reward_servers/test_load.py -q``
"""

from __future__ import annotations

import asyncio
import collections
import importlib.util
import time
from pathlib import Path

import aiohttp
import httpx
import pytest

from reward_servers.pool import RewardPool
from reward_servers.sandbox import SandboxConfig
from reward_servers.server import BackgroundServer, create_app

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("stem_corpus", REPO / "benchmarks" / "stem_corpus.py")
stem_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stem_corpus)
SCRIPTS = list(stem_corpus.CORPUS.values())

N_REQUESTS = 5000
CONCURRENCY = 64


def _request(i: int) -> tuple[dict, str]:
    """The i-th request's item and the status it must get."""
    kind = i % 10
    if kind == 0 and i % 20 == 0:  # distinct tiny scripts: each one a real sandbox run
        return {"code": f"x = {i}\nprint(x * 2)\n"}, "no_figure"
    if kind in (0, 1, 2, 3):  # repeats of earlier tiny scripts: cache hits or shared in-flight runs
        return {"code": f"x = {10 * ((i // 10) % 50)}\nprint(x * 2)\n"}, "no_figure"
    if kind == 4:  # a whole completion with a fenced block that raises
        return {"code": f"Sure.\n```python\nraise ValueError('case {i % 7}')\n```\n"}, "exec_error"
    if kind == 5:
        return {"code": "I am sorry, I cannot draw that."}, "no_code"
    if kind == 6:
        return {
            "code": "import matplotlib.pyplot as plt\nplt.plot([1])",
            "target_id": "never-registered",
        }, "bad_request"
    if kind == 7:
        return {"code": "def broken(:\n    pass\n"}, "syntax_error"
    # real STEM plots; every 100th a distinct variant (a fresh render), the rest repeat the corpus
    code = SCRIPTS[i % len(SCRIPTS)] + (f"# variant {i}\n" if i % 100 == 8 else "")
    return {"code": code}, "ok"


@pytest.fixture(scope="module")
def server():
    with (
        RewardPool(workers=2, config=SandboxConfig(timeout_s=10.0), max_pending=256) as pool,
        BackgroundServer(create_app(pool)) as srv,
    ):
        yield srv


async def _run_load(url: str) -> tuple[list[tuple[int, int, dict | None]], float]:
    # aiohttp as the load generator: at 64 connections httpx's async pool costs ~6x more CPU per request here,
    # which would measure the client rather than the service.
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        async with session.post(url + "/v1/render", json={"code": SCRIPTS[0]}) as r:
            target = (await r.json())["images_b64"][0]
        async with session.post(url + "/v1/targets", json={"targets": {"t": target}}) as r:
            assert r.status == 200
        todo: asyncio.Queue[int] = asyncio.Queue()
        for i in range(N_REQUESTS):
            todo.put_nowait(i)
        answers: list[tuple[int, int, dict | None]] = []

        async def worker() -> None:
            while True:
                try:
                    i = todo.get_nowait()
                except asyncio.QueueEmpty:
                    return
                item, _ = _request(i)
                item = {"target_id": "t", **item, "id": f"req-{i}"}
                async with session.post(url + "/v1/score", json={"items": [item]}) as resp:
                    body = await resp.json() if resp.status == 200 else None
                    answers.append((i, resp.status, body))

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return answers, time.perf_counter() - t0


def test_5000_requests_at_64_connections_all_answered_once(server: BackgroundServer) -> None:
    answers, elapsed = asyncio.run(_run_load(server.url))
    assert len(answers) == N_REQUESTS
    bad_http = [(i, code) for i, code, _ in answers if code != 200]
    assert not bad_http, bad_http[:5]
    ids = collections.Counter()
    wrong = []
    for i, _, body in answers:
        (result,) = body["results"]
        ids[result["id"]] += 1
        expected = _request(i)[1]
        if result["id"] != f"req-{i}" or result["status"] != expected:
            wrong.append((i, result["id"], result["status"], expected, result["error"]))
        if expected == "ok" and not result["score"] > 0.0:
            wrong.append((i, "zero score", result))
    assert not wrong, wrong[:5]
    assert set(ids) == {f"req-{i}" for i in range(N_REQUESTS)}
    assert max(ids.values()) == 1  # none duplicated
    metrics = httpx.get(server.url + "/metrics").text
    assert f'reward_http_requests_total{{endpoint="score",code="200"}} {N_REQUESTS}' in metrics
    print(
        f"\n{N_REQUESTS} requests at {CONCURRENCY} connections in {elapsed:.1f} s ({N_REQUESTS / elapsed:.0f} req/s)"
    )
