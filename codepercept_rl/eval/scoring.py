"""Scores one answer: extract the code, render it in the sandbox, compare with the reference, ask the judges.

    scorer = ItemScorer(backend, out_dir, judge=None)
    ref = await scorer.prepare(item)                 # target image + reference render (sandboxed), once per item
    record = await scorer.score(item, ref, generation)

Per-item scores are on the paper's 0-100 scale:

- ``exec``: 100 if the code ran and drew a figure (sandbox status ``ok``), else 0;
- ``image``: deterministic render similarity, 100 x the reward pool's ``render`` image blend
  (0.25 SSIM + 0.5 edge F1 + 0.25 pixel; ``reward_servers/scoring.py``) of the render against the bench image;
- ``code``: deterministic code score, 100 x the reward pool's ``trace`` score of the answer's execution trace
  against the reference code's: half the mean of the four ChartMimic-style trace F1s (text, type, colour,
  layout), half ``element_f2`` (the drawn elements' kinds and positions, recall-weighted);
- ``image_judge`` / ``code_judge``: the LLM judges' verdicts x 100, when a judge is configured. As in the paper,
  the image judge is not asked (the score is 0) when the code did not render; the code judge sees any code.

Fair counting: an answer with no fenced code, a generation that failed after retries, and code that errors,
hangs (sandbox timeout) or draws nothing all score 0 on every score and keep their place in the denominator;
the record's ``status`` says which. Bench problems are the bench's fault, not the model's: an item with no
usable target image (missing / undecodable, and no reference render to stand in) is recorded as ``bad_item``
and left out of every average; an item whose reference code is missing or fails in the sandbox gets
``code`` / ``code_judge`` = None (left out of the Code averages only). The report counts both.

All model and reference code runs in the reward backend's sandbox, never here (what the sandbox does and does
not isolate: ``reward_servers/sandbox.py``). This process only decodes the returned PNGs
(``reward_servers.scoring.decode_png`` bounds their size) and computes metrics on them and on the bounded
trace JSON. Not covered: the LLM judges read the model's code and render, so a prompt injection in the code can
sway the judge scores (``codepercept_rl/rewards/judge.py``); the deterministic scores cannot be talked to.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codepercept_rl.eval.bench import BenchItem
from codepercept_rl.eval.generate import Generation
from codepercept_rl.eval.judges import ItemJudge, JudgeResult
from codepercept_rl.rewards.backend import RewardBackend, arender
from codepercept_rl.utils.io import atomic_write_bytes
from reward_servers.extract import extract_code
from reward_servers.sandbox import RenderResult
from reward_servers.scoring import decode_png, score_render

_THINK_END = re.compile(r"</think>", re.IGNORECASE)
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")

# Statuses an item can end with, besides the sandbox's own (ok, syntax_error, exec_error, timeout, ...).
NO_CODE = "no_code"
API_ERROR = "api_error"
GEN_ERROR = "gen_error"
BAD_ITEM = "bad_item"
BAD_RENDER = "bad_render"


def answer_code(text: str | None, *, require_fence: bool = True) -> str | None:
    """The program in a model's answer, or None.

    Reasoning before a closing ``</think>`` is dropped (as the released script does). With ``require_fence``
    (the benchmark's rule) an answer without a ``````` fence has no code; otherwise unfenced text that looks
    like code is taken (``reward_servers.extract.extract_code``).
    """
    if not text:
        return None
    parts = _THINK_END.split(text)
    text = parts[-1]
    if require_fence and "```" not in text:
        return None
    code = extract_code(text)
    return code if code is not None and code.strip() else None


def file_stem(item_id: str) -> str:
    """A file-name-safe, collision-free stem for an item id."""
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:8]
    return f"{_SAFE.sub('_', item_id)[:80]}-{digest}"


@dataclass
class Reference:
    """What an item is scored against."""

    target_png: bytes | None  # the bench image (or the reference render standing in for it)
    render: RenderResult | None  # the reference code's render (its trace feeds the code score)
    target_from_reference: bool = False
    problems: list[str] = field(default_factory=list)
    code_ok: bool = False  # reference code present and rendered: code scores are defined
    file: str | None = None  # the reference image, relative to the output directory


class ItemScorer:
    """Scores answers against bench items (module docstring).

    Args:
        backend: where code runs (``RewardPool`` or ``RewardClient``).
        out_dir: renders go to ``out_dir/renders``, reference images to ``out_dir/references``.
        judge: optional LLM judge for the paper's Image / Code scores.
        require_fence: the benchmark's rule that code comes in a fenced block.
    """

    def __init__(
        self,
        backend: RewardBackend,
        out_dir: str | Path,
        *,
        judge: ItemJudge | None = None,
        require_fence: bool = True,
    ) -> None:
        self.backend = backend
        self.out_dir = Path(out_dir)
        self.judge = judge
        self.require_fence = require_fence

    async def prepare(self, item: BenchItem) -> Reference:
        """Reads and checks the item's image and renders its reference code (in the sandbox)."""
        problems = list(item.problems)
        target_png: bytes | None = None
        try:
            target_png = item.read_image()
            await asyncio.to_thread(decode_png, target_png)  # validate now; decoded again when scoring
        except OSError as exc:
            if not any(p.startswith(("image file not found", "no image path")) for p in problems):
                problems.append(f"image unreadable: {exc}")  # the loader has not said so already
            target_png = None
        except ValueError as exc:
            problems.append(f"image does not decode: {exc}")
            target_png = None
        render: RenderResult | None = None
        code_ok = False
        if item.reference_code is not None:
            render = await arender(self.backend, item.reference_code)
            if render.status == "ok" and render.png is not None and render.trace:
                code_ok = True
            elif render.status == "ok" and render.png is not None:
                problems.append("reference render has no execution trace: no code score")
            else:
                problems.append(
                    f"reference code failed in the sandbox: {render.status}: {(render.error or '')[:300]}"
                )
                render = None
        ref = Reference(target_png, render, False, problems, code_ok)
        if ref.target_png is None and render is not None and render.status == "ok":
            # The reference code renders: its image stands in for the missing one (recorded in the result).
            ref.target_png = render.png
            ref.target_from_reference = True
        if ref.target_png is not None:
            ref.file = f"references/{file_stem(item.id)}.png"
            path = self.out_dir / ref.file
            if not path.exists():
                await asyncio.to_thread(atomic_write_bytes, path, ref.target_png)
        return ref

    async def score(self, item: BenchItem, ref: Reference, gen: Generation) -> dict[str, Any]:
        """The result record of one item (module docstring for the scores and statuses)."""
        t0 = time.monotonic()
        record: dict[str, Any] = {
            "id": item.id,
            "category": item.category,
            "status": None,
            "error": None,
            "generation": gen.to_dict(),
            "code": None,
            "scores": {"exec": None, "image": None, "code": None, "image_judge": None, "code_judge": None},
            "metrics": {},
            "judge": {},
            "files": {"reference": ref.file, "render": None},
            "reference": {"target_from_reference": ref.target_from_reference, "problems": ref.problems},
        }
        if ref.target_png is None:
            record.update(status=BAD_ITEM, error="; ".join(ref.problems) or "no usable target image")
            return record
        scores = record["scores"]
        judged = self.judge is not None

        def all_zero(status: str, error: str | None) -> dict[str, Any]:
            record.update(status=status, error=error)
            scores.update(exec=0.0, image=0.0, code=0.0 if ref.code_ok else None)
            if judged:
                scores.update(image_judge=0.0, code_judge=0.0 if ref.code_ok else None)
            record["duration_s"] = round(time.monotonic() - t0, 4)
            return record

        if gen.text is None:
            status = API_ERROR if (gen.error or "").startswith("api_error") else GEN_ERROR
            return all_zero(status, gen.error)
        code = answer_code(gen.text, require_fence=self.require_fence)
        if code is None:
            return all_zero(
                NO_CODE, "no fenced code block in the answer" if self.require_fence else "no code"
            )
        record["code"] = code
        render = await arender(self.backend, code)
        code_judge = None
        if judged and ref.code_ok:
            code_judge = asyncio.ensure_future(self.judge.score_code(item.reference_code or "", code))
        exec_ok = render.status == "ok" and render.png is not None
        if exec_ok:
            try:
                _, metrics = await asyncio.to_thread(_compare, render, ref)
            except ValueError as exc:  # the render's PNG is unusable (oversized, corrupt): no image to score
                exec_ok = False
                render = RenderResult(status=BAD_RENDER, error=f"render unusable: {exc}")
            else:
                record["metrics"] = {k: round(v, 6) for k, v in metrics.items()}
                scores["exec"] = 100.0
                scores["image"] = 100.0 * metrics["image"]
                scores["code"] = 100.0 * metrics["trace"] if ref.code_ok else None
                record["files"]["render"] = f"renders/{file_stem(item.id)}.png"
                await asyncio.to_thread(
                    atomic_write_bytes, self.out_dir / record["files"]["render"], render.png
                )
        if not exec_ok:
            record["error"] = f"{render.status}: {(render.error or '')[:500]}"
            scores.update(exec=0.0, image=0.0, code=0.0 if ref.code_ok else None)
        record["status"] = "ok" if exec_ok else render.status
        if judged:
            if exec_ok:
                image_verdict = await self.judge.score_image(ref.target_png, render.png)
                _put_judge(record, "image", image_verdict)
            else:
                scores["image_judge"] = 0.0
            if code_judge is not None:
                _put_judge(record, "code", await code_judge)
        record["duration_s"] = round(time.monotonic() - t0, 4)
        return record


def _compare(render: RenderResult, ref: Reference) -> tuple[float, dict[str, float]]:
    """The reward pool's ``render`` blend of the answer's render against the target (+ reference trace)."""
    # Decoded here rather than kept per item: a thousand decoded targets would hold gigabytes.
    target = decode_png(ref.target_png) if ref.target_png is not None else None
    return score_render(render, target, ref.render if ref.code_ok else None, "render")


def _put_judge(record: dict[str, Any], kind: str, verdict: JudgeResult) -> None:
    record["scores"][f"{kind}_judge"] = None if verdict.score is None else 100.0 * verdict.score
    if verdict.error:
        record["judge"][f"{kind}_error"] = verdict.error
    if verdict.parts:
        record["judge"][f"{kind}_parts"] = verdict.parts
