"""Hand-written S1 rows for tests: trusted matplotlib images rendered here (test code is trusted)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def render_png(height: float, color: str = "tab:blue") -> bytes:
    """A small bar chart as PNG bytes."""
    fig, ax = plt.subplots(figsize=(1, 1), dpi=64)
    ax.bar(["a", "b"], [1.0, height], color=color)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def row(row_id: str, task: str, image: str | None, answer: str | None, prompt: str = "Draw this.") -> dict:
    """An S1 row; ``image`` None gives a text-only row, ``answer`` None a conversation with no assistant turn."""
    messages = [{"role": "user", "content": ("<image>" if image else "") + prompt}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return {"id": row_id, "task": task, "images": [image] if image else [], "messages": messages}


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    """Writes rows (dicts as JSON, strings verbatim) one per line."""
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path
