"""Pieces every built-in reward shares: completion text, the format check, weights, pool items, tables.

Nothing here runs untrusted code; code goes to the backend (``codepercept_rl.rewards.backend``).
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from codepercept_rl.rewards.backend import RewardBackend, arender
from codepercept_rl.rewards.types import UNSCORED_STATUSES, RewardOutput, RewardSample

if TYPE_CHECKING:
    from reward_servers.sandbox import RenderResult

# A complete ```python block: the paper's r_fmt. ```py, bare fences and unterminated fences do not count
# (the sandbox still runs what extract_code finds in them; only the format bonus is withheld).
_PYTHON_BLOCK = re.compile(r"```[ \t]*python3?[ \t]*\r?\n.*?```", re.DOTALL | re.IGNORECASE)


def as_text(completion: Any) -> str | None:
    """The text of a completion: a string, or the last message's content of a chat completion.

    Accepts ``str``, ``[{"role": ..., "content": str | [{"type": "text", "text": ...}, ...]}, ...]`` (TRL's
    conversational form) and a single message dict. Returns None for anything else.
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Mapping):
        completion = [completion]
    if isinstance(completion, Sequence) and completion and all(isinstance(m, Mapping) for m in completion):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence):
            parts = [p.get("text") for p in content if isinstance(p, Mapping) and p.get("type") == "text"]
            if all(isinstance(p, str) for p in parts) and parts:
                return "".join(parts)
    return None


def has_python_block(text: str) -> bool:
    """True if ``text`` holds a complete fenced ```python block (the paper's format reward)."""
    return _PYTHON_BLOCK.search(text) is not None


def resolve_weights(
    reward: str, defaults: Mapping[str, float], overrides: Mapping[str, float] | None
) -> dict[str, float]:
    """Default weights updated by the user's; refuses unknown names and non-finite values.

    Raises:
        ValueError: naming the unknown component and the known ones, or the bad value.
    """
    weights = dict(defaults)
    for name, value in (overrides or {}).items():
        if name not in defaults:
            raise ValueError(f"reward {reward!r} has no component {name!r}; known: {sorted(defaults)}")
        if isinstance(value, bool) or not isinstance(value, int | float) or value != value:
            raise ValueError(f"reward {reward!r}: weight {name!r} must be a number, got {value!r}")
        weights[name] = float(value)
    return weights


def length_reward(pred_len: int, ref_len: int) -> float:
    """RLRF's length term 1 - ((1/L_gt) * max(0, L_pred - L_gt/2))^2, clipped at -1 (L in characters)."""
    if ref_len <= 0:
        raise ValueError(f"reference length must be > 0, got {ref_len}")
    over = max(0.0, pred_len - ref_len / 2.0) / ref_len
    return max(-1.0, 1.0 - over * over)


def score_item(sample: RewardSample, code: str, reward: str, *, with_reference: bool) -> dict[str, Any]:
    """The pool/client item for one sample (target by id or bytes, reference code when asked for)."""
    item: dict[str, Any] = {"code": code, "reward": reward}
    if sample.target_id is not None:
        item["target_id"] = sample.target_id
    elif sample.target_png is not None:
        item["target_png"] = sample.target_png
    if sample.reference_code is not None and (with_reference or not sample.has_target):
        item["reference_code"] = sample.reference_code
    return item


class Table:
    """Builds a ``RewardOutput`` one sample at a time (components default to None)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.scores: list[float | None] = [None] * n
        self.statuses: list[str] = ["ok"] * n
        self.errors: list[str | None] = [None] * n
        self.components: dict[str, list[float | None]] = {}

    def set(self, i: int, **values: float | None) -> None:
        """Sets components of sample ``i``."""
        for name, value in values.items():
            self.components.setdefault(name, [None] * self.n)[i] = None if value is None else float(value)

    def get(self, name: str, i: int) -> float | None:
        """A component of sample ``i`` (None if unset)."""
        return self.components.get(name, [None] * self.n)[i]

    def weigh(self, i: int, weights: Mapping[str, float]) -> float:
        """Score of sample ``i``: the weighted sum of its components; a component left None adds nothing."""
        total = 0.0
        for name, w in weights.items():
            value = self.get(name, i)
            if w and value is not None:
                total += w * value
        return total

    def unscored(self, i: int, status: str, error: str | None) -> None:
        """Marks sample ``i`` as could-not-score (``status`` must be one of ``UNSCORED_STATUSES``)."""
        if status not in UNSCORED_STATUSES:
            raise ValueError(
                f"status {status!r} is scored; could-not-score statuses: {sorted(UNSCORED_STATUSES)}"
            )
        self.scores[i], self.statuses[i], self.errors[i] = None, status, error

    def output(self) -> RewardOutput:
        """The finished output."""
        return RewardOutput(
            scores=list(self.scores),
            components={k: list(v) for k, v in self.components.items()},
            statuses=list(self.statuses),
            errors=list(self.errors),
        )


class ReferenceRenders:
    """Renders reference code through the backend, once per distinct program (LRU, by sha256).

    Dataset code is untrusted too, so it runs in the sandbox like the model's; a GRPO group shares one
    reference, so the cache (and sharing of a render already in flight) turns G renders into one.
    """

    def __init__(self, max_entries: int = 256) -> None:
        self.max_entries = max_entries
        self._cache: OrderedDict[str, RenderResult] = OrderedDict()
        self._inflight: dict[str, asyncio.Future[RenderResult]] = {}
        # Adapters share one reward across threads and event loops (verl runs compute_score on executors).
        self._lock = threading.Lock()

    async def get(self, backend: RewardBackend, code: str) -> RenderResult:
        """The ``RenderResult`` of ``code`` (from the cache when seen before; failures are not cached)."""
        key = hashlib.sha256(code.encode("utf-8", "surrogatepass")).hexdigest()
        loop = asyncio.get_running_loop()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
            pending = self._inflight.get(key)
            if pending is None or pending.get_loop() is not loop:
                pending = None
                future: asyncio.Future[RenderResult] = loop.create_future()
                self._inflight[key] = future
        if pending is not None:
            return await asyncio.shield(pending)
        try:
            result = await arender(backend, code)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:  # re-raised: waiters sharing this render get the same error
            future.set_exception(exc)
            future.exception()  # mark retrieved, so an unshared failure logs no "never retrieved" warning
            raise
        finally:
            with self._lock:
                if self._inflight.get(key) is future:
                    del self._inflight[key]
        future.set_result(result)
        if result.status == "ok":
            with self._lock:
                self._cache[key] = result
                while len(self._cache) > self.max_entries:
                    self._cache.popitem(last=False)
        return result


def texts_of(samples: Sequence[RewardSample], table: Table) -> list[str | None]:
    """Completion texts; samples whose completion is not text are marked ``bad_input`` in ``table``."""
    out: list[str | None] = []
    for i, sample in enumerate(samples):
        text = as_text(sample.completion)
        if text is None:
            table.unscored(i, "bad_input", f"completion must be text, got {type(sample.completion).__name__}")
        out.append(text)
    return out
