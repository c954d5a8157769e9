"""The generator contract: a family turns a seed into a runnable matplotlib program plus its parameters.

Generators only *write* code; they never run it. Rendering goes through ``reward_servers.sandbox`` (see
``data_tools.render``). Every number a program uses is a literal in its source (no random calls inside the
program), so a program is deterministic and its image determines its parameters.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

HEADER_2D = "import matplotlib.pyplot as plt\nimport numpy as np\n"
HEADER_3D = "import matplotlib.pyplot as plt\nimport numpy as np\nfrom mpl_toolkits.mplot3d.art3d import Poly3DCollection\n"


@dataclass(frozen=True)
class Program:
    """One generated program.

    Attributes:
        family: the family name (a key of ``data_tools.generators.FAMILIES``).
        seed: the seed it was generated from; ``family`` + ``seed`` reproduce it exactly.
        code: runnable matplotlib source (draws one figure; no ``savefig``/``show`` needed).
        params: the sampled parameters (JSON-able), the code's ground truth in structured form.
        subject: a short noun phrase true by construction ("a cube net of six squares"), used by captions.
    """

    family: str
    seed: int
    code: str
    params: dict[str, Any] = field(default_factory=dict)
    subject: str = ""


@dataclass(frozen=True)
class Family:
    """A parametric family.

    Attributes:
        name: registry key.
        group: "solid", "plane" or "mini" (the miniature-pipeline families).
        make: ``make(rng) -> (code, params, subject)``; must draw all randomness from ``rng``.
        description: one line for ``--help`` and the docs.
    """

    name: str
    group: str
    make: Callable[[random.Random], tuple[str, dict[str, Any], str]]
    description: str

    def generate(self, seed: int) -> Program:
        """Generate the program for ``seed`` (deterministic: same seed, same code)."""
        code, params, subject = self.make(random.Random(f"{self.name}:{seed}"))
        return Program(family=self.name, seed=int(seed), code=code, params=params, subject=subject)


def num(x: float, nd: int = 2) -> str:
    """Format a number as a short literal: ``num(2.0) == "2"``, ``num(0.125) == "0.12"``, never ``-0``."""
    s = f"{round(float(x), nd):.{nd}f}".rstrip("0").rstrip(".")
    return "0" if s in ("-0", "") else s


def pts(points: list[tuple[float, ...]], nd: int = 2) -> str:
    """Format a list of points as a Python literal with short numbers: ``[(0, 1), (2.5, 3)]``."""
    return "[" + ", ".join("(" + ", ".join(num(v, nd) for v in p) + ")" for p in points) + "]"


def pick(rng: random.Random, options: list[Any] | tuple[Any, ...], k: int) -> list[Any]:
    """``k`` distinct options in a random order (a thin wrapper so every family samples the same way)."""
    return rng.sample(list(options), k)


COLORS = [
    "tab:blue",
    "tab:orange",
    "tab:green",
    "tab:red",
    "tab:purple",
    "tab:brown",
    "tab:cyan",
    "tab:olive",
]
LIGHT_COLORS = [
    "lightblue",
    "lightgreen",
    "lightsalmon",
    "khaki",
    "plum",
    "lightgray",
    "wheat",
    "paleturquoise",
]
CMAPS = ["viridis", "plasma", "coolwarm", "cividis", "magma", "Blues", "Greens", "terrain"]
