"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for judge tests (http.server in a thread).

The request's ``model`` picks the behaviour:

- ``good``: a rubric JSON; full marks when reference and candidate are identical, else 40/100 (so the verdict
  depends on the inputs);
- ``garbage``: prose with no score; ``badshape``: JSON that is not a chat completion;
- ``slow``: answers after ``slow_s`` seconds; ``flaky``: HTTP 500 for the first attempt of each request body;
- ``think``: a misleading score inside ``<think>`` and the real one after it;
- ``auth``: HTTP 401 unless the bearer token is ``sesame``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

IMAGE_FULL = {"structure": 30, "positions": 30, "text": 10, "style": 20, "clarity": 10}
CODE_FULL = {"layout": 20, "counts": 20, "positions": 30, "relations": 20, "quality": 10}


def _same_inputs(messages: list[dict[str, Any]]) -> tuple[str, bool]:
    content = messages[-1]["content"]
    if isinstance(content, list):  # image judge: two data URLs
        urls = [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]
        return "image", len(urls) == 2 and urls[0] == urls[1]
    ref = re.search(r"<reference>\n(.*?)\n</reference>", content, re.DOTALL)
    cand = re.search(r"<candidate>\n(.*?)\n</candidate>", content, re.DOTALL)
    return "code", bool(ref and cand and ref.group(1) == cand.group(1))


class FakeJudge:
    """Serves the behaviours above; counts requests and the largest number in flight at once."""

    def __init__(self, slow_s: float = 3.0) -> None:
        self.slow_s = slow_s
        self.requests = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.seen_bodies: set[str] = set()
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                raw = self.rfile.read(int(self.headers["Content-Length"]))
                with judge.lock:
                    judge.requests += 1
                    judge.in_flight += 1
                    judge.max_in_flight = max(judge.max_in_flight, judge.in_flight)
                try:
                    status, payload = judge.answer(json.loads(raw), raw.decode(), self.headers)
                finally:
                    with judge.lock:
                        judge.in_flight -= 1
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test): nothing left to answer

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def answer(self, body: dict[str, Any], raw: str, headers: Any) -> tuple[int, dict[str, Any]]:
        model = body["model"]
        kind, same = _same_inputs(body["messages"])
        full = IMAGE_FULL if kind == "image" else CODE_FULL
        parts = dict(full) if same else {k: v * 0.4 for k, v in full.items()}
        text = json.dumps({**parts, "total": sum(parts.values())})
        if model == "garbage":
            text = "What a lovely figure! I would rather not grade it."
        elif model == "badshape":
            return 200, {"result": "fine"}
        elif model == "slow":
            time.sleep(self.slow_s)
        elif model == "flaky":
            with self.lock:
                first = raw not in self.seen_bodies
                self.seen_bodies.add(raw)
            if first:
                return 500, {"error": "overloaded"}
        elif model == "think":
            text = '<think>maybe 5/100? {"total": 5}</think>\n' + text
        elif model == "auth" and headers.get("Authorization") != "Bearer sesame":
            return 401, {"error": "bad key"}
        elif model == "busy":
            time.sleep(0.2)
        return 200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}]}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
