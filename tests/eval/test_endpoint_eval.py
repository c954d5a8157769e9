"""End to end through `codepercept-rl eval` against a real local OpenAI-compatible server, with a judge.

Scripted answers per item: correct code, broken code, prose without code, HTTP 500 forever, code that hangs,
a 500 then correct code; plus bench problems (missing image with a working reference, broken reference,
neither). Scores are checked against hand-computed values.
"""

from __future__ import annotations

import json

import pytest

from codepercept_rl.errors import UserError
from codepercept_rl.eval.results import read_results
from codepercept_rl.eval.stats import paper_final
from codepercept_rl.jobs.eval import main
from tests.eval.conftest import Bench
from tests.eval.openai_server import CannedServer
from tests.eval.scripted import CODE_JUDGE, IMAGE_JUDGE, run_cli, scripted


def test_every_item_recorded_with_its_outcome(judged_run) -> None:
    out, _ = judged_run
    records = read_results(out)
    status = {i: r["status"] for i, r in records.items()}
    assert status == {
        "good1": "ok",
        "good2": "ok",
        "broken": "exec_error",
        "prose": "no_code",
        "err500": "api_error",
        "hang": "timeout",
        "retry_ok": "ok",
        "from_ref": "ok",
        "bad_ref": "ok",
        "bad_item": "bad_item",
    }
    assert "boom" in records["broken"]["error"]
    assert "HTTP 500" in records["err500"]["error"] and records["err500"]["generation"]["attempts"] == 2
    assert records["retry_ok"]["generation"]["attempts"] == 2
    assert records["from_ref"]["reference"]["target_from_reference"] is True
    assert any("reference code failed" in p for p in records["bad_ref"]["reference"]["problems"])
    assert "image file not found" in records["bad_item"]["error"]


def test_per_item_scores_match_hand_computed(judged_run) -> None:
    out, _ = judged_run
    records = read_results(out)
    for item in ("good1", "good2", "retry_ok", "from_ref"):
        s = records[item]["scores"]
        assert s["exec"] == 100.0
        assert s["image"] == pytest.approx(
            100.0, abs=1e-6
        )  # identical render -> SSIM, edge, pixel all perfect
        assert s["code"] == pytest.approx(100.0, abs=1e-6)  # identical trace -> every trace F1 is 1
        assert (s["image_judge"], s["code_judge"]) == (IMAGE_JUDGE, CODE_JUDGE)
    s = records["bad_ref"]["scores"]
    assert (s["exec"], s["code"], s["code_judge"]) == (100.0, None, None)
    assert s["image"] == pytest.approx(100.0, abs=1e-6)
    for item in ("broken", "hang"):  # code exists: the code judge is still asked, the image judge is not
        assert records[item]["scores"] == {"exec": 0.0, "image": 0.0, "code": 0.0, "image_judge": 0.0,
                                           "code_judge": CODE_JUDGE}  # fmt: skip
    for item in ("prose", "err500"):
        assert set(records[item]["scores"].values()) == {0.0}


def test_summary_matches_hand_computed(judged_run) -> None:
    out, _ = judged_run
    summary = json.loads((out / "summary.json").read_text())
    o = summary["overall"]
    assert summary["n_items"] == 10 and summary["n_bad_items"] == 1 and o["n"] == 9
    # 5 of the 9 scored items render, each a perfect copy; Code is defined on 8 (bad_ref has no reference).
    exec_rate, image, code = 500 / 9, 500 / 9, 400 / 8
    image_judge, code_judge = 5 * IMAGE_JUDGE / 9, 6 * CODE_JUDGE / 8
    got = o["scores"]
    assert got["exec"] == pytest.approx(exec_rate)
    assert got["image"] == pytest.approx(image, abs=1e-5)
    assert got["code"] == pytest.approx(code, abs=1e-5)
    assert got["image_judge"] == pytest.approx(image_judge)
    assert got["code_judge"] == pytest.approx(code_judge)
    assert got["final_det"] == pytest.approx((image + code + exec_rate) / 3, abs=1e-5)
    assert got["final"] == pytest.approx(paper_final(image_judge, code_judge, exec_rate))
    assert o["defined"]["code"] == 8 and o["defined"]["exec"] == 9
    lo, hi = o["ci"]["final"]
    assert lo <= got["final"] <= hi and hi - lo > 1.0
    assert summary["status_counts"] == {
        "ok": 5, "exec_error": 1, "no_code": 1, "api_error": 1, "timeout": 1, "bad_item": 1
    }  # fmt: skip
    # The released script's counting drops prose (no code) and err500 (API failure) from Image and Code.
    released = summary["as_released"]
    assert released["dropped"] == 2
    assert released["scores"]["image"] == pytest.approx(500 / 7, abs=1e-5)
    assert released["scores"]["code"] == pytest.approx(400 / 6, abs=1e-5)
    assert released["scores"]["exec"] == pytest.approx(exec_rate)
    geometry = summary["by_category"]["geometry"]
    # geometry scored items: good1, good2, err500, from_ref, bad_ref -> 4 of 5 render.
    assert geometry["n"] == 5 and geometry["scores"]["exec"] == pytest.approx(80.0)


def test_report_files_and_counts(judged_run) -> None:
    out, _ = judged_run
    report = (out / "report.md").read_text()
    assert "| api_error | 1 |" in report and "| no_code | 1 |" in report and "| timeout | 1 |" in report
    assert "bad bench items left out" in report and "| as released‡ |" in report
    assert (out / "summary.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "gallery.html").read_text()
    assert page.count('class="card ') == 10
    assert "raise ValueError(&#x27;boom&#x27;)" in page  # model code is escaped, never raw HTML
    for rec in read_results(out).values():
        for rel in rec["files"].values():
            if rel:
                assert (out / rel).is_file()
    summary = json.loads((out / "summary.json").read_text())
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["eval/final"] == pytest.approx(summary["overall"]["scores"]["final"])
    assert len(list((out / "tables" / "samples").glob("*.png"))) == 9 + 5  # 9 references, 5 renders


def test_resume_with_nothing_left_asks_nothing(judged_run, bench: Bench, reward_url: str) -> None:
    out, _ = judged_run
    before = (out / "results.jsonl").read_bytes()
    with CannedServer(scripted(bench)) as server:
        judge = ("--judge-url", server.base_url, "--judge-model", "judge")
        assert run_cli(server, bench, out, *judge, "--reward-url", reward_url) == 0
        assert server.log == []
    assert (out / "results.jsonl").read_bytes() == before


def test_changed_settings_are_refused_on_resume(judged_run, bench: Bench) -> None:
    out, _ = judged_run
    with CannedServer(scripted(bench)) as server, pytest.raises(UserError, match="temperature"):
        run_cli(server, bench, out, "--judge-url", server.base_url, "--judge-model", "judge",
                "--temperature", "0.7")  # fmt: skip


def test_endpoint_down_records_api_errors_and_completes(bench: Bench, reward_url: str, tmp_path) -> None:
    out = tmp_path / "down"
    rc = main(
        [
            "--endpoint", "http://127.0.0.1:9/v1", "--model-name", "m", "--bench", str(bench.dir),
            "--out", str(out), "--retries", "1", "--backoff", "0.01", "--reward-url", reward_url,
            "--n-boot", "50", "--limit", "3",
        ]
    )  # fmt: skip
    assert rc == 0
    records = read_results(out)
    assert [r["status"] for r in records.values()] == ["api_error"] * 3
    assert all("ConnectError" in r["error"] for r in records.values())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["overall"]["scores"]["final_det"] == 0.0
