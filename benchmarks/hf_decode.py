"""HF rollouts: the lean decode loop (``HFRolloutEngine(decode="lean")``, the default) against ``model.generate``
(``decode="generate"``), and the lean loop's two samplers against each other, in one run.

    python benchmarks/hf_decode.py                             # the quickstart's shape: tiny, 4 prompts x 8, 256
    python benchmarks/hf_decode.py --preset small --prompts 2 --n 4 --max-tokens 64   # grpo_vs_trl's shape
    python benchmarks/hf_decode.py --model runs/quickstart/runs/s1/hf --top-p 0.85     # a trained policy, R1's top-p

Each repeat times one ``engine.generate`` call of ``--prompts`` prompts x ``--n`` samples in micro-batches of
``--micro-batch`` sequences per engine, the engines interleaved, after one untimed warm-up call each; torch uses
one thread. Three engines:

- ``generate``: ``model.generate``;
- ``lean``: the lean loop with ``sampler="hf"`` (HF's top-p warper and ``torch.multinomial``). It draws the same
  tokens as ``generate`` (the script checks it and says so), so the two figures time the same work:
  ``lean_decode_ratio_vs_generate=<lean/generate>`` (median seconds; below 1 is faster);
- ``lean-fast``: the lean loop with ``sampler="fast"`` (the default; ``codepercept_rl/rollout/sampling.py``). It
  draws from the same distribution but its own random stream, so its calls draw other tokens and end at other
  lengths: ``fast_sampler_ratio_vs_hf=<lean-fast/lean>`` compares median seconds per decode step (the loop runs
  one step per micro-batch per position until every row of it has ended, finished rows included).

Random weights spread the next-token distribution over the whole vocabulary, so a top-p nucleus is most of it and
the fast sampler falls back to a full sort; ``--model`` takes a trained checkpoint (e.g. the quickstart's S1 model)
to time the distributions a rollout actually samples from.
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
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument(
        "--model", help="an HF checkpoint folder (Qwen-VL) instead of a random-weight tiny model"
    )
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    from codepercept_rl.eval.generate import GenRequest, rollout_prompt
    from codepercept_rl.models import build_tiny_model, load_model
    from codepercept_rl.rollout import HFRolloutEngine, SamplingParams
    from data_tools.generators import generate
    from data_tools.prompts import S1_CODE_PROMPT
    from reward_servers.sandbox import Sandbox, SandboxConfig

    if args.model:
        model, processor = load_model(args.model)
    else:
        with tempfile.TemporaryDirectory(prefix="hf_decode_") as tmp:
            build_tiny_model(args.arch, args.preset, out_dir=tmp, seed=0)
            model, processor = load_model(tmp)
    model.eval()
    with Sandbox(SandboxConfig(timeout_s=20)) as sandbox:
        pngs = [sandbox.run(generate("shapes", i).code).png for i in range(args.prompts)]
    prompts = [rollout_prompt(GenRequest(str(i), png, S1_CODE_PROMPT)) for i, png in enumerate(pngs)]
    engines = {
        "lean": HFRolloutEngine(
            model, processor, micro_batch_size=args.micro_batch, decode="lean", sampler="hf"
        ),
        "generate": HFRolloutEngine(model, processor, micro_batch_size=args.micro_batch, decode="generate"),
        "lean-fast": HFRolloutEngine(model, processor, micro_batch_size=args.micro_batch, sampler="fast"),
    }
    if engines["lean"].decode_fallback is not None:
        raise SystemExit(f"the lean loop does not run this model: {engines['lean'].decode_fallback}")
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    steps: dict[str, list[int]] = {name: [] for name in engines}
    n_tokens: dict[str, int] = {name: 0 for name in engines}
    same = True
    for rep in range(args.repeats + 1):
        params = SamplingParams(n=args.n, temperature=args.temperature, top_p=args.top_p,
                                max_tokens=args.max_tokens, seed=rep)  # fmt: skip
        drawn = {}
        for name, engine in engines.items():
            t0 = time.perf_counter()
            out = engine.generate(prompts, params)
            elapsed = time.perf_counter() - t0
            drawn[name] = [c.token_ids for g in out for c in g]
            if rep:  # the first call of each is the warm-up
                seconds[name].append(elapsed)
                steps[name].append(_decode_steps(drawn[name], args.micro_batch))
                n_tokens[name] += sum(len(t) for t in drawn[name])
        same &= drawn["lean"] == drawn["generate"]
    source = args.model or f"{args.arch} preset={args.preset}, random weights"
    print(f"model: {source}; fp32, torch threads=1")
    print(f"per call: {args.prompts} prompts x n={args.n}, max_tokens={args.max_tokens}, micro-batch "
          f"{args.micro_batch}, temperature {args.temperature}, top-p {args.top_p}; {args.repeats} timed calls "
          "each (interleaved)")  # fmt: skip
    print(f"tokens drawn by lean and generate identical in every call: {same}")
    print()
    print(f"{'engine':<10} {'sampler':<8} {'median s':>9} {'min s':>7} {'max s':>7} {'tokens':>7} {'steps':>6} "
          f"{'ms/step':>8}")  # fmt: skip
    per_step = {}
    for name, values in seconds.items():
        med = statistics.median(values)
        per_step[name] = statistics.median(t / n for t, n in zip(values, steps[name], strict=True))
        sampler = "multin." if name == "generate" else engines[name].sampler
        print(f"{name:<10} {sampler:<8} {med:>9.3f} {min(values):>7.3f} {max(values):>7.3f} "
              f"{n_tokens[name] // args.repeats:>7} {statistics.median(steps[name]):>6.0f} "
              f"{1e3 * per_step[name]:>8.2f}")  # fmt: skip
    print()
    ratio = statistics.median(seconds["lean"]) / statistics.median(seconds["generate"])
    print(f"lean_decode_ratio_vs_generate={ratio:.3f}")
    print(f"fast_sampler_ratio_vs_hf={per_step['lean-fast'] / per_step['lean']:.3f}")
    return 0


def _decode_steps(token_ids: list[list[int]], micro_batch: int) -> int:
    """Decode steps of one call: per micro-batch (in the engine's order), its longest completion."""
    return sum(max(map(len, token_ids[i : i + micro_batch])) for i in range(0, len(token_ids), micro_batch))


if __name__ == "__main__":
    raise SystemExit(main())
