"""The reward HTTP service: real uvicorn on 127.0.0.1, real pool, real renders; plus the CLI in a subprocess.

Run: ``pytest tests/reward_servers/test_server.py -q``
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from reward_servers.pool import RewardPool
from reward_servers.sandbox import RenderResult, SandboxConfig
from reward_servers.scoring import decode_png
from reward_servers.server import BackgroundServer, create_app, is_loopback
from tests.service import served

REPO = Path(__file__).resolve().parents[2]
PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 0], color='red')\nplt.title('peak')\n"
BARS = "import matplotlib.pyplot as plt\nplt.bar(['a', 'b', 'c'], [3, 1, 2], color='green')\n"


@pytest.fixture(scope="module")
def pool():
    with RewardPool(workers=2, config=SandboxConfig(timeout_s=5.0), max_pending=64) as p:
        yield p


@pytest.fixture(scope="module")
def server(pool: RewardPool):
    with BackgroundServer(create_app(pool, max_items=100)) as srv:
        yield srv


@pytest.fixture(scope="module")
def http(server: BackgroundServer):
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def target_b64(http: httpx.Client) -> str:
    r = http.post("/v1/render", json={"code": PLOT})
    assert r.status_code == 200
    return r.json()["images_b64"][0]


def test_score_mixed_batch_in_order_with_ids(http: httpx.Client, target_b64: str) -> None:
    items = [
        {"id": "good", "code": PLOT, "target_png_b64": target_b64},
        {"id": "syntax", "code": "def f(:\n  pass", "target_png_b64": target_b64},
        {"id": "slow", "code": "while True:\n    pass\n", "target_png_b64": target_b64, "timeout_s": 1},
        {"id": "empty", "code": None},
        {"id": "badtarget", "code": PLOT, "target_id": "missing"},
        {"id": "notstr", "code": ["x"], "target_png_b64": target_b64},
        {"id": 7, "code": f"```python\n{BARS}```", "target_png_b64": target_b64},
        {"id": "surrogate", "code": "s = '\ud800'\nprint(len(s))\n", "target_png_b64": target_b64},
    ]
    # json.dumps escapes the lone surrogate (httpx's own encoder would refuse it)
    r = http.post(
        "/v1/score", content=json.dumps({"items": items}), headers={"content-type": "application/json"}
    )
    assert r.status_code == 200
    results = r.json()["results"]
    assert [x["id"] for x in results] == [it["id"] for it in items]
    assert [x["status"] for x in results] == [
        "ok",
        "syntax_error",
        "timeout",
        "no_code",
        "bad_request",
        "bad_request",
        "ok",
        "syntax_error",  # a lone surrogate reaches the sandbox (which cannot compile it), no HTTP error
    ]
    assert results[0]["score"] > results[6]["score"] > 0.0
    assert set(results[0]["metrics"]) >= {"ssim", "edge", "pixel"}
    assert results[0]["error"] is None and "missing" in results[4]["error"]


def test_targets_by_id(http: httpx.Client, target_b64: str) -> None:
    r = http.post("/v1/targets", json={"targets": {"peak": target_b64}})
    assert r.status_code == 200 and r.json() == {"registered": ["peak"]}
    r = http.post(
        "/v1/score",
        json={"items": [{"code": PLOT, "target_id": "peak"}, {"code": BARS, "target_id": "peak"}]},
    )
    same, other = r.json()["results"]
    assert same["status"] == other["status"] == "ok"
    assert same["score"] > other["score"]
    bad = http.post("/v1/targets", json={"targets": {"x": "%%%"}})
    assert bad.status_code == 400 and "'x'" in bad.json()["error"] and "base64" in bad.json()["error"]
    junk = base64.b64encode(b"GIF89a not a png").decode()
    bad = http.post("/v1/targets", json={"targets": {"ok-one": target_b64, "junk": junk}})
    assert bad.status_code == 400 and "junk" in bad.json()["error"]
    r = http.post("/v1/score", json={"items": [{"code": PLOT, "target_id": "ok-one"}]})
    assert r.json()["results"][0]["status"] == "bad_request"  # all-or-nothing: ok-one was not registered


def test_render_returns_png_and_trace(http: httpx.Client) -> None:
    r = http.post("/v1/render", json={"code": BARS})
    assert r.status_code == 200
    render = RenderResult.from_dict(r.json())
    assert render.status == "ok"
    assert decode_png(render.png).shape[2] == 3
    assert render.trace["calls"].get("bar") == 1
    r = http.post("/v1/render", json={"code": "import os\nos._exit(3)"})
    assert r.status_code == 200 and r.json()["status"] == "exec_error"


def test_malformed_requests_get_clear_http_errors(http: httpx.Client) -> None:
    r = http.post("/v1/score", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = http.post("/v1/score", json={"item": []})
    assert r.status_code == 422 and "items" in r.json()["error"]
    r = http.post("/v1/score", json={"items": [{"code": ""}] * 101})
    assert r.status_code == 413 and "at most 100" in r.json()["error"]
    r = http.post("/v1/render", json={"code": PLOT, "timeout_s": "soon"})
    assert r.status_code == 422
    r = http.post("/v1/targets", json=["x"])
    assert r.status_code == 422


def test_healthz_and_prometheus_metrics(http: httpx.Client, target_b64: str) -> None:
    health = http.get("/healthz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok" and health.json()["workers_alive"] == 2
    for _ in range(2):  # the second one is a cache hit
        http.post("/v1/score", json={"items": [{"code": PLOT, "target_png_b64": target_b64}] * 2})
    text = http.get("/metrics").text
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name in (
        "reward_http_request_seconds",
        "reward_items",
        "reward_queue_depth",
        "reward_cache_hits",
        "reward_cache_misses",
        "reward_worker_restarts",
        "reward_busy_workers",
        "reward_item_latency_seconds",
    ):
        assert name in families, name
    assert families["reward_http_request_seconds"].type == "histogram"
    ok_items = [s.value for s in families["reward_items"].samples if s.labels.get("status") == "ok"]
    assert ok_items and ok_items[0] >= 2
    assert any(s.value >= 1 for s in families["reward_cache_hits"].samples)
    score_counts = [
        s.value
        for s in families["reward_http_request_seconds"].samples
        if s.name.endswith("_count") and s.labels["endpoint"] == "score"
    ]
    assert score_counts and score_counts[0] >= 1


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback("example.org")


def test_cli_main_serves_and_stops_on_sigterm() -> None:
    with served("reward_servers.server", "--workers", "1", "--timeout-s", "5", timeout_s=60) as (url, proc):
        r = httpx.post(url + "/v1/render", json={"code": PLOT}, timeout=60)
        assert r.json()["status"] == "ok"
        r = httpx.post(
            url + "/v1/score", json={"items": [{"code": PLOT, "target_png_b64": r.json()["images_b64"][0]}]}
        )
        assert r.json()["results"][0]["status"] == "ok"
    out = proc.output
    assert proc.returncode == 0, out
    assert "reward server stopped by signal" in out
    assert "WARNING" not in out  # loopback: no non-loopback banner


def test_cli_warns_loudly_on_non_loopback_host() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root for unshare -n")
    # In a fresh network namespace (no interfaces up), so binding every interface exposes nothing.
    cmd = [
        "unshare",
        "-n",
        sys.executable,
        "-m",
        "reward_servers.server",
        "--host",
        "0.0.0.0",
        "--port",
        "8000",
    ]
    proc = subprocess.Popen(
        cmd + ["--workers", "1"], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    seen: list[str] = []
    try:
        for line in proc.stderr:
            seen.append(line)
            if "Uvicorn running on" in line:
                break
    finally:
        proc.send_signal(signal.SIGINT)
        _, rest = proc.communicate(timeout=30)
    text = "".join(seen) + rest
    assert "WARNING: binding the reward server to '0.0.0.0'" in text and "NO authentication" in text
    assert proc.returncode == 0, text  # SIGINT: graceful stop


def test_body_size_limit_also_for_chunked_bodies(pool: RewardPool) -> None:
    body = json.dumps({"items": [{"code": "x = 1\n" + "#" * 4000}]}).encode()
    with (
        BackgroundServer(create_app(pool, max_body_mb=0.001)) as small,
        httpx.Client(base_url=small.url) as http,
    ):
        r = http.post("/v1/score", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 413 and "limit" in r.json()["error"]
        chunked = http.post("/v1/score", content=iter([body[:2000], body[2000:]]))  # no Content-Length
        assert chunked.status_code == 413
        ok = http.post("/v1/score", json={"items": [{"code": ""}]})
        assert ok.status_code == 200 and ok.json()["results"][0]["status"] == "no_code"
