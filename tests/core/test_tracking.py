"""The Tracker: console lines, metrics.jsonl, W&B offline, and the plot command, on a real short job."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from codepercept_rl.plotting import plot_run
from codepercept_rl.tracking import Tracker, read_metrics


def _short_job(run_dir, backends, stream, steps=12, **kw):
    """A real (tiny) optimisation: fit y = 3x + 1 by gradient descent, tracked every step."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=256)
    y = 3 * x + 1
    w, b = 0.0, 0.0
    with Tracker(
        run_dir, experiment="fit-line", backends=backends, config={"lr": 0.1}, stream=stream, **kw
    ) as t:
        for step in range(steps):
            err = w * x + b - y
            loss = float(np.mean(err**2))
            w -= 0.1 * float(np.mean(2 * err * x))
            b -= 0.1 * float(np.mean(2 * err))
            t.log(
                {"train/loss": loss, "train/w": w, "timing_s/step": 0.01, "train/nan": float("nan")},
                step=step,
            )
        t.log_table("samples", ["name", "image"], [["red", Image.new("RGB", (8, 8), "red")]], step=steps - 1)
        t.summary({"final_loss": loss})
    return loss


def test_jsonl_console_and_plot(tmp_path):
    stream = io.StringIO()
    final = _short_job(tmp_path, ["console", "jsonl"], stream)
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(12))
    losses = [r["train/loss"] for r in records]
    assert losses[-1] < losses[0] / 10  # the job really optimised
    assert losses[-1] == pytest.approx(final)
    assert records[0]["train/nan"] is None  # non-finite values are stored as null, never as invalid JSON
    lines = stream.getvalue().splitlines()
    assert len(lines) == 12 and lines[3].startswith("step 3 | train/loss ")
    assert json.loads((tmp_path / "config.json").read_text()) == {"lr": 0.1}
    assert json.loads((tmp_path / "summary.json").read_text())["final_loss"] == pytest.approx(final)
    table = json.loads((tmp_path / "tables" / "samples" / "rows.jsonl").read_text().splitlines()[0])
    img_path = tmp_path / table["rows"][0][1]["image"]
    assert Image.open(img_path).getpixel((0, 0)) == (255, 0, 0)

    pngs = plot_run(tmp_path)
    names = sorted(p.name for p in pngs)
    assert names == ["timing_s.png", "train.png"]
    img = np.asarray(Image.open(tmp_path / "plots" / "train.png").convert("L"))
    assert img.shape[0] > 100 and img.std() > 5  # a drawn figure, not a blank canvas


def test_resume_appends_and_last_record_wins(tmp_path):
    with Tracker(tmp_path, backends=["jsonl"]) as t:
        for s in range(5):
            t.log({"x": float(s)}, step=s)
    # A resumed job re-logs steps 3 and 4 with new values, then goes on.
    with Tracker(tmp_path, backends=["jsonl"]) as t:
        for s in range(3, 7):
            t.log({"x": float(10 * s)}, step=s)
    # A job killed mid-write leaves a torn line; readers skip it.
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "x": 1')
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == list(range(7))
    assert [r["x"] for r in records] == [0, 1, 2, 30, 40, 50, 60]


def test_wandb_offline_without_key(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    stream = io.StringIO()
    with Tracker(tmp_path, experiment="offline", backends=["jsonl", "wandb"], stream=stream) as t:
        assert t.wandb_mode_used == "offline"
        for s in range(3):
            t.log({"train/loss": 1.0 / (s + 1)}, step=s)
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
    assert len(read_metrics(tmp_path)) == 3


def test_plot_cli_errors_and_output(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "codepercept_rl.cli", "plot", str(empty)], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "no metrics.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    run = tmp_path / "run"
    with Tracker(run, backends=["jsonl"]) as t:
        for s in range(30):
            t.log({"actor/pg_loss": math.sin(s / 3.0), "critic/score/mean": s / 30}, step=s)
    proc = subprocess.run(
        [sys.executable, "-m", "codepercept_rl.cli", "plot", str(run), "--keys", "actor/"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("actor.png")
    assert not (run / "plots" / "critic.png").exists()


def test_unknown_backend_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown tracking backend"):
        Tracker(tmp_path, backends=["tensorboard"])
