"""An OpenRLHF remote reward server (``--reward.remote_url`` / ``--remote_rm_url``) backed by our rewards.

Run::

    python -m codepercept_rl.rewards.adapters.openrlhf --port 5000 --reward codepercept --workers 4
    # OpenRLHF: --remote_rm_url http://127.0.0.1:5000/get_reward  (label key: a column as described below)

Contract (OpenRLHF ``openrlhf/utils/remote_rm_utils.py`` and its reward_func examples): OpenRLHF POSTs
``{"query": [prompt + response, ...], "prompts": [prompt, ...], "labels": [label, ...]}`` and reads
``"rewards"`` (used for advantages), optionally ``"scores"`` (dynamic filtering, expected in [0, 1]) and
``"extra_logs"`` (name -> one value per sample, logged to wandb). Here: ``rewards`` = the reward's score
(0.0 where it could not score: OpenRLHF has no "missing"), ``scores`` = the score divided by the sum of the
reward's positive weights, clipped to [0, 1], and ``extra_logs`` = every weighted component plus ``scored``.

The response is the query with its prompt removed (when the query starts with the prompt; else the whole
query, whose code block ``extract_code`` still finds). Labels are as in ``adapters/common.py``: reference
code, or a JSON object with ``reference_code``, ``target_id``, ``target_path``, ``reference_caption``, ``task``.

Security: the app runs no code itself (the sandboxed pool or remote services do), binds 127.0.0.1 by default,
has no authentication, and reads ``target_path`` files only under ``--target-root`` when given.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from codepercept_rl.rewards.adapters.common import TargetFiles, parse_label, sample_from_fields
from codepercept_rl.rewards.backend import RewardBackend
from codepercept_rl.rewards.registry import Reward, get_reward

log = logging.getLogger(__name__)


def response_of(query: Any, prompt: Any) -> Any:
    """The response part of an OpenRLHF query (prompt + response)."""
    if isinstance(query, str) and isinstance(prompt, str) and prompt and query.startswith(prompt):
        return query[len(prompt) :]
    return query


def create_app(reward: Reward, backend: RewardBackend, *, target_root: str | None = None) -> FastAPI:
    """The FastAPI app: ``POST /get_reward`` (OpenRLHF's contract, module docstring) and ``GET /healthz``."""
    app = FastAPI(title="codepercept-rl OpenRLHF reward")
    files = TargetFiles(target_root)
    scale = sum(w for w in reward.weights.values() if w > 0) or 1.0

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"ok": True, "reward": reward.name}

    @app.post("/get_reward")
    async def get_reward_endpoint(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError:
            raise HTTPException(400, "body must be JSON") from None
        queries = body.get("query") if isinstance(body, dict) else None
        if not isinstance(queries, list):
            raise HTTPException(400, "'query' must be a list of strings")
        n = len(queries)
        # Older OpenRLHF versions post only "query": absent lists mean "none given", not "empty".
        prompts = body.get("prompts") if body.get("prompts") is not None else [None] * n
        labels = body.get("labels") if body.get("labels") is not None else [None] * n
        if (
            not isinstance(prompts, list)
            or not isinstance(labels, list)
            or len(prompts) != n
            or len(labels) != n
        ):
            raise HTTPException(400, f"'prompts' and 'labels' must be lists of {n} entries like 'query'")
        samples = []
        for query, prompt, label in zip(queries, prompts, labels, strict=True):
            try:
                fields = parse_label(label)
            except ValueError as exc:
                fields = {}
                log.warning("unusable label (scored without it): %s", exc)
            sample = sample_from_fields(response_of(query, prompt), fields, files)
            if "target_error" in sample.extra:
                log.warning("label target ignored: %s", sample.extra["target_error"])
            samples.append(sample)
        out = await reward(samples, backend)
        rewards = [s if s is not None else 0.0 for s in out.scores]
        extra_logs: dict[str, list[float]] = {
            name: [v if v is not None else 0.0 for v in out.components.get(name, [None] * n)]
            for name in reward.weights
        }
        extra_logs["scored"] = [float(s is not None) for s in out.scores]
        return {
            "rewards": rewards,
            "scores": [min(1.0, max(0.0, r / scale)) for r in rewards],
            "extra_logs": extra_logs,
        }

    return app


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of ``main``."""
    p = argparse.ArgumentParser(description="OpenRLHF remote reward server backed by codepercept-rl rewards")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=5000)
    p.add_argument("--reward", default="codepercept", help="a registered reward name")
    p.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE", help="component weight")
    p.add_argument(
        "--reward-url", action="append", default=[], help="remote reward service(s); else a local pool"
    )
    p.add_argument("--workers", type=int, default=2, help="local pool sandboxes")
    p.add_argument("--timeout-s", type=float, default=10.0, help="per-sample sandbox timeout")
    p.add_argument("--target-root", default=None, help="only read target_path files under this directory")
    p.add_argument("--judge-url", default=None, help="OpenAI-compatible judge base URL (codepercept reward)")
    p.add_argument("--judge-model", default="")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Parses options, builds the reward and its backend, serves until interrupted."""
    import uvicorn

    from codepercept_rl.config.schema import JudgeConfig, RewardConfig
    from codepercept_rl.rewards.backend import make_backend

    args = build_parser().parse_args(argv)
    weights = {}
    for item in args.weight:
        name, sep, value = item.partition("=")
        try:
            weights[name] = float(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise SystemExit(f"--weight must look like NAME=NUMBER, got {item!r}")
    options: dict[str, Any] = {}
    if args.judge_url:
        options["judge"] = JudgeConfig(base_url=args.judge_url, model=args.judge_model)
    try:
        reward = get_reward(args.reward, weights, **options)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    cfg = RewardConfig(
        name=args.reward,
        server_urls=list(args.reward_url),
        num_workers=args.workers,
        timeout_s=args.timeout_s,
    )
    backend = make_backend(cfg)
    try:
        uvicorn.run(create_app(reward, backend, target_root=args.target_root), host=args.host, port=args.port)
    finally:
        backend.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
