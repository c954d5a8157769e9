"""Learner throughput on S1 data: tokens/s at 1 and 2 processes, padding with and without length grouping.

Run (a few minutes on 2 cores; an otherwise idle machine gives clean figures)::

    python benchmarks/sft_step.py                      # tiny preset, S1 rows of 40 items, 6 timed steps
    python benchmarks/sft_step.py --preset nano --steps 4 --items 20

What is measured, on one S1 export built first by data_tools (``codepercept-rl data build`` of the miniature
families ``shapes`` and ``bars``, rendered in the sandbox, then ``data export --formats s1``):

(a) padding share: over one epoch of global batches, the share of computed token slots that are padding when
    micro-batches are cut in epoch order vs by length (``sft.group_by_length``), at 1 and 2 ranks; ratio.
(b) tokens/s: real (non-padding) tokens of the global batch per second of ``Learner.train_step`` (FSDP2,
    gloo, fp32, one thread per rank), after one warm-up step, at 1 and 2 processes (local spawn), with and
    without length grouping; ratios. On 2 cores two ranks share the machine, so expect no speed-up there;
    the figure shows what the sharding and the collectives cost.
(d) two torch threads, one rank: median seconds per step before and after a checkpoint save, saved with
    ``Learner.save_checkpoint`` (on one rank DCP runs without collectives) against ``dcp.save`` through the
    gloo process group (torch's default, what this project did before); each in a fresh process; ratio.
    Through gloo, DCP's collectives leave OpenMP teams on gloo's threads, libgomp then stops spin-waiting,
    and every later parallel region pays futex sleeps (``learner/checkpoint.py``).
(c) with CUDA only: model-FLOPs utilisation of one ``train_step`` of a randomly initialised model of
    Qwen2.5-VL-3B's sizes in bf16 on one GPU: ``MFU = 6 * n_params * tokens/s / peak`` (attention FLOPs not
    counted; peak from ``--peak-tflops``, default 989 for H100/H200 dense bf16). Skipped with a message on CPU.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from codepercept_rl.config.schema import ModelConfig, OptimConfig, RayConfig  # noqa: E402
from codepercept_rl.data import (  # noqa: E402
    S1Dataset,
    collate,
    global_batches,
    mixture_order,
    padding_share,
    rank_micro_batches,  # noqa: E402
)
from codepercept_rl.learner import Learner, LearnerConfig, MicroBatch, sft_loss  # noqa: E402
from codepercept_rl.learner.actor import run_on_ranks  # noqa: E402


def build_s1(folder: Path, items: int) -> Path:
    """Builds and exports an S1 dataset with data_tools' command line; returns its train JSONL."""
    cli = [sys.executable, "-m", "codepercept_rl.data_cli"]
    out = folder / "icc"
    build = ["build", "--families", "shapes,bars", "--num", str(items), "--out", str(out), "--workers", "2"]
    subprocess.run([*cli, *build, "--seed", "0"], check=True, capture_output=True)
    subprocess.run([*cli, "export", str(out), "--formats", "s1"], check=True, capture_output=True)
    return out / "exports" / "s1" / "train.jsonl"


def learner_config(preset: str, steps: int) -> LearnerConfig:
    return LearnerConfig(
        model=ModelConfig(tiny_preset=preset), optim=OptimConfig(lr=1e-4), total_steps=steps + 1
    )


def timed_step(learner: Learner, ds: S1Dataset, indices: list[int], micro: int, grouped: bool) -> float:
    """One ``train_step`` on this rank's share of the global batch ``indices``; returns its seconds."""
    rank, world = learner.dist.rank, learner.dist.world_size
    tok = learner.processor.tokenizer
    micro_batches = [collate([ds[i] for i in idx], tok.pad_token_id, learner.processor.image_token_id)
                     for idx in rank_micro_batches(indices, ds.lengths, rank, world, micro, grouped)]  # fmt: skip
    t0 = time.perf_counter()
    learner.train_step(micro_batches, sft_loss, normalizer=sum(float(ds[i].loss_mask.sum()) for i in indices))
    return time.perf_counter() - t0


def bench_rank(
    jsonl: str, preset: str, steps: int, batch: int, micro: int, grouped: bool
) -> dict[str, float]:
    """One rank's timed loop; returns global real tokens and seconds of the timed steps."""
    torch.set_num_threads(1)
    learner = Learner(learner_config(preset, steps))
    ds = S1Dataset([jsonl], learner.processor, max_length=1024)
    batches = global_batches(mixture_order(ds.tasks, {}, seed=0, epoch=0), batch)
    tokens = seconds = 0.0
    for s in range(steps + 1):
        indices = batches[s % len(batches)]
        dt = timed_step(learner, ds, indices, micro, grouped)
        if s > 0:  # step 0 is the warm-up (allocations, first gathers)
            seconds += dt
            tokens += sum(ds.lengths[i] for i in indices)
    from codepercept_rl.learner.dist import destroy_distributed

    destroy_distributed()
    return {"tokens": tokens, "seconds": seconds}


def padding_table(jsonl: Path, preset: str, batch: int, micro: int) -> None:
    from codepercept_rl.models.tiny import build_tiny_model

    processor = build_tiny_model("qwen2_5_vl", preset)[1]
    ds = S1Dataset([jsonl], processor, max_length=1024)
    batches = global_batches(mixture_order(ds.tasks, {}, seed=0, epoch=0), batch)
    print(
        f"\n(a) padding share of computed slots, {len(batches)} global batches of {batch}, micro-batch {micro}"
    )
    print(f"{'ranks':>6} {'epoch order':>12} {'by length':>10} {'ratio':>7}")
    for world in (1, 2):
        shares = {}
        for grouped in (False, True):
            pad = slots = 0
            for b in batches:
                for r in range(world):
                    p, s = padding_share(
                        rank_micro_batches(b, ds.lengths, r, world, micro, grouped), ds.lengths
                    )
                    pad, slots = pad + p, slots + s
            shares[grouped] = pad / slots
        print(
            f"{world:>6} {shares[False]:>12.3f} {shares[True]:>10.3f} {shares[False] / max(shares[True], 1e-9):>6.1f}x"
        )


def throughput_table(jsonl: Path, preset: str, steps: int, batch: int, micro: int, repeats: int) -> None:
    print(f"\n(b) learner tokens/s ({preset} model, {steps} timed steps x {repeats} repeats, median)")
    print(f"{'ranks':>6} {'epoch order':>12} {'by length':>10} {'ratio':>7}")
    base = None
    for world in (1, 2):
        rate = {}
        for grouped in (False, True):
            runs = []
            for _ in range(repeats):
                res = run_on_ranks(bench_rank, world, str(jsonl), preset, steps, batch, micro, grouped,
                                   ray_cfg=RayConfig(enabled=False))[0]  # fmt: skip
                runs.append(res["tokens"] / res["seconds"])
            rate[grouped] = statistics.median(runs)
        base = base or rate[True]
        print(f"{world:>6} {rate[False]:>12.0f} {rate[True]:>10.0f} {rate[True] / rate[False]:>6.2f}x"
              f"   (2 ranks vs 1, grouped: {rate[True] / base:.2f}x)" if world == 2 else
              f"{world:>6} {rate[False]:>12.0f} {rate[True]:>10.0f} {rate[True] / rate[False]:>6.2f}x")  # fmt: skip


def save_rank(jsonl: str, preset: str, steps: int, batch: int, micro: int, how: str) -> dict[str, float]:
    """Two-thread steps before and after one save (``how``: ``learner`` or ``dcp``); median seconds of each."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    torch.set_num_threads(2)
    learner = Learner(learner_config(preset, 2 * steps + 1))
    ds = S1Dataset([jsonl], learner.processor, max_length=1024)
    batches = global_batches(mixture_order(ds.tasks, {}, seed=0, epoch=0), batch)

    def timed(n: int) -> float:
        return statistics.median(
            timed_step(learner, ds, batches[learner.step % len(batches)], micro, True) for _ in range(n)
        )

    timed(1)  # warm-up
    before = timed(steps)
    with tempfile.TemporaryDirectory() as tmp:
        if how == "learner":
            learner.save_checkpoint(tmp)
        else:
            model_sd, optim_sd = get_state_dict(learner.model, learner.optimizer)
            dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=tmp)
    after = timed(steps)
    from codepercept_rl.learner.dist import destroy_distributed

    destroy_distributed()
    return {"before": before, "after": after}


def save_table(jsonl: Path, preset: str, steps: int, batch: int, micro: int, repeats: int) -> None:
    print(f"\n(d) seconds per step with 2 torch threads, before / after one checkpoint save ({preset} model, "
          f"{steps} steps each side x {repeats} repeats, median)")  # fmt: skip
    print(f"{'saved with':>26} {'before':>8} {'after':>8} {'after/before':>13}")
    after = {}
    for how, label in (("dcp", "dcp.save through gloo"), ("learner", "Learner.save_checkpoint")):
        runs = [run_on_ranks(save_rank, 1, str(jsonl), preset, steps, batch, micro, how,
                             ray_cfg=RayConfig(enabled=False))[0] for _ in range(repeats)]  # fmt: skip
        before = statistics.median(r["before"] for r in runs)
        after[how] = statistics.median(r["after"] for r in runs)
        print(f"{label:>26} {before:>8.3f} {after[how]:>8.3f} {after[how] / before:>12.2f}x")
    print(
        f"steps after the save: Learner.save_checkpoint {after['dcp'] / after['learner']:.2f}x as fast as dcp.save"
    )


def qwen25_vl_3b_sized_model() -> torch.nn.Module:
    """A random model with Qwen2.5-VL-3B-Instruct's sizes (no download; only the shapes matter for FLOPs)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                     "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]}},
        vision_config={"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16,
                       "out_hidden_size": 2048, "patch_size": 14, "window_size": 112,
                       "fullatt_block_indexes": [7, 15, 23, 31]},
        tie_word_embeddings=True,
    )  # fmt: skip
    return Qwen2_5_VLForConditionalGeneration(config)


def mfu(steps: int, batch: int, seq: int, peak_tflops: float) -> None:
    print("\n(c) GPU model-FLOPs utilisation, Qwen2.5-VL-3B-sized random model, bf16, 1 GPU")
    if not torch.cuda.is_available():
        print("skipped: no CUDA device on this machine (run it on a GPU node)")
        return
    model = qwen25_vl_3b_sized_model()
    n_params = sum(p.numel() for p in model.parameters())
    cfg = LearnerConfig(model=ModelConfig(dtype="bfloat16", enable_gradient_checkpointing=True),
                        optim=OptimConfig(lr=1e-6), total_steps=steps + 2, device="cuda")  # fmt: skip
    learner = Learner(cfg, model=model)
    ids = torch.randint(100, 150000, (batch, seq))
    mb = MicroBatch(input_ids=ids, attention_mask=torch.ones_like(ids), loss_mask=torch.ones(batch, seq))
    for _ in range(2):
        learner.train_step([mb], sft_loss, normalizer=float(batch * seq))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        learner.train_step([mb], sft_loss, normalizer=float(batch * seq))
    torch.cuda.synchronize()
    tokens_per_s = steps * batch * seq / (time.perf_counter() - t0)
    achieved = 6 * n_params * tokens_per_s
    print(f"params {n_params / 1e9:.2f} B, {learner.attn_implementation}, {tokens_per_s:.0f} tokens/s, "
          f"{achieved / 1e12:.0f} TFLOP/s, MFU {achieved / (peak_tflops * 1e12):.1%} of {peak_tflops:.0f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny", choices=["nano", "tiny", "small"])
    parser.add_argument("--items", type=int, default=40, help="data_tools items (two S1 rows each)")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--micro", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--gpu-seq", type=int, default=4096)
    parser.add_argument("--gpu-batch", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=989.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        train = build_s1(Path(tmp), args.items)
        padding_table(train, args.preset, args.batch, args.micro)
        throughput_table(train, args.preset, args.steps, args.batch, args.micro, args.repeats)
        save_table(train, args.preset, 4 * args.steps, args.batch, args.micro, args.repeats)
    mfu(args.steps, args.gpu_batch, args.gpu_seq, args.peak_tflops)


if __name__ == "__main__":
    main()
