"""RewardPool on the local backend: real Sandbox zygotes, real renders, real scores.

Run: ``pytest tests/reward_servers/test_pool.py -q``
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from reward_servers.pool import PoolBusy, PoolClosed, RewardPool
from reward_servers.sandbox import SandboxConfig

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("stem_corpus", REPO / "benchmarks" / "stem_corpus.py")
stem_corpus = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(stem_corpus)
CORPUS = stem_corpus.CORPUS

SLEEP = "import time\ntime.sleep(30)\n"
PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [0, 1, 0], color='red')\n"


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
    with RewardPool(workers=2, config=SandboxConfig(timeout_s=5.0), cache_size=256, max_pending=64) as p:
        yield p


@pytest.fixture(scope="module")
def target_png(pool: RewardPool) -> bytes:
    render = pool.render(CORPUS["bar_grouped"])
    assert render.status == "ok", render.error
    return render.png


def test_mixed_batch_keeps_order_and_answers_every_item(pool: RewardPool, target_png: bytes) -> None:
    pool.register_targets({"bars": target_png})
    items = [
        {"code": CORPUS["bar_grouped"], "target_id": "bars"},
        {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2](", "target_id": "bars"},
        {"code": SLEEP, "target_id": "bars", "timeout_s": 1.0},
        {"code": ""},
        {"code": PLOT, "target_id": "no-such-target"},
        {"code": 42, "target_id": "bars"},
        {"code": PLOT, "target_png_b64": "not base64 !!"},
        {"code": PLOT, "target_png_b64": base64.b64encode(b"\x89PNG\r\n\x1a\nbroken").decode()},
        {"code": PLOT, "target_id": "bars", "reward": "no-such-reward"},
        {"code": "import matplotlib.pyplot as plt\nraise ValueError('boom')", "target_id": "bars"},
        f"```python\n{PLOT}```",  # an item that is not an object
        {"code": PLOT},  # nothing to compare with
        {
            "code": f"Here is the code:\n```python\n{PLOT}```\nDone.",
            "target_png_b64": base64.b64encode(target_png).decode(),
        },
    ]
    results = pool.score(items)
    statuses = [r.status for r in results]
    assert statuses == [
        "ok",
        "syntax_error",
        "timeout",
        "no_code",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "bad_request",
        "exec_error",
        "bad_request",
        "bad_request",
        "ok",
    ]
    assert results[0].score > 0.9  # the target is this very script's render
    assert 0.0 < results[12].score < results[0].score
    assert all(r.score == 0.0 for r in results[1:12])
    assert "nothing to compare with" in results[11].error
    assert "no-such-target" in results[4].error
    assert "'code' must be a string" in results[5].error
    assert "base64" in results[6].error
    assert "decode" in results[7].error
    assert "no-such-reward" in results[8].error
    assert "boom" in (results[9].error or "")


def test_target_registered_once_by_id_scores_like_inline(pool: RewardPool) -> None:
    render = pool.render(CORPUS["triangle_angles"])
    assert render.status == "ok"
    assert pool.register_targets({"triangle": render.png}) == ["triangle"]
    by_id, inline, other = pool.score(
        [
            {"code": CORPUS["triangle_angles"], "target_id": "triangle"},
            {"code": CORPUS["triangle_angles"], "target_png": render.png, "timeout_s": 4.0},
            {"code": CORPUS["pie_budget"], "target_id": "triangle"},
        ]
    )
    assert by_id.status == inline.status == other.status == "ok"
    assert by_id.score == pytest.approx(inline.score, abs=1e-6)
    assert other.score < by_id.score - 0.2
    with pytest.raises(ValueError, match="bad"):
        pool.register_targets({"bad": b"\x89PNG\r\n\x1a\n not really"})


def test_repeated_code_is_served_from_cache_and_shared_in_flight(pool: RewardPool, target_png: bytes) -> None:
    pool.register_targets({"bars": target_png})
    code = PLOT + f"plt.title('cache probe {time.time()}')\n"  # unique: never seen by this pool
    before = pool.stats()
    group = [{"code": code, "target_id": "bars"}] * 8  # one GRPO group of identical completions
    first = pool.score(group)
    mid = pool.stats()
    assert mid["cache_misses"] - before["cache_misses"] == 1  # one computation for the whole group
    assert mid["inflight_shared"] - before["inflight_shared"] == 7
    again = pool.score(group[:1])
    after = pool.stats()
    assert after["cache_hits"] - before["cache_hits"] == 1
    assert after["cache_misses"] - before["cache_misses"] == 1
    assert {r.score for r in first} == {again[0].score}
    assert again[0].status == "ok"


def test_deadline_answers_timeout_and_computation_fills_cache(pool: RewardPool, target_png: bytes) -> None:
    pool.register_targets({"bars": target_png})
    code = (
        "import time\nimport matplotlib.pyplot as plt\ntime.sleep(1.0)\nplt.plot([0, 1])\n# deadline probe\n"
    )
    (late,) = pool.score([{"code": code, "target_id": "bars"}], deadline_s=0.2)
    assert late.status == "timeout" and "deadline" in late.error  # answered before the 1 s program could end
    assert wait_until(lambda: pool.stats()["pending"] == 0, 10.0)
    (done,) = pool.score([{"code": code, "target_id": "bars"}], deadline_s=0.2)
    assert done.status == "ok"  # finished in the background, now a cache hit


def test_restart_after_zygote_is_killed() -> None:
    with RewardPool(workers=1, config=SandboxConfig(timeout_s=5.0), cache_size=0) as pool:
        target = pool.render(PLOT).png
        pool.register_targets({"t": target})
        plot = {"code": PLOT, "target_id": "t"}
        assert pool.score([plot])[0].status == "ok"
        worker = pool.workers[0]
        pid = worker.zygote_pid
        os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not worker.alive, 5.0)
        (after,) = pool.score([plot])  # registered target must be back in the new zygote
        assert after.status == "ok", after.error
        assert worker.zygote_pid != pid
        assert pool.restarts() == 1
        assert "reward_worker_restarts_total 1" in pool.registry.render()


def test_back_pressure_non_blocking_raises_then_blocking_waits() -> None:
    with RewardPool(workers=1, config=SandboxConfig(timeout_s=5.0), max_pending=1) as pool:
        target = pool.render(PLOT).png
        pool.register_targets({"t": target})
        slow = {
            "code": "import time\ntime.sleep(1.0)\nimport matplotlib.pyplot as plt\nplt.plot([1])",
            "target_id": "t",
        }
        box: dict = {}
        runner = threading.Thread(target=lambda: box.setdefault("slow", pool.score([slow])))
        runner.start()
        assert wait_until(lambda: pool.stats()["pending"] == 1, 5.0)
        with pytest.raises(PoolBusy, match="full"):
            pool.score([{"code": PLOT, "target_id": "t"}], block=False)
        (waited,) = pool.score([{"code": PLOT, "target_id": "t"}])  # blocks until the slow one is done
        runner.join()
        assert waited.status == "ok" and box["slow"][0].status == "ok"
        assert pool.stats()["rejected"] == 1
    with pytest.raises(PoolClosed):
        pool.score([{"code": PLOT, "target_id": "t"}])


def test_async_api_and_render(pool: RewardPool, target_png: bytes) -> None:
    pool.register_targets({"bars": target_png})

    async def go():
        scores = await pool.ascore([{"code": CORPUS["cube_wireframe"], "target_id": "bars"}, {"code": "  "}])
        render = await pool.arender(CORPUS["cube_wireframe"])
        return scores, render

    scores, render = asyncio.run(go())
    assert [r.status for r in scores] == ["ok", "no_code"]
    assert render.status == "ok" and render.png.startswith(b"\x89PNG")
    assert render.trace["axes"][0]["projection"] == "3d"
    assert pool.render("no code here").status == "no_code"
