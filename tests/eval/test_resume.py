"""Resume: an eval killed mid-run (SIGKILL to its process group) continues without redoing finished items."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from codepercept_rl.eval.results import read_results
from codepercept_rl.jobs.eval import main
from tests.eval.conftest import fenced, write_bench
from tests.eval.openai_server import CannedServer, png_key

SPEC = {f"r{i}": (kind, color, "resume") for i, (kind, color) in enumerate(
    [("square", "#ff0000"), ("circle", "#0000ff"), ("bars", "#00aa00"), ("line", "#ff8800"),
     ("triangle", "#8800aa"), ("dots", "#00cccc"), ("square", "#ffd700"), ("circle", "#ff00ff")]
)}  # fmt: skip


def test_killed_run_resumes_without_rescoring(render_pool, reward_url: str, tmp_path: Path) -> None:
    bench = write_bench(tmp_path / "bench", render_pool, SPEC)
    by_key = {png_key(p): i for i, p in bench.pngs.items()}
    out = tmp_path / "out"
    args = [
        "--endpoint", "", "--model-name", "m", "--bench", str(bench.dir), "--out", str(out),
        "--concurrency", "1", "--reward-url", reward_url, "--n-boot", "50", "--score-concurrency", "1",
    ]  # fmt: skip

    def respond(body: dict, key: str, n: int) -> tuple[int, str]:
        return 200, fenced(bench.codes[by_key[key]])

    # 0.5 s per answer: slow enough to kill the run part-way, after some items are on disk.
    with CannedServer(respond, delay_s=0.5) as server:
        args[1] = server.base_url
        proc = subprocess.Popen(
            [sys.executable, "-m", "codepercept_rl.jobs.eval", *args],
            start_new_session=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        results = out / "results.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if results.exists() and results.read_bytes().count(b"\n") >= 3:
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        first = read_results(out)
        assert 3 <= len(first) < len(SPEC), f"kill came too late: {len(first)} items done"
        asked_before = len(server.log)

        assert main(args) == 0  # the rerun, in this process
        log = list(server.log)

    lines = [json.loads(x) for x in results.read_text().splitlines()]
    ids = [r["id"] for r in lines]
    assert sorted(ids) == sorted(SPEC) and len(ids) == len(set(ids))  # all present, none scored twice
    assert all(r["status"] == "ok" for r in lines)
    assert all(lines[i] == first[r] for i, r in enumerate(ids[: len(first)]))  # finished records untouched
    asked_after = [key for key, _, _ in log[asked_before:]]
    for item_id in first:  # finished items were not asked again
        assert png_key(bench.pngs[item_id]) not in asked_after
    assert {by_key[k] for k in asked_after} == set(SPEC) - set(first)
