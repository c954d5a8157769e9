"""Shared fixtures: one sandbox renderer per session, and a real OpenAI-compatible HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from data_tools.render import Renderer

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def renderer() -> Iterator[Renderer]:
    """One sandbox zygote shared by the in-process tests (each start costs seconds of CPU)."""
    with Renderer(workers=1) as r:
        yield r


def run_data_cli(
    *args: str, timeout: float = 300, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run ``python -m codepercept_rl.data_cli ARGS`` as a user would."""
    return subprocess.run(
        [sys.executable, "-m", "codepercept_rl.data_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


Responder = Callable[[dict[str, Any]], "str | list[str] | tuple[int, str]"]


class ChatServer:
    """An OpenAI-compatible ``/v1/chat/completions`` server (aiohttp, own thread and loop).

    ``responder(payload)`` decides each answer: a string (one choice), a list of strings (choices), or
    ``(status, body)`` for an HTTP error. Every request payload is recorded in ``requests``.
    """

    def __init__(self) -> None:
        self.responder: Responder = lambda payload: "ok"
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self.port = 0

    async def _handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        with self._lock:
            self.requests.append(payload)
        answer = self.responder(payload)
        if isinstance(answer, tuple):
            status, body = answer
            return web.Response(status=status, text=body)
        texts = [answer] if isinstance(answer, str) else list(answer)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        return web.json_response(
            {"id": "x", "object": "chat.completion", "model": payload["model"], "choices": choices}
        )

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/v1/chat/completions", self._handle)
        self._runner = web.AppRunner(app)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]  # port 0: the OS picked a free one
        self._ready.set()
        self._loop.run_forever()

    def start(self) -> ChatServer:
        self._thread.start()
        assert self._ready.wait(10), "chat server did not start"
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def prompts(self) -> list[str]:
        """The text parts of the last user message of each recorded request."""
        out = []
        for payload in self.requests:
            content = payload["messages"][-1]["content"]
            if isinstance(content, list):
                content = " ".join(p.get("text", "") for p in content if p.get("type") == "text")
            out.append(content)
        return out


def message_text(payload: dict[str, Any]) -> str:
    """The text of the last message of a request (image parts skipped)."""
    content = payload["messages"][-1]["content"]
    if isinstance(content, list):
        return " ".join(p.get("text", "") for p in content if p.get("type") == "text")
    return content


def message_images(payload: dict[str, Any]) -> list[str]:
    """The data URLs of the image parts of the last message."""
    content = payload["messages"][-1]["content"]
    if not isinstance(content, list):
        return []
    return [p["image_url"]["url"] for p in content if p.get("type") == "image_url"]


@pytest.fixture()
def chat_server() -> Iterator[ChatServer]:
    server = ChatServer().start()
    yield server
    server.stop()


def judge_ok(payload: dict[str, Any]) -> str | None:
    """Canned passing judge verdicts, or None when the request is not a judge prompt."""
    text = message_text(payload)
    if "Judge this program's quality" in text:
        return json.dumps({"pass": True, "score": 4, "reason": "clean"})
    if "fatal rendering problem" in text:
        return json.dumps({"fatal": False, "reason": "fine"})
    if "Does the figure show what the code says" in text:
        return json.dumps({"match": True, "reason": "same"})
    return None
