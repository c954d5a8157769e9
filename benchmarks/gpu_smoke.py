"""GPU smoke run: a few S1 steps and a few R1 steps of a small real-architecture Qwen-VL on one GPU, in minutes.

    python benchmarks/gpu_smoke.py                        # one CUDA GPU: bf16, vLLM rollouts colocated
    python benchmarks/gpu_smoke.py --rollout hf           # HF generate rollouts (no vLLM installed)
    python benchmarks/gpu_smoke.py --device cpu --preset nano --s1-steps 2 --r1-steps 1   # the flow, on a CPU

What runs (everything offline, nothing downloaded):

1. data: ``--num`` items of two parametric families rendered in the sandbox, exported for S1 and R1;
2. a model of the real architecture (``--arch``, Qwen3-VL by default) at the ``--preset`` size, random weights,
   saved with the stock processor layout vLLM loads;
3. S1: ``--s1-steps`` optimizer steps of the S1 job (FSDP2, one rank, ``model.dtype``, checkpointing on);
4. R1: ``--r1-steps`` GRPO steps of the R1 job from S1's export (``--rollout vllm``: the engine colocated in the
   learner's process, sleeping during the update; ``hf``: HF generate, colocated).

It prints, per job: median tokens/s, the model FLOPs utilisation (MFU: ``6 x parameters x tokens/s`` over the
GPU's dense bf16 peak, ``--peak-tflops`` or looked up from the device name), the peak GPU memory PyTorch
allocated, and the median of every ``timing_s/*`` metric; and a last JSON line with all of it. The figures are
smoke figures (a small model, random weights, a few steps), not a benchmark of the paper's 8B runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from codepercept_rl.tracking import read_metrics  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s, no sparsity) by device-name fragment, from the vendors' data sheets.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0, "L4": 121.0}


def peak_tflops(device: str, given: float | None) -> float | None:
    """``given``, else the bf16 peak of this CUDA device by name, else None (CPU, unknown GPUs)."""
    if given is not None:
        return given
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def _median(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(values) if values else None


def summarise(
    run_dir: Path, tokens_key: str, params: int, peak: float | None, train_seconds_key: str | None = None
) -> dict[str, Any]:
    """Median throughput, MFU and ``timing_s/*`` of a run's ``metrics.jsonl`` (the first step is warm-up).

    MFU counts the training FLOPs (``6 x parameters`` per token) over the seconds of the update: the whole step
    for S1, ``timing_s/update_actor`` for R1 (``train_seconds_key``; generation is not training FLOPs), as
    verl's ``perf/mfu/actor``.
    """
    rows = [r for r in read_metrics(run_dir) if tokens_key in r]
    steady = rows[1:] or rows
    tokens_per_s = _median(steady, tokens_key)
    timings = sorted({k for r in steady for k in r if k.startswith("timing_s/")})
    out: dict[str, Any] = {"steps": len(rows), "tokens_per_s": tokens_per_s}
    train_rates = [
        r[tokens_key] * r["timing_s/step"] / r[train_seconds_key] if train_seconds_key else r[tokens_key]
        for r in steady
        if r.get(tokens_key)
        and (not train_seconds_key or (r.get(train_seconds_key) and r.get("timing_s/step")))
    ]
    rate = statistics.median(train_rates) if train_rates else None
    out["mfu"] = 6 * params * rate / (peak * 1e12) if peak and rate else None
    out.update({k: _median(steady, k) for k in timings})
    return out


def _peak_memory_gib(device: str) -> float | None:
    if device != "cuda":
        return None
    value = torch.cuda.max_memory_allocated() / 2**30
    torch.cuda.reset_peak_memory_stats()
    return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_smoke")
    p.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    p.add_argument("--arch", default="qwen3_vl", choices=["qwen3_vl", "qwen2_5_vl"])
    p.add_argument("--preset", default="small", help="a tiny-model preset: nano, tiny, small")
    p.add_argument("--rollout", default="vllm", choices=["vllm", "hf"])
    p.add_argument("--num", type=int, default=96, help="data items to render")
    p.add_argument("--s1-steps", type=int, default=20)
    p.add_argument("--r1-steps", type=int, default=4)
    p.add_argument("--response-length", type=int, default=256)
    p.add_argument(
        "--peak-tflops", type=float, default=None, help="the GPU's dense bf16 peak (default: by name)"
    )
    args = p.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here: run on a GPU machine, or pass --device cpu to check the flow")

    from codepercept_rl.jobs import sft, train
    from codepercept_rl.models import build_tiny_model
    from data_tools.build import BuildSpec, build
    from data_tools.exports import export

    out = Path(args.out).resolve()
    t0 = time.perf_counter()
    data = out / "data"
    if not (data / "exports" / "r1" / "train.parquet").is_file():
        build(BuildSpec(families=["shapes", "bars"], num=args.num, seed=0), data, workers=2)
        export(data, ["r1", "s1"], seed=0, val_fraction=0.1, test_fraction=0.1)
    model, _ = build_tiny_model(args.arch, preset=args.preset, out_dir=str(out / "base"), save_for_vllm=True)
    params = sum(t.numel() for t in model.parameters())
    del model
    seconds = {"data_and_model": time.perf_counter() - t0}
    gpu = args.device == "cuda"
    common = [f"trainer.default_local_dir={out / 'runs'}", f"trainer.device={args.device}",
              f"model.dtype={'bfloat16' if gpu else 'float32'}", "model.logprob_chunk_size=512",
              "model.enable_gradient_checkpointing=true", "tracking.backends=[console,jsonl]"]  # fmt: skip
    t0 = time.perf_counter()
    sft.main([str(ROOT / "recipes" / "s1_tiny_cpu.yaml"), *common, "trainer.experiment_name=s1",
              f"trainer.total_training_steps={args.s1_steps}", "trainer.test_freq=0", "trainer.save_freq=0",
              f"model.path={out / 'base'}", f"data.train_files=[{data / 'exports' / 's1' / 'train.jsonl'}]",
              "data.val_files=[]", "ray.enabled=false"])  # fmt: skip
    seconds["s1"] = time.perf_counter() - t0
    s1_memory = _peak_memory_gib(args.device)
    s1 = out / "runs" / "s1" / "hf"
    rollout = ["rollout.name=vllm", "rollout.hybrid_engine=true", "rollout.enable_sleep_mode=true",
               "rollout.gpu_memory_utilization=0.3"] if args.rollout == "vllm" else ["rollout.name=hf",
                                                                                       "rollout.hybrid_engine=true"]  # fmt: skip
    t0 = time.perf_counter()
    train.main([str(ROOT / "recipes" / "r1_tiny_cpu.yaml"), *common, "trainer.experiment_name=r1",
                f"trainer.total_training_steps={args.r1_steps}", "trainer.test_freq=0", "trainer.save_freq=0",
                "trainer.val_before_train=false", f"model.path={s1}", f"rollout.response_length={args.response_length}",
                f"data.train_files=[{data / 'exports' / 'r1' / 'train.parquet'}]", "data.val_files=[]",
                "ray.enabled=false", "algorithm.filter_groups=false", *rollout])  # fmt: skip
    seconds["r1"] = time.perf_counter() - t0
    r1_memory = _peak_memory_gib(args.device)
    peak = peak_tflops(args.device, args.peak_tflops)
    report = {
        "device": torch.cuda.get_device_name() if gpu else "cpu",
        "arch": args.arch, "preset": args.preset, "parameters": params, "rollout": args.rollout,
        "peak_tflops": peak, "seconds": seconds,
        "s1": {**summarise(out / "runs" / "s1", "perf/tokens_per_s", params, peak), "peak_memory_gib": s1_memory},
        "r1": {**summarise(out / "runs" / "r1", "perf/throughput", params, peak, "timing_s/update_actor"), "peak_memory_gib": r1_memory},
    }  # fmt: skip
    for job in ("s1", "r1"):
        figures = ", ".join(
            f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in report[job].items()
        )
        print(f"{job}: {figures}")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
