"""The S1 job end to end: kill -9 and resume, learning + sandboxed generation check (split over two gloo ranks),
masked rows, refused set-ups."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from codepercept_rl.errors import UserError
from codepercept_rl.jobs.sft import main
from codepercept_rl.tracking import read_metrics

# tests/jobs is not a package, so these small helpers are here rather than imported from tests/learner.


def render_png(height: float) -> bytes:
    """A small bar chart as PNG bytes (trusted test code, rendered in this process)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1, 1), dpi=64)
    ax.bar(["a", "b"], [1.0, height])
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def row(row_id: str, task: str, image: str, answer: str) -> dict:
    """An S1 row with one image and one assistant reply."""
    messages = [{"role": "user", "content": "<image>Draw this."}, {"role": "assistant", "content": answer}]
    return {"id": row_id, "task": task, "images": [image], "messages": messages}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    """Writes rows as JSON lines."""
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "s1_tiny_cpu.yaml"


def s1_files(folder: Path, n_train: int = 16, n_val: int = 4) -> tuple[Path, Path]:
    """A small S1 export with both tasks, images rendered here (trusted test code)."""
    rows = []
    for i in range(n_train + n_val):
        (folder / f"{i}.png").write_bytes(render_png(1.0 + i % 5))
        if i % 2:
            rows.append(row(f"r{i}", "caption", f"{i}.png", f"Two bars, the second {1 + i % 5} high."))
        else:
            code = f"import matplotlib.pyplot as plt\nplt.bar(['a', 'b'], [1, {1 + i % 5}])\n"
            rows.append(row(f"r{i}", "code", f"{i}.png", f"```python\n{code}```"))
    return write_jsonl(folder / "train.jsonl", rows[:n_train]), write_jsonl(
        folder / "val.jsonl", rows[n_train:]
    )


def overrides(train: Path, val: Path, run_root: Path, steps: int) -> list[str]:
    return [
        f"data.train_files=[{train}]", f"data.val_files=[{val}]", f"trainer.default_local_dir={run_root}",
        "trainer.experiment_name=t", "model.tiny_preset=nano", f"trainer.total_training_steps={steps}",
        "trainer.save_freq=2", "trainer.test_freq=-1", "data.train_batch_size=4",
        "actor.ppo_micro_batch_size_per_device=2", "sft.gen_num_samples=0", "sft.export_hf=false",
        "tracking.backends=[jsonl]",
    ]  # fmt: skip


def launch(args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "codepercept_rl.jobs.sft", str(RECIPE), *args], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.timeout(300)
def test_kill_9_mid_run_then_resume_reproduces_the_uninterrupted_losses(tmp_path: Path) -> None:
    train, val = s1_files(tmp_path)
    steps = 12
    full = launch(overrides(train, val, tmp_path / "full", steps))
    victim = launch(overrides(train, val, tmp_path / "killed", steps))
    ckpt = tmp_path / "killed" / "t" / "checkpoints" / "step_000002" / "meta.json"
    deadline = time.monotonic() + 200
    # Killed as soon as step 2's checkpoint is complete: before or after its metrics line, the resumed run logs
    # every step once (a step checkpointed but not logged is logged on resume).
    while not ckpt.exists() and victim.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    victim.send_signal(signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL, victim.stderr.read()[-3000:]
    assert full.wait(timeout=200) == 0, full.stderr.read()[-3000:]
    logged = [r["step"] for r in read_metrics(tmp_path / "killed" / "t")]
    assert logged and logged[-1] < steps  # it really died mid-run

    resumed = launch(overrides(train, val, tmp_path / "killed", steps))  # trainer.resume_mode=auto (default)
    _, err = resumed.communicate(timeout=200)
    assert resumed.returncode == 0, err[-3000:]
    assert "resumed from" in err
    # Step 0 holds the baseline validation only; steps 1.. the training losses.
    expected = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "full" / "t") if r["step"] > 0}
    got = {r["step"]: r["train/loss"] for r in read_metrics(tmp_path / "killed" / "t") if r["step"] > 0}
    assert sorted(got) == list(range(1, steps + 1))
    assert got == expected  # bit-exact on CPU, before and after the resume
    final_val = [r["val/loss"] for r in read_metrics(tmp_path / "killed" / "t") if "val/loss" in r]
    assert final_val == [r["val/loss"] for r in read_metrics(tmp_path / "full" / "t") if "val/loss" in r]


@pytest.mark.timeout(300)
def test_a_step_checkpointed_but_not_logged_is_logged_on_resume(tmp_path: Path) -> None:
    """The state a kill between a step's checkpoint and its metrics line leaves, made on purpose."""
    train, val = s1_files(tmp_path)
    run_dir = tmp_path / "runs" / "t"
    first = launch(overrides(train, val, tmp_path / "runs", 2))
    _, err = first.communicate(timeout=200)
    assert first.returncode == 0, err[-3000:]
    log = run_dir / "metrics.jsonl"
    step_2 = [r for r in read_metrics(run_dir) if r["step"] == 2]
    assert step_2 and (run_dir / "checkpoints" / "step_000002" / "meta.json").is_file()
    log.write_text("".join(line + "\n" for line in log.read_text().splitlines()
                           if not line.startswith('{"step": 2,')))  # fmt: skip

    resumed = launch(overrides(train, val, tmp_path / "runs", 4))
    _, err = resumed.communicate(timeout=200)
    assert resumed.returncode == 0, err[-3000:]
    assert "step 2 was checkpointed but not logged" in err
    records = {r["step"]: r for r in read_metrics(run_dir)}
    assert sorted(records) == [0, 1, 2, 3, 4]
    assert records[2]["train/loss"] == step_2[0]["train/loss"]
    assert records[2]["train/grad_norm"] == step_2[0]["train/grad_norm"]
    # Nothing is logged twice: one line per step in the file itself.
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert sorted(steps) == [0, 1, 2, 3, 4]


def test_refuses_missing_data_and_resume_without_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="S1 file not found: .*nope.jsonl"):
        main([str(RECIPE), f"data.train_files=[{tmp_path / 'nope.jsonl'}]"])
    train, val = s1_files(tmp_path, n_train=4, n_val=1)
    args = overrides(train, val, tmp_path / "runs", 2)
    with pytest.raises(UserError, match="--resume: no complete checkpoint"):
        main([str(RECIPE), *args, "--resume"])
    with pytest.raises(UserError, match="train_batch_size=8 is larger than the 4 usable"):
        main([str(RECIPE), *args, "data.train_batch_size=8"])
    (tmp_path / "runs" / "t" / "checkpoints" / "step_000005").mkdir(parents=True)
    (tmp_path / "runs" / "t" / "checkpoints" / "step_000005" / "meta.json").write_text("{}")
    with pytest.raises(UserError, match="resume_mode=disable but .* holds checkpoints of an earlier run"):
        main([str(RECIPE), *args, "trainer.resume_mode=disable"])


def test_runs_without_validation_files(tmp_path: Path) -> None:
    train, val = s1_files(tmp_path, n_train=4, n_val=1)
    args = [*overrides(train, val, tmp_path / "runs", 2), "data.val_files=[]"]
    assert main([str(RECIPE), *args]) == 0
    records = read_metrics(tmp_path / "runs" / "t")
    assert [r["step"] for r in records] == [1, 2]
    assert not any(k.startswith("val/") for r in records for k in r)
    summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert summary["val_rows"] == 0 and summary["train_rows"] == 4


@pytest.mark.timeout(300)
def test_short_run_learns_and_its_generated_code_executes_in_the_sandbox(tmp_path: Path) -> None:
    train, val = s1_files(tmp_path, n_train=24, n_val=4)
    args = overrides(train, val, tmp_path / "runs", 40)
    args += ["actor.optim.lr=5e-3", "trainer.save_freq=-1", "data.train_batch_size=8", "actor.ppo_micro_batch_size_per_device=4",
             "sft.gen_num_samples=2", "sft.gen_max_new_tokens=48", "sft.task_ratio={code: 3, caption: 1}",
             "sft.export_hf=true"]  # fmt: skip
    assert main([str(RECIPE), *args]) == 0
    records = read_metrics(tmp_path / "runs" / "t")
    first, last = records[0], records[-1]
    assert first["step"] == 0 and last["step"] == 40
    assert last["val/loss"] < 0.3 * first["val/loss"]  # markedly lower
    assert first["val/exec_rate"] == 0.0  # a random model writes no runnable code
    assert last["val/exec_rate"] == 1.0  # ... the trained one does, run by the reward pool's sandbox
    assert last["val/render_score"] > 0.0
    assert (tmp_path / "runs" / "t" / "hf" / "model.safetensors").is_file()


def _table(run_dir: Path, step: int) -> list[list]:
    """The val_generations table logged at ``step``."""
    lines = (run_dir / "tables" / "val_generations" / "rows.jsonl").read_text().splitlines()
    return next(r["rows"] for r in map(json.loads, lines) if r["step"] == step)


@pytest.mark.timeout(400)
def test_two_gloo_ranks_split_the_generation_check_and_match_one_rank(tmp_path: Path) -> None:
    from codepercept_rl.config import JobConfig, load_config
    from codepercept_rl.jobs.sft import run_rank
    from codepercept_rl.learner.actor import run_on_ranks

    train, val = s1_files(tmp_path, n_train=24, n_val=6)
    # A model that writes code (and stops), so the ranks' answers end at different steps.
    base = overrides(train, val, tmp_path / "base", 40) + [
        "actor.optim.lr=5e-3", "trainer.save_freq=-1", "data.train_batch_size=8",
        "actor.ppo_micro_batch_size_per_device=4", "sft.task_ratio={code: 3, caption: 1}", "sft.export_hf=true",
    ]  # fmt: skip
    assert main([str(RECIPE), *base]) == 0

    # Held out: 3 code rows with an image (r24, r26, r28) and 2 without: rank 0 answers r24, r28 and text-a, rank
    # 1 r26, a padding call (a repeat of r24, not counted) and text-b. Each call has an image on both ranks or on
    # neither; the two text rows' answers differ in length, so one rank finishes first and keeps stepping.
    def text_row(row_id: str, prompt: str) -> dict:
        reply = "```python\nimport matplotlib.pyplot as plt\n```"
        messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
        return {"id": row_id, "task": "code", "images": [], "messages": messages}

    rows = [json.loads(line) for line in val.read_text().splitlines()]
    texts = [text_row("text-a", "Write matplotlib code for two bars."), text_row("text-b", "Bars?")]
    write_jsonl(val, [*rows, *texts])
    args = overrides(train, val, tmp_path / "one", 1) + [
        f"model.path={tmp_path / 'base' / 't' / 'hf'}", "model.tiny_preset=null", "trainer.save_freq=-1",
        "sft.gen_num_samples=5", "sft.gen_max_new_tokens=40",
    ]  # fmt: skip
    one = load_config(RECIPE, args, schema=JobConfig)
    two = load_config(RECIPE, [*args, f"trainer.default_local_dir={tmp_path / 'two'}"], schema=JobConfig)
    summaries = run_on_ranks(run_rank, 2, two, False, ray_cfg=two.ray)
    assert [s["val_gen_rows_this_rank"] for s in summaries] == [3, 2]
    # Every rank holds the gathered results.
    assert summaries[0]["val/exec_rate"] == summaries[1]["val/exec_rate"]
    assert run_rank(one)["val_gen_rows_this_rank"] == 5  # the same run on one rank
    by_step = {}
    for name in ("one", "two"):
        records = read_metrics(tmp_path / name / "t")
        by_step[name] = {r["step"]: r for r in records if "val/gen_samples" in r}
    assert sorted(by_step["one"]) == sorted(by_step["two"]) == [0, 1]
    for step in (0, 1):
        one_m, two_m = by_step["one"][step], by_step["two"][step]
        assert one_m["val/gen_samples"] == two_m["val/gen_samples"] == 5
        assert {k for k in one_m if k.startswith("val/")} == {k for k in two_m if k.startswith("val/")}
    # The update after the step-0 check (its gathered blocks sharded again) is one rank's, up to summation order.
    assert by_step["two"][1]["val/loss"] == pytest.approx(by_step["one"][1]["val/loss"], rel=1e-5)
    # Before any update both runs hold the same weights: the sharded, lock-step answers are the plain module's.
    table_one, table_two = _table(tmp_path / "one" / "t", 0), _table(tmp_path / "two" / "t", 0)
    assert [r[0] for r in table_two] == [r[0] for r in table_one] == ["r24", "r26", "r28", "text-a", "text-b"]
    assert [r[3:] for r in table_two] == [r[3:] for r in table_one]  # score, status, completion
    assert len(table_two[3][5]) != len(table_two[4][5])  # the text rows' answers did end at different steps


def test_a_row_whose_image_does_not_decode_is_masked_and_counted(tmp_path: Path) -> None:
    from PIL import Image

    train, val = s1_files(tmp_path, n_train=4, n_val=1)
    noise = bytes((i * 7919) % 251 for i in range(64 * 64 * 3))
    Image.frombytes("RGB", (64, 64), noise).save(tmp_path / "2.png")
    data = (tmp_path / "2.png").read_bytes()
    (tmp_path / "2.png").write_bytes(data[: len(data) * 3 // 5])  # its header reads; its pixels do not
    assert main([str(RECIPE), *overrides(train, val, tmp_path / "runs", 1)]) == 0  # one step: every row built
    summary = json.loads((tmp_path / "runs" / "t" / "summary.json").read_text())
    assert summary["train_rows"] == 4 and summary["data/masked_bad_image"] == 1
    assert not any(k.startswith("data/skipped_") for k in summary)
