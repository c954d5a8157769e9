"""Teacher pipelines: a strong MLLM behind an OpenAI-compatible endpoint turns seed images into items.

* Image Reproduce: seed image -> caption -> code that reproduces it.
* Image Diversity: seed image -> the principle it illustrates -> ``variants`` new programs.

Every program goes through the render-and-repair loop: render in the sandbox; on failure send the code and the
error back and ask for a fix, at most ``max_attempts`` renders in all. A program that renders then faces the
paper's three checks, each a judge prompt (``data_tools.prompts``): code quality (pass and a 1-5 score), image
sanity (no fatal rendering problem) and image-code consistency (match). The caption of a kept program is
code-grounded: a draft (the teacher's caption of the seed, or the trace template) is rewritten by the teacher
against the execution trace, then every sentence is re-checked against the trace and dropped if it does not
hold (``data_tools.captions``); if nothing survives, the template caption is used.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from data_tools import prompts
from data_tools.captions import template_caption
from data_tools.filters import blank_reason
from data_tools.render import Renderer
from data_tools.store import Item
from data_tools.teacher.client import ChatClient, TeacherError, user_message
from data_tools.teacher.refine import refine_caption
from reward_servers.extract import extract_code
from reward_servers.sandbox import RenderResult

MODES = ("reproduce", "diversity")


@dataclass
class TeacherConfig:
    """Knobs of the teacher pipelines.

    Attributes:
        max_attempts: renders per program, the first included (so ``max_attempts - 1`` repairs).
        variants: programs per seed image in Image Diversity.
        judges: run the three quality checks (off: every program that renders is kept).
        min_code_score: lowest code-quality score (1-5) kept.
        refine_captions: let the teacher rewrite captions against the trace (off: template captions).
    """

    max_attempts: int = 3
    variants: int = 4
    judges: bool = True
    min_code_score: int = 3
    refine_captions: bool = True

    def __post_init__(self) -> None:
        if self.max_attempts < 1 or self.variants < 1 or not 1 <= self.min_code_score <= 5:
            raise ValueError(f"bad TeacherConfig: {self}")


@dataclass
class Outcome:
    """The result for one program slot (seed x variant): an item with its PNG, or why there is none.

    ``rejected`` reads "<category>: <detail>", the category one of "no code", "render failed",
    "degenerate image", "judges" (shard stats count rejections by category).
    """

    item_id: str
    item: Item | None = None
    png: bytes | None = None
    rejected: str | None = None
    attempts: int = 0


@dataclass
class _Program:
    code: str
    render: RenderResult
    attempts: int
    history: list[str] = field(default_factory=list)


class NoCode(ValueError):
    """The teacher's reply contained no program."""


def seed_id(png: bytes) -> str:
    """Stable id of a seed image: the first 12 hex digits of its sha256."""
    return hashlib.sha256(png).hexdigest()[:12]


def parse_json_reply(text: str) -> dict[str, Any]:
    """The first JSON object in a judge's reply.

    Raises:
        ValueError: no parseable JSON object in ``text``.
    """
    for m in re.finditer(r"\{.*?\}", text, re.DOTALL):
        try:
            obj = json.loads(m.group(0))
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            return obj
    raise ValueError(f"no JSON object in judge reply {text[:120]!r}")


class TeacherPipeline:
    """Runs Image Reproduce / Image Diversity for one seed image at a time (thread-safe: call from a pool).

    Args:
        client: the teacher endpoint (its disk cache makes a resumed build cheap).
        renderer: sandbox renderer shared by all threads.
        config: pipeline knobs.
    """

    def __init__(self, client: ChatClient, renderer: Renderer, config: TeacherConfig | None = None) -> None:
        self.client = client
        self.renderer = renderer
        self.config = config or TeacherConfig()

    # ------------------------------------------------------------ the two pipelines
    def reproduce(self, seed_png: bytes, seed_name: str) -> list[Outcome]:
        """Image Reproduce: one outcome (item id ``reproduce-<seed id>-0``)."""
        item_id = f"reproduce-{seed_id(seed_png)}-0"
        [draft] = self.client.chat([user_message(prompts.CAPTION, [seed_png])])
        message = user_message(prompts.CODE_FROM_CAPTION.format(caption=draft.strip()), [seed_png])
        outcome, prog = self._program(item_id, [message])
        if prog is not None:
            self._finish(outcome, prog, draft, seed_png, seed_name, "reproduce", {})
        return [outcome]

    def diversity(self, seed_png: bytes, seed_name: str) -> list[Outcome]:
        """Image Diversity: ``variants`` outcomes (item ids ``diversity-<seed id>-<k>``)."""
        [principle] = self.client.chat([user_message(prompts.PRINCIPLE, [seed_png])])
        total = self.config.variants
        outcomes = []
        for k in range(total):
            item_id = f"diversity-{seed_id(seed_png)}-{k}"
            text = prompts.VARIANT.format(principle=principle.strip(), index=k + 1, total=total)
            outcome, prog = self._program(item_id, [user_message(text)])
            if prog is not None:
                extra = {"variant": k, "principle": principle}
                self._finish(outcome, prog, None, seed_png, seed_name, "diversity", extra)
            outcomes.append(outcome)
        return outcomes

    # ------------------------------------------------------------ steps
    def _program(self, item_id: str, messages: list[dict[str, Any]]) -> tuple[Outcome, _Program | None]:
        """Ask for code, then render-and-repair; the program comes back only if it rendered a usable image."""
        try:
            prog = self._render_repair(messages)
        except NoCode as e:
            return Outcome(item_id, rejected=f"no code: {e}"), None
        outcome = Outcome(item_id, attempts=prog.attempts)
        if prog.render.status != "ok":
            error = prog.render.error
            outcome.rejected = f"render failed: {prog.render.status} after {prog.attempts} attempts: {error}"
            return outcome, None
        blank = blank_reason(prog.render.png)
        if blank is not None:
            outcome.rejected = f"degenerate image: {blank}"
            return outcome, None
        return outcome, prog

    def _ask_code(self, messages: list[dict[str, Any]]) -> str:
        [reply] = self.client.chat(messages)
        code = extract_code(reply)
        if code is None or not code.strip():
            raise NoCode(f"the teacher's reply holds no program ({reply[:80]!r})")
        return code

    def _render_repair(self, messages: list[dict[str, Any]]) -> _Program:
        code = self._ask_code(messages)
        history = []
        for attempt in range(1, self.config.max_attempts + 1):
            render = self.renderer.render(code)
            if render.status == "ok" or attempt == self.config.max_attempts:
                return _Program(code, render, attempt, history)
            error = (render.error or "") + ("\n" + render.stderr[-1500:] if render.stderr else "")
            history.append(f"{render.status}: {(render.error or '')[:200]}")
            repair = prompts.REPAIR.format(
                status=render.status, code=code, error=error.strip() or "(no message)"
            )
            code = self._ask_code([user_message(repair)])
        raise AssertionError("unreachable: the loop returns on its last attempt")

    def _judge(self, code: str, png: bytes) -> tuple[bool, dict[str, Any]]:
        """The three checks; returns (all passed, verdicts)."""
        verdicts: dict[str, Any] = {}
        asks = {
            "code_quality": [user_message(prompts.JUDGE_CODE.format(code=code))],
            "image_sanity": [user_message(prompts.JUDGE_IMAGE, [png])],
            "consistency": [user_message(prompts.JUDGE_CONSISTENCY.format(code=code), [png])],
        }
        for name, messages in asks.items():
            [reply] = self.client.chat(messages, temperature=0.0)
            try:
                verdicts[name] = parse_json_reply(reply)
            except ValueError as e:
                verdicts[name] = {"error": str(e)}
        code_v, image_v, cons_v = verdicts["code_quality"], verdicts["image_sanity"], verdicts["consistency"]
        score = code_v.get("score")
        passed = (
            code_v.get("pass") is True
            and isinstance(score, int | float)
            and score >= self.config.min_code_score
            and image_v.get("fatal") is False
            and cons_v.get("match") is True
        )
        return passed, verdicts

    def refine_caption(self, draft: str, trace: Mapping[str, Any]) -> tuple[str, int]:
        """``data_tools.teacher.refine.refine_caption`` with this pipeline's client."""
        return refine_caption(self.client, draft, trace)

    def _finish(
        self,
        outcome: Outcome,
        prog: _Program,
        draft: str | None,
        seed_png: bytes,
        seed_name: str,
        mode: str,
        extra: dict[str, Any],
    ) -> None:
        params: dict[str, Any] = {
            "seed_image": seed_name,
            "seed_sha256": hashlib.sha256(seed_png).hexdigest(),
            "attempts": prog.attempts,
            "repairs": prog.history,
            **extra,
        }
        if self.config.judges:
            passed, verdicts = self._judge(prog.code, prog.render.png or b"")
            params["judges"] = verdicts
            if not passed:
                outcome.rejected = f"judges: {json.dumps(verdicts)[:300]}"
                return
        template = template_caption(prog.render.trace)
        dropped = 0
        caption = template
        if self.config.refine_captions:
            caption, dropped = self.refine_caption(draft or template, prog.render.trace)
        params["caption_sentences_dropped"] = dropped
        outcome.item = Item(
            id=outcome.item_id,
            family=mode,
            seed=0,
            code=prog.code,
            caption=caption,
            image=f"images/{outcome.item_id}.png",
            params=params,
            source=mode,
            trace=prog.render.trace,
        )
        outcome.png = prog.render.png


__all__ = [
    "MODES",
    "NoCode",
    "Outcome",
    "TeacherConfig",
    "TeacherError",
    "TeacherPipeline",
    "parse_json_reply",
]
