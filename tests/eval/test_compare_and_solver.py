"""`eval compare A B` on two real runs, `eval report`, and the captioner-solver protocol against local servers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from codepercept_rl.eval.caption_solver import answers_match, extract_prediction
from codepercept_rl.jobs.eval import main
from tests.eval.conftest import Bench, fenced
from tests.eval.openai_server import CannedServer, png_key


def test_compare_two_runs(judged_run, bench: Bench, reward_url: str, tmp_path: Path, capsys) -> None:
    run_a, _ = judged_run
    run_b = tmp_path / "all_correct"
    by_key = {png_key(p): i for i, p in bench.pngs.items()}
    with CannedServer(lambda body, key, n: (200, fenced(bench.codes[by_key[key]]))) as server:
        rc = main(
            [
                "--endpoint", server.base_url, "--model-name", "perfect", "--bench", str(bench.dir),
                "--out", str(run_b), "--reward-url", reward_url, "--n-boot", "50",
            ]
        )  # fmt: skip
    assert rc == 0
    capsys.readouterr()
    assert main(["compare", str(run_a), str(run_b), "--out", str(tmp_path), "--n-boot", "300"]) == 0
    cmp = json.loads((tmp_path / "compare.json").read_text())
    # Common scored items with a defined per-item Final: 8 (bad_ref has no Code score, bad_item is left out).
    # B fixes broken, prose, err500 and hang (0 -> 100 each) and ties on the 4 items A already got right.
    assert (cmp["n_common"], cmp["wins"], cmp["ties"], cmp["losses"]) == (8, 4, 4, 0)
    assert cmp["mean_diff"] == pytest.approx(50.0, abs=1e-4)
    lo, hi = cmp["ci"]
    assert 0 < lo <= 50.0 <= hi <= 100
    printed = capsys.readouterr().out
    assert "| 4 | 4 | 0 |" in printed and (tmp_path / "compare.md").read_text() == printed.rstrip("\n") + "\n"


def test_report_rebuilds_from_results(judged_run, tmp_path: Path) -> None:
    run_a, _ = judged_run
    before = json.loads((run_a / "summary.json").read_text())
    (run_a / "summary.json").unlink()
    assert main(["report", str(run_a), "--n-boot", "200"]) == 0
    after = json.loads((run_a / "summary.json").read_text())
    assert after["overall"] == before["overall"]  # same seed, same records: the same numbers and CIs


@pytest.mark.parametrize(
    ("pred", "gold", "choices", "ok"),
    [
        ("B", "B", ["1", "2"], True),
        ("(b).", "B", ["1", "2"], True),
        ("2", "B", ["1", "2"], True),  # the option's text counts as its letter
        ("A", "B", ["1", "2"], False),
        ("3.001", "3", None, True),
        ("3.2", "3", None, False),
        ("$\\frac{1}{2}$", "\\frac{1}{2}", None, True),
        (None, "1", None, False),
    ],
)
def test_answers_match(pred: str | None, gold: str, choices: list[str] | None, ok: bool) -> None:
    assert answers_match(pred, gold, choices) is ok


def test_extract_prediction() -> None:
    assert extract_prediction("Reasoning.\nAnswer: (C)") == "(C)"
    assert extract_prediction("so the answer is: 42") == "42"
    assert extract_prediction("just 7") == "just 7"
    assert extract_prediction("") is None


def test_caption_solver_protocol(render_pool, tmp_path: Path) -> None:
    from tests.eval.conftest import write_bench

    spec = {"q_red": ("square", "#ff0000", "colour"), "q_blue": ("circle", "#0000ff", "colour"),
            "q_bars": ("bars", "#00aa00", "count"), "q_fail": ("dots", "#00cccc", "count")}  # fmt: skip
    bench = write_bench(tmp_path / "qa", render_pool, spec)
    rows = [json.loads(x) for x in (bench.dir / "bench.jsonl").read_text().splitlines()]
    qa = {
        "q_red": ("What colour is the square?", "A", ["red", "blue"]),
        "q_blue": ("What colour is the disc?", "B", ["red", "blue"]),
        "q_bars": ("How many bars are there?", "3", None),
        "q_fail": ("How many dots?", "4", None),
    }
    for row in rows:
        row["question"], row["answer"], row["choices"] = qa[row["id"]]
    (bench.dir / "bench.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    captions = {
        png_key(bench.pngs["q_red"]): "A red square on white axes.",
        png_key(bench.pngs["q_blue"]): "A red disc.",  # a wrong caption: the solver will be wrong
        png_key(bench.pngs["q_bars"]): "Three green bars of heights 0.3, 0.9 and 0.6.",
    }

    def captioner(body: dict, key: str, n: int) -> tuple[int, str]:
        return (200, captions[key]) if key in captions else (500, "captioner down for this one")

    def solver(body: dict, key: str, n: int) -> tuple[int, str]:
        assert all(isinstance(m["content"], str) for m in body["messages"])  # text only: no image reaches it
        prompt = body["messages"][-1]["content"]
        if "How many bars" in prompt:
            return 200, "I count them.\nAnswer: 3"
        return 200, "Answer: A" if "red" in prompt.split("Question:")[0] else "Answer: B"

    with CannedServer(captioner) as cap, CannedServer(solver) as sol:
        rc = main(
            [
                "solve", "--endpoint", cap.base_url, "--model-name", "captioner", "--bench", str(bench.dir),
                "--out", str(tmp_path / "out"), "--solver-endpoint", sol.base_url, "--solver-model", "solver",
                "--retries", "1", "--backoff", "0.01", "--n-boot", "200",
            ]
        )  # fmt: skip
        assert rc == 0
        assert len(sol.log) == 3  # no solver call for the item whose caption failed
    summary = json.loads((tmp_path / "out" / "caption_solver_summary.json").read_text())
    # q_red right, q_blue wrong (bad caption), q_bars right, q_fail: caption failed -> counted wrong.
    assert summary["n"] == 4 and summary["accuracy"] == pytest.approx(50.0)
    assert summary["status_counts"] == {"correct": 2, "wrong": 1, "caption_error": 1}
    assert summary["by_category"] == {
        "colour": {"n": 2, "accuracy": 50.0},
        "count": {"n": 2, "accuracy": 50.0},
    }
    records = [json.loads(x) for x in (tmp_path / "out" / "caption_solver.jsonl").read_text().splitlines()]
    assert {r["id"]: r["prediction"] for r in records}["q_bars"] == "3"
