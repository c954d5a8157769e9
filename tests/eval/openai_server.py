"""A real OpenAI-compatible chat-completions server on 127.0.0.1 for the eval tests (a thread, stdlib HTTP).

    with CannedServer(respond) as server:      # respond(body, n_seen) -> (http_status, answer text or error)
        url = server.base_url                  # http://127.0.0.1:PORT/v1

``respond`` sees the parsed request body and how many requests with the same routing key came before this one
(the key is the sha256 of the first image in the request, or of the text prompt for text-only requests), so
tests can script "500 first, then an answer". Every request is logged in ``server.log`` as (key, model, status).
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Respond = Callable[[dict[str, Any], str, int], tuple[int, str]]


def request_key(body: dict[str, Any]) -> str:
    """sha256 of the request's first image (decoded PNG bytes), else of its last user text."""
    for msg in body.get("messages", []):
        content = msg.get("content")
        if isinstance(content, list):
            for part in content:
                if part.get("type") == "image_url":
                    url = part["image_url"]["url"]
                    return hashlib.sha256(base64.b64decode(url.split(",", 1)[1])).hexdigest()
    texts = [m["content"] for m in body.get("messages", []) if isinstance(m.get("content"), str)]
    return hashlib.sha256((texts[-1] if texts else "").encode()).hexdigest()


def png_key(png: bytes) -> str:
    """The routing key of a request carrying this image."""
    return hashlib.sha256(png).hexdigest()


class CannedServer:
    """ThreadingHTTPServer answering ``POST /v1/chat/completions`` through ``respond``.

    Args:
        respond: (body, key, n_seen_for_key) -> (HTTP status, answer text or error body).
        delay_s: sleep before answering (to make runs slow enough to kill mid-way).
    """

    def __init__(self, respond: Respond, delay_s: float = 0.0) -> None:
        self.respond = respond
        self.delay_s = delay_s
        self.log: list[tuple[str, str, int]] = []
        self._seen: Counter[str] = Counter()
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep pytest output clean
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                key = request_key(body)
                with outer._lock:
                    n = outer._seen[key]
                    outer._seen[key] += 1
                if outer.delay_s:
                    time.sleep(outer.delay_s)
                status, text = outer.respond(body, key, n)
                with outer._lock:
                    outer.log.append((key, str(body.get("model")), status))
                if status == 200:
                    payload = {
                        "id": "cmpl-test",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": text},
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": {
                            "prompt_tokens": 10,
                            "completion_tokens": len(text.split()),
                            "total_tokens": 10,
                        },
                    }
                    data = json.dumps(payload).encode()
                else:
                    data = json.dumps({"error": {"message": text}}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``."""
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def requests_for(self, key: str, model: str | None = None) -> int:
        """How many requests carried this routing key (optionally for one model)."""
        with self._lock:
            return sum(1 for k, m, _ in self.log if k == key and (model is None or m == model))

    def __enter__(self) -> CannedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
