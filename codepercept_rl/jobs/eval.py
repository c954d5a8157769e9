"""``codepercept-rl eval``: STEM2Code-style evaluation, comparisons, reports and the captioner-solver protocol.

    codepercept-rl eval --model runs/r1/hf --bench BENCH --out runs/eval/r1            # HF generate
    codepercept-rl eval --model runs/r1/hf --engine vllm --bench BENCH --out OUT         # vLLM on GPUs
    codepercept-rl eval --endpoint http://127.0.0.1:8000/v1 --model-name NAME --bench BENCH --out OUT \\
        [--judge-url http://127.0.0.1:8001/v1 --judge-model JUDGE]
    codepercept-rl eval compare OUT_A OUT_B [--out DIR] [--judged]
    codepercept-rl eval report OUT
    codepercept-rl eval solve --model PATH | --endpoint URL --model-name NAME --bench QA_BENCH --out OUT \\
        --solver-endpoint URL --solver-model NAME

Reads top to bottom: ``setup`` (bench, run directory and its settings check, reward backend, generator,
judge) -> ``evaluate`` (``codepercept_rl.eval.harness.run_eval``) -> ``report`` -> ``cleanup``. Rerunning the
same command on the same ``--out`` resumes: finished items are kept, the rest is done, the report is rebuilt.
Changing a setting that changes scores (model, bench, prompt, sampling, judge, sandbox timeout) on an existing
``--out`` is refused. Bench layouts: ``codepercept_rl/eval/bench.py``; scores: ``codepercept_rl/eval/scoring.py``
and ``stats.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codepercept_rl.errors import UserError

log = logging.getLogger("codepercept_rl.eval")

SUBCOMMANDS = ("compare", "report", "solve")
# Settings that change scores: a resumed run must match them. Endpoint URLs are left out on purpose: the same
# served model may come back on another host or port.
FINGERPRINT_KEYS = (
    "model",
    "engine",
    "model_name",
    "bench",
    "prompt",
    "system",
    "temperature",
    "top_p",
    "top_k",
    "repetition_penalty",
    "max_tokens",
    "seed",
    "require_fence",
    "exec_timeout",
    "judge_model",
    "code_judge_model",
)


# ------------------------------------------------------------------------------------------------ arguments
def _generation_args(p: argparse.ArgumentParser) -> None:
    src = p.add_argument_group("model under test (one of)")
    src.add_argument("--model", help="a Hugging Face model folder, generated with --engine")
    src.add_argument("--engine", choices=("hf", "vllm"), default="hf", help="rollout engine for --model")
    src.add_argument("--endpoint", help="an OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    src.add_argument("--model-name", help="the served model name at --endpoint")
    src.add_argument("--api-key-env", default="OPENAI_API_KEY", help="env var holding the endpoint's API key")
    g = p.add_argument_group("generation")
    g.add_argument("--max-tokens", type=int, default=8192)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=-1)
    g.add_argument("--repetition-penalty", type=float, default=1.0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=16, help="prompts per engine call")
    g.add_argument("--concurrency", type=int, default=8, help="endpoint requests in flight")
    g.add_argument("--retries", type=int, default=3, help="endpoint retries after the first attempt")
    g.add_argument("--request-timeout", type=float, default=600.0, help="seconds per endpoint attempt")
    g.add_argument("--backoff", type=float, default=1.0, help="first retry delay (s), doubling")
    g.add_argument("--threads", type=int, default=1, help="torch CPU threads for --engine hf")
    g.add_argument("--max-model-len", type=int, default=16384, help="--engine vllm: prompt + answer tokens")
    g.add_argument("--gpu-memory-utilization", type=float, default=0.85, help="--engine vllm")
    g.add_argument("--tensor-parallel-size", type=int, default=1, help="--engine vllm")
    g.add_argument("--limit", type=int, help="evaluate only the first N items")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="codepercept-rl eval",
        description="Evaluate a model on a STEM2Code-style bench; rerun the same command to resume.",
        epilog="other subcommands (each with --help): 'eval compare RUN_A RUN_B', 'eval report RUN', "
        "'eval solve' (captioner-solver protocol)",
    )
    p.add_argument("--bench", required=True, help="bench directory or JSONL (codepercept_rl/eval/bench.py)")
    p.add_argument("--out", required=True, help="run directory (results.jsonl, report.md, gallery.html, ...)")
    _generation_args(p)
    p.add_argument("--prompt", help="instruction sent with each image (default: eval.generate.CODE_PROMPT)")
    p.add_argument("--system", help="optional system prompt")
    p.add_argument("--allow-unfenced", action="store_true", help="take code without a ``` fence too")
    s = p.add_argument_group("scoring")
    s.add_argument("--workers", type=int, default=2, help="local sandbox workers")
    s.add_argument("--reward-url", action="append", default=[], help="remote reward service(s) instead")
    s.add_argument("--exec-timeout", type=float, default=30.0, help="sandbox seconds per program (paper: 30)")
    s.add_argument("--score-concurrency", type=int, default=4)
    s.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for CIs")
    s.add_argument("--boot-seed", type=int, default=0)
    s.add_argument("--wandb", action="store_true", help="also log the summary to W&B (offline without a key)")
    s.add_argument("--wandb-group", help="W&B group (e.g. the pipeline whose S1 and R1 runs this evaluates)")
    j = p.add_argument_group("LLM judges (optional: paper Image / Code scores)")
    j.add_argument("--judge-url", help="OpenAI-compatible base URL of the judge")
    j.add_argument("--judge-model", help="image (and code) judge model")
    j.add_argument("--code-judge-model", help="a different code judge model at --judge-url")
    j.add_argument("--judge-retries", type=int, default=3)
    j.add_argument("--judge-timeout", type=float, default=120.0)
    j.add_argument("--judge-concurrency", type=int, default=8)
    j.add_argument("--judge-cache", help="directory for cached verdicts")
    j.add_argument("--judge-api-key-env", default="CODEPERCEPT_JUDGE_API_KEY")
    return p


# ------------------------------------------------------------------------------------------------ setup
def _settings(args: argparse.Namespace) -> dict[str, Any]:
    from codepercept_rl.eval.generate import CODE_PROMPT

    return {
        "model": str(Path(args.model).resolve()) if args.model else None,
        "engine": args.engine if args.model else None,
        "endpoint": args.endpoint,
        "model_name": args.model_name,
        "bench": str(Path(args.bench).resolve()),
        "prompt": args.prompt or CODE_PROMPT,
        "system": args.system,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k,
        "repetition_penalty": args.repetition_penalty,
        "max_tokens": args.max_tokens,
        "seed": args.seed,
        "require_fence": not args.allow_unfenced,
        "exec_timeout": args.exec_timeout,
        "judge_model": args.judge_model if args.judge_url else None,
        "code_judge_model": (args.code_judge_model or args.judge_model) if args.judge_url else None,
    }


def _check_source(args: argparse.Namespace) -> None:
    if bool(args.model) == bool(args.endpoint):
        raise UserError("give exactly one of --model PATH or --endpoint URL")
    if args.endpoint and not args.model_name:
        raise UserError("--endpoint needs --model-name (the served model's name)")
    if args.model and not Path(args.model).is_dir():
        raise UserError(f"--model '{args.model}' is not a directory")


def _check_resume(out: Path, settings: dict[str, Any]) -> None:
    """Refuses to resume into a run directory made with different score-changing settings."""
    import json

    from codepercept_rl.utils.io import atomic_write_json

    path = out / "run.json"
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e})") from None
        diff = [k for k in FINGERPRINT_KEYS if old.get(k) != settings.get(k)]
        if diff:
            k = diff[0]
            raise UserError(
                f"'{out}' holds results of a different run ({k}: {old.get(k)!r} there, {settings.get(k)!r} now); "
                "use another --out or remove it"
            )
    atomic_write_json(path, settings)


def _sampling(args: argparse.Namespace) -> Any:
    from codepercept_rl.rollout.types import SamplingParams

    try:
        return SamplingParams(
            n=1,
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            repetition_penalty=args.repetition_penalty,
            max_tokens=args.max_tokens,
            seed=args.seed,
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def _generator(args: argparse.Namespace) -> Any:
    """An OpenAIGenerator for --endpoint, else an EngineGenerator over HF or vLLM."""
    from codepercept_rl.eval.generate import EngineGenerator, OpenAIGenerator

    params = _sampling(args)
    if args.endpoint:
        return OpenAIGenerator(
            args.endpoint,
            args.model_name,
            params,
            max_concurrency=args.concurrency,
            max_retries=args.retries,
            timeout_s=args.request_timeout,
            backoff_s=args.backoff,
            api_key_env=args.api_key_env,
        )
    if args.engine == "vllm":
        from codepercept_rl.rollout.vllm_engine import VLLMRolloutEngine

        try:
            engine: Any = VLLMRolloutEngine(
                args.model,
                seed=args.seed,
                max_model_len=args.max_model_len,
                gpu_memory_utilization=args.gpu_memory_utilization,
                tensor_parallel_size=args.tensor_parallel_size,
            )
        except ImportError as e:
            raise UserError(str(e)) from None
    else:
        import torch

        from codepercept_rl.models import load_model
        from codepercept_rl.rollout import HFRolloutEngine

        torch.set_num_threads(args.threads)
        try:
            model, processor = load_model(args.model)
        except (OSError, ValueError) as e:
            raise UserError(f"cannot load --model '{args.model}': {e}") from None
        if torch.cuda.is_available():
            model = model.to("cuda")
        engine = HFRolloutEngine(model, processor, micro_batch_size=args.batch_size)
    return EngineGenerator(engine, params, batch_size=max(args.batch_size, 1))


def _backend(args: argparse.Namespace) -> Any:
    """A started local RewardPool (sandbox timeout = --exec-timeout) or a client of --reward-url services."""
    import math

    from reward_servers.pool import RewardPool
    from reward_servers.sandbox import SandboxConfig

    if args.reward_url:
        from reward_servers.client import RewardClient

        return RewardClient(list(args.reward_url), timeout_s=max(120.0, 4 * args.exec_timeout))
    # The CPU-seconds limit must not undercut the wall-clock one (a busy loop is a timeout either way).
    config = SandboxConfig(timeout_s=args.exec_timeout, cpu_s=max(20, math.ceil(args.exec_timeout) + 1))
    return RewardPool(workers=args.workers, config=config).start()


def _judge(args: argparse.Namespace) -> Any:
    if not args.judge_url:
        return None
    if not args.judge_model:
        raise UserError("--judge-url needs --judge-model")
    from codepercept_rl.config.schema import JudgeConfig
    from codepercept_rl.eval.judges import LLMItemJudge

    def config(model: str) -> JudgeConfig:
        return JudgeConfig(
            base_url=args.judge_url,
            model=model,
            api_key_env=args.judge_api_key_env,
            timeout_s=args.judge_timeout,
            max_concurrency=args.judge_concurrency,
            max_retries=args.judge_retries,
            cache_dir=args.judge_cache,
        )

    return LLMItemJudge(
        config(args.judge_model), config(args.code_judge_model) if args.code_judge_model else None
    )


# ------------------------------------------------------------------------------------------------ commands
def run(argv: Sequence[str]) -> int:
    """The main evaluation: setup -> evaluate -> report -> cleanup."""
    from codepercept_rl.eval.bench import load_bench
    from codepercept_rl.eval.harness import run_eval
    from codepercept_rl.eval.report import write_report
    from codepercept_rl.utils.run import prepare_run_dir

    args = _parser().parse_args(argv)
    _check_source(args)
    # 1. setup
    items = load_bench(args.bench, limit=args.limit)
    out = prepare_run_dir(args.out)
    settings = _settings(args)
    _check_resume(out, settings)
    judge = _judge(args)
    generator = _generator(args)
    backend = _backend(args)
    try:
        # 2. evaluate
        stats = asyncio.run(
            run_eval(
                items,
                generator,
                backend,
                out,
                judge=judge,
                prompt=settings["prompt"],
                system=args.system,
                require_fence=settings["require_fence"],
                score_concurrency=args.score_concurrency,
            )
        )
    finally:
        # 4. cleanup (the sandbox workers are processes: never leave them behind)
        backend.close()
    # 3. report
    summary = write_report(
        out,
        meta={**settings, "generator": generator.name, "run": stats},
        n_boot=args.n_boot,
        seed=args.boot_seed,
    )
    _track(args, out, settings, summary)
    o = summary.overall.scores
    head = "final" if o.get("final") is not None else "final_det"
    print(
        f"eval: {summary.n_items} items ({stats['skipped']} resumed, {stats['written']} new) -> "
        f"{head} {o[head]:.2f}, exec {o['exec']:.1f}, image {o['image']:.2f}, code "
        f"{'–' if o['code'] is None else format(o['code'], '.2f')}; outcomes {summary.status_counts}; "
        f"report {out / 'report.md'}"
        if o.get(head) is not None
        else f"eval: no scored items; outcomes {summary.status_counts}; report {out / 'report.md'}"
    )
    if summary.status_counts.get("api_error", 0) == summary.n_items - summary.n_bad_items > 0:
        print("eval: warning: every generation failed (is the endpoint up?)", file=sys.stderr)
    return 0


TABLE_ROWS = 32  # samples logged as a tracker table (W&B shows them as a gallery); the HTML gallery has all


def _track(args: argparse.Namespace, out: Path, settings: dict[str, Any], summary: Any) -> None:
    """Headline metrics, outcome counts and a table of samples to ``metrics.jsonl`` (and W&B with --wandb)."""
    from codepercept_rl.eval.results import read_results
    from codepercept_rl.eval.stats import item_final
    from codepercept_rl.tracking import Tracker

    backends = ["jsonl"] + (["wandb"] if args.wandb else [])
    metrics = {f"eval/{k}": v for k, v in summary.overall.scores.items() if v is not None}
    metrics.update({f"eval/status/{k}": v for k, v in summary.status_counts.items()})
    judged = summary.overall.scores.get("final") is not None
    records = sorted(read_results(out).values(), key=lambda r: r.get("index", 1 << 30))[:TABLE_ROWS]

    def image(rel: str | None) -> bytes | None:
        return (out / rel).read_bytes() if rel and (out / rel).is_file() else None

    columns = ["id", "category", "status", "final", "reference", "render", "code"]
    rows = [
        [r["id"], r.get("category"), r["status"], item_final(r, judged), image(r["files"]["reference"]),
         image(r["files"]["render"]), (r.get("code") or "")[:4000]]
        for r in records
    ]  # fmt: skip
    experiment = Path(out).name
    with Tracker(out, experiment=experiment, backends=backends, config=settings, job_type="eval",
                 group=getattr(args, "wandb_group", None)) as tracker:  # fmt: skip
        tracker.log(metrics, step=0)
        tracker.log_table("samples", columns, rows, step=0)


def compare_cmd(argv: Sequence[str]) -> int:
    """``eval compare A B``: paired per-item comparison, printed and written as compare.md / compare.json."""
    from codepercept_rl.eval.report import compare_markdown
    from codepercept_rl.eval.results import read_results
    from codepercept_rl.eval.stats import compare
    from codepercept_rl.utils.io import atomic_write_json, atomic_write_text

    p = argparse.ArgumentParser(
        prog="codepercept-rl eval compare", description="Compare two eval runs (B vs A)."
    )
    p.add_argument("a")
    p.add_argument("b")
    p.add_argument("--out", help="write compare.md and compare.json here")
    p.add_argument("--judged", action="store_true", help="compare the judge Final (default: deterministic)")
    p.add_argument("--tie-margin", type=float, default=1.0, help="|B - A| <= this (0-100 points) is a tie")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--boot-seed", type=int, default=0)
    args = p.parse_args(argv)
    cmp = compare(
        read_results(args.a),
        read_results(args.b),
        judged=args.judged,
        tie_margin=args.tie_margin,
        n_boot=args.n_boot,
        seed=args.boot_seed,
    )
    text = compare_markdown(cmp, Path(args.a).name, Path(args.b).name)
    print(text)
    if args.out:
        atomic_write_text(Path(args.out) / "compare.md", text)
        atomic_write_json(Path(args.out) / "compare.json", cmp.to_dict())
    return 0


def report_cmd(argv: Sequence[str]) -> int:
    """``eval report OUT``: rebuild report.md, gallery.html, summary.png and summary.json from results."""
    from codepercept_rl.eval.report import load_meta, write_report

    p = argparse.ArgumentParser(prog="codepercept-rl eval report", description="Rebuild a run's report.")
    p.add_argument("out")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--boot-seed", type=int, default=0)
    args = p.parse_args(argv)
    summary = write_report(args.out, meta=load_meta(args.out), n_boot=args.n_boot, seed=args.boot_seed)
    print(f"report: {summary.n_items} items -> {Path(args.out) / 'report.md'}")
    return 0


def solve_cmd(argv: Sequence[str]) -> int:
    """``eval solve``: the captioner-solver protocol on a bench whose items have questions and answers."""
    from codepercept_rl.eval.bench import load_bench
    from codepercept_rl.eval.caption_solver import CAPTION_PROMPT, run_caption_solver
    from codepercept_rl.eval.generate import OpenAIGenerator
    from codepercept_rl.rollout.types import SamplingParams
    from codepercept_rl.utils.run import prepare_run_dir

    p = argparse.ArgumentParser(prog="codepercept-rl eval solve", description="Captioner-solver evaluation.")
    p.add_argument("--bench", required=True)
    p.add_argument("--out", required=True)
    _generation_args(p)
    p.add_argument("--caption-prompt", default=CAPTION_PROMPT)
    p.add_argument(
        "--solver-endpoint", required=True, help="OpenAI-compatible base URL of the text-only solver"
    )
    p.add_argument("--solver-model", required=True)
    p.add_argument("--solver-max-tokens", type=int, default=2048)
    p.add_argument("--solver-api-key-env", default="OPENAI_API_KEY")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--boot-seed", type=int, default=0)
    args = p.parse_args(argv)
    _check_source(args)
    items = load_bench(args.bench, limit=args.limit)
    if not any(it.question and it.answer is not None for it in items):
        raise UserError(f"bench '{args.bench}' has no items with both a question and an answer")
    out = prepare_run_dir(args.out)
    solver = OpenAIGenerator(
        args.solver_endpoint,
        args.solver_model,
        SamplingParams(temperature=0.0, max_tokens=args.solver_max_tokens, seed=args.seed),
        max_concurrency=args.concurrency,
        max_retries=args.retries,
        timeout_s=args.request_timeout,
        backoff_s=args.backoff,
        api_key_env=args.solver_api_key_env,
    )
    summary = asyncio.run(
        run_caption_solver(
            items,
            _generator(args),
            solver,
            out,
            caption_prompt=args.caption_prompt,
            solver_concurrency=args.concurrency,
            n_boot=args.n_boot,
            seed=args.boot_seed,
        )
    )
    acc = summary["accuracy"]
    print(
        f"solve: {summary['n']} questions, accuracy {'–' if acc is None else f'{acc:.2f}'} "
        f"CI {summary['ci']}; outcomes {summary['status_counts']}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: ``codepercept-rl eval [compare|report|solve] ...``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    if argv and argv[0] == "compare":
        return compare_cmd(argv[1:])
    if argv and argv[0] == "report":
        return report_cmd(argv[1:])
    if argv and argv[0] == "solve":
        return solve_cmd(argv[1:])
    return run(argv)


if __name__ == "__main__":  # python -m codepercept_rl.jobs.eval ... (what `codepercept-rl eval` runs)
    try:
        sys.exit(main())
    except UserError as e:
        print(f"codepercept-rl eval: error: {e}", file=sys.stderr)
        sys.exit(2)
