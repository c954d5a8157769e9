"""RewardClient / AsyncRewardClient against real uvicorn servers on 127.0.0.1: retries, back-pressure, fail-over.

Run: ``pytest tests/reward_servers/test_client.py -q``
"""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from reward_servers.client import AsyncRewardClient, RewardClient, RewardRequestError, RewardServerUnavailable
from reward_servers.pool import RewardPool
from reward_servers.sandbox import SandboxConfig
from reward_servers.server import BackgroundServer, create_app
from tests.service import free_port

PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [2, 0, 1], color='blue')\n"
SLOW = "import time\nimport matplotlib.pyplot as plt\ntime.sleep(1.5)\nplt.plot([1, 2])\n"


def wait_until(predicate, timeout_s: float, interval_s: float = 0.01) -> bool:
    """Polls ``predicate()`` until it is true or ``timeout_s`` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)
    return True


@pytest.fixture(scope="module")
def pool():
    # max_pending=1: one computation at a time, so back-pressure is easy to provoke.
    with RewardPool(workers=1, config=SandboxConfig(timeout_s=5.0), max_pending=1) as p:
        yield p


@pytest.fixture(scope="module")
def server(pool: RewardPool):
    with BackgroundServer(create_app(pool)) as srv:
        yield srv


@pytest.fixture(scope="module")
def target(pool: RewardPool) -> bytes:
    return pool.render(PLOT).png


def test_sync_client_round_trip(server: BackgroundServer, target: bytes) -> None:
    with RewardClient(server.url, timeout_s=30) as client:
        assert client.health()["status"] == "ok"
        assert client.register_targets({"plot": target}) == ["plot"]
        results = client.score(
            [{"code": PLOT, "target_id": "plot"}, {"code": "x = (\n", "target_png": target}, {"code": ""}]
        )
        assert [r.status for r in results] == ["ok", "syntax_error", "no_code"]
        assert results[0].score > 0.9 and results[1].score == 0.0
        render = client.render(PLOT)
        assert render.status == "ok" and render.png == target


def test_async_client_round_trip(server: BackgroundServer, target: bytes) -> None:
    async def go():
        async with AsyncRewardClient(server.url, timeout_s=30, max_batch=2) as client:
            await client.register_targets({"plot-async": target})
            health = await client.health()
            # 5 items with max_batch=2: three requests, results joined in order.
            items = [{"code": PLOT, "target_id": "plot-async"}, {"code": None}] * 2 + [{"code": 3}]
            results = await client.score(items)
            render = await client.render("import matplotlib.pyplot as plt\nplt.bar([1], [2])")
            return health, results, render

    health, results, render = asyncio.run(go())
    assert health["workers"] == 1
    assert [r.status for r in results] == ["ok", "no_code", "ok", "no_code", "bad_request"]
    assert render.status == "ok" and render.trace["calls"]["bar"] == 1


def test_back_pressure_503_then_success_via_retry(
    pool: RewardPool, server: BackgroundServer, target: bytes
) -> None:
    pool.register_targets({"plot": target})
    rejected_before = pool.stats()["rejected"]
    slow = threading.Thread(target=pool.score, args=([{"code": SLOW, "target_id": "plot"}],))
    slow.start()  # holds the only pending slot for ~1.5 s
    assert wait_until(lambda: pool.stats()["pending"] == 1, 5.0)
    code = PLOT + f"plt.title('{time.time()}')\n"  # not cached: needs a slot
    t0 = time.monotonic()
    with RewardClient(server.url, timeout_s=30, max_retries=10, backoff=0.1) as client:
        (result,) = client.score([{"code": code, "target_id": "plot"}])
    slow.join()
    assert result.status == "ok"
    assert pool.stats()["rejected"] > rejected_before  # it really was turned away first
    assert time.monotonic() - t0 > 0.5
    metrics = httpx.get(server.url + "/metrics").text
    assert 'reward_http_requests_total{endpoint="score",code="503"}' in metrics


def test_retry_while_server_is_briefly_down(pool: RewardPool, target: bytes) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    box: dict = {}

    def call() -> None:
        with RewardClient(url, timeout_s=30, max_retries=8, backoff=0.2) as client:
            box["results"] = client.score([{"code": PLOT, "target_png": target}])

    caller = threading.Thread(target=call)
    caller.start()
    time.sleep(1.0)  # the first attempts hit a closed port
    assert caller.is_alive()
    with BackgroundServer(create_app(pool), port=port):
        caller.join(timeout=30)
    assert not caller.is_alive()
    assert [r.status for r in box["results"]] == ["ok"]


def test_fail_over_to_the_next_url_and_give_up_when_all_are_down(
    server: BackgroundServer, target: bytes
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    with RewardClient([dead, server.url], timeout_s=30, max_retries=2, backoff=0.01) as client:
        for _ in range(3):  # whichever URL a call starts at, it ends on the live one
            assert client.score([{"code": PLOT, "target_png": target}])[0].status == "ok"
        assert client.register_targets({"fo": target}) == ["fo"]  # the dead server is skipped
        assert client.score([{"code": PLOT, "target_id": "fo"}])[0].status == "ok"
    with (
        RewardClient([dead], timeout_s=5, max_retries=2, backoff=0.01) as client,
        pytest.raises(RewardServerUnavailable, match="3 attempts"),
    ):
        client.health()


def _requests_counted(url: str, endpoint: str, code: str) -> float:
    """The server's own count of ``endpoint`` requests answered with ``code`` (its /metrics)."""
    label = f'reward_http_requests_total{{endpoint="{endpoint}",code="{code}"}} '
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(label):
            return float(line[len(label) :])
    return 0.0


def test_client_errors_are_not_retried(server: BackgroundServer) -> None:
    before = _requests_counted(server.url, "targets", "400")
    with RewardClient(server.url, timeout_s=30, max_retries=5, backoff=1.0) as client:
        with pytest.raises(RewardRequestError, match="'junk'") as info:
            client.register_targets({"junk": b"not a png"})
        assert info.value.status_code == 400
    assert _requests_counted(server.url, "targets", "400") == before + 1  # sent once, not retried


def test_client_re_registers_targets_on_a_restarted_server(pool: RewardPool, target: bytes) -> None:
    port = free_port()
    with RewardClient(f"http://127.0.0.1:{port}", timeout_s=30, max_retries=3, backoff=0.1) as client:
        with (
            RewardPool(workers=1, config=SandboxConfig(timeout_s=5.0)) as first,
            BackgroundServer(create_app(first), port=port),
        ):
            client.register_targets({"kept": target})
            assert client.score([{"code": PLOT, "target_id": "kept"}])[0].status == "ok"
        assert pool.score([{"code": PLOT, "target_id": "kept"}])[0].status == "bad_request"  # unknown there
        # A new server on the same port whose pool never saw "kept" (as after a restart).
        with BackgroundServer(create_app(pool), port=port):
            (result,) = client.score([{"code": PLOT + "# again\n", "target_id": "kept"}])
            assert result.status == "ok", result.error
            assert pool.score([{"code": PLOT, "target_id": "kept"}])[0].status == "ok"  # now registered there
