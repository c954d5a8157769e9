"""The captioner-solver protocol (the paper's Table 1): perception measured through a text-only solver.

    summary = asyncio.run(run_caption_solver(items, captioner, solver, out_dir))

For each item with a ``question`` and an ``answer``: the evaluated model (``captioner``, any ``Generator``)
describes the image; a separate text-only model (``solver``, usually an ``OpenAIGenerator`` over an
OpenAI-compatible endpoint) answers the question from the description alone, ending with ``Answer: <x>``;
the prediction is compared with the gold answer (``answers_match``). A better captioner shows as a higher solver
accuracy with the solver fixed.

Records go to ``out_dir/caption_solver.jsonl`` (append + fsync per item; a rerun resumes, as in the main
harness). Fair counting: a failed caption, a failed solver call or an answer with no extractable prediction
is counted wrong, and the summary counts each. Accuracy has a seeded percentile bootstrap CI (``stats``).
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from codepercept_rl.eval.bench import BenchItem
from codepercept_rl.eval.generate import Generation, Generator, GenRequest
from codepercept_rl.eval.results import ResultsFile
from codepercept_rl.utils.io import atomic_write_json

CAPTION_PROMPT = (
    "Describe this figure so precisely that someone who cannot see it could answer questions about it: every "
    "element, its position, size, colour, label and the exact values and text shown."
)
SOLVER_SYSTEM = "You answer questions about a figure you cannot see, using only its description."
RESULTS_FILE = "caption_solver.jsonl"

_ANSWER = re.compile(r"answer\s*(?:is)?\s*[:：]\s*(.+)", re.IGNORECASE)
_LETTER = re.compile(r"^\(?([A-Ha-h])\)?(?:[.:)\s]|$)")
_NUMBER = re.compile(r"^[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?$", re.IGNORECASE)


def solver_prompt(caption: str, question: str, choices: Sequence[str] | None = None) -> str:
    """The solver's text prompt: the description, the question, the options, the answer format."""
    text = f"Figure description:\n{caption.strip()}\n\nQuestion: {question.strip()}\n"
    if choices:
        text += "Options:\n" + "".join(f"({chr(65 + i)}) {c}\n" for i, c in enumerate(choices))
        text += "\nThink briefly, then end with a line 'Answer: <letter>'."
    else:
        text += "\nThink briefly, then end with a line 'Answer: <final answer>'."
    return text


def extract_prediction(text: str | None) -> str | None:
    """The solver's final answer: the last 'Answer: x' line, else the last non-empty line."""
    if not text:
        return None
    found = _ANSWER.findall(text)
    if found:
        return found[-1].strip()
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1] if lines else None


def _norm(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = re.sub(r"\\text\{([^}]*)\}", r"\1", s)
    return re.sub(r"[\s.。]+$", "", s).lower().replace(" ", "")


def answers_match(prediction: str | None, gold: str, choices: Sequence[str] | None = None) -> bool:
    """Whether a prediction matches the gold answer.

    Multiple choice: letters are compared (a prediction naming an option's text counts as that option's
    letter). Numbers: equal within 1e-6 absolute or 1% relative. Otherwise: equal after normalisation
    (case, spaces, surrounding ``$``, trailing full stop).
    """
    if prediction is None:
        return False
    pred, ref = _norm(prediction), _norm(gold)
    if choices:
        letters = {_norm(c): chr(97 + i) for i, c in enumerate(choices)}
        m = _LETTER.match(prediction.strip())
        p_letter = m.group(1).lower() if m else letters.get(pred)
        g = _LETTER.match(gold.strip())
        g_letter = g.group(1).lower() if g else letters.get(ref)
        if p_letter is not None and g_letter is not None:
            return p_letter == g_letter
    if _NUMBER.match(pred) and _NUMBER.match(ref):
        a, b = float(pred), float(ref)
        return abs(a - b) <= max(1e-6, 0.01 * abs(b))
    return pred == ref


async def run_caption_solver(
    items: Sequence[BenchItem],
    captioner: Generator,
    solver: Generator,
    out_dir: str | Path,
    *,
    caption_prompt: str = CAPTION_PROMPT,
    solver_concurrency: int = 8,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Runs the protocol on the items that have a question and an answer (module docstring).

    Returns:
        The summary (also written to ``out_dir/caption_solver_summary.json``): accuracy (0-100) with CI,
        per-category accuracy, outcome counts.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    qa = [it for it in items if it.question and it.answer is not None]
    semaphore = asyncio.Semaphore(max(1, solver_concurrency))
    with ResultsFile(out / RESULTS_FILE) as results:
        todo = []
        for it in qa:
            if it.id in results.records:
                continue
            try:
                todo.append((it, it.read_image()))
            except (OSError, ValueError) as exc:
                results.append(_record(it, None, None, None, "bad_item", f"image unusable: {exc}"))

        async def solve(item: BenchItem, caption: Generation) -> None:
            if caption.text is None or not caption.text.strip():
                results.append(
                    _record(item, caption, None, None, "caption_error", caption.error or "empty caption")
                )
                return
            request = GenRequest(
                item.id, None, solver_prompt(caption.text, item.question or "", item.choices), SOLVER_SYSTEM
            )
            async with semaphore:
                answers = [gen async for _, gen in solver.generate([request])]
            if len(answers) != 1:
                raise RuntimeError(f"solver {solver.name} returned {len(answers)} answers for one request")
            answer = answers[0]
            if answer.text is None:
                results.append(_record(item, caption, answer, None, "solver_error", answer.error))
                return
            pred = extract_prediction(answer.text)
            ok = answers_match(pred, item.answer or "", item.choices)
            status = "correct" if ok else ("no_answer" if pred is None else "wrong")
            results.append(_record(item, caption, answer, pred, status, None))

        requests = [GenRequest(it.id, png, caption_prompt) for it, png in todo]
        tasks = []
        async for index, caption in captioner.generate(requests):
            tasks.append(asyncio.ensure_future(solve(todo[index][0], caption)))
        await asyncio.gather(*tasks)
        records = [results.records[it.id] for it in qa if it.id in results.records]
    summary = summarize_caption_solver(records, n_boot=n_boot, seed=seed)
    atomic_write_json(out / "caption_solver_summary.json", summary)
    return summary


def _record(
    item: BenchItem,
    caption: Generation | None,
    answer: Generation | None,
    pred: str | None,
    status: str,
    error: str | None,
) -> dict[str, Any]:
    return {
        "id": item.id,
        "category": item.category,
        "question": item.question,
        "answer": item.answer,
        "caption": caption.text if caption else None,
        "solver_answer": answer.text if answer else None,
        "prediction": pred,
        "correct": status == "correct",
        "status": status,
        "error": error,
    }


def summarize_caption_solver(
    records: Sequence[dict[str, Any]], *, n_boot: int = 1000, seed: int = 0
) -> dict[str, Any]:
    """Accuracy (0-100) with a seeded percentile bootstrap 95% CI, per category, and outcome counts.

    Bad bench items (unusable image) are left out of the accuracy; every other failure counts as wrong.
    """
    scored = [r for r in records if r["status"] != "bad_item"]
    correct = np.array([100.0 if r["correct"] else 0.0 for r in scored])
    ci = None
    if correct.size and n_boot > 0:
        idx = np.random.default_rng(seed).integers(0, correct.size, size=(n_boot, correct.size))
        means = correct[idx].mean(axis=1)
        ci = [float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))]
    by_cat: dict[str, list[float]] = {}
    for r, c in zip(scored, correct, strict=True):
        by_cat.setdefault(str(r["category"]), []).append(float(c))
    return {
        "n": len(scored),
        "accuracy": float(correct.mean()) if correct.size else None,
        "ci": ci,
        "by_category": {k: {"n": len(v), "accuracy": float(np.mean(v))} for k, v in sorted(by_cat.items())},
        "status_counts": dict(Counter(r["status"] for r in records).most_common()),
        "bootstrap": {"n_boot": n_boot, "seed": seed, "method": "percentile", "alpha": 0.05},
    }
