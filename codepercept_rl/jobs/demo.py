"""``codepercept-rl demo --out DIR``: the whole idea on one CPU machine — data -> S1 -> R1 -> evaluation.

    make demo                                      # set-up + this job into runs/demo
    codepercept-rl demo --out runs/demo [--num 400] [--s1-epochs 12] [--r1-steps 20] [--skip-r1]

Stages, each an ordinary job of this project run with its recipe and overrides (rerunning the command
resumes: a stage whose output exists is skipped):

1. ``data``: ``shapes`` and ``bars`` programs rendered in the sandbox, code-grounded captions, splits without
   near-duplicate leakage, exported as S1 JSONL and R1 parquet (``DIR/data``);
2. ``s1``: SFT of a tiny Qwen2.5-VL built offline from scratch (``recipes/s1_tiny_cpu.yaml``, ``DIR/runs/s1``);
3. ``r1``: GRPO from the S1 model through Ray actors and the sandboxed reward pool
   (``recipes/r1_tiny_cpu.yaml``, ``DIR/runs/r1``);
4. ``eval``: the untrained model, S1 and R1 on the held-out test split (``DIR/eval/<stage>``: results,
   Markdown report, HTML gallery);
5. ``report``: ``DIR/report.md`` and ``DIR/report.json`` (per stage: exec rate, mean deterministic reward with a
   bootstrap 95% CI, components), training-curve PNGs under ``DIR/plots``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codepercept_rl.errors import UserError
from codepercept_rl.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("codepercept_rl.demo")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def _stage_data(out: Path, num: int, workers: int, seed: int) -> Path:
    from data_tools.build import BuildSpec, build
    from data_tools.exports import export

    data = out / "data"
    if (data / "exports" / "r1" / "train.parquet").is_file():
        log.info("data: %s exists, skipped", data)
        return data
    summary = build(BuildSpec(families=["shapes", "bars"], num=num, seed=seed), data, workers=workers)
    log.info("data: %d items rendered in %.1fs", summary.rendered, summary.seconds)
    export(data, ["r1", "s1"], seed=seed, val_fraction=0.1, test_fraction=0.1)
    return data


def _stage_s1(out: Path, data: Path, epochs: int) -> Path:
    from codepercept_rl.jobs import sft

    hf = out / "runs" / "s1" / "hf"
    if (hf / "config.json").is_file():
        log.info("s1: %s exists, skipped", hf)
        return hf
    s1 = data / "exports" / "s1"
    sft.main([
        str(RECIPES / "s1_tiny_cpu.yaml"),
        f"trainer.default_local_dir={out / 'runs'}",
        "trainer.experiment_name=s1",
        f"trainer.total_epochs={epochs}",
        f"data.train_files=[{s1 / 'train.jsonl'}]",
        f"data.val_files=[{s1 / 'validation.jsonl'}]",
        "ray.enabled=false",
    ])  # fmt: skip
    if not (hf / "config.json").is_file():
        raise UserError(f"S1 finished without exporting a model to {hf}")
    return hf


def _stage_r1(out: Path, data: Path, s1: Path, steps: int) -> Path:
    from codepercept_rl.jobs import train

    hf = out / "runs" / "r1" / "hf"
    if (hf / "config.json").is_file():
        log.info("r1: %s exists, skipped", hf)
        return hf
    r1 = data / "exports" / "r1"
    train.main([
        str(RECIPES / "r1_tiny_cpu.yaml"),
        f"trainer.default_local_dir={out / 'runs'}",
        "trainer.experiment_name=r1",
        f"trainer.total_training_steps={steps}",
        f"model.path={s1}",
        f"data.train_files=[{r1 / 'train.parquet'}]",
        f"data.val_files=[{r1 / 'validation.parquet'}]",
    ])  # fmt: skip
    if not (hf / "config.json").is_file():
        raise UserError(f"R1 finished without exporting a model to {hf}")
    return hf


def _stage_eval(out: Path, data: Path, name: str, model: Path) -> dict[str, Any]:
    from codepercept_rl.jobs import eval as eval_job

    dest = out / "eval" / name
    from data_tools.prompts import S1_CODE_PROMPT

    # The question the models were trained on (eval puts the image before the text itself).
    prompt = S1_CODE_PROMPT.replace("<image>", "").strip()
    eval_job.main(["--model", str(model), "--bench", str(data / "exports" / "s1" / "test.jsonl"), "--out",
                   str(dest), "--max-tokens", "320", "--prompt", prompt])  # fmt: skip
    return json.loads((dest / "summary.json").read_text())


def _base_model(out: Path) -> Path:
    from codepercept_rl.models import build_tiny_model

    path = out / "runs" / "base"
    if not (path / "config.json").is_file():
        build_tiny_model("qwen2_5_vl", preset="tiny", out_dir=str(path), seed=0)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages (module docstring) and write the report."""
    parser = argparse.ArgumentParser(prog="codepercept-rl demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="output directory (rerun to resume)")
    parser.add_argument("--num", type=int, default=400, help="items to generate")
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers for rendering")
    parser.add_argument("--s1-epochs", type=int, default=12)
    parser.add_argument("--r1-steps", type=int, default=20)
    parser.add_argument("--skip-r1", action="store_true", help="stop after S1 (data -> S1 -> eval)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data = _stage_data(out, args.num, args.workers, args.seed)
    models = {"base": _base_model(out), "s1": _stage_s1(out, data, args.s1_epochs)}
    if not args.skip_r1:
        models["r1"] = _stage_r1(out, data, models["s1"], args.r1_steps)
    stages = {name: _stage_eval(out, data, name, path) for name, path in models.items()}
    report = {"stages": {name: _stage_row(s) for name, s in stages.items()}, "seconds": time.time() - t0}
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    _plots(out)
    print((out / "report.md").read_text())
    return 0


def _stage_row(summary: dict[str, Any]) -> dict[str, Any]:
    overall = summary["overall"]
    scores, ci = overall["scores"], overall["ci"]
    return {
        "exec_rate": (scores.get("exec") or 0.0) / 100.0,
        "image": scores.get("image"),
        "code": scores.get("code"),
        "final": scores.get("final_det"),
        "final_ci95": ci.get("final_det"),
        "n_items": summary["n_items"],
        "status_counts": summary["status_counts"],
    }


def _markdown(report: dict[str, Any]) -> str:
    lines = ["# CodePercept-RL demo", "", "| stage | exec rate | image | code | final (95% CI) | items |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in report["stages"].items():
        ci = row["final_ci95"]
        ci_text = f" ({ci[0]:.1f}–{ci[1]:.1f})" if ci else ""
        lines.append(f"| {name} | {row['exec_rate']:.2f} | {row['image'] or 0:.1f} | {row['code'] or 0:.1f} | "
                     f"{row['final'] or 0:.1f}{ci_text} | {row['n_items']} |")  # fmt: skip
    lines += ["", f"Total time: {report['seconds'] / 60:.1f} min.", ""]
    return "\n".join(lines)


def _plots(out: Path) -> None:
    from codepercept_rl.plotting import plot_run

    for stage in ("s1", "r1"):
        run = out / "runs" / stage
        if (run / "metrics.jsonl").is_file():
            plot_run(run, out / "plots" / stage)
