"""Shared eval fixtures: a small bench whose images are real sandbox renders of its reference code."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from reward_servers.pool import RewardPool
from reward_servers.sandbox import SandboxConfig
from reward_servers.server import BackgroundServer, create_app


def shape_code(kind: str, color: str, label: str) -> str:
    """A small matplotlib program drawing one coloured shape with a title."""
    draw = {
        "square": f'ax.add_patch(plt.Rectangle((0.1, 0.1), 0.8, 0.8, color="{color}"))',
        "circle": f'ax.add_patch(plt.Circle((0.5, 0.5), 0.4, color="{color}"))',
        "triangle": f'ax.add_patch(plt.Polygon([[0.1, 0.1], [0.9, 0.1], [0.5, 0.9]], color="{color}"))',
        "bars": f'ax.bar([0.2, 0.5, 0.8], [0.3, 0.9, 0.6], width=0.2, color="{color}")',
        "line": f'ax.plot([0, 0.5, 1], [0.1, 0.9, 0.2], color="{color}", linewidth=6)',
        "dots": f'ax.scatter([0.2, 0.4, 0.6, 0.8], [0.5, 0.7, 0.3, 0.6], s=400, color="{color}")',
    }[kind]
    return (
        "import matplotlib.pyplot as plt\n"
        "fig, ax = plt.subplots(figsize=(3, 2.4))\n"
        f"{draw}\n"
        "ax.set_xlim(0, 1)\nax.set_ylim(0, 1)\n"
        f'ax.set_title("{label}")\n'
    )


def fenced(code: str) -> str:
    return f"Here is the code:\n```python\n{code}```\nDone."


@dataclass
class Bench:
    """A bench directory plus what the tests need to script answers."""

    dir: Path
    codes: dict[str, str] = field(default_factory=dict)  # item id -> reference code (as drawn)
    pngs: dict[str, bytes] = field(default_factory=dict)  # item id -> the image the model is shown


# id -> (shape, colour, category); ids name the behaviour the endpoint tests give them.
SPEC = {
    "good1": ("square", "#ff0000", "geometry"),
    "good2": ("circle", "#0000ff", "geometry"),
    "broken": ("bars", "#00aa00", "charts"),
    "prose": ("line", "#ff8800", "charts"),
    "err500": ("triangle", "#8800aa", "geometry"),
    "hang": ("dots", "#00cccc", "charts"),
    "retry_ok": ("bars", "#ffd700", "charts"),
    "from_ref": ("square", "#ff00ff", "geometry"),
    "bad_ref": ("circle", "#444444", "geometry"),
}


def write_bench(root: Path, pool: RewardPool, spec: dict[str, tuple[str, str, str]]) -> Bench:
    """Renders each item's code in the sandbox and writes ``root/bench.jsonl`` + ``root/images``."""
    bench = Bench(root)
    (root / "images").mkdir(parents=True)
    rows = []
    for item_id, (kind, color, category) in spec.items():
        code = shape_code(kind, color, item_id)
        render = pool.render(code)
        assert render.status == "ok", render.error
        bench.codes[item_id] = code
        bench.pngs[item_id] = render.png
        row = {"id": item_id, "image": f"images/{item_id}.png", "reference_code": code, "category": category}
        if item_id == "from_ref":
            row["image"] = "images/missing.png"  # no image file: the reference render stands in
        else:
            (root / "images" / f"{item_id}.png").write_bytes(render.png)
        if item_id == "bad_ref":
            row["reference_code"] = "this is not python ("  # broken reference: no Code score for it
        rows.append(row)
    if "from_ref" in spec or "bad_ref" in spec:
        # Neither an image nor a reference: a bad bench item, recorded and left out.
        rows.append({"id": "bad_item", "image": "images/nope.png", "category": "geometry"})
    (root / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return bench


EXEC_TIMEOUT_S = 3.0


@pytest.fixture(scope="session")
def render_pool():
    # One pool for the whole eval suite: starting sandbox zygotes is the slowest step on a loaded 2-core box.
    with RewardPool(workers=2, config=SandboxConfig(timeout_s=EXEC_TIMEOUT_S, cpu_s=10)) as pool:
        yield pool


@pytest.fixture(scope="session")
def reward_url(render_pool: RewardPool):
    """The shared pool behind a real reward service on 127.0.0.1 (CLI runs use it with --reward-url)."""
    with BackgroundServer(create_app(render_pool)) as server:
        yield server.url


@pytest.fixture(scope="session")
def bench(tmp_path_factory: pytest.TempPathFactory, render_pool: RewardPool) -> Bench:
    return write_bench(tmp_path_factory.mktemp("bench"), render_pool, SPEC)


@pytest.fixture(scope="session")
def judged_run(bench: Bench, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """One full CLI run with a judge, on the default local sandbox pool (the path users take)."""
    from tests.eval.openai_server import CannedServer
    from tests.eval.scripted import run_cli, scripted

    out = tmp_path_factory.mktemp("judged")
    with CannedServer(scripted(bench)) as server:
        rc = run_cli(server, bench, out, "--judge-url", server.base_url, "--judge-model", "judge")
        log = list(server.log)
    assert rc == 0
    return out, log
