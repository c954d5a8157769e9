"""HF rollouts: the lean decode loop (``HFRolloutEngine(decode="lean")``, the default) against ``model.generate``
(``decode="generate"``), the same engine, model, prompts and seeds, side by side in one run.

    python benchmarks/hf_decode.py                             # the quickstart's shape: tiny, 4 prompts x 8, 256
    python benchmarks/hf_decode.py --preset small --prompts 2 --n 4 --max-tokens 64   # grpo_vs_trl's shape

Each repeat times one ``engine.generate`` call of ``--prompts`` prompts x ``--n`` samples in micro-batches of
``--micro-batch`` sequences, lean and generate interleaved, after one untimed warm-up call each; torch uses one
thread. Both calls draw the same tokens (the script checks it and says so), so the two figures time the same
work. The last line is ``lean_decode_ratio_vs_generate=<lean/generate>`` (median seconds; below 1 is faster).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny", choices=("nano", "tiny", "small"))
    parser.add_argument("--arch", default="qwen2_5_vl", choices=("qwen2_5_vl", "qwen3_vl"))
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--n", type=int, default=8, help="samples per prompt")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16, help="sequences per decode batch")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from codepercept_rl.eval.generate import GenRequest, rollout_prompt
    from codepercept_rl.models import build_tiny_model, load_model
    from codepercept_rl.rollout import HFRolloutEngine, SamplingParams
    from data_tools.generators import generate
    from data_tools.prompts import S1_CODE_PROMPT
    from reward_servers.sandbox import Sandbox, SandboxConfig

    with tempfile.TemporaryDirectory(prefix="hf_decode_") as tmp:
        build_tiny_model(args.arch, args.preset, out_dir=tmp, seed=0)
        model, processor = load_model(tmp)
    model.eval()
    with Sandbox(SandboxConfig(timeout_s=20)) as sandbox:
        pngs = [sandbox.run(generate("shapes", i).code).png for i in range(args.prompts)]
    prompts = [rollout_prompt(GenRequest(str(i), png, S1_CODE_PROMPT)) for i, png in enumerate(pngs)]
    engines = {
        "lean": HFRolloutEngine(model, processor, micro_batch_size=args.micro_batch, decode="lean"),
        "generate": HFRolloutEngine(model, processor, micro_batch_size=args.micro_batch, decode="generate"),
    }
    if engines["lean"].decode_fallback is not None:
        raise SystemExit(f"the lean loop does not run this model: {engines['lean'].decode_fallback}")
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    tokens: dict[str, list[list[int]]] = {}
    same = True
    for rep in range(args.repeats + 1):
        params = SamplingParams(n=args.n, temperature=args.temperature, max_tokens=args.max_tokens, seed=rep)
        drawn = {}
        for name, engine in engines.items():
            t0 = time.perf_counter()
            out = engine.generate(prompts, params)
            if rep:  # the first call of each is the warm-up
                seconds[name].append(time.perf_counter() - t0)
            drawn[name] = [c.token_ids for g in out for c in g]
        same &= drawn["lean"] == drawn["generate"]
        tokens = drawn
    n_tokens = sum(len(t) for t in tokens["lean"])
    print(f"model: {args.arch} preset={args.preset} fp32, random weights; torch threads=1")
    print(f"per call: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, micro-batch "
          f"{args.micro_batch}, temperature {args.temperature}; {args.repeats} timed calls each (interleaved)")  # fmt: skip
    print(
        f"tokens drawn by lean and generate identical in every call: {same} ({n_tokens} tokens in the last)"
    )
    print()
    print(f"{'decode':<10} {'median s':>9} {'min s':>7} {'max s':>7} {'tokens/s':>9}")
    for name, values in seconds.items():
        med = statistics.median(values)
        print(f"{name:<10} {med:>9.3f} {min(values):>7.3f} {max(values):>7.3f} {n_tokens / med:>9.0f}")
    print()
    ratio = statistics.median(seconds["lean"]) / statistics.median(seconds["generate"])
    print(f"lean_decode_ratio_vs_generate={ratio:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
