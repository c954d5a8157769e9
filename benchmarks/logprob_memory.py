"""Peak memory of per-token log-probs + entropy + backward: chunked LM head vs full [tokens x vocab] logits.

    python benchmarks/logprob_memory.py                      # 4,096 tokens, Qwen's 151,936-token vocabulary
    python benchmarks/logprob_memory.py --tokens 8192 --chunk-size 1024

Each variant runs in a fresh Python process (peak RSS is per process): hidden states (N, H) and an LM head
(V, H) in fp32, then log-probs of N target tokens at temperature 0.7, their entropy, and the backward of
``sum(logprobs)`` into the hidden states and the head. The figure is the peak RSS above what the process held
once its inputs existed (``ru_maxrss`` minus the RSS before the forward), i.e. the forward's and backward's own
memory. ``full`` is the plain way, what the learner did before it chunked: the (N, V) logits of every token at once,
``cross_entropy`` on them and the entropy as ``logsumexp(z) - sum(softmax(z) * z)``; ``chunked`` is
``codepercept_rl.learner.logprobs.chunked_token_logprobs`` at the learner's default ``model.logprob_chunk_size``. Both processes save their log-probs, entropies and gradients; the parent prints the largest difference.
The last line is ``logprob_memory_ratio_full_over_chunked=<x>``.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def worker(args: argparse.Namespace) -> None:
    """One variant in this process; writes its peak and results to ``args.out``."""
    sys.path.insert(0, str(REPO))
    import torch
    import torch.nn.functional as F

    from codepercept_rl.learner.logprobs import chunked_token_logprobs

    torch.set_num_threads(args.threads)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(args.tokens, args.hidden, generator=g) * 0.5).requires_grad_()
    weight = (torch.randn(args.vocab, args.hidden, generator=g) * args.hidden**-0.5).requires_grad_()
    targets = torch.randint(args.vocab, (args.tokens,), generator=g)
    before = _rss_bytes()
    if args.chunk_size > 0:
        logprobs, entropy = chunked_token_logprobs(hidden, weight, targets, temperature=0.7,
                                                   chunk_size=args.chunk_size, with_entropy=True)  # fmt: skip
    else:
        z = F.linear(hidden, weight) / 0.7  # (N, V)
        logprobs = -F.cross_entropy(z, targets, reduction="none")
        with torch.no_grad():
            entropy = torch.logsumexp(z, -1) - (torch.softmax(z, -1) * z).sum(-1)
    logprobs.sum().backward()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    torch.save({"logprobs": logprobs.detach(), "entropy": entropy, "grad_hidden": hidden.grad,
                "grad_weight_norm": weight.grad.norm()}, args.out)  # fmt: skip
    Path(args.out + ".json").write_text(json.dumps({"peak_extra": peak - before}))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--vocab", type=int, default=151936, help="Qwen2.5-VL / Qwen3-VL vocabulary")
    p.add_argument("--hidden", type=int, default=256, help="small, so the run takes seconds; memory is in V")
    p.add_argument(
        "--chunk-size", type=int, default=512, help="the learner's model.logprob_chunk_size default"
    )
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        worker(args)
        return 0
    import torch

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, chunk in (("full", 0), ("chunked", args.chunk_size)):
            out = str(Path(tmp) / name)
            cmd = [sys.executable, __file__, "--worker", "--out", out, "--tokens", str(args.tokens), "--vocab",
                   str(args.vocab), "--hidden", str(args.hidden), "--chunk-size", str(chunk), "--threads",
                   str(args.threads)]  # fmt: skip
            subprocess.run(cmd, check=True)
            results[name] = (json.loads(Path(out + ".json").read_text())["peak_extra"], torch.load(out))
    (full_peak, full), (chunk_peak, chunked) = results["full"], results["chunked"]
    logits_gib = args.tokens * args.vocab * 4 / 2**30
    print(
        f"{args.tokens} tokens x vocab {args.vocab} (fp32 logits alone: {logits_gib:.2f} GiB), hidden {args.hidden}"
    )
    print(f"{'variant':<10} {'peak extra memory':>18}")
    print(f"{'full':<10} {full_peak / 2**30:>14.2f} GiB   (all logits at once)")
    print(f"{'chunked':<10} {chunk_peak / 2**30:>14.2f} GiB   (chunks of {args.chunk_size} tokens)")
    for key in ("logprobs", "entropy", "grad_hidden"):
        diff = float((full[key] - chunked[key]).abs().max())
        print(f"max |full - chunked| {key}: {diff:.2e}")
    rel = float((full["grad_weight_norm"] - chunked["grad_weight_norm"]).abs() / full["grad_weight_norm"])
    print(f"relative difference of the head's gradient norm: {rel:.2e}")
    print(f"logprob_memory_ratio_full_over_chunked={full_peak / chunk_peak:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
