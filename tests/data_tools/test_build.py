"""``data build`` as a user runs it: parallel sandbox renders, summary, layout, resume after a kill, bad input,
a full disk mid-shard; and ``data show``."""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from data_tools.build import BuildSpec, plan_item
from data_tools.captions import verify_caption
from data_tools.store import Dataset
from tests.data_tools.conftest import REPO, message_images, run_data_cli


def _ids_in_shards(root: Path) -> list[str]:
    return [
        json.loads(line)["id"] for p in sorted((root / "items").glob("shard-*.jsonl")) for line in p.open()
    ]


def test_build_two_workers_summary_layout_and_captions(tmp_path):
    out = tmp_path / "ds"
    proc = run_data_cli(
        "build", "--families", "mini,function_plot", "--num", "9", "--out", str(out),
        "--workers", "2", "--shard-size", "4", "--seed", "3",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "exec rate 100.0%" in proc.stdout and "diversity: unique code" in proc.stdout
    for family in ("shapes", "bars", "function_plot"):
        assert f"  {family:<18} 3" in proc.stdout
    assert "data build" in proc.stderr  # the tqdm progress bar
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["spec"]["families"] == ["shapes", "bars", "function_plot"]
    assert manifest["summary"]["planned"] == 9 and manifest["summary"]["rendered"] == 9
    assert sorted(p.name for p in (out / "items").glob("*.jsonl")) == [
        f"shard-0000{i}.jsonl" for i in range(3)
    ]
    items = Dataset(out).load_items()
    assert [it.id for it in items] == [
        plan_item(BuildSpec(["mini", "function_plot"], 9, 3, 4), i)[2] for i in range(9)
    ]
    for it in items:
        with Image.open(out / it.image) as im:
            assert im.size == (200, 200) if it.family in ("shapes", "bars") else im.size == (600, 400)
        assert verify_caption(it.caption, it.trace, it.subject).dropped == []


def test_killed_build_resumes_without_duplicates_or_losses(tmp_path):
    out = tmp_path / "ds"
    args = [
        "build",
        "--families",
        "shapes",
        "--num",
        "12",
        "--out",
        str(out),
        "--shard-size",
        "3",
        "--no-progress",
    ]
    proc = subprocess.Popen([sys.executable, "-m", "codepercept_rl.data_cli", *args], cwd=REPO)
    first = out / "items" / "shard-00000.jsonl"
    deadline = time.monotonic() + 120
    while not first.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert first.exists(), "the first shard never appeared"
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the worst case for the on-disk state
    proc.wait()
    assert not (out / "items" / "shard-00003.jsonl").exists(), "the build finished before it was killed"
    kept_before = first.read_bytes()
    done_before = len(list((out / "items").glob("*.jsonl")))

    rerun = run_data_cli(*args)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f"({done_before} finished shards skipped)" in rerun.stdout
    assert first.read_bytes() == kept_before  # finished shards are not redone
    ids = _ids_in_shards(out)
    assert sorted(ids) == sorted(plan_item(BuildSpec(["shapes"], 12, 0, 3), i)[2] for i in range(12))
    assert len(set(ids)) == 12
    assert len(list((out / "images").glob("*.png"))) == 12
    assert not list(out.rglob("*.tmp"))


def test_bad_input_one_line_exit_2(tmp_path):
    proc = run_data_cli("build", "--families", "hexagons", "--num", "2", "--out", str(tmp_path / "a"))
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "unknown family 'hexagons'" in proc.stderr
    assert "Traceback" not in proc.stderr

    out = tmp_path / "b"
    assert (
        run_data_cli(
            "build", "--families", "bars", "--num", "2", "--out", str(out), "--no-progress"
        ).returncode
        == 0
    )
    other = run_data_cli("build", "--families", "bars", "--num", "3", "--out", str(out), "--no-progress")
    assert other.returncode == 2 and "holds a different build" in other.stderr

    show = run_data_cli("show", str(tmp_path / "nothing"))
    assert show.returncode == 2 and "no dataset here" in show.stderr


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m")
def test_full_disk_mid_shard_keeps_only_whole_shards(tmp_path):
    """A 96 KiB tmpfs fills up after a few shards: exit 2, one line, every shard on disk complete, no temp files."""
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    script = (
        f"mount -t tmpfs -o size=96k tmpfs {mnt} || exit 99; "
        f"{sys.executable} -m codepercept_rl.data_cli build --families shapes --num 60 --shard-size 3 "
        f"--out {mnt}/ds --no-progress; rc=$?; cp -a {mnt}/ds {copy}; exit $rc"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=REPO, timeout=300
    )
    if proc.returncode == 99:
        pytest.skip(f"cannot mount tmpfs here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "disk full" in err[0] and "rerun the same command to resume" in err[0]
    shards = sorted((copy / "items").glob("shard-*.jsonl"))
    assert 1 <= len(shards) < 20
    for shard in shards:
        lines = shard.read_text().splitlines()
        assert len(lines) == 3
        for line in lines:
            assert (copy / json.loads(line)["image"]).stat().st_size > 0
    assert not list(copy.rglob("*.tmp"))


def test_show_writes_a_contact_sheet(tmp_path):
    out = tmp_path / "ds"
    assert (
        run_data_cli(
            "build", "--families", "mini", "--num", "4", "--out", str(out), "--no-progress"
        ).returncode
        == 0
    )
    proc = run_data_cli("show", str(out), "--n", "4", "--columns", "2")
    assert proc.returncode == 0, proc.stderr
    sheet = Path(proc.stdout.strip())
    assert sheet == out / "contact_sheet.png"
    with Image.open(sheet) as im:
        assert im.width == 600 and im.height > 600
        # the tiles are not empty: plenty of non-white pixels (images and caption text)
        assert sum(1 for p in im.convert("L").getdata() if p < 200) > 2000


def test_filter_cli_blank_dedup_exec_and_difficulty(tmp_path, chat_server):
    src, dst = tmp_path / "src", tmp_path / "dst"
    assert (
        run_data_cli(
            "build", "--families", "bars", "--num", "4", "--out", str(src), "--no-progress"
        ).returncode
        == 0
    )
    items = Dataset(src).load_items()
    code_by_image = {
        "data:image/png;base64," + base64.b64encode((src / it.image).read_bytes()).decode(): it.code
        for it in items
    }
    right = {it.code: n for it, n in zip(items, [4, 0, 2, 4], strict=True)}  # correct samples out of 4
    wrong = "import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0], color='black')\n"

    def policy(payload):  # the policy endpoint: right[item] correct programs, the rest a wrong one
        code = code_by_image[message_images(payload)[0]]
        return [f"```python\n{code}```"] * right[code] + [f"```python\n{wrong}```"] * (
            payload["n"] - right[code]
        )

    chat_server.responder = policy
    proc = run_data_cli(
        "filter", str(src), "--out", str(dst), "--blank", "--dedup", "--exec", "--difficulty",
        "--policy-url", chat_server.url, "--k", "4", "--band", "0.25", "0.75",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "blank: kept 4 of 4" in proc.stdout and "exec: kept 4 of 4" in proc.stdout
    assert "difficulty: kept 1 of 4" in proc.stdout
    [kept] = Dataset(dst).load_items()
    assert kept.id == items[2].id and (dst / kept.image).read_bytes() == (src / items[2].image).read_bytes()
    removed = json.loads((dst / "manifest.json").read_text())["removed"]
    assert removed[items[0].id] == "difficulty: pass rate 1.000 outside [0.25, 0.75]"
    assert len(chat_server.requests) == 4

    again = run_data_cli("filter", str(src), "--out", str(dst), "--blank")
    assert again.returncode == 2 and "must be a new directory" in again.stderr
