"""The policy seen by the R1 difficulty filter: prompts with images in, ``n`` text samples per prompt out.

``Policy`` is the one method the filter needs; the training side plugs its rollout engine in by implementing
it. ``OpenAIPolicy`` samples from any OpenAI-compatible endpoint (vLLM, SGLang, a hosted API).
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from data_tools.teacher.client import ChatClient, user_message


@dataclass(frozen=True)
class PolicyPrompt:
    """One prompt: the text (may contain the ``<image>`` placeholder) and the image as PNG bytes."""

    text: str
    image_png: bytes


@runtime_checkable
class Policy(Protocol):
    """Anything that samples ``n`` completions per prompt."""

    def generate(self, prompts_with_images: Sequence[PolicyPrompt], n: int) -> list[list[str]]:
        """Return, for each prompt in order, a list of ``n`` completion texts."""
        ...


class OpenAIPolicy:
    """A policy served behind an OpenAI-compatible chat endpoint.

    Args:
        client: the chat client (its cache is bypassed: samples must be fresh draws).
        temperature: sampling temperature (the paper's R1 uses 1.0).
        top_p: nucleus sampling (the paper: 0.85).
        max_tokens: completion budget per sample.
        concurrency: prompts in flight at once.
    """

    def __init__(
        self,
        client: ChatClient,
        *,
        temperature: float = 1.0,
        top_p: float = 0.85,
        max_tokens: int = 2048,
        concurrency: int = 4,
    ) -> None:
        self.client = client
        self.temperature = temperature
        self.top_p = top_p
        self.max_tokens = max_tokens
        self.concurrency = concurrency

    def _one(self, prompt: PolicyPrompt, n: int) -> list[str]:
        text = prompt.text.replace("<image>", "").strip()
        message = user_message(text, images=[prompt.image_png])
        out: list[str] = []
        while len(out) < n:  # why a loop: some servers ignore "n" and return one choice
            got = self.client.chat(
                [message],
                n=n - len(out),
                temperature=self.temperature,
                top_p=self.top_p,
                max_tokens=self.max_tokens,
                cache=False,
            )
            if not got:
                raise RuntimeError(f"{self.client.url}: returned no choices")
            out += got
        return out[:n]

    def generate(self, prompts_with_images: Sequence[PolicyPrompt], n: int) -> list[list[str]]:
        """``n`` samples per prompt, prompts sent ``concurrency`` at a time; order preserved."""
        with concurrent.futures.ThreadPoolExecutor(self.concurrency) as ex:
            return list(ex.map(lambda p: self._one(p, n), prompts_with_images))
