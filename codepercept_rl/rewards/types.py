"""The data that crosses the reward boundary: ``RewardSample`` in, ``RewardOutput`` out.

A reward scores a batch of samples and returns one score per sample plus named components for logging.
``None`` follows TRL's contract: the sample could not be scored (bad input, unknown target, missing reference),
so the trainer keeps it out of the group baseline. A sample the *model* got wrong (no code, a crash, a blank
figure) is scored, low; it is never ``None``.

Statuses (one per sample, for logging and tests):

- the reward service's statuses (``ok``, ``no_code``, ``syntax_error``, ``exec_error``, ``timeout``, ``memory``,
  ``killed``, ``no_figure``, ``bad_request``), see docs/reward_servers_contract.md;
- ``bad_input``: the completion is not text (score ``None``);
- ``no_reference``: the reward needs a reference (code or target) that the sample does not carry (``None``);
- ``judge_fallback``: an LLM judge was configured but failed for this sample; the deterministic stand-in
  was used instead (the score is defined; the ``judge_fallback`` component is 1).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Statuses whose sample gets score None: nothing the model did decides them.
UNSCORED_STATUSES = frozenset({"bad_request", "bad_input", "no_reference"})


@dataclass
class RewardSample:
    """One completion to score, with what the dataset knows about its prompt.

    Attributes:
        completion: The model's answer (text). Anything else scores ``None`` with status ``bad_input``.
        task: ``"code"`` (image -> code) or ``"caption"`` (image -> caption).
        target_id: Id of a target image registered with the reward backend.
        target_png: The target image as PNG bytes (instead of ``target_id``).
        reference_code: The ground-truth plotting code (rendered in the sandbox, never here).
        reference_caption: The ground-truth caption, if any.
        reference_trace: A precomputed execution trace of ``reference_code`` (saves a render).
        extra: Anything else the dataset row carried (passed through to user rewards).
    """

    completion: Any
    task: str = "code"
    target_id: str | None = None
    target_png: bytes | None = None
    reference_code: str | None = None
    reference_caption: str | None = None
    reference_trace: Mapping[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def has_target(self) -> bool:
        """True when the sample names a target image (by id or bytes)."""
        return self.target_id is not None or self.target_png is not None


@dataclass
class RewardOutput:
    """Scores for a batch, in the order of the samples.

    Attributes:
        scores: One score per sample; ``None`` = could not score (kept out of the group baseline).
        components: Named per-sample parts (``format``, ``exec``, ``ssim``, ...), ``None`` where not computed.
        statuses: One status per sample (module docstring).
        errors: One error message (or ``None``) per sample, for debugging.
    """

    scores: list[float | None]
    components: dict[str, list[float | None]] = field(default_factory=dict)
    statuses: list[str] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.scores)
        if not self.statuses:
            self.statuses = ["ok"] * n
        if not self.errors:
            self.errors = [None] * n
        if len(self.statuses) != n or len(self.errors) != n:
            raise ValueError(
                f"RewardOutput: {n} scores but {len(self.statuses)} statuses and {len(self.errors)} errors"
            )
        for name, values in self.components.items():
            if len(values) != n:
                raise ValueError(f"RewardOutput: component {name!r} has {len(values)} values for {n} scores")
        for i, s in enumerate(self.scores):
            if s is not None and not math.isfinite(s):
                raise ValueError(f"RewardOutput: score {i} is {s!r}; use None for 'could not score'")

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_scores(cls, scores: Sequence[float | None]) -> RewardOutput:
        """Wraps a plain list of scores (a user function's return value)."""
        return cls(scores=[None if s is None else float(s) for s in scores])

    def summary(self, prefix: str = "reward") -> dict[str, float]:
        """Batch means for logging: ``<prefix>/score``, ``<prefix>/<component>``, ``<prefix>/status/<s>``.

        Means skip ``None``; status entries are fractions of the batch; ``<prefix>/scored`` is the fraction of
        samples with a score.
        """
        out: dict[str, float] = {}
        n = len(self.scores) or 1
        scored = [s for s in self.scores if s is not None]
        if scored:
            out[f"{prefix}/score"] = sum(scored) / len(scored)
        out[f"{prefix}/scored"] = len(scored) / n
        for name, values in self.components.items():
            present = [v for v in values if v is not None]
            if present:
                out[f"{prefix}/{name}"] = sum(present) / len(present)
        for status, count in Counter(self.statuses).items():
            out[f"{prefix}/status/{status}"] = count / n
        return out

    def rows(self) -> list[dict[str, Any]]:
        """One dict per sample (score, status, error and every component), e.g. for a completions table."""
        return [
            {
                "score": self.scores[i],
                "status": self.statuses[i],
                "error": self.errors[i],
                **{name: values[i] for name, values in self.components.items()},
            }
            for i in range(len(self.scores))
        ]
