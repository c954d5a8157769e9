"""``codepercept-rl config RECIPE [key=value ...]``: validate a recipe with overrides and print it resolved.

Use it to check a command line before launching a cluster job: it fails exactly as the job would.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from codepercept_rl.config.loader import dump_yaml, load_config
from codepercept_rl.config.schema import JobConfig


def main(argv: Sequence[str] | None = None) -> int:
    """Print the resolved config as YAML; exit 2 with one line naming the problem when it is invalid."""
    parser = argparse.ArgumentParser(prog="codepercept-rl config", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "recipe", nargs="?", default=None, help="a YAML recipe (default: the built-in defaults)"
    )
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. actor.optim.lr=1e-6 rollout.n=8")
    args = parser.parse_args(argv)
    if args.recipe is not None and "=" in args.recipe and not args.recipe.endswith((".yaml", ".yml")):
        args.overrides.insert(0, args.recipe)  # only overrides were given
        args.recipe = None
    print(dump_yaml(load_config(args.recipe, args.overrides, schema=JobConfig)), end="")
    return 0
