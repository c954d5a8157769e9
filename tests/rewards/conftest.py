"""Shared figures and a per-module reward pool (real sandboxes: 2 workers)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import pytest

from reward_servers.pool import RewardPool
from reward_servers.sandbox import RenderResult, SandboxConfig, ScoreResult

# The reference figure: a bar chart with a title and a text label (its render is the target image).
REF = """import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(6, 4))
ax.bar(["a", "b", "c"], [3, 1, 2], color="tab:blue")
ax.set_title("Sales")
ax.text(0.5, 2.5, "peak", fontsize=16)
"""
# A wrong chart: a red sine curve instead of bars.
WRONG = """import matplotlib.pyplot as plt
import numpy as np
fig, ax = plt.subplots(figsize=(6, 4))
x = np.linspace(0, 6, 50)
ax.plot(x, np.sin(x), color="red", linewidth=3)
ax.set_title("Wave")
"""
# A blank figure: only an empty white canvas.
BLANK = """import matplotlib.pyplot as plt
fig = plt.figure(figsize=(6, 4))
fig.text(0.01, 0.01, ".", color="white")
"""


def fence(code: str, prose: str = "Here is the code:") -> str:
    """A model-style answer with one ```python block."""
    return f"{prose}\n```python\n{code}```\n"


def moved_label(x: float) -> str:
    """REF with the 'peak' label moved to x (x = 0.5 is the reference)."""
    return REF.replace("ax.text(0.5, 2.5", f"ax.text({x}, 2.5")


class CountingBackend:
    """Forwards to a real backend and counts renders (to check that references are rendered once)."""

    def __init__(self, backend: RewardPool) -> None:
        self.backend = backend
        self.renders: list[str] = []

    def score(self, items: Sequence[Mapping[str, Any]]) -> list[ScoreResult]:
        return self.backend.score(items)

    def render(self, code: str) -> RenderResult:
        self.renders.append(code)
        return self.backend.render(code)

    def register_targets(self, targets: Mapping[str, bytes]) -> list[str]:
        return self.backend.register_targets(targets)

    def close(self) -> None:
        pass  # the module's pool outlives this wrapper


@pytest.fixture(scope="module")
def pool() -> Iterator[RewardPool]:
    with RewardPool(workers=2, config=SandboxConfig(timeout_s=10)) as p:
        yield p


@pytest.fixture(scope="module")
def target_png(pool: RewardPool) -> bytes:
    render = pool.render(REF)
    assert render.status == "ok", render.error
    pool.register_targets({"ref": render.png})
    return render.png
