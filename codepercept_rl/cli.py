"""The ``codepercept-rl`` command. Each subcommand lives in its own module and is imported only when used, so
``codepercept-rl --help`` answers at once without importing torch.

Errors a user can fix (a missing file, an unknown config key, a bad override, an unwritable run directory)
print one line and exit with status 2; no traceback. ``CODEPERCEPT_DEBUG=1`` shows the traceback anyway.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Sequence

from codepercept_rl.errors import UserError

# name -> (module:function taking argv and returning an exit code, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "quickstart": (
        "codepercept_rl.jobs.quickstart:main",
        "data -> S1 -> R1 -> eval of a tiny Qwen-VL on this machine, with a report (the README's main job).",
    ),
    "demo": ("codepercept_rl.jobs.quickstart:main", "Alias of quickstart."),
    "data": ("codepercept_rl.data_cli:main", "Build, filter, export and show image-caption-code datasets."),
    "sft": ("codepercept_rl.jobs.sft:main", "S1: supervised fine-tuning (image -> caption, image -> code)."),
    "train": ("codepercept_rl.jobs.train:main", "R1: GRPO with code-execution rewards (Ray actors)."),
    "submit": ("codepercept_rl.launch:main", "Run train, sft, eval ... as a job on a Ray cluster."),
    "eval": (
        "codepercept_rl.jobs.eval:main",
        "Evaluate a model on a STEM2Code-style bench; compare two runs.",
    ),
    "reward-server": ("reward_servers.server:main", "Serve sandboxed render-and-compare rewards over HTTP."),
    "openrlhf-reward-server": (
        "codepercept_rl.rewards.adapters.openrlhf:main",
        "Serve a reward over OpenRLHF's --reward.remote_url contract.",
    ),
    "models": ("codepercept_rl.models.cli:main", "Build or inspect offline tiny Qwen-VL models."),
    "config": (
        "codepercept_rl.config.cli:main",
        "Print a recipe's resolved config after validation and overrides.",
    ),
    "plan": (
        "codepercept_rl.plan:main",
        "Per-GPU memory of a recipe (weights, grads, optimizer, activations, vLLM) and whether it fits.",
    ),
    "plot": ("codepercept_rl.plotting:main", "Draw a run's training curves (metrics.jsonl) to PNG."),
}


def _usage() -> str:
    width = max(map(len, SUBCOMMANDS))
    lines = [
        "usage: codepercept-rl <command> [args...]",
        "",
        "Train multimodal LLMs to perceive STEM images through code.",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in SUBCOMMANDS.items()]
    lines += ["", "Run 'codepercept-rl <command> --help' for a command's options."]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """Dispatch to a subcommand; returns the process exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"codepercept-rl {version('codepercept-rl')}")
        except PackageNotFoundError:
            print("codepercept-rl (not installed)")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"codepercept-rl: error: unknown command '{name}'\n\n{_usage()}", file=sys.stderr)
        return 2
    target, _ = SUBCOMMANDS[name]
    module_name, func_name = target.split(":")
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func(rest) or 0)
    except UserError as e:
        if os.environ.get("CODEPERCEPT_DEBUG"):
            raise
        print(f"codepercept-rl {name}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"codepercept-rl {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
