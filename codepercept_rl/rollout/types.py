"""The contract between rollout engines and their callers (the GRPO driver, evaluation, data filters)."""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

from PIL import Image


@dataclass
class SamplingParams:
    """How to sample (vLLM's names). ``temperature=0`` is greedy; ``top_k=-1`` and ``top_p=1`` disable them."""

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    repetition_penalty: float = 1.0
    max_tokens: int = 256
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n must be >= 1, got {self.n}")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p must be in (0, 1], got {self.top_p}")
        if self.max_tokens < 1:
            raise ValueError(f"SamplingParams.max_tokens must be >= 1, got {self.max_tokens}")


@dataclass
class RolloutPrompt:
    """One chat prompt with its images.

    ``messages`` is a chat list whose user content has ``{"type": "image"}`` entries, one per image, in order
    (or a string with ``<image>`` placeholders, as in verl/ms-swift data). ``images`` are PIL images or PNG bytes.
    """

    messages: list[dict[str, Any]]
    images: list[Any] = field(default_factory=list)
    prompt_id: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def pil_images(self) -> list[Image.Image]:
        """The images as RGB PIL images (PNG/JPEG bytes are decoded)."""
        out = []
        for img in self.images:
            if isinstance(img, (bytes, bytearray)):
                img = Image.open(io.BytesIO(img))
                img.load()
            if not isinstance(img, Image.Image):
                raise TypeError(
                    f"prompt image must be a PIL image or encoded bytes, got {type(img).__name__}"
                )
            out.append(img.convert("RGB"))
        return out


# max_model_len: the engine's context (prompt + response) ran out before the response's max_tokens did.
FinishReason = Literal["stop", "length", "prompt_too_long", "max_model_len"]


@dataclass
class Completion:
    """One sampled response. ``logprobs`` are of the sampled tokens under the sampling temperature, when known."""

    text: str
    token_ids: list[int]
    logprobs: list[float] | None
    finish_reason: FinishReason
    prompt_index: int
    sample_index: int


# Called as soon as a completion exists (reward scoring can start while the rest is still generating).
CompletionCallback = Callable[[Completion], None]


class RolloutEngine(Protocol):
    """What every engine offers: batched sampling with images, and fresh weights each step."""

    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        params: SamplingParams,
        on_complete: CompletionCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions for each prompt: ``result[prompt_index][sample_index]``."""
        ...

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load new policy weights (full, unsharded tensors by Hugging Face parameter name)."""
        ...

    def sleep(self) -> None:
        """Free accelerator memory between rollouts when colocated with the learner (no-op where meaningless)."""
        ...

    def wake_up(self) -> None:
        """Undo :meth:`sleep`."""
        ...
