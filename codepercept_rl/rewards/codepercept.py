"""The CodePercept paper's GRPO reward r = r_fmt + r_exec + r_code + r_image, range [0, 4] with unit weights.

- r_fmt: 1 if the answer has a complete ```python block, else 0.
- r_exec: 1 if the code ran in the sandbox *and drew a figure* (status ``ok``), else 0. (The paper says "runs";
  we also ask for a figure, as its evaluation's Exec rate counts rendered images, and so that code which
  draws nothing cannot collect the point.)
- r_code, r_image: an LLM judge's score in [0, 1] (``codepercept_rl.rewards.judge``) when a judge is
  configured (``reward.judge.base_url``). r_image is 0 when the code did not render.

Substitution without a judge (and, per sample, when the judge fails; the sample's status is then
``judge_fallback`` and its ``judge_fallback`` component is 1):

- r_image := the reward service's "render" image blend 0.25 clip(SSIM, 0, 1) + 0.5 edge-F1 + 0.25 (R_recon+1)/2
  on a 256x256 canvas (``reward_servers/scoring.py``); edge F1 carries half the weight because SSIM and
  pixel terms are inflated by the white background of STEM figures.
- r_code := a score in [0, 1] of the generated code's execution trace against the reference code's: half the
  mean of four F1s (drawn texts, plotting-call types, element colours by CIEDE2000 and axes layout: ChartMimic's
  low-level metrics), half ``element_f2``, a recall-weighted (β = 2) soft F-beta of the drawn elements matched by
  type, kind and bbox (``reward_servers/metrics.py``). The element half was added because the four F1s see
  neither what kind of shape is drawn nor where (an answer with every shape of the wrong kind, colour and place
  scored 0.75), which the paper's code judge gives half its points (element counts 20, positions 30), and
  because with F1 alone leaving out an element the policy is unsure of paid off under sampling, so GRPO learnt
  to draw less than the reference. It needs the reference code; without one r_code is left out (None, adds 0
  to every sample of the group alike, so GRPO advantages are unaffected).

These stand-ins are deterministic and cheap but are not the paper's judge: they reward pixel and trace
agreement, not semantic equivalence, so absolute numbers are not comparable with the paper's.

Weights: ``reward.weights.{format,exec,code,image}`` (default 1.0 each).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from codepercept_rl.config.schema import JudgeConfig
from codepercept_rl.rewards.backend import RewardBackend, arender, ascore
from codepercept_rl.rewards.judge import JudgeError, JudgeRequest, LLMJudge
from codepercept_rl.rewards.parts import (
    ReferenceRenders,
    Table,
    has_python_block,
    resolve_weights,
    score_item,
    texts_of,
)
from codepercept_rl.rewards.registry import register_reward
from codepercept_rl.rewards.types import UNSCORED_STATUSES, RewardOutput, RewardSample
from reward_servers.extract import extract_code

if TYPE_CHECKING:
    from reward_servers.sandbox import ScoreResult

CODEPERCEPT_WEIGHTS = {"format": 1.0, "exec": 1.0, "code": 1.0, "image": 1.0}
# Logged beside the four terms, in no score; ``elements`` / ``ref_elements`` / ``elements_ratio``: how much the
# answer drew against its reference (texts aside), to see a policy that learns to draw less.
_DIAGNOSTICS = ("ssim", "edge", "pixel", "text_f1", "type_f1", "color_f1", "layout_f1", "element_f2",
                "elements", "ref_elements", "elements_ratio")  # fmt: skip


@register_reward("codepercept")
class CodePerceptReward:
    """r_fmt + r_exec + r_code + r_image with a judge or deterministic stand-ins (module docstring).

    Args:
        weights: overrides of ``format``, ``exec``, ``code``, ``image`` (default 1.0 each).
        judge: a ``JudgeConfig`` (an ``LLMJudge`` is built from it) or an ``LLMJudge``; None: stand-ins only.
        targets: target images by id, for the image judge when samples carry only ``target_id`` (the backend
            holds registered targets but does not hand them back). Without it the reference render is used.
    """

    name = "codepercept"

    def __init__(
        self,
        weights: Mapping[str, float] | None = None,
        judge: JudgeConfig | LLMJudge | None = None,
        targets: Mapping[str, bytes] | None = None,
    ) -> None:
        self.weights = resolve_weights(self.name, CODEPERCEPT_WEIGHTS, weights)
        self.judge = LLMJudge(judge) if isinstance(judge, JudgeConfig) else judge
        self.targets = dict(targets or {})
        self._references = ReferenceRenders()

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        texts = texts_of(samples, table)
        todo = []
        for i, text in enumerate(texts):
            if text is None:
                continue
            if not samples[i].has_target and samples[i].reference_code is None:
                table.unscored(i, "no_reference", "sample has neither a target image nor reference code")
                continue
            todo.append(i)
        items = [score_item(samples[i], texts[i], "render", with_reference=True) for i in todo]
        for i, result in zip(todo, await ascore(backend, items), strict=True):
            self._standins(table, i, samples[i], has_python_block(texts[i]), result)
        if self.judge is not None:
            await self._judge(backend, table, samples, texts, todo)
        for i in todo:
            if table.statuses[i] not in UNSCORED_STATUSES:
                table.scores[i] = table.weigh(i, self.weights)
        return table.output()

    def _standins(self, table: Table, i: int, sample: RewardSample, fmt: bool, result: ScoreResult) -> None:
        table.statuses[i], table.errors[i] = result.status, result.error
        if result.status in UNSCORED_STATUSES:
            table.unscored(i, result.status, result.error)
            return
        m = result.metrics
        ok = result.status == "ok" and "image" in m
        table.set(i, format=float(fmt), exec=float(result.status == "ok"), image=m["image"] if ok else 0.0)
        if sample.reference_code is not None:
            table.set(i, code=m.get("trace", 0.0) if ok else 0.0)
        table.set(i, **{k: m.get(k) for k in _DIAGNOSTICS if ok})

    async def _target_png(self, backend: RewardBackend, sample: RewardSample) -> bytes | None:
        if sample.target_png is not None:
            return sample.target_png
        if sample.target_id is not None and sample.target_id in self.targets:
            return self.targets[sample.target_id]
        if sample.reference_code is not None:
            return (await self._references.get(backend, sample.reference_code)).png
        return None

    async def _judge(
        self,
        backend: RewardBackend,
        table: Table,
        samples: Sequence[RewardSample],
        texts: Sequence[str | None],
        todo: list[int],
    ) -> None:
        """Replaces stand-ins by judge verdicts where the judge answers; flags the samples where it does not."""
        assert self.judge is not None
        jobs: list[tuple[int, str]] = []  # (sample index, "image" | "code")
        requests: list[JudgeRequest] = []
        scored = [i for i in todo if table.statuses[i] not in UNSCORED_STATUSES]
        code_of = {i: extract_code(texts[i] or "") for i in scored}
        for i in scored:
            reference = samples[i].reference_code
            if reference is not None and code_of[i]:
                jobs.append((i, "code"))
                requests.append(JudgeRequest("code", extract_code(reference) or reference, code_of[i]))
        # Renders for the image judge: the candidate again (the pool hands back scores, not images) and the target.
        image_idx = [i for i in scored if table.statuses[i] == "ok"]
        backend_calls = await asyncio.gather(
            *(arender(backend, texts[i]) for i in image_idx),
            *(self._target_png(backend, samples[i]) for i in image_idx),
        )
        renders, target_pngs = backend_calls[: len(image_idx)], backend_calls[len(image_idx) :]
        for i, render, target in zip(image_idx, renders, target_pngs, strict=True):
            if render.status == "ok" and render.png is not None and target is not None:
                jobs.append((i, "image"))
                requests.append(JudgeRequest("image", target, render.png))
            else:
                why = (
                    "no target image for the judge"
                    if target is None
                    else f"re-render failed: {render.status}"
                )
                self._fallback(table, i, "image", why)
        for (i, kind), verdict in zip(jobs, await self.judge.judge(requests), strict=True):
            if isinstance(verdict, JudgeError):
                self._fallback(table, i, kind, str(verdict))
            else:
                table.set(i, **{kind: verdict.score, f"{kind}_judge": verdict.score})
        for i in scored:
            if table.get("judge_fallback", i) is None:
                table.set(i, judge_fallback=0.0)

    @staticmethod
    def _fallback(table: Table, i: int, kind: str, why: str) -> None:
        table.set(i, judge_fallback=1.0)
        if table.statuses[i] == "ok":  # a failed run keeps its own status; the component still flags it
            table.statuses[i] = "judge_fallback"
        note = f"{kind} judge: {why}"
        table.errors[i] = note if table.errors[i] is None else f"{table.errors[i]}; {note}"
