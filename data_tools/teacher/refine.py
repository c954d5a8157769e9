"""Code-grounded caption refinement: an LLM rewrites a draft against the execution trace, then every sentence
is re-checked against the trace (``data_tools.captions.verify_caption``) and dropped if it does not hold.

    caption, n_dropped = refine_caption(client, draft, render.trace, subject="a bar chart of 3 bars")

The LLM makes captions fluent; it cannot make them wrong: what it adds without support in the trace (or the
trusted subject) is removed, and if nothing survives the deterministic template caption is returned.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

from data_tools import prompts
from data_tools.captions import color_name, numbers, template_caption, verify_caption
from data_tools.teacher.client import ChatClient, user_message


def compact_trace(trace: Mapping[str, Any], max_elements: int = 40) -> str:
    """The trace as short JSON for prompts: axes, counts, texts, named colours, a few element boxes.

    The trace is untrusted (user code can forge it): only well-formed entries are passed on.
    """

    def colour(c: Any) -> str | None:
        return color_name(c) if isinstance(c, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", c) else None

    elements = []
    for e in [e for e in trace.get("elements", []) if isinstance(e, Mapping)][:max_elements]:
        entry = {
            "kind": e.get("kind"),
            "bbox": numbers(e.get("bbox"), 4),
            "text": e.get("text"),
            "label": e.get("label"),
            "colour": colour(e.get("facecolor")) or colour(e.get("color")),
        }
        elements.append({k: v for k, v in entry.items() if v is not None})
    axes = [
        {
            k: a.get(k)
            for k in ("projection", "title", "xlabel", "ylabel", "xlim", "ylim", "legend")
            if a.get(k)
        }
        for a in trace.get("axes", [])
        if isinstance(a, Mapping)
    ]
    compact = {
        "axes": axes,
        "counts": trace.get("counts", {}),
        "texts": trace.get("texts", []),
        "colours": sorted({n for n in map(colour, trace.get("colors", [])) if n}),
        "elements": elements,
    }
    return json.dumps(compact, ensure_ascii=False, default=str)


def refine_caption(
    client: ChatClient, draft: str, trace: Mapping[str, Any], subject: str = ""
) -> tuple[str, int]:
    """Rewrite ``draft`` with the LLM against ``trace``, keep only the sentences the trace supports.

    Args:
        client: the OpenAI-compatible endpoint (greedy decoding, so the disk cache makes reruns free).
        draft: a caption to improve (a template caption, or a teacher's caption of a seed image).
        trace: the sandbox trace of the program (ground truth).
        subject: a phrase true by construction (generator items), trusted as a source of facts.

    Returns:
        (caption, number of sentences dropped); the template caption if no sentence survives.

    Raises:
        TeacherError: the endpoint failed.
    """
    prompt = prompts.REFINE_CAPTION.format(draft=draft.strip(), trace=compact_trace(trace))
    [reply] = client.chat([user_message(prompt)], temperature=0.0)
    checked = verify_caption(reply, trace, subject)
    if not checked.kept:
        return template_caption(trace, subject), len(checked.dropped)
    return checked.text, len(checked.dropped)
