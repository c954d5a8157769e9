"""The judge seam of the harness: the paper's Image and Code scores come from an injected ``ItemJudge``.

    judge = LLMItemJudge(JudgeConfig(base_url="http://127.0.0.1:8000/v1", model="judge-vl"))
    r = await judge.score_image(reference_png, render_png)   # JudgeResult(score in [0, 1] | None, error)

``LLMItemJudge`` wraps ``codepercept_rl.rewards.judge.LLMJudge`` (rubrics with the paper's weights, retries,
disk cache); the image and code judges may be different models, as in the released evaluation script. Any
object with the two async methods below fits (tests, other graders). ``score=None`` means "could not judge"
(the endpoint failed after retries, the answer held no score); the harness records the error and leaves the
item out of that judge's average, and the report says how many.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from codepercept_rl.config.schema import JudgeConfig
from codepercept_rl.rewards.judge import JudgeError, JudgeRequest, LLMJudge


@dataclass
class JudgeResult:
    """One verdict: ``score`` in [0, 1] or None with ``error`` saying why; ``parts`` are rubric points."""

    score: float | None
    error: str | None = None
    parts: dict[str, float] = field(default_factory=dict)


class ItemJudge(Protocol):
    """What the harness needs from a judge."""

    async def score_image(self, reference_png: bytes, render_png: bytes) -> JudgeResult:
        """Visual similarity of the render to the reference image, in [0, 1]."""
        ...

    async def score_code(self, reference_code: str, code: str) -> JudgeResult:
        """Visual equivalence of the code to the reference code, in [0, 1]."""
        ...


class LLMItemJudge:
    """``ItemJudge`` over OpenAI-compatible LLM judges.

    Args:
        image_config: the multimodal judge of renders.
        code_config: the code judge; defaults to ``image_config``.
    """

    def __init__(self, image_config: JudgeConfig, code_config: JudgeConfig | None = None) -> None:
        self.image_judge = LLMJudge(image_config)
        self.code_judge = LLMJudge(code_config) if code_config is not None else self.image_judge

    async def score_image(self, reference_png: bytes, render_png: bytes) -> JudgeResult:
        """Image rubric verdict (structure 30, positions 30, text 10, style 20, clarity 10) / 100."""
        return _result((await self.image_judge.judge([JudgeRequest("image", reference_png, render_png)]))[0])

    async def score_code(self, reference_code: str, code: str) -> JudgeResult:
        """Code rubric verdict (layout 20, counts 20, positions 30, relations 20, quality 10) / 100."""
        return _result((await self.code_judge.judge([JudgeRequest("code", reference_code, code)]))[0])


def _result(verdict: object) -> JudgeResult:
    if isinstance(verdict, JudgeError):
        return JudgeResult(None, str(verdict))
    return JudgeResult(float(verdict.score), None, dict(verdict.parts))  # type: ignore[attr-defined]
