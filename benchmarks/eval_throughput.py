"""Eval harness throughput (items/s): overlapped generation + scoring vs one item at a time as the baseline.

    python benchmarks/eval_throughput.py [--items 24] [--latency 0.3] [--workers 2]

A local OpenAI-compatible server (stdlib, a thread) answers every request after ``--latency`` seconds with the
item's own reference code, as a remote model would; every answer is rendered and scored in the sandbox pool
(``--workers`` zygotes). Two runs over the same bench into fresh directories: the baseline with one request in
flight and one item scored at a time (what a sequential script does), and the harness defaults (8 requests in
flight, 4 items in scoring). Pool start-up is excluded (the pool is started once and shared). On a shared
2-core machine the figures move with the neighbours' load; run it twice before trusting a ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from codepercept_rl.eval import OpenAIGenerator, load_bench, run_eval
from codepercept_rl.rollout.types import SamplingParams
from reward_servers.pool import RewardPool

COLORS = ("#ff0000", "#0000ff", "#00aa00", "#ff8800", "#8800aa", "#00cccc")


def item_code(i: int) -> str:
    """A small program per item (different bar heights and colours)."""
    heights = [(i * 7 + k * 3) % 10 / 10 + 0.1 for k in range(4)]
    return (
        "import matplotlib.pyplot as plt\nfig, ax = plt.subplots(figsize=(4, 3))\n"
        f"ax.bar(range(4), {heights}, color='{COLORS[i % len(COLORS)]}')\nax.set_title('item {i}')\n"
    )


def make_bench(root: Path, pool: RewardPool, n: int) -> dict[str, str]:
    """Writes bench.jsonl + images (sandbox renders); returns image sha256 -> answer."""
    (root / "images").mkdir(parents=True)
    answers, rows = {}, []
    for i in range(n):
        code = item_code(i)
        png = pool.render(code).png
        (root / "images" / f"{i}.png").write_bytes(png)
        rows.append({"id": str(i), "image": f"images/{i}.png", "reference_code": code})
        answers[hashlib.sha256(png).hexdigest()] = f"```python\n{code}```"
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return answers


def serve(answers: dict[str, str], latency_s: float) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            url = body["messages"][-1]["content"][1]["image_url"]["url"]
            text = answers[hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()]
            time.sleep(latency_s)
            data = json.dumps({"choices": [{"message": {"content": text}, "finish_reason": "stop"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd


def run(bench: Path, url: str, pool: RewardPool, concurrency: int, score_concurrency: int) -> float:
    """Items/s of one fresh run."""
    items = load_bench(bench)
    gen = OpenAIGenerator(url, "bench", SamplingParams(max_tokens=256), max_concurrency=concurrency)
    with tempfile.TemporaryDirectory(prefix="eval-bench-") as out:
        start = time.perf_counter()
        stats = asyncio.run(run_eval(items, gen, pool, out, score_concurrency=score_concurrency))
        wall = time.perf_counter() - start
    assert stats["written"] == len(items)
    return len(items) / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=int, default=24)
    parser.add_argument("--latency", type=float, default=0.3, help="seconds per model answer")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with RewardPool(workers=args.workers) as pool, tempfile.TemporaryDirectory() as tmp:
        answers = make_bench(Path(tmp), pool, args.items)
        httpd = serve(answers, args.latency)
        url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
        base = run(Path(tmp), url, pool, concurrency=1, score_concurrency=1)
        fast = run(Path(tmp), url, pool, concurrency=8, score_concurrency=4)
        httpd.shutdown()
    print(f"eval throughput: {args.items} items, {args.latency}s per answer, {args.workers} sandbox workers")
    print(f"{'mode':<34}{'items/s':>10}{'ratio':>8}")
    print(f"{'sequential (1 request, 1 scoring)':<34}{base:>10.2f}{1.0:>8.2f}")
    print(f"{'harness (8 requests, 4 scoring)':<34}{fast:>10.2f}{fast / base:>8.2f}")


if __name__ == "__main__":
    main()
