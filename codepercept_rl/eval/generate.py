"""Answer generation for evaluation: this project's rollout engines or any OpenAI-compatible endpoint.

    gen = EngineGenerator(HFRolloutEngine(model, processor), SamplingParams(temperature=0, max_tokens=2048))
    gen = OpenAIGenerator("http://127.0.0.1:8000/v1", "my-model", SamplingParams(max_tokens=8192))
    async for index, generation in gen.generate(requests):
        ...   # in completion order, not request order

Both yield one ``Generation`` per request as soon as it exists, so scoring overlaps generation. A request that
cannot be answered is not an exception: its ``Generation`` has ``text=None`` and an ``error`` saying why
(``api_error`` after retries, a prompt too long for the engine), and the harness scores it 0.

OpenAI-compatible endpoints get ``POST {base_url}/chat/completions`` with the image as a base64 PNG data URL,
at most ``max_concurrency`` requests in flight. Connection errors, timeouts (``timeout_s`` per attempt),
HTTP 429 and 5xx are retried ``max_retries`` times with exponential back-off and jitter (``Retry-After``
honoured); other HTTP 4xx fail at once (a bad request stays bad). The API key is read from the environment
variable named by ``api_key_env`` and sent as a bearer token; it is never written to results.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import os
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import httpx

from codepercept_rl.rollout.types import Completion, RolloutEngine, RolloutPrompt, SamplingParams

# Our wording of the benchmark's instruction (the paper's eval asks for matplotlib code reproducing the picture).
CODE_PROMPT = (
    "You are an expert Python developer who writes matplotlib code from pictures. Write complete matplotlib "
    "code that reproduces the picture below as exactly as you can, in one ```python code block."
)


@dataclass
class GenRequest:
    """One prompt: a text instruction about one image (PNG bytes), or a text-only prompt (``image_png=None``)."""

    key: str
    image_png: bytes | None
    prompt: str
    system: str | None = None


@dataclass
class Generation:
    """What came back for one request.

    Attributes:
        text: the answer, or None when no answer could be had (then ``error`` says why).
        error: the reason generation failed (after retries), None on success.
        finish_reason: "stop", "length", ... as the engine or endpoint reported it.
        attempts: HTTP attempts made (1 for engines).
        latency_s: wall time from the first attempt to the answer.
        tokens: completion tokens, when known.
    """

    text: str | None
    error: str | None = None
    finish_reason: str | None = None
    attempts: int = 1
    latency_s: float = 0.0
    tokens: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form for the results file."""
        return {
            "text": self.text,
            "error": self.error,
            "finish_reason": self.finish_reason,
            "attempts": self.attempts,
            "latency_s": round(self.latency_s, 4),
            "tokens": self.tokens,
        }


class Generator(Protocol):
    """Anything that answers requests, yielding ``(request index, Generation)`` in completion order."""

    name: str

    def generate(self, requests: Sequence[GenRequest]) -> AsyncIterator[tuple[int, Generation]]:
        """One ``Generation`` per request, as each finishes."""
        ...


IMAGE_TAG = "<image>"  # where the image goes in a prompt (the S1/R1 data convention)


def png_data_url(png: bytes) -> str:
    """A ``data:image/png;base64,...`` URL for chat-completions image parts."""
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def chat_messages(request: GenRequest) -> list[dict[str, Any]]:
    """OpenAI chat messages for one request: optional system turn, then the instruction and the image."""
    messages: list[dict[str, Any]] = []
    if request.system:
        messages.append({"role": "system", "content": request.system})
    if request.image_png is None:
        messages.append({"role": "user", "content": request.prompt})
        return messages
    image_part = {"type": "image_url", "image_url": {"url": png_data_url(request.image_png)}}
    messages.append({"role": "user", "content": _with_image(request.prompt, image_part, image_first=False)})
    return messages


def _with_image(prompt: str, image_part: dict[str, Any], *, image_first: bool) -> list[dict[str, Any]]:
    """Content parts for one image and the instruction.

    An ``<image>`` tag in the prompt marks where the image goes, as in the S1/R1 data (so ``"<image>\nWrite…"``
    gives exactly the training prompt, newline included); without a tag the image goes first (``image_first``)
    or after the text.
    """
    if IMAGE_TAG in prompt:
        before, after = prompt.split(IMAGE_TAG, 1)
        parts = [{"type": "text", "text": before}] if before else []
        parts.append(image_part)
        rest = after.replace(IMAGE_TAG, "")
        return parts + ([{"type": "text", "text": rest}] if rest else [])
    text = {"type": "text", "text": prompt}
    return [image_part, text] if image_first else [text, image_part]


class EngineGenerator:
    """Generation with a ``RolloutEngine`` (HF ``generate`` or vLLM), one sample per request.

    Args:
        engine: the engine (its ``generate`` is blocking; it runs on a worker thread).
        params: sampling parameters; ``n`` must be 1.
        batch_size: prompts handed to the engine per call (bounds decoded images held at once).
    """

    def __init__(self, engine: RolloutEngine, params: SamplingParams, *, batch_size: int = 64) -> None:
        if params.n != 1:
            raise ValueError(f"evaluation takes one sample per item; SamplingParams.n is {params.n}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.engine = engine
        self.params = params
        self.batch_size = batch_size
        self.name = type(engine).__name__

    async def generate(self, requests: Sequence[GenRequest]) -> AsyncIterator[tuple[int, Generation]]:
        """Yields completions as the engine's micro-batches finish (see ``RolloutEngine.generate``)."""
        loop = asyncio.get_running_loop()
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            queue: asyncio.Queue[tuple[int, Generation]] = asyncio.Queue()
            t0 = time.monotonic()

            def on_complete(
                comp: Completion,
                _start: int = start,
                _t0: float = t0,
                _queue: asyncio.Queue[tuple[int, Generation]] = queue,
            ) -> None:
                # Called on the engine's thread: hand the completion to the event loop thread-safely.
                item = (_start + comp.prompt_index, _to_generation(comp, time.monotonic() - _t0))
                loop.call_soon_threadsafe(_queue.put_nowait, item)

            prompts = [rollout_prompt(r) for r in chunk]
            # Each chunk continues the seed sequence where the previous one stopped (the engines seed their
            # micro-batches / requests with seed + offset): the same seed in every chunk would give every
            # chunk the same random draws, so sampled answers of different items would be correlated.
            params = self.params
            if params.seed is not None:
                params = dataclasses.replace(params, seed=params.seed + start)
            task = asyncio.ensure_future(
                asyncio.to_thread(self.engine.generate, prompts, params, on_complete)
            )
            delivered = 0
            while delivered < len(chunk):
                getter = asyncio.ensure_future(queue.get())
                done, _ = await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
                if getter in done:
                    delivered += 1
                    yield getter.result()
                    continue
                getter.cancel()
                task.result()  # the engine raised: propagate its error
                while not queue.empty():  # it returned: drain what its callbacks queued
                    delivered += 1
                    yield queue.get_nowait()
                if delivered < len(chunk):
                    raise RuntimeError(
                        f"{self.name}.generate returned {delivered} completions for {len(chunk)} prompts"
                    )
            await task


def rollout_prompt(request: GenRequest) -> RolloutPrompt:
    """The request as a ``RolloutPrompt`` for this project's engines (image where its ``<image>`` tag is)."""
    content: list[dict[str, Any]] = [{"type": "text", "text": request.prompt}]
    if request.image_png is not None:
        content = _with_image(request.prompt, {"type": "image"}, image_first=True)
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if request.system:
        messages.insert(0, {"role": "system", "content": request.system})
    images = [request.image_png] if request.image_png is not None else []
    return RolloutPrompt(messages=messages, images=images, prompt_id=request.key)


def _to_generation(comp: Completion, latency_s: float) -> Generation:
    if comp.finish_reason == "prompt_too_long":
        return Generation(
            None, "prompt too long for the engine (max_prompt_tokens)", comp.finish_reason, 1, latency_s, 0
        )
    return Generation(comp.text, None, comp.finish_reason, 1, latency_s, len(comp.token_ids))


class OpenAIGenerator:
    """Generation through an OpenAI-compatible ``/chat/completions`` endpoint (module docstring).

    Args:
        base_url: e.g. ``http://127.0.0.1:8000/v1``.
        model: the served model name.
        params: sampling parameters (``n`` must be 1; ``top_k`` / ``repetition_penalty`` are sent as the
            vLLM-style extra fields when not at their defaults).
        max_concurrency: requests in flight.
        max_retries: retries after the first attempt.
        timeout_s: per attempt (whole request).
        backoff_s: first retry delay; doubles each retry (jittered), capped at 60 s.
        api_key_env: name of the environment variable holding the API key (None: no key).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        params: SamplingParams,
        *,
        max_concurrency: int = 8,
        max_retries: int = 3,
        timeout_s: float = 600.0,
        backoff_s: float = 1.0,
        api_key_env: str | None = "OPENAI_API_KEY",
    ) -> None:
        if params.n != 1:
            raise ValueError(f"evaluation takes one sample per item; SamplingParams.n is {params.n}")
        if max_concurrency < 1 or max_retries < 0 or not timeout_s > 0:
            raise ValueError(
                f"need max_concurrency >= 1, max_retries >= 0, timeout_s > 0; got {max_concurrency}, "
                f"{max_retries}, {timeout_s}"
            )
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.params = params
        self.max_concurrency = max_concurrency
        self.max_retries = max_retries
        self.timeout_s = timeout_s
        self.backoff_s = backoff_s
        self.api_key_env = api_key_env
        self.name = f"openai:{model}"

    def _body(self, request: GenRequest) -> dict[str, Any]:
        p = self.params
        body: dict[str, Any] = {
            "model": self.model,
            "messages": chat_messages(request),
            "temperature": p.temperature,
            "top_p": p.top_p,
            "max_tokens": p.max_tokens,
            "n": 1,
        }
        if p.seed is not None:
            body["seed"] = p.seed
        if p.stop:
            body["stop"] = list(p.stop)
        if p.top_k > 0:
            body["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            body["repetition_penalty"] = p.repetition_penalty
        return body

    async def generate(self, requests: Sequence[GenRequest]) -> AsyncIterator[tuple[int, Generation]]:
        """Yields ``(index, Generation)`` as answers arrive, at most ``max_concurrency`` in flight."""
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        semaphore = asyncio.Semaphore(self.max_concurrency)
        async with httpx.AsyncClient(timeout=self.timeout_s, headers=headers) as http:

            async def one(i: int) -> tuple[int, Generation]:
                async with semaphore:
                    return i, await self._request(http, requests[i])

            tasks = [asyncio.ensure_future(one(i)) for i in range(len(requests))]
            try:
                for fut in asyncio.as_completed(tasks):
                    yield await fut
            finally:
                for t in tasks:
                    t.cancel()

    async def _request(self, http: httpx.AsyncClient, request: GenRequest) -> Generation:
        body = self._body(request)
        t0 = time.monotonic()
        last = "no attempt"
        for attempt in range(1, self.max_retries + 2):
            retry_after: float | None = None
            try:
                response = await asyncio.wait_for(http.post(self.url, json=body), self.timeout_s)
            except (TimeoutError, httpx.TimeoutException):
                last = f"timed out after {self.timeout_s}s"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 429 or response.status_code >= 500:
                    last = f"HTTP {response.status_code}: {response.text[:200]}"
                    retry_after = _retry_after(response)
                elif response.status_code >= 400:
                    return Generation(
                        None,
                        f"api_error: HTTP {response.status_code} (not retried): {response.text[:200]}",
                        None,
                        attempt,
                        time.monotonic() - t0,
                    )
                else:
                    parsed = _parse_completion(response)
                    if isinstance(parsed, str):
                        last = parsed  # a malformed 200 is treated like a server fault and retried
                    else:
                        text, finish, tokens = parsed
                        return Generation(text, None, finish, attempt, time.monotonic() - t0, tokens)
            if attempt <= self.max_retries:
                delay = retry_after if retry_after is not None else self.backoff_s * 2 ** (attempt - 1)
                await asyncio.sleep(min(60.0, delay) * (0.5 + random.random()))
        return Generation(
            None,
            f"api_error after {self.max_retries + 1} attempts at {self.url}: {last}",
            None,
            self.max_retries + 1,
            time.monotonic() - t0,
        )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:
        return None


def _parse_completion(response: httpx.Response) -> tuple[str, str | None, int | None] | str:
    """(text, finish_reason, completion tokens) of a chat-completions answer, or an error message."""
    try:
        data = response.json()
        choice = data["choices"][0]
        content = choice["message"].get("content")
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
        return f"not a chat-completions answer ({type(exc).__name__}): {response.text[:200]!r}"
    if isinstance(content, list):  # some servers answer with content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if content is None:
        content = ""  # e.g. a refusal or only tool calls: an answer with no code, not an API failure
    if not isinstance(content, str):
        return f"message content is {type(content).__name__}, not text"
    usage = data.get("usage") if isinstance(data, dict) else None
    tokens = usage.get("completion_tokens") if isinstance(usage, dict) else None
    return content, choice.get("finish_reason"), tokens if isinstance(tokens, int) else None
