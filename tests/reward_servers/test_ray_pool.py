"""RewardPool on the Ray backend: a local ``ray.init(num_cpus=2)``, one actor (and zygote) per worker.

Run: ``pytest tests/reward_servers/test_ray_pool.py -q``
"""

from __future__ import annotations

import pytest

ray = pytest.importorskip("ray")

from reward_servers.pool import RewardPool  # noqa: E402
from reward_servers.sandbox import SandboxConfig  # noqa: E402

PLOT = "import matplotlib.pyplot as plt\nplt.plot([0, 1, 2], [1, 0, 1], color='purple')\n"
BARS = "import matplotlib.pyplot as plt\nplt.bar([1, 2, 3], [3, 1, 2])\n"


@pytest.fixture(scope="module")
def ray_pool():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        with RewardPool(
            workers=2, config=SandboxConfig(timeout_s=5.0), backend="ray", ray_num_cpus=1
        ) as pool:
            yield pool
    finally:
        ray.shutdown()


def test_ray_backend_scores_in_order_with_targets_by_id(ray_pool: RewardPool) -> None:
    render = ray_pool.render(PLOT)
    assert render.status == "ok" and render.png.startswith(b"\x89PNG")
    ray_pool.register_targets({"plot": render.png})
    items = [
        {"code": PLOT, "target_id": "plot"},
        {"code": BARS, "target_id": "plot"},
        {"code": "import time\ntime.sleep(20)\n", "target_id": "plot", "timeout_s": 1},
        {"code": ""},
        {"code": "raise SystemExit(3)\n", "target_id": "plot"},
        {"code": PLOT, "target_id": "unknown"},
    ]
    results = ray_pool.score(items)
    assert [r.status for r in results] == ["ok", "ok", "timeout", "no_code", "exec_error", "bad_request"]
    assert results[0].score > results[1].score > 0.0
    pids = {w.pid() for w in ray_pool.workers}
    assert len(pids) == 2  # two actor processes
    assert ray_pool.stats()["workers_alive"] == 2


def test_ray_actor_killed_is_replaced_and_job_retried(ray_pool: RewardPool) -> None:
    ray_pool.register_targets({"plot": ray_pool.render(PLOT).png})
    before = ray_pool.restarts()
    for worker in ray_pool.workers:
        ray.kill(worker.actor, no_restart=True)
    # Distinct code so that nothing comes from the cache: both workers must recover.
    results = ray_pool.score([{"code": PLOT + f"# after kill {i}\n", "target_id": "plot"} for i in range(4)])
    assert [r.status for r in results] == ["ok"] * 4
    assert ray_pool.restarts() - before == 2
