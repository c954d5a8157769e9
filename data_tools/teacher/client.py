"""A small client for OpenAI-compatible chat completions (``POST {base_url}/chat/completions``) over httpx.

    client = ChatClient("http://127.0.0.1:8000/v1", model="qwen3-vl-32b", cache_dir="runs/teacher_cache")
    [text] = client.chat([user_message("Describe this figure.", images=[png])])

Images travel as base64 ``data:image/png;base64,...`` URLs inside ``image_url`` content parts. Transient
failures (connection errors, timeouts, HTTP 408/409/429/5xx) are retried with exponential back-off, honouring
``Retry-After``; other HTTP errors raise :class:`TeacherError` at once with the server's message. With a
``cache_dir`` every successful response is stored under the sha256 of its request (model, messages, sampling
parameters), written atomically, so a rerun (or a resumed build) never pays twice for the same request.
The API key is read from the ``api_key`` argument or the ``CODEPERCEPT_TEACHER_API_KEY`` environment variable
and is sent only as a bearer header, never cached or logged.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from codepercept_rl.utils.io import atomic_write_json

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})


class TeacherError(RuntimeError):
    """The endpoint refused a request or kept failing; the message names the URL and the reason."""


def image_part(png: bytes, mime: str = "image/png") -> dict[str, Any]:
    """An ``image_url`` content part holding ``png`` as a base64 data URL."""
    return {"type": "image_url", "image_url": {"url": f"data:{mime};base64,{base64.b64encode(png).decode()}"}}


def user_message(text: str, images: Sequence[bytes] = ()) -> dict[str, Any]:
    """A user message: the images first, then the text (the order most VLM chat templates expect)."""
    if not images:
        return {"role": "user", "content": text}
    return {"role": "user", "content": [*(image_part(p) for p in images), {"type": "text", "text": text}]}


class ChatClient:
    """Chat completions with retries and an optional disk cache.

    Args:
        base_url: the API root, e.g. ``http://host:8000/v1`` (``/chat/completions`` is appended).
        model: the ``model`` field of each request.
        api_key: bearer token; default ``$CODEPERCEPT_TEACHER_API_KEY`` (none sent if unset).
        timeout_s: per-request timeout.
        max_retries: retries after the first attempt for transient failures.
        backoff_s: first back-off; doubles each retry (capped at 30 s).
        cache_dir: directory of cached responses, or None for no cache.
        temperature: default sampling temperature.
        max_tokens: default completion budget.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 120.0,
        max_retries: int = 4,
        backoff_s: float = 0.5,
        cache_dir: str | os.PathLike | None = None,
        temperature: float = 0.7,
        max_tokens: int = 4096,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, got {base_url!r}")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model = model
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.temperature = temperature
        self.max_tokens = max_tokens
        key = api_key if api_key is not None else os.environ.get("CODEPERCEPT_TEACHER_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._http = httpx.Client(timeout=timeout_s, headers=headers)
        self.requests_sent = 0
        self.cache_hits = 0

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> ChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        n: int = 1,
        temperature: float | None = None,
        max_tokens: int | None = None,
        top_p: float | None = None,
        cache: bool = True,
    ) -> list[str]:
        """Send one chat request and return the ``n`` choices' texts.

        Raises:
            TeacherError: a non-retryable HTTP error, retries exhausted, or a malformed response.
        """
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "n": n,
            "temperature": self.temperature if temperature is None else temperature,
            "max_tokens": max_tokens or self.max_tokens,
        }
        if top_p is not None:
            payload["top_p"] = top_p
        key = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()
        path = self.cache_dir / key[:2] / f"{key}.json" if (cache and self.cache_dir is not None) else None
        if path is not None and path.exists():
            self.cache_hits += 1
            return json.loads(path.read_text())["choices"]
        texts = self._parse(self._post(payload))
        if path is not None:
            atomic_write_json(path, {"choices": texts}, indent=None)
        return texts

    def _post(self, payload: dict[str, Any]) -> dict[str, Any]:
        last = ""
        for attempt in range(self.max_retries + 1):
            if attempt:
                time.sleep(min(30.0, self.backoff_s * 2 ** (attempt - 1)))
            self.requests_sent += 1
            try:
                response = self._http.post(self.url, json=payload)
            except httpx.TransportError as e:  # connection refused, reset, timeout: worth another try
                last = f"{type(e).__name__}: {e}"
                continue
            if response.status_code == 200:
                try:
                    return response.json()
                except json.JSONDecodeError:
                    raise TeacherError(f"{self.url}: response is not JSON: {response.text[:200]!r}") from None
            last = f"HTTP {response.status_code}: {response.text[:300]}"
            if response.status_code not in _RETRY_STATUS:
                raise TeacherError(f"{self.url}: {last}")
            retry_after = response.headers.get("Retry-After", "")
            if retry_after.replace(".", "", 1).isdigit():
                time.sleep(min(30.0, float(retry_after)))
        raise TeacherError(f"{self.url}: gave up after {self.max_retries + 1} attempts; last error: {last}")

    def _parse(self, body: dict[str, Any]) -> list[str]:
        try:
            texts = [c["message"]["content"] for c in body["choices"]]
        except (KeyError, TypeError) as e:
            raise TeacherError(
                f"{self.url}: malformed chat completion (missing {e}): {str(body)[:200]}"
            ) from None
        return [t if isinstance(t, str) else "" for t in texts]
