"""examples/teacher_dataset.py end to end against a real OpenAI-compatible server on 127.0.0.1 (a canned
teacher): seed images drawn here -> teacher pipeline with sandboxed render-and-repair -> kept / dropped -> S1
and R1 files."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from aiohttp import web
from PIL import Image, ImageDraw

from tests.data_tools.conftest import ChatServer, judge_ok, message_images, message_text
from tests.examples.conftest import run_example

CIRCLE = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(3, 3))\n"
    "ax.add_patch(plt.Circle((0.5, 0.5), 0.3, color='red'))\n"
    "ax.set_xlim(0, 1)\n"
    "ax.set_ylim(0, 1)\n"
)
SQUARE = (
    "import matplotlib.pyplot as plt\n"
    "fig, ax = plt.subplots(figsize=(3, 3))\n"
    "ax.add_patch(plt.Rectangle((0.2, 0.2), 0.6, 0.6, color='blue'))\n"
    "ax.set_title('Square')\n"
)
SQUARE_TYPO = SQUARE.replace("plt.Rectangle", "plt.Rectangel")  # fails once, the repair fixes it
TRIANGLE_NEVER = "import matplotlib.pyplot as plt\nplt.fill([0, 1, 0.5], [0, 0, 1], color='green'\n"
CAPTIONS = {"red": "A red circle.", "blue": "A blue square titled 'Square'.", "green": "A green triangle."}


def draw(shape: str, colour: str, fmt: str) -> bytes:
    """A 120 px seed image drawn with PIL: an ellipse, a rectangle or a triangle."""
    im = Image.new("RGB", (120, 120), "white")
    d = ImageDraw.Draw(im)
    if shape == "ellipse":
        d.ellipse([30, 30, 90, 90], fill=colour)
    elif shape == "rectangle":
        d.rectangle([30, 30, 90, 90], fill=colour)
    else:
        d.polygon([(30, 90), (90, 90), (60, 30)], fill=colour)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return buf.getvalue()


class KeyedChatServer(ChatServer):
    """The shared chat double, also recording each request's Authorization header."""

    def __init__(self) -> None:
        super().__init__()
        self.auth: list[str | None] = []

    async def _handle(self, request: web.Request) -> web.Response:
        self.auth.append(request.headers.get("Authorization"))
        return await super()._handle(request)


def data_url(raw: bytes) -> str:
    """The data URL the client sends for a seed (seeds are converted to PNG first)."""
    buf = io.BytesIO()
    Image.open(io.BytesIO(raw)).convert("RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.fixture()
def seeds(tmp_path: Path) -> dict[str, bytes]:
    """Three seeds in a folder, one of them a JPEG: {colour: file bytes}."""
    folder = tmp_path / "my_figures"
    (folder / "sub").mkdir(parents=True)
    files = {
        "red": ("circle.png", draw("ellipse", "red", "PNG")),
        "blue": ("sub/square.jpg", draw("rectangle", "blue", "JPEG")),
        "green": ("triangle.png", draw("polygon", "green", "PNG")),
    }
    for name, raw in files.values():
        (folder / name).write_bytes(raw)
    return {colour: raw for colour, (_, raw) in files.items()}


@pytest.fixture()
def teacher(seeds: dict[str, bytes]) -> Iterator[KeyedChatServer]:
    """A canned teacher: captions by seed image, code by caption, repairs by code, passing judges."""
    colour_of = {data_url(raw): colour for colour, raw in seeds.items()}

    def respond(payload: dict[str, Any]) -> str:
        text = message_text(payload)
        verdict = judge_ok(payload)
        if verdict is not None:
            return verdict
        if text.startswith("Describe this STEM figure"):
            return CAPTIONS[colour_of[message_images(payload)[0]]]
        if text.startswith("Here is a description"):
            colour = colour_of[message_images(payload)[0]]
            code = {"red": CIRCLE, "blue": SQUARE_TYPO, "green": TRIANGLE_NEVER}[colour]
            return f"Here it is:\n```python\n{code}```"
        if text.startswith("This program failed"):
            return f"```python\n{SQUARE if 'Rectangel' in text else TRIANGLE_NEVER}```"
        if text.startswith("Draft caption"):
            return text.split("\n\n")[1]  # the draft back; sentences the trace does not support are dropped
        raise AssertionError(f"unexpected prompt: {text[:80]}")

    server = KeyedChatServer().start()
    server.responder = respond
    yield server
    server.stop()


def test_teacher_example_keeps_repaired_items_and_exports_them(
    tmp_path: Path, seeds: dict[str, bytes], teacher: KeyedChatServer
) -> None:
    out = tmp_path / "mine"
    proc = run_example(
        "teacher_dataset.py", "--seeds", str(tmp_path / "my_figures"), "--out", str(out),
        "--model", "teacher", "--max-attempts", "2",
        env={"CODEPERCEPT_TEACHER_URL": teacher.url, "CODEPERCEPT_TEACHER_API_KEY": "sk-test"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    assert lines[0] == "3 seed images"
    assert "items: 2 kept of 3 planned" in proc.stdout
    [dropped] = [line for line in lines if line.startswith("dropped")]
    assert "triangle.png: render failed: syntax_error after 2 attempts" in dropped
    kept = sorted(line for line in lines if line.startswith("kept"))
    assert len(kept) == 2
    assert "circle.png (1 render)" in kept[0] and "square.jpg (2 renders)" in kept[1]
    # every program went through the endpoint model named on the command line
    assert {p["model"] for p in teacher.requests} == {"teacher"}
    assert set(teacher.auth) == {"Bearer sk-test"}  # the key from the environment, as a bearer header

    # R1: one verl row per kept item, the (repaired) program as ground truth, the sandbox render as the image
    exports = out / "exports"
    rows = pq.read_table(exports / "r1" / "train.parquet").to_pylist()
    assert sorted(r["reward_model"]["ground_truth"] for r in rows) == sorted([CIRCLE, SQUARE])
    for r in rows:
        assert Image.open(io.BytesIO(r["images"][0]["bytes"])).size[0] > 100  # a real render, not empty
        assert r["extra_info"]["source"] == "reproduce" and "<image>" in r["prompt"][0]["content"]
    # S1: a caption record and a code record per item, images resolvable relative to the JSONL
    records = [json.loads(line) for line in (exports / "s1" / "train.jsonl").read_text().splitlines()]
    assert sorted(r["task"] for r in records) == ["caption", "caption", "code", "code"]
    for r in records:
        assert (exports / "s1" / r["images"][0]).resolve().is_file()
        assert r["messages"][-1]["content"].strip()
    codes = [r["messages"][-1]["content"] for r in records if r["task"] == "code"]
    assert any("plt.Rectangle" in c for c in codes) and not any("Rectangel" in c for c in codes)
    assert "splits: train=2, validation=0, test=0" in proc.stdout


def test_teacher_example_bad_input_is_one_line(tmp_path: Path, teacher: KeyedChatServer) -> None:
    proc = run_example(
        "teacher_dataset.py", "--seeds", str(tmp_path / "absent"), "--out", str(tmp_path / "o"),
        "--endpoint", teacher.url, "--model", "teacher",
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"error: seed image {tmp_path / 'absent'}: no such file or directory"
    ]
    assert teacher.requests == []
