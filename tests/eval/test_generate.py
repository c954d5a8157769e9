"""OpenAIGenerator against a real local server: concurrency limit, retries, 4xx not retried, malformed answers."""

from __future__ import annotations

import asyncio
import base64
import threading
import time

from codepercept_rl.eval.generate import GenRequest, OpenAIGenerator
from codepercept_rl.rollout.types import SamplingParams
from tests.eval.openai_server import CannedServer


def collect(gen: OpenAIGenerator, requests: list[GenRequest]) -> dict[int, object]:
    async def go() -> dict[int, object]:
        return {i: g async for i, g in gen.generate(requests)}

    return asyncio.run(go())


def requests(n: int) -> list[GenRequest]:
    return [GenRequest(f"k{i}", f"png-{i}".encode(), f"prompt {i}") for i in range(n)]


def test_concurrency_limit_and_request_shape() -> None:
    lock, state = threading.Lock(), {"now": 0, "peak": 0}
    bodies: list[dict] = []

    def respond(body: dict, key: str, n: int) -> tuple[int, str]:
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
            bodies.append(body)
        time.sleep(0.3)  # long enough that requests overlap even on a loaded machine
        with lock:
            state["now"] -= 1
        return 200, "answer"

    with CannedServer(respond) as server:
        params = SamplingParams(temperature=0.5, top_p=0.9, max_tokens=77, seed=3, top_k=20)
        out = collect(OpenAIGenerator(server.base_url, "m", params, max_concurrency=2), requests(6))
    assert sorted(out) == list(range(6)) and all(g.text == "answer" for g in out.values())
    assert state["peak"] == 2
    body = bodies[0]
    assert (body["model"], body["max_tokens"], body["temperature"], body["top_p"], body["seed"], body["top_k"]) == (
        "m", 77, 0.5, 0.9, 3, 20
    )  # fmt: skip
    image = body["messages"][-1]["content"][1]["image_url"]["url"]
    assert image.startswith("data:image/png;base64,")
    assert base64.b64decode(image.split(",", 1)[1]).startswith(b"png-")


def test_retries_then_gives_up_and_4xx_is_not_retried() -> None:
    def respond(body: dict, key: str, n: int) -> tuple[int, str]:
        prompt = body["messages"][-1]["content"][0]["text"]
        if prompt == "prompt 0":
            return (503, "busy") if n < 2 else (200, "late answer")
        if prompt == "prompt 1":
            return 400, "bad request"
        return 500, "always broken"

    with CannedServer(respond) as server:
        gen = OpenAIGenerator(server.base_url, "m", SamplingParams(), max_retries=2, backoff_s=0.01)
        out = collect(gen, requests(3))
    assert (out[0].text, out[0].attempts) == ("late answer", 3)
    assert out[1].text is None and out[1].attempts == 1 and "HTTP 400 (not retried)" in out[1].error
    assert (
        out[2].text is None and out[2].attempts == 3 and out[2].error.startswith("api_error after 3 attempts")
    )
