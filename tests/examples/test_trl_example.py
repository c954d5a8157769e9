"""examples/trl_reward_server.py as its docstring runs it: the reward service in its own process, then one TRL
GRPO step whose completions are scored over HTTP by that service."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.examples.conftest import run_example
from tests.service import served


def test_trl_example_scores_through_a_separate_reward_server() -> None:
    with served("reward_servers.server", "--workers", "1", timeout_s=60) as (url, _):
        proc = run_example("trl_reward_server.py", "--url", url)
        metrics = httpx.get(url + "/metrics", timeout=10).text
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    # TRL logged our reward's components: every completion was scored, the statuses cover all of them
    logged = dict(
        line.rsplit(maxsplit=1)
        for line in proc.stdout.splitlines()
        if line.startswith(("codepercept", "rewards/"))
    )
    assert float(logged["codepercept/scored"]) == 1.0
    statuses = {k: float(v) for k, v in logged.items() if k.startswith("codepercept/status/")}
    assert statuses and sum(statuses.values()) == pytest.approx(1.0, abs=1e-3)
    assert "rewards/codepercept/mean" in logged

    # ... and the scoring happened in the separate service: 4 completions plus the target render reached it
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    items = sum(s.value for s in families["reward_items"].samples if s.name.endswith("_total"))
    assert items >= 4
    endpoints = {
        s.labels["endpoint"]
        for s in families["reward_http_request_seconds"].samples
        if s.name.endswith("_count") and s.value > 0
    }
    assert {"score", "targets", "render"} <= endpoints
