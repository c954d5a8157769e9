"""Scripted answers of the local OpenAI-compatible test server, one behaviour per bench item."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from codepercept_rl.jobs.eval import main
from tests.eval.conftest import Bench, fenced
from tests.eval.openai_server import CannedServer, png_key

IMAGE_JUDGE, CODE_JUDGE = 80, 60


def scripted(bench: Bench) -> Callable[[dict, str, int], tuple[int, str]]:
    by_key = {png_key(png): item_id for item_id, png in bench.pngs.items()}

    def respond(body: dict, key: str, n: int) -> tuple[int, str]:
        if body["model"] == "judge":
            content = body["messages"][-1]["content"]
            total = IMAGE_JUDGE if isinstance(content, list) else CODE_JUDGE
            return 200, f'Reasoning... {{"total": {total}}}'
        item = by_key[key]
        if item in ("good1", "good2", "from_ref"):
            return 200, fenced(bench.codes[item])
        if item == "bad_ref":  # the bench's reference is broken; the answer draws the image exactly
            return 200, fenced(bench.codes[item])
        if item == "broken":
            return 200, fenced(
                "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nraise ValueError('boom')\n"
            )
        if item == "prose":
            return 200, "It is an orange line going up and down. I cannot write code today."
        if item == "err500":
            return 500, "internal error"
        if item == "hang":
            return 200, fenced("import matplotlib.pyplot as plt\nwhile True:\n    pass\n")
        if item == "retry_ok":
            return (500, "overloaded") if n == 0 else (200, fenced(bench.codes[item]))
        raise AssertionError(f"unexpected item {item}")

    return respond


def run_cli(server: CannedServer, bench: Bench, out: Path, *extra: str) -> int:
    return main(
        [
            "--endpoint", server.base_url, "--model-name", "test-model",
            "--bench", str(bench.dir / "bench.jsonl"), "--out", str(out),
            "--retries", "1", "--backoff", "0.01", "--concurrency", "4",
            "--workers", "2", "--exec-timeout", "2", "--n-boot", "200",
            *extra,
        ]
    )  # fmt: skip
