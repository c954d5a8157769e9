"""``codepercept-rl quickstart --out DIR``: the whole idea on one CPU machine — data -> S1 -> R1 -> evaluation.

    make quickstart                                # set-up + this job into runs/quickstart
    codepercept-rl quickstart --out runs/quickstart [--num 600] [--rl-num 300] [--s1-epochs 13] [--r1-steps 30]

Stages, each an ordinary job of this project run with its recipe and overrides (rerunning the command
resumes: a stage whose output exists is skipped, a half-done S1 / R1 run resumes from its checkpoint):

1. ``data``: ``shapes`` and ``bars`` programs rendered in the sandbox, code-grounded captions, splits without
   near-duplicate leakage, exported as S1 JSONL and R1 parquet (``DIR/data``): ``--num`` items for S1's train,
   validation and test splits and ``--rl-num`` more in an ``rl`` split of their own, R1's prompts;
2. ``s1``: SFT of a tiny Qwen2.5-VL built offline from scratch (``recipes/s1_tiny_cpu.yaml``, ``DIR/runs/s1``);
3. ``r1``: GRPO from the S1 model through Ray actors and the sandboxed reward pool
   (``recipes/r1_tiny_cpu.yaml``, ``DIR/runs/r1``), on the ``rl`` split: images S1 never trained on, as the
   paper's R1 samples are for its one-epoch S1 (many epochs of S1 all but memorise their items);
4. ``eval``: the untrained model, S1 and R1 on the held-out test split: greedy answers with ``codepercept-rl
   eval`` (``DIR/eval/<stage>``: STEM2Code-style results, report, HTML gallery), and ``--samples`` answers per
   item sampled as R1's rollouts are (``--sample-temperature`` / ``--sample-top-p``, the recipe's rollout
   settings; ``DIR/eval/<stage>-sampled/answers.jsonl``, one engine call per stage); every answer runs in the
   sandbox and is scored with R1's own reward (the reward section of the R1 config: the paper's ``codepercept``
   reward in the tiny recipe; ``DIR/eval/<stage>-scores.json``), each micro-batch while the next one is
   sampled (as R1 scores its rollouts). S1 trains alone on both cores (two torch threads); a niced child
   process evaluates the untrained model and S1 while R1 trains (R1 keeps about one core busy);
5. ``report``: per stage, exec rate, mean reward with a bootstrap 95% CI over items and the mean of each
   reward component; the paired R1 - S1 difference with its paired bootstrap CI. The headline protocol is
   avg@k — per item, the mean reward of the k sampled answers, i.e. the held-out value of the objective GRPO
   maximises (verl validates with sampling the same way, ``val_kwargs.n``); the greedy protocol is reported
   next to it under ``greedy``. The untrained model gets one sampled answer per item (it writes no code;
   more would only cost time). Written to ``DIR/report.json`` (schema below), ``DIR/report.md``,
   ``DIR/gallery.html`` (target | base | S1 | R1 greedy renders per held-out item) and training curves under
   ``DIR/plots``.

``report.json``::

    {"stages": {"base" | "s1" | "r1": {"exec_rate": f, "reward_mean": f, "reward_ci95": [lo, hi],
                                       "components": {name: mean}}},
     "r1_minus_s1": {"reward_mean": f, "ci95": [lo, hi]},
     "seconds": f,
     "phases": {"data": f, "s1": f, "s1/train_steps": f, ..., "r1": f, "r1/gen": f, ..., "eval_r1": f, ...},
     "greedy": {"stages": {...}, "r1_minus_s1": {...}},      # the same, greedy answers
     "details": {...}}   # protocol, reward, wins/ties/losses, STEM2Code scores, item counts, stage seconds, settings

Tracking: every stage logs ``metrics.jsonl`` in its run directory and, unless ``--no-wandb``, to W&B (offline
without ``WANDB_API_KEY``), all in one W&B group named after ``DIR`` with job types ``sft``, ``grpo`` and
``eval``.
"""

from __future__ import annotations

import argparse
import html
import json
import logging
import multiprocessing
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from codepercept_rl.errors import UserError
from codepercept_rl.utils.io import atomic_write_json, atomic_write_text

log = logging.getLogger("codepercept_rl.quickstart")
RECIPES = Path(__file__).resolve().parents[2] / "recipes"
STAGES = ("base", "s1", "r1")
N_BOOT = 2000


def _stage_data(out: Path, args: argparse.Namespace) -> Path:
    from data_tools.build import BuildSpec, build
    from data_tools.exports import export

    data = out / "data"
    if (data / "exports" / "r1" / "train.parquet").is_file() and (
        data / "exports" / "s1" / "test.jsonl"
    ).is_file():
        log.info("data: %s exists, skipped", data)
        return data
    total = args.num + args.rl_num
    summary = build(
        BuildSpec(families=list(args.families), num=total, seed=args.seed), data, workers=args.workers
    )
    log.info("data: %d items rendered in %.1fs", summary.rendered, summary.seconds)
    # The fractions are of --num; the rl split takes --rl-num of the total on top.
    share = args.num / total
    export(data, ["r1", "s1"], seed=args.seed, val_fraction=args.val_fraction * share,
           test_fraction=args.test_fraction * share, rl_fraction=args.rl_num / total)  # fmt: skip
    return data


def _r1_train_file(data: Path) -> Path:
    """R1's prompts: the ``rl`` split when the data has one, else S1's train split."""
    rl = data / "exports" / "r1" / "rl.parquet"
    if rl.is_file():
        return rl
    log.info("r1: %s has no rl split (built with --rl-num 0, or by an earlier version): R1 trains on S1's "
             "train split", data)  # fmt: skip
    return data / "exports" / "r1" / "train.parquet"


def _tracking(args: argparse.Namespace) -> list[str]:
    backends = "[console,jsonl,wandb]" if args.wandb else "[console,jsonl]"
    return [f"tracking.backends={backends}", f"tracking.wandb_group={args.group}"]


def _training_stage(out: Path, name: str, job: Any, recipe: str, overrides: list[str]) -> Path:
    """Runs ``job.main`` (S1 or R1) with ``recipe`` into ``DIR/runs/<name>``; skipped when its HF export exists."""
    hf = out / "runs" / name / "hf"
    if (hf / "config.json").is_file():
        log.info("%s: %s exists, skipped", name, hf)
        return hf
    job.main([str(RECIPES / recipe), f"trainer.default_local_dir={out / 'runs'}", f"trainer.experiment_name={name}",
              *overrides])  # fmt: skip
    if not (hf / "config.json").is_file():
        raise UserError(f"{name.upper()} finished without exporting a model to {hf}")
    return hf


def _stage_s1(out: Path, data: Path, args: argparse.Namespace) -> Path:
    from codepercept_rl.jobs import sft

    s1 = data / "exports" / "s1"
    return _training_stage(out, "s1", sft, "s1_tiny_cpu.yaml", [
        f"trainer.total_epochs={args.s1_epochs}",
        "trainer.test_freq=260",  # validation (loss + sandboxed generation check) and checkpoints: a few per run
        "trainer.save_freq=260",
        "trainer.torch_num_threads=2",  # nothing else runs beside S1 (main): both cores
        f"trainer.seed={args.seed}",
        f"model.tiny_preset={args.preset}",
        f"data.train_files=[{s1 / 'train.jsonl'}]",
        f"data.val_files=[{s1 / 'validation.jsonl'}]",
        "ray.enabled=false",
        *_tracking(args),
        *args.s1_override,
    ])  # fmt: skip


def _stage_r1(out: Path, data: Path, s1: Path, args: argparse.Namespace) -> Path:
    from codepercept_rl.jobs import train

    r1 = data / "exports" / "r1"
    return _training_stage(out, "r1", train, "r1_tiny_cpu.yaml", [
        f"trainer.total_training_steps={args.r1_steps}",
        f"trainer.test_freq={max(1, args.r1_steps // 2)}",  # validate at 0, half-way and the end
        f"trainer.seed={args.seed}",
        f"model.path={s1}",
        "ray.worker_niceness=0",  # R1's actors above the evaluation child (niceness 10); Ray's default is 15
        f"data.train_files=[{_r1_train_file(data)}]",
        f"data.val_files=[{r1 / 'validation.parquet'}]",
        *_tracking(args),
        *args.r1_override,
    ])  # fmt: skip


def _base_model(out: Path, args: argparse.Namespace) -> Path:
    from codepercept_rl.models import build_tiny_model

    path = out / "runs" / "base"
    if not (path / "config.json").is_file():
        build_tiny_model("qwen2_5_vl", preset=args.preset, out_dir=str(path), seed=args.seed)
    return path


def _stage_eval(out: Path, data: Path, name: str, model: Path, args: argparse.Namespace) -> Path:
    """``codepercept-rl eval`` of a stage's greedy answers (``DIR/eval/<stage>``: STEM2Code-style results,
    report, HTML gallery; resumable)."""
    from codepercept_rl.jobs import eval as eval_job
    from data_tools.prompts import S1_CODE_PROMPT

    dest = out / "eval" / name
    # The exact question the models were trained on; its <image> tag places the image as in training.
    argv = ["--model", str(model), "--bench", str(data / "exports" / "s1" / "test.jsonl"), "--out", str(dest),
            "--max-tokens", str(args.max_tokens), "--prompt", S1_CODE_PROMPT, "--workers", str(args.workers),
            "--n-boot", str(N_BOOT), "--seed", str(args.seed), "--batch-size", str(args.eval_batch_size)]  # fmt: skip
    if args.wandb:
        argv += ["--wandb", "--wandb-group", args.group]
    if eval_job.main(argv) != 0:
        raise UserError(f"eval of {name} ({model}) failed; see {dest}")
    return dest


def _stage_sampled(
    out: Path, items: list[Any], name: str, model: Path, args: argparse.Namespace, scorer: _Scorer
) -> list[dict[str, dict[str, Any]]]:
    """``--samples`` answers per held-out item, sampled as R1's rollouts are (``--sample-temperature``,
    ``--sample-top-p``), all in one engine call: ``DIR/eval/<stage>-sampled/answers.jsonl``, one row per item
    ``{"id", "answers": [text, ...], "finish_reasons": [...]}``. Every answer goes to ``scorer`` as soon as
    its micro-batch is generated, so the sandboxes score one micro-batch while the next one is sampled (the
    answers and the random stream are those of an unscored call). The untrained model gets one answer per item
    (it writes no code; more would only cost time).

    ``items`` are the held-out bench items. Returns the scored answers, one ``{item id: scored}`` dict per
    sample index. An existing answers file is scored without sampling again.
    """
    import torch

    from codepercept_rl.eval.generate import GenRequest, rollout_prompt
    from codepercept_rl.models import load_model
    from codepercept_rl.rollout import Completion, HFRolloutEngine, SamplingParams
    from data_tools.prompts import S1_CODE_PROMPT

    dest = out / "eval" / f"{name}-sampled" / "answers.jsonl"
    if dest.is_file():
        log.info("eval %s sampled: %s exists, scoring it", name, dest)
        rows = [json.loads(line) for line in dest.read_text().splitlines() if line.strip()]
        for row in rows:
            for j, text in enumerate(row["answers"]):
                scorer.add((j, row["id"]), text)
    else:
        torch.set_num_threads(1)
        loaded, processor = load_model(str(model))
        engine = HFRolloutEngine(loaded, processor, micro_batch_size=args.eval_batch_size)
        params = SamplingParams(
            n=args.samples if name != "base" else 1,
            temperature=args.sample_temperature,
            top_p=args.sample_top_p,
            max_tokens=args.max_tokens,
            seed=args.seed + 1000,
        )
        # The exact question the models were trained on (its <image> tag places the image as in training).
        prompts = [rollout_prompt(GenRequest(it.id, it.read_image(), S1_CODE_PROMPT)) for it in items]

        def to_scorer(c: Completion) -> None:
            scorer.add((c.sample_index, items[c.prompt_index].id), c.text)

        groups = engine.generate(prompts, params, on_complete=to_scorer)
        rows = [
            {"id": it.id, "answers": [c.text for c in g], "finish_reasons": [c.finish_reason for c in g]}
            for it, g in zip(items, groups, strict=True)
        ]
        atomic_write_text(dest, "".join(json.dumps(r) + "\n" for r in rows))
    scored = scorer.results()
    runs: list[dict[str, dict[str, Any]]] = [{} for _ in range(max(len(r["answers"]) for r in rows))]
    for row in rows:
        for j in range(len(row["answers"])):
            runs[j][row["id"]] = scored[(j, row["id"])]
    return runs


class _Scorer:
    """Scores answers with R1's reward in a background thread, ``batch`` at a time, while the caller goes on
    (generating the next answers). The code runs in the reward backend's sandboxes, never here; the thread
    only waits on them.

    ``targets`` maps an item id to its image and reference code (the code term); an answer is queued under a
    key ``(tag, item id)``.
    """

    def __init__(
        self, targets: dict[str, tuple[bytes, str | None]], reward: Any, backend: Any, batch: int
    ) -> None:
        self._targets, self._reward, self._backend, self._batch = targets, reward, backend, max(1, batch)
        self._pending: list[tuple[tuple[Any, str], str]] = []
        self._futures: list[Future] = []
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quickstart-scorer")

    def add(self, key: tuple[Any, str], text: str | None) -> None:
        """Queues one answer to item ``key[1]``; a full batch starts scoring."""
        self._pending.append((key, text or ""))
        if len(self._pending) >= self._batch:
            self._flush()

    def results(self) -> dict[tuple[Any, str], dict[str, Any]]:
        """Every answer queued so far, scored (``{score, components, status}``) by key; waits for them."""
        self._flush()
        out: dict[tuple[Any, str], dict[str, Any]] = {}
        for future in self._futures:
            out.update(future.result())
        self._futures = []
        return out

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)

    def _flush(self) -> None:
        if self._pending:
            batch, self._pending = self._pending, []
            self._futures.append(self._thread.submit(self._score, batch))

    def _score(self, batch: list[tuple[tuple[Any, str], str]]) -> dict[tuple[Any, str], dict[str, Any]]:
        scored = _score_answers([(k[1], t) for k, t in batch], self._targets, self._reward, self._backend)
        return {key: s for (key, _), s in zip(batch, scored, strict=True)}


def _evaluate_stage(
    out: Path,
    data: Path,
    name: str,
    model: Path,
    args: argparse.Namespace,
    pool: ProcessPoolExecutor | None = None,
) -> dict[str, float]:
    """Everything the report needs of one stage: greedy eval, sampled answers, and every answer scored with
    R1's reward in the sandbox (``DIR/eval/<stage>-scores.json``: ``{"greedy": {id: scored}, "sampled":
    [{id: scored}, ...]}``, one dict per sample index). Sampled answers are scored while they are generated.
    The greedy eval and the scores are skipped when their outputs exist. With ``pool`` (a process free for
    it), the greedy eval runs there while this process samples.

    Returns the seconds each part took (``eval_<stage>``; ``eval_<stage>_sampled``: sampling and scoring
    together; ``score_<stage>``: the greedy answers' scores).
    """
    from codepercept_rl.eval.bench import load_bench
    from codepercept_rl.rewards import build_reward, make_backend

    seconds: dict[str, float] = {}
    job = greedy = None
    if pool is not None:
        job = pool.submit(_greedy_eval, out, data, name, model, args)
    else:
        greedy = _timed(seconds, f"eval_{name}", _stage_eval, out, data, name, model, args)
    dest = _scores_path(out, name)
    if dest.is_file():
        if job is not None:
            greedy, seconds[f"eval_{name}"] = job.result()
        return seconds
    items = load_bench(data / "exports" / "s1" / "test.jsonl")
    targets = {it.id: (it.read_image(), it.reference_code) for it in items}
    cfg = _r1_config(out, [*args.r1_override, f"reward.num_workers={args.workers}"])
    reward, backend = build_reward(cfg.reward), make_backend(cfg.reward)
    scorer = _Scorer(targets, reward, backend, batch=args.eval_batch_size)
    try:
        sampled = []
        if args.samples:
            sampled = _timed(
                seconds, f"eval_{name}_sampled", _stage_sampled, out, items, name, model, args, scorer
            )
        if job is not None:
            greedy, seconds[f"eval_{name}"] = job.result()
        assert greedy is not None
        scores = {
            "greedy": _timed(seconds, f"score_{name}", _greedy_scores, greedy, scorer),
            "sampled": sampled,
        }
    finally:
        scorer.close()
        backend.close()
    atomic_write_json(dest, scores)
    return seconds


def _greedy_eval(
    out: Path, data: Path, name: str, model: Path, args: argparse.Namespace
) -> tuple[Path, float]:
    """``_stage_eval`` and the seconds it took, as a job for the child process."""
    seconds: dict[str, float] = {}
    key = f"eval_{name}"
    return _timed(seconds, key, _stage_eval, out, data, name, model, args), seconds[key]


def _scores_path(out: Path, name: str) -> Path:
    """Where a stage's answers scored with R1's reward are (``_evaluate_stage``)."""
    return out / "eval" / f"{name}-scores.json"


def _timed(seconds: dict[str, float], key: str, fn: Any, *a: Any) -> Any:
    """``fn(*a)``, its wall time recorded in ``seconds[key]`` and logged."""
    t = time.time()
    result = fn(*a)
    seconds[key] = time.time() - t
    log.info("quickstart: %s done in %.1fs", key, seconds[key])
    return result


def _r1_config(out: Path, overrides: Sequence[str] = ()) -> Any:
    """The resolved config the R1 run saved (the recipe's when R1 has not run): its reward and rollout settings."""
    from codepercept_rl.config import JobConfig, load_config

    saved = out / "runs" / "r1" / "config.yaml"
    return load_config(
        saved if saved.is_file() else RECIPES / "r1_tiny_cpu.yaml", list(overrides), schema=JobConfig
    )


# ------------------------------------------------------------------------------------------------ report
def _score_answers(
    answers: list[tuple[str, str]], targets: dict[str, tuple[bytes, str | None]], reward: Any, backend: Any
) -> list[dict[str, Any]]:
    """Scores ``(item id, answer text)`` pairs with R1's reward: one ``{score, components, status}`` each.

    ``targets`` maps an item id to its image and reference code (the code term). The code runs in the reward
    backend's sandboxes (never here).
    """
    from codepercept_rl.rewards import RewardSample, compute_rewards

    samples = [
        RewardSample(completion=text, target_png=targets[i][0], reference_code=targets[i][1])
        for i, text in answers
    ]
    output = compute_rewards(reward, samples, backend)
    return [
        {
            "score": output.scores[j],
            "status": output.statuses[j] if output.statuses else None,
            "components": {k: v[j] for k, v in output.components.items()},
        }
        for j in range(len(answers))
    ]


def _greedy_scores(eval_dir: Path, scorer: _Scorer) -> dict[str, dict[str, Any]]:
    """R1's reward of each answer of one greedy eval run: {item id: {score, components, status}}."""
    from codepercept_rl.eval.results import read_results

    records = sorted(read_results(eval_dir).values(), key=lambda r: r.get("index", 1 << 30))
    ids = []
    for r in records:
        if r.get("id"):
            ids.append(r["id"])
            scorer.add(("greedy", r["id"]), (r.get("generation") or {}).get("text"))
    scored = scorer.results()
    return {i: scored[("greedy", i)] for i in ids}


def _average(runs: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per item, the mean score and components over several sampled answers (avg@k); status of the first."""
    if len(runs) == 1:
        return runs[0]
    out: dict[str, dict[str, Any]] = {}
    for item in runs[0]:
        rows = [r[item] for r in runs if item in r]
        names = {k for row in rows for k in row["components"]}
        out[item] = {
            "score": _mean([row["score"] if row["score"] is not None else 0.0 for row in rows]),
            "status": rows[0]["status"],
            "components": {
                k: _mean(vals)
                if (vals := [v for row in rows if (v := row["components"].get(k)) is not None])
                else None
                for k in names
            },
        }
    return out


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


def _stage_row(scored: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    from codepercept_rl.eval.stats import bootstrap_mean_ci

    # A sample the reward could not score (the backend refused it) counts as 0, like a failed render.
    scores = [s["score"] if s["score"] is not None else 0.0 for s in scored.values()]
    names = sorted({k for s in scored.values() for k in s["components"]})
    components = {
        k: _mean([v for s in scored.values() if (v := s["components"].get(k)) is not None]) for k in names
    }
    ci = bootstrap_mean_ci(scores, n_boot=N_BOOT, seed=seed)
    exec_rate = components.get("exec")
    if exec_rate is None:
        exec_rate = _mean([float(s["status"] == "ok") for s in scored.values()])
    return {
        "exec_rate": exec_rate,
        "reward_mean": _mean(scores),
        "reward_ci95": list(ci) if ci else None,
        "components": components,
    }


def _difference(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], seed: int) -> dict[str, Any]:
    """Paired B - A over the items both stages answered: mean and paired bootstrap 95% CI, wins/ties/losses."""
    from codepercept_rl.eval.stats import bootstrap_mean_ci

    common = sorted(set(a) & set(b))
    diff = [(b[i]["score"] or 0.0) - (a[i]["score"] or 0.0) for i in common]
    ci = bootstrap_mean_ci(diff, n_boot=N_BOOT, seed=seed)
    return {
        "reward_mean": _mean(diff),
        "ci95": list(ci) if ci else None,
        "n_items": len(diff),
        "wins": sum(d > 1e-6 for d in diff),
        "ties": sum(abs(d) <= 1e-6 for d in diff),
        "losses": sum(d < -1e-6 for d in diff),
    }


def _stem2code(eval_dir: Path) -> dict[str, Any]:
    summary = json.loads((eval_dir / "summary.json").read_text())
    overall = summary["overall"]
    return {
        "scores": overall["scores"],
        "final_det_ci95": overall["ci"].get("final_det"),
        "n_items": summary["n_items"],
        "status_counts": summary["status_counts"],
    }


def build_report(
    out: Path, greedy: dict[str, Path], seconds: float, settings: dict[str, Any]
) -> dict[str, Any]:
    """The report (module docstring) from each stage's eval run and scores; also writes ``report.json/md``.

    Args:
        greedy: the greedy eval run of each stage (its scores are ``DIR/eval/<stage>-scores.json``).
    """
    scores = {name: json.loads(_scores_path(out, name).read_text()) for name in greedy}
    by_greedy = {name: s["greedy"] for name, s in scores.items()}
    by_sample = {name: _average(s["sampled"]) for name, s in scores.items() if s["sampled"]}
    cfg = _r1_config(out, settings.get("r1_override", []))
    seed = int(settings.get("seed", 0))
    greedy_block = _protocol(by_greedy, seed)
    headline = _protocol(by_sample, seed) if by_sample else greedy_block
    k = settings.get("samples", 0)
    protocol = (f"avg@{k}: per held-out item the mean reward of {k} answers sampled as R1's rollouts are (temperature "
                f"{settings.get('sample_temperature')}, top-p {settings.get('sample_top_p')})" if by_sample
                else "greedy answers")  # fmt: skip
    report: dict[str, Any] = {key: headline[key] for key in ("stages", "r1_minus_s1") if key in headline}
    report["seconds"] = seconds
    report["greedy"] = {key: greedy_block[key] for key in ("stages", "r1_minus_s1") if key in greedy_block}
    report["details"] = {
        "reward": f"{cfg.reward.path or cfg.reward.name} (R1's reward section); an unscored answer counts 0",
        "protocol": protocol,
        "n_items": {name: len(s) for name, s in by_greedy.items()},
        "r1_vs_s1": headline.get("wins"),
        "greedy_r1_vs_s1": greedy_block.get("wins"),
        "stem2code_greedy": {name: _stem2code(path) for name, path in greedy.items()},
        "settings": settings,
    }
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    atomic_write_text(out / "gallery.html", _gallery(out, greedy, by_greedy))
    return report


def _protocol(scored: dict[str, dict[str, dict[str, Any]]], seed: int) -> dict[str, Any]:
    """Stage rows and the paired R1 - S1 difference under one evaluation protocol."""
    block: dict[str, Any] = {"stages": {name: _stage_row(s, seed) for name, s in scored.items()}}
    if "s1" in scored and "r1" in scored:
        diff = _difference(scored["s1"], scored["r1"], seed)
        block["r1_minus_s1"] = {"reward_mean": diff["reward_mean"], "ci95": diff["ci95"]}
        block["wins"] = diff
    return block


def _counts(values: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for v in values:
        counts[str(v)] = counts.get(str(v), 0) + 1
    return counts


def _fmt_ci(ci: Sequence[float] | None, digits: int = 3) -> str:
    return f"[{ci[0]:.{digits}f}, {ci[1]:.{digits}f}]" if ci else "–"


def _table(block: dict[str, Any], wtl: dict[str, Any] | None) -> list[str]:
    """Markdown rows of one protocol: per stage exec rate, reward with CI and components; then R1 - S1."""
    stages = block["stages"]
    names = sorted({k for row in stages.values() for k, v in row["components"].items() if v is not None})
    lines = ["| stage | exec rate | reward (95% CI) | " + " | ".join(names) + " |",
             "|---|---|---|" + "---|" * len(names)]  # fmt: skip
    for name, row in stages.items():
        comps = " | ".join(
            f"{v:.3f}" if (v := row["components"].get(k)) is not None and v == v else "–" for k in names
        )
        lines.append(
            f"| {name} | {row['exec_rate']:.3f} | {row['reward_mean']:.3f} {_fmt_ci(row['reward_ci95'])} | {comps} |"
        )
    diff = block.get("r1_minus_s1")
    if diff and wtl:
        lines += ["", f"**R1 - S1** (paired over {wtl['n_items']} items): {diff['reward_mean']:+.4f}, 95% CI "
                  f"{_fmt_ci(diff['ci95'], 4)}; R1 better on {wtl['wins']}, equal on {wtl['ties']}, worse on "
                  f"{wtl['losses']}."]  # fmt: skip
    return lines


def _elements_lines(block: dict[str, Any]) -> list[str]:
    """How much each stage's executed answers drew against their references (the reward's ``elements`` /
    ``ref_elements`` diagnostics, texts aside): a policy that learns to hedge draws less."""
    rows = []
    for name, row in block["stages"].items():
        drawn, ref = row["components"].get("elements"), row["components"].get("ref_elements")
        if drawn is not None and ref is not None and ref == ref and ref > 0:
            rows.append(f"{name} {drawn:.2f} vs {ref:.2f} ({drawn / ref - 1:+.0%})")
    if not rows:
        return []
    return [
        "",
        "Elements drawn per executed answer against its reference's (texts aside): " + "; ".join(rows) + ".",
    ]


def _markdown(report: dict[str, Any]) -> str:
    details = report["details"]
    lines = [
        "# CodePercept-RL quickstart",
        "",
        f"Held-out test items; every answer runs in the sandbox and is scored with R1's reward, {details['reward']}.",
        "",
        f"## Headline: {details['protocol']}",
        "",
        *_table(report, details["r1_vs_s1"]),
        *_elements_lines(report),
        "",
        "## Greedy answers",
        "",
        *_table(report["greedy"], details["greedy_r1_vs_s1"]),
        *_elements_lines(report["greedy"]),
        "",
        "STEM2Code-Eval deterministic scores of the greedy answers (0-100; `codepercept-rl eval`):",
        "",
        "| stage | Exec | Image | Code | Final (95% CI) |",
        "|---|---|---|---|---|",
    ]
    for name, s in details["stem2code_greedy"].items():
        sc = s["scores"]
        lines.append(
            f"| {name} | {sc.get('exec') or 0:.1f} | {sc.get('image') or 0:.1f} | {sc.get('code') or 0:.1f} | "
            f"{sc.get('final_det') or 0:.1f} {_fmt_ci(s['final_det_ci95'], 1)} |"
        )
    lines += ["", "Galleries: `gallery.html` (greedy renders of all stages side by side), `eval/<stage>/gallery.html`; "
              "curves: `plots/s1`, `plots/r1`.", "", f"Total time: {report['seconds'] / 60:.1f} min.", ""]  # fmt: skip
    if report.get("phases"):
        lines += ["## Where the time went", "",
                  "Stages in order (the total leaves out `install`, the set-up before the job); `eval_base` and "
                  "`eval_s1*` run in a child process at a lower priority while R1 trains, `eval_r1` (greedy, in the "
                  "child) beside `eval_r1_sampled`.", "",
                  *_phase_lines(report["phases"], report["seconds"]), ""]  # fmt: skip
    return "\n".join(lines)


def _gallery(out: Path, evals: dict[str, Path], scored: dict[str, dict[str, dict[str, Any]]]) -> str:
    """One HTML table: per held-out item, the target and each stage's render with its reward."""
    from codepercept_rl.eval.results import read_results

    records = {name: read_results(path) for name, path in evals.items()}
    first = next(iter(records.values()), {})
    ids = sorted(first, key=lambda i: first[i].get("index", 1 << 30))

    def img(path: Path | None, caption: str = "", title: str = "") -> str:
        pic = (f'<img src="{html.escape(os.path.relpath(path, out))}" loading=lazy>' if path and path.is_file()
               else "<div class=miss>no render</div>")  # fmt: skip
        return (
            f'<td title="{html.escape(title)}">{pic}{"<br>" + html.escape(caption) if caption else ""}</td>'
        )

    head = "".join(f"<th>{html.escape(n)}</th>" for n in evals)
    rows = []
    any_eval = next(iter(evals.values()))
    for item in ids:
        ref = first[item].get("files", {}).get("reference")
        cells = [f"<td>{html.escape(item)}</td>", img(any_eval / ref if ref else None)]
        for name, path in evals.items():
            rec = records[name].get(item, {})
            render = rec.get("files", {}).get("render")
            s = scored[name].get(item, {})
            score = s.get("score")
            caption = (
                f"{score:.3f} ({rec.get('status')})" if score is not None else f"– ({rec.get('status')})"
            )
            cells.append(img(path / render if render else None, caption, str(s.get("components", ""))))
        rows.append("<tr>" + "".join(cells) + "</tr>")
    style = ("body{font-family:sans-serif}img{width:160px;height:160px;object-fit:contain;border:1px solid #ccc}"
             "td{text-align:center;vertical-align:top;font-size:12px}.miss{color:#999}")  # fmt: skip
    return (f"<!doctype html><meta charset=utf-8><title>quickstart gallery</title><style>{style}</style>"
            f"<h1>Held-out items: target and renders (reward, status)</h1><table><tr><th>item</th><th>target</th>"
            f"{head}</tr>{''.join(rows)}</table>")  # fmt: skip


# wait_rollout, gen_overlapped: trainer.one_step_off_policy only (the latter ran beside the steps, not in them)
R1_PHASES = ("gen", "reward", "old_log_prob", "ref", "adv", "update_actor", "wait_rollout", "update_weights",
             "val_gen", "gen_overlapped")  # fmt: skip


def phase_table(out: Path, seconds: dict[str, float]) -> dict[str, float]:
    """Where the time went: each stage's wall seconds (``seconds``, as timed by :func:`main`) and, inside S1
    and R1, the sums of their logged ``timing_s/*`` (S1: train steps, validation, checkpoints; R1: the GRPO
    step's phases and validation generation). A stage skipped on a resumed run has no entry."""
    from codepercept_rl.tracking import read_metrics

    phases: dict[str, float] = {}
    for key in ("install", "data", "s1"):
        if key in seconds:
            phases[key] = seconds[key]
    s1_metrics = out / "runs" / "s1" / "metrics.jsonl"
    if "s1" in seconds and s1_metrics.is_file():
        records = read_metrics(out / "runs" / "s1")
        for name, label in (("step", "s1/train_steps"), ("val", "s1/validation_loss"),
                            ("gen", "s1/generation_check"), ("save", "s1/checkpoints")):  # fmt: skip
            phases[label] = sum(r.get(f"timing_s/{name}", 0.0) for r in records)
    if "r1" in seconds:
        phases["r1"] = seconds["r1"]
        r1_metrics = out / "runs" / "r1" / "metrics.jsonl"
        if r1_metrics.is_file():
            records = read_metrics(out / "runs" / "r1")
            for name in R1_PHASES:
                total = sum(r.get(f"timing_s/{name}", 0.0) for r in records)
                if total:
                    phases[f"r1/{name}"] = total
    for key in sorted(k for k in seconds if k.startswith(("eval_", "score_"))):
        phases[key] = seconds[key]
    if "report" in seconds:
        phases["report"] = seconds["report"]
    return phases


def _phase_lines(phases: dict[str, float], total: float) -> list[str]:
    """Markdown rows of :func:`phase_table`: sub-phases indented under their stage; evaluations beside R1
    overlap it (they run in the niced child process)."""
    lines = ["| phase | seconds | share of the total |", "|---|---|---|"]
    for key, value in phases.items():
        label = f"&nbsp;&nbsp;{key.split('/', 1)[1]}" if "/" in key else key
        lines.append(f"| {label} | {value:.1f} | {value / max(total, 1e-9):.0%} |")
    return lines


def _plots(out: Path) -> None:
    from codepercept_rl.plotting import plot_run

    for stage in ("s1", "r1"):
        run = out / "runs" / stage
        if (run / "metrics.jsonl").is_file():
            plot_run(run, out / "plots" / stage)


# -------------------------------------------------------------------------------------------------- main
def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="codepercept-rl quickstart", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output directory (rerun the same command to resume)")
    p.add_argument("--families", nargs="+", default=["shapes", "bars"], help="data_tools generator families")
    p.add_argument(
        "--num", type=int, default=600, help="items to generate for S1's train, validation and test splits"
    )
    # Measured from one S1 model (115 held-out items, greedy): R1 on S1's own train items -0.039 [-0.066, -0.013]
    # against S1, element_f2 0.232 -> 0.197; on 539 items S1 never saw +0.004 [-0.027, +0.040], 0.232 -> 0.259.
    # A whole run with this default (a new data build and S1) still gave R1 below S1 (README).
    p.add_argument("--rl-num", type=int, default=300,
                   help="items generated on top for R1's prompts only (0: R1 on S1's train split)")  # fmt: skip
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--test-fraction", type=float, default=0.2, help="held-out share for the evaluation")
    p.add_argument("--workers", type=int, default=2, help="sandbox workers (rendering, eval scoring)")
    p.add_argument("--preset", default="tiny", help="tiny model preset (nano, tiny, small)")
    # Measured on held-out items (greedy colour F1): 10 epochs 0.36, 15 epochs 0.74; 10 epochs of a 1:3
    # caption:code mix (as many code rows as 15 epochs of 1:1, two thirds of the steps) 0.51, sampled exec 0.87.
    # 13, not 15: two epochs (about 30 s of the job on 2 cores) for the job to fit in 10 minutes, at a cost: on one
    # host, S1's greedy colour F1 0.65 and reward 3.328 with 13 epochs against 0.84 and 3.381 with 15 (sampled exec
    # 0.998 and 1.000). The fresh-clone figures in the README are with 13.
    p.add_argument("--s1-epochs", type=int, default=13, help="S1 epochs over the 1:1 caption + code rows")
    p.add_argument("--r1-steps", type=int, default=30, help="R1 GRPO steps (8 prompts x 8 rollouts each)")
    p.add_argument("--max-tokens", type=int, default=320, help="eval: new tokens per answer")
    # The CI of avg@k is set by how the items differ, not by how many answers each one gets. Measured on one run's
    # 12 answers per item (108 items, R1 - S1 paired): the within-item variance of one answer's difference was
    # 0.098, the between-item variance of its mean 0.091, so k = 4 widens the paired CI 1.08x against k = 12
    # (1.08x again averaged over 200 random 4-of-12 subsets; each stage's own CI 1.02-1.03x) for a third of the
    # sampling: S1's and R1's 12 answers per item had taken 143 s and 86 s of that 12.6-minute run.
    p.add_argument("--samples", type=int, default=4,
                   help="sampled answers per held-out item for the headline avg@k (0: greedy only)")  # fmt: skip
    p.add_argument("--sample-temperature", type=float, help="default: R1's rollout.temperature")
    p.add_argument("--sample-top-p", type=float, help="default: R1's rollout.top_p")
    p.add_argument("--eval-batch-size", type=int, default=64, help="eval: sequences per generate call")
    p.add_argument("--skip-r1", action="store_true", help="stop after S1 (data -> S1 -> eval)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-wandb", dest="wandb", action="store_false",
                   help="no W&B (default: W&B too, offline without WANDB_API_KEY)")  # fmt: skip
    p.add_argument("--group", help="W&B group of the S1, R1 and eval runs (default: quickstart-<DIR name>)")
    p.add_argument("--s1-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra S1 recipe override (repeatable)")  # fmt: skip
    p.add_argument("--r1-override", action="append", default=[], metavar="KEY=VALUE",
                   help="extra R1 recipe override (repeatable)")  # fmt: skip
    p.add_argument("--install-seconds", type=float,
                   help="seconds the set-up took before this job (make quickstart passes it): the phase table's first row")  # fmt: skip
    return p


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


def _background_process() -> None:
    """Initialises the evaluation child: logging, and niceness 10 (its sandbox workers inherit it)."""
    _setup_logging()
    os.nice(10)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the stages (module docstring) and write the report."""
    args = _parser().parse_args(argv)
    if args.num < 1 or args.rl_num < 0:
        raise UserError(f"--num must be >= 1 and --rl-num >= 0 (got {args.num}, {args.rl_num})")
    _setup_logging()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    args.group = args.group or f"quickstart-{out.name}"
    t0 = time.time()
    seconds: dict[str, float] = {}
    data = _timed(seconds, "data", _stage_data, out, args)
    rollout = _r1_config(out, args.r1_override).rollout  # sample as R1's rollouts do
    args.sample_temperature = (
        rollout.temperature if args.sample_temperature is None else args.sample_temperature
    )
    args.sample_top_p = rollout.top_p if args.sample_top_p is None else args.sample_top_p
    models = {"base": _base_model(out, args)}
    # S1 trains alone with two torch threads (both cores). R1 keeps about one core busy (one thread per actor;
    # the reward pool works in bursts), so the untrained model and S1 are evaluated meanwhile in a child process
    # at a lower CPU priority, where it takes the cycles R1 leaves idle instead of slowing it down. R1's own
    # evaluation has both cores: its greedy eval runs in the child while this process samples.
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, initializer=_background_process) as pool:
        models["s1"] = _timed(seconds, "s1", _stage_s1, out, data, args)
        earlier = [
            pool.submit(_evaluate_stage, out, data, name, models[name], args) for name in ("base", "s1")
        ]
        if not args.skip_r1:
            models["r1"] = _timed(seconds, "r1", _stage_r1, out, data, models["s1"], args)
        for job in earlier:
            seconds.update(job.result())
        if not args.skip_r1:
            seconds.update(_evaluate_stage(out, data, "r1", models["r1"], args, pool))
    greedy = {name: out / "eval" / name for name in models}
    settings = {k: v for k, v in vars(args).items() if k not in ("out",)}
    settings["bench"] = str(data / "exports" / "s1" / "test.jsonl")
    settings["stage_seconds"] = seconds
    report = _timed(seconds, "report", build_report, out, greedy, 0.0, settings)
    _plots(out)
    # The total covers every stage this invocation ran (a resumed run counts only what it redid).
    report["seconds"] = time.time() - t0
    if args.install_seconds is not None:
        seconds["install"] = args.install_seconds
    report["phases"] = phase_table(out, seconds)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", _markdown(report))
    print((out / "report.md").read_text())
    return 0
