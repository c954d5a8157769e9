"""Deterministic render-and-compare rewards: ``format``, ``exec``, ``render_similarity`` and ``rlrf``.

Every one runs the completion's code in the reward backend's sandbox (never here) and compares the render
with the sample's target image (or, without one, with the render of the reference code). No judge, no model.

- ``format``: 1 if the completion has a complete ```python block, else 0 (no execution).
- ``exec``: 1 if the code ran and drew a figure (status ``ok``), else 0; needs no target.
- ``render_similarity``: sum of weighted components (weights: ``reward.weights.<name>=...``)::

      format  1 if a ```python block                                     (default weight 0.1)
      exec    1 if the code ran and drew a figure                         (0.2)
      ssim    clip(grayscale SSIM, 0, 1) on the 256x256 canvas             (0.2)
      edge    Canny edge F1                                               (0.3)
      pixel   (R_recon + 1) / 2, RLRF's normalised-RMS term mapped to [0, 1] (0.2)
      trace   the pool's trace score (element_f2 and the four trace F1s) against the reference code (0; needs it)

  so the defaults range over [0, 1]. Image components are 0 when the code did not render.
- ``rlrf`` (StarVector's RLRF, arXiv 2505.20793, without its model-based DreamSim term)::

      recon   R_recon = clip(1 - RMS(norm(I) - norm(I_hat)), -1, 1)       (1/3)
      edge    the same on Canny edge maps                                 (1/3)
      length  1 - ((1/L_gt) max(0, L_pred - L_gt/2))^2, clipped at -1, L = characters of code
              (needs reference code; else left out)                       (1/3)

  A completion that does not render gets recon = edge = -1 (the worst value), so the score is in [-1, 1].
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from codepercept_rl.rewards.backend import RewardBackend, arender, ascore
from codepercept_rl.rewards.parts import (
    Table,
    as_text,
    has_python_block,
    length_reward,
    resolve_weights,
    score_item,
    texts_of,
)
from codepercept_rl.rewards.registry import register_reward
from codepercept_rl.rewards.types import UNSCORED_STATUSES, RewardOutput, RewardSample
from reward_servers.extract import extract_code

if TYPE_CHECKING:
    from reward_servers.sandbox import RenderResult, ScoreResult

RENDER_SIMILARITY_WEIGHTS = {"format": 0.1, "exec": 0.2, "ssim": 0.2, "edge": 0.3, "pixel": 0.2, "trace": 0.0}
RLRF_WEIGHTS = {"recon": 1 / 3, "edge": 1 / 3, "length": 1 / 3}


def _usable(sample: RewardSample, table: Table, i: int) -> bool:
    """True if the sample names something to compare with; else marks it ``no_reference``."""
    if sample.has_target or sample.reference_code is not None:
        return True
    table.unscored(i, "no_reference", "sample has neither a target image nor reference code")
    return False


async def _run(
    samples: Sequence[RewardSample], backend: RewardBackend, table: Table, reward: str, with_reference: bool
) -> dict[int, ScoreResult]:
    """Scores every usable sample with the pool scorer ``reward``; returns {sample index: ScoreResult}."""
    texts = texts_of(samples, table)
    todo = [i for i, t in enumerate(texts) if t is not None and _usable(samples[i], table, i)]
    items = [score_item(samples[i], texts[i], reward, with_reference=with_reference) for i in todo]
    results = await ascore(backend, items)
    for i in todo:
        table.set(i, format=float(has_python_block(texts[i])))
    return dict(zip(todo, results, strict=True))


def _apply_status(table: Table, i: int, result: ScoreResult | RenderResult) -> bool:
    """Copies status/error; returns False if the sample could not be scored (backend refused it)."""
    table.statuses[i], table.errors[i] = result.status, result.error
    if result.status in UNSCORED_STATUSES:
        table.unscored(i, result.status, result.error)
        return False
    return True


@register_reward("format")
class FormatReward:
    """1 if the completion has a complete ```python block, else 0."""

    name = "format"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = resolve_weights(self.name, {"format": 1.0}, weights)

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        for i, text in enumerate(texts_of(samples, table)):
            if text is not None:
                table.set(i, format=float(has_python_block(text)))
                table.scores[i] = table.weigh(i, self.weights)
        return table.output()


@register_reward("exec")
class ExecReward:
    """1 if the code ran in the sandbox and drew a figure, else 0."""

    name = "exec"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = resolve_weights(self.name, {"exec": 1.0}, weights)

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        texts = texts_of(samples, table)
        with_target = [i for i, t in enumerate(texts) if t is not None and samples[i].has_target]
        bare = [i for i, t in enumerate(texts) if t is not None and not samples[i].has_target]
        # With a target the pool caches the result by content; without one a plain render answers the question
        # (the reference code is not needed to know whether the candidate runs, so it is not rendered).
        items = [score_item(samples[i], texts[i], "exec", with_reference=False) for i in with_target]
        scored, renders = await asyncio.gather(
            ascore(backend, items), asyncio.gather(*(arender(backend, texts[i]) for i in bare))
        )
        for i, result in [*zip(with_target, scored, strict=True), *zip(bare, renders, strict=True)]:
            if _apply_status(table, i, result):
                table.set(i, exec=float(result.status == "ok"))
                table.scores[i] = table.weigh(i, self.weights)
        return table.output()


@register_reward("render_similarity")
class RenderSimilarityReward:
    """format + exec + SSIM / edge / pixel (+ optional trace F1s), weighted (module docstring)."""

    name = "render_similarity"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = resolve_weights(self.name, RENDER_SIMILARITY_WEIGHTS, weights)

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        with_trace = self.weights["trace"] != 0.0
        results = await _run(samples, backend, table, "render", with_reference=with_trace)
        for i, result in results.items():
            if not _apply_status(table, i, result):
                continue
            m = result.metrics
            ok = result.status == "ok" and "ssim" in m
            table.set(
                i,
                exec=float(result.status == "ok"),
                ssim=max(0.0, m["ssim"]) if ok else 0.0,
                edge=m["edge"] if ok else 0.0,
                pixel=(m["pixel"] + 1.0) / 2.0 if ok else 0.0,
            )
            if with_trace and samples[i].reference_code is not None:
                table.set(i, trace=m.get("trace", 0.0) if ok else 0.0)
            table.scores[i] = table.weigh(i, self.weights)
        return table.output()


@register_reward("rlrf")
class RLRFReward:
    """RLRF's reconstruction + edge + length terms, weighted (module docstring)."""

    name = "rlrf"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = resolve_weights(self.name, RLRF_WEIGHTS, weights)

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        results = await _run(samples, backend, table, "rlrf", with_reference=False)
        for i, result in results.items():
            if not _apply_status(table, i, result):
                continue
            m = result.metrics
            ok = result.status == "ok" and "pixel" in m
            table.set(i, recon=m["pixel"] if ok else -1.0, edge=m["edge_recon"] if ok else -1.0)
            reference = samples[i].reference_code
            if reference is not None:
                ref_code = extract_code(reference) or reference
                pred_code = extract_code(as_text(samples[i].completion) or "") or ""
                if ref_code.strip():
                    table.set(i, length=length_reward(len(pred_code), len(ref_code)))
            table.scores[i] = table.weigh(i, self.weights)
        return table.output()
