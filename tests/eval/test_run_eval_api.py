"""``run_eval`` as a library call: an injected judge that fails, a judge endpoint that is down, the report."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from codepercept_rl.config.schema import JudgeConfig
from codepercept_rl.eval import OpenAIGenerator, run_eval, write_report
from codepercept_rl.eval.bench import BenchItem, load_bench
from codepercept_rl.eval.generate import Generation
from codepercept_rl.eval.judges import JudgeResult, LLMItemJudge
from codepercept_rl.eval.results import read_results
from codepercept_rl.rollout.types import SamplingParams
from tests.eval.conftest import Bench, fenced
from tests.eval.openai_server import CannedServer, png_key


class HalfJudge:
    """An injected judge: scores images 0.5, cannot judge code (as if its endpoint kept failing)."""

    def __init__(self) -> None:
        self.image_calls = 0

    async def score_image(self, reference_png: bytes, render_png: bytes) -> JudgeResult:
        self.image_calls += 1
        assert reference_png.startswith(b"\x89PNG") and render_png.startswith(b"\x89PNG")
        return JudgeResult(0.5)

    async def score_code(self, reference_code: str, code: str) -> JudgeResult:
        return JudgeResult(None, "code judge unavailable")


def evaluate(bench: Bench, pool, out: Path, judge) -> dict:
    items = [it for it in load_bench(bench.dir) if it.id in ("good1", "good2", "prose")]
    by_key = {png_key(p): i for i, p in bench.pngs.items()}

    def respond(body: dict, key: str, n: int) -> tuple[int, str]:
        item = by_key[key]
        return 200, "no code here" if item == "prose" else fenced(bench.codes[item])

    with CannedServer(respond) as server:
        gen = OpenAIGenerator(server.base_url, "m", SamplingParams(max_tokens=64))
        stats = asyncio.run(run_eval(items, gen, pool, out, judge=judge))
    write_report(out, n_boot=100)
    return stats


def test_injected_judge_failures_are_counted_not_zeroed(bench: Bench, render_pool, tmp_path: Path) -> None:
    judge = HalfJudge()
    stats = evaluate(bench, render_pool, tmp_path, judge)
    assert stats["written"] == 3 and stats["skipped"] == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    o = summary["overall"]
    assert judge.image_calls == 2  # only renders are shown to the image judge
    assert o["scores"]["image_judge"] == (50 + 50 + 0) / 3
    # Code judge failed on the two items with code: they are left out; prose (no code) is a defined 0.
    assert o["defined"]["code_judge"] == 1 and o["scores"]["code_judge"] == 0.0
    assert summary["judge_failures"] == {"code": 2}
    assert (
        "judge failures after retries (left out of the judge's mean): image 0, code 2"
        in (tmp_path / "report.md").read_text()
    )


def test_llm_judge_endpoint_down(bench: Bench, render_pool, tmp_path: Path) -> None:
    down = JudgeConfig(base_url="http://127.0.0.1:9/v1", model="judge", max_retries=0, timeout_s=5)
    evaluate(bench, render_pool, tmp_path, LLMItemJudge(down))
    records = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    good = [r for r in records if r["status"] == "ok"]
    assert len(good) == 2
    for r in good:
        assert (
            r["scores"]["image_judge"] is None
            and "judge failed after 1 attempts" in r["judge"]["image_error"]
        )
        assert r["scores"]["exec"] == 100.0  # deterministic scores are unaffected


class EchoReference:
    """A generator that answers every request with one fixed completion (the thing under test is the harness)."""

    name = "echo"

    def __init__(self, text: str) -> None:
        self.text = text
        self.keys: list[str] = []

    async def generate(self, requests):
        for i, r in enumerate(requests):
            self.keys.append(r.key)
            yield i, Generation(self.text)


def test_corrupt_images_fall_back_to_the_reference_or_are_bad_items(
    bench: Bench, render_pool, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n but not really")
    items = [
        BenchItem("stand_in", corrupt, bench.codes["good1"]),
        BenchItem("hopeless", corrupt, None),
    ]
    gen = EchoReference(fenced(bench.codes["good1"]))
    stats = asyncio.run(run_eval(items, gen, render_pool, tmp_path / "out"))
    records = read_results(tmp_path / "out")
    assert gen.keys == ["stand_in"] and stats["generated"] == 1  # the bad item never reaches the model
    assert records["stand_in"]["status"] == "ok" and records["stand_in"]["reference"]["target_from_reference"]
    assert records["stand_in"]["scores"]["image"] == pytest.approx(100.0, abs=1e-6)
    assert any("image does not decode" in p for p in records["stand_in"]["reference"]["problems"])
    assert (
        records["hopeless"]["status"] == "bad_item"
        and "image does not decode" in records["hopeless"]["error"]
    )
