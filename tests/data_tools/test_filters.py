"""Filters on real renders: blank images, executability, near-duplicates, and the R1 difficulty band with real
sandboxed scoring (and an OpenAI-endpoint policy over real HTTP)."""

from __future__ import annotations

import base64
import dataclasses
import io
import re

import pytest
from PIL import Image

from data_tools.dedup import code_hash, hamming, image_phash, near_duplicate_groups
from data_tools.filters import blank, blank_reason, dedup, difficulty_filter, executable
from data_tools.generators import generate
from data_tools.policy import OpenAIPolicy, Policy, PolicyPrompt
from data_tools.store import Item
from data_tools.teacher.client import ChatClient
from reward_servers.pool import RewardPool
from tests.data_tools.conftest import message_images


def _item(prog_id: str, code: str, family: str = "shapes") -> Item:
    return Item(id=prog_id, family=family, seed=0, code=code, caption="", image=f"images/{prog_id}.png")


def _png(size=(64, 64), colour="white") -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, colour).save(buf, format="PNG")
    return buf.getvalue()


WHITE_ON_WHITE = (
    "import matplotlib.pyplot as plt\nfig, ax = plt.subplots()\nax.axis('off')\n"
    "ax.add_patch(plt.Rectangle((0.2, 0.2), 0.5, 0.5, color='white'))\n"
)


def test_blank_reason(renderer):
    res = renderer.render(WHITE_ON_WHITE)
    assert res.status == "ok" and blank_reason(res.png) == "blank"
    assert blank_reason(renderer.render(generate("shapes", 0).code).png) is None
    assert blank_reason(_png((8, 300))) == "tiny 8x300"
    assert blank_reason(b"GIF89a not a png").startswith("undecodable")
    assert blank_reason(None) == "missing"
    report = blank([_item("a", ""), _item("b", "")], [_png(), renderer.render(generate("bars", 1).code).png])
    assert [it.id for it in report.kept] == ["b"] and report.removed == {"a": "blank"}


def test_executable_keeps_only_programs_that_render(renderer):
    items = [
        _item("good", generate("shapes", 3).code),
        _item("raises", "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nraise ValueError('boom')\n"),
        _item("blank", WHITE_ON_WHITE),
    ]
    report = executable(items, renderer)
    assert [it.id for it in report.kept] == ["good"]
    assert report.removed["raises"].startswith("re-render: exec_error") and "boom" in report.removed["raises"]
    assert report.removed["blank"] == "re-render: blank"


def test_dedup_removes_same_code_and_same_picture_but_not_recoloured_or_retexted(renderer):
    base = generate("shapes", 5).code
    reformatted = "# same program\n" + base.replace("'", '"').replace(", ", ",  ")
    resized = base.replace("figsize=(2, 2)", "figsize=(2.2, 2.2)")  # the same picture, 10 % larger
    colour = re.search(r"color='(\w+)'", base).group(1)
    recoloured = base.replace(f"'{colour}'", "'red'" if colour != "red" else "'blue'")
    other = generate("shapes", 6).code
    assert code_hash(base) == code_hash(reformatted) != code_hash(resized)
    codes = [base, reformatted, resized, recoloured, other]
    pngs = [renderer.render(c).png for c in codes]
    assert hamming(image_phash(pngs[0]), image_phash(pngs[3])) <= 4  # grayscale pHash alone would merge them
    items = [_item(i, c) for i, c in zip("abcde", codes, strict=True)]
    report = dedup(items, pngs)
    assert [it.id for it in report.kept] == ["a", "d", "e"]
    assert report.removed == {"b": "near-duplicate of a", "c": "near-duplicate of a"}
    # same layout, different drawn text: two items (the texts are facts a caption states)
    circuit = generate("physics", 0).code
    assert circuit.count("resistors = [") == 1
    retexted = re.sub(r"resistors = \[(\d+)", lambda m: f"resistors = [{int(m.group(1)) + 1}", circuit)
    two = [renderer.render(c) for c in (circuit, retexted)]
    circuit_items = [
        dataclasses.replace(_item(i, c, "physics"), trace=r.trace)
        for i, c, r in zip("xy", (circuit, retexted), two, strict=True)
    ]
    assert len(dedup(circuit_items, [r.png for r in two]).kept) == 2
    # splits group transitively by pHash: the pair stays together there
    assert near_duplicate_groups([image_phash(r.png) for r in two], [None, None]) == [[0, 1]]


class ScriptedPolicy:
    """A policy whose i-th prompt gets ``right[i]`` copies of the reference program and the rest wrong ones."""

    def __init__(self, references: list[str], wrong: str, right: list[int]) -> None:
        self.references, self.wrong, self.right = references, wrong, right

    def generate(self, prompts_with_images, n):
        return [
            [f"```python\n{self.references[i]}```"] * self.right[i]
            + [f"```python\n{self.wrong}```"] * (n - self.right[i])
            for i in range(len(prompts_with_images))
        ]


def test_difficulty_filter_keeps_the_pass_rate_band(renderer):
    progs = [generate("bars", s) for s in range(4)]
    pngs = [renderer.render(p.code).png for p in progs]
    items = [_item(f"p{i}", p.code, "bars") for i, p in enumerate(progs)]
    wrong = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0], color='black')\n"
    policy = ScriptedPolicy([p.code for p in progs], wrong, right=[8, 4, 0, 2])
    assert isinstance(policy, Policy)
    with RewardPool(workers=1) as pool:
        report = difficulty_filter(items, pngs, policy, pool, k=8, band=(0.25, 0.75), threshold=0.9)
    assert report.details == {"p0": 1.0, "p1": 0.5, "p2": 0.0, "p3": 0.25}
    assert [it.id for it in report.kept] == ["p1", "p3"]
    assert "pass rate 1.000 outside" in report.removed["p0"]
    with pytest.raises(ValueError, match="policy returned"):
        difficulty_filter(items, pngs, _Short(), pool, k=2)


class _Short:
    def generate(self, prompts_with_images, n):
        return [["x"]] * len(prompts_with_images)


def test_openai_policy_samples_over_http(chat_server):
    seen_n = []

    def respond(payload):
        seen_n.append(payload["n"])
        return ["```python\nprint(1)\n```"]  # a server that ignores "n": the policy must ask again

    chat_server.responder = respond
    png = _png(colour="red")
    with ChatClient(chat_server.url, "policy", cache_dir=None) as client:
        out = OpenAIPolicy(client, concurrency=2).generate([PolicyPrompt("<image>\nDraw it.", png)] * 2, 3)
    assert out == [["```python\nprint(1)\n```"] * 3] * 2
    assert sorted(seen_n) == [1, 1, 2, 2, 3, 3]
    payload = chat_server.requests[0]
    assert payload["temperature"] == 1.0 and payload["top_p"] == 0.85
    [url] = message_images(payload)
    assert base64.b64decode(url.split(",", 1)[1]) == png
    assert "<image>" not in str(payload["messages"])
