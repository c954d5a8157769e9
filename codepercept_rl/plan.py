"""``codepercept-rl plan RECIPE [key=value ...]``: per-GPU memory of a recipe, before renting the GPUs.

Builds the recipe's model on the meta device (exact parameter counts, nothing allocated) and estimates, per GPU:

* learner state (FSDP2 over all learner ranks W): fp32 weights ``4 P / W``, fp32 grads and AdamW moments
  ``12 T / W`` (T: trainable; a frozen vision tower has none), the GRPO reference ``b P / W`` in ``model.dtype``
  (b bytes; 0 on the GPU with ``ref.fsdp_config.param_offload``), and the unsharded FSDP unit being computed:
  ``2 U b + 4 U`` (U: largest unit; it and the prefetched next one, plus its fp32 gradient);
* activations of one micro-batch of ``t = micro x length`` tokens, per decoder layer ``t (4h + 2q + 2kv + 4i) b``
  (h hidden, q = heads x head_dim, kv = kv_heads x head_dim, i intermediate: norm inputs, q/k/v, attention
  output, gate/up/act/product with flash attention); with checkpointing only each layer's input ``t h b`` is kept
  plus one layer's internals; plus the LM-head chunk ``model.logprob_chunk_size x vocab x 4``;
* vLLM: ``gpu_memory_utilization x GPU`` holds the weights ``b P / tp`` and the KV cache, ``2 L kv b / tp`` a token.

What is not counted: the CUDA context and allocator slack (~1-3 GiB), vision-tower activations, vLLM's own
activations and CUDA graphs. Published shapes ship in ``models/assets/configs`` (used when ``model.path`` does
not exist here and its name, or the recipe's, names one of them).

:func:`check_placement` refuses, before any actor starts, a job whose GPUs the Ray cluster does not have.
"""

from __future__ import annotations

import argparse
import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError

# Shipped shapes (architecture subsets of the published config.json files; meta-device counts 8.767B / 4.438B /
# 8.292B / 3.755B parameters). Qwen3-VL-8B: text 4096/12288/36/32/8/128/151936 untied and vision 27/1152/4304/
# 4096/patch 16/deepstack [8,16,24] as quoted by several public Qwen3-VL-8B ports and tests; Qwen3-VL-4B: a public
# copy of Qwen/Qwen3-VL-4B-Instruct's config.json; Qwen2.5-VL-7B: verl's log of that model's config (which also
# reports 8.29B parameters); Qwen2.5-VL-3B: a public copy of Qwen/Qwen2.5-VL-3B-Instruct's config.json.
CONFIGS = Path(__file__).parent / "models" / "assets" / "configs"
GIB = 2**30
_DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "float64": 8}


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower()).replace("25", "2_5")


def shipped_config(name: str) -> Path | None:
    """The shipped config whose model name (e.g. ``qwen3_vl_8b``) occurs in ``name``; None when none does."""
    key = _norm(name)
    for path in sorted(CONFIGS.glob("*.json")):
        if _norm(path.stem) in key:
            return path
    return None


def load_hf_config(model_path: str | None, hint: str = "") -> tuple[Any, str]:
    """``(transformers config, where it came from)`` for ``model.path`` (its config.json when the folder exists
    here, else a shipped config matched by name) or, when unset, by ``hint`` (the recipe's file name).

    Raises:
        UserError: nothing names a known model.
    """
    from transformers import AutoConfig

    if model_path and (Path(model_path) / "config.json").exists():
        return AutoConfig.from_pretrained(model_path), f"{model_path}/config.json"
    shipped = shipped_config(model_path or hint)
    if shipped is None:
        known = ", ".join(p.stem for p in sorted(CONFIGS.glob("*.json")))
        raise UserError(f"model.path={model_path!r} is not here and names no shipped config ({known})")
    raw = {k: v for k, v in json.loads(shipped.read_text()).items() if not k.startswith("_")}
    return AutoConfig.for_model(raw.pop("model_type"), **raw), f"shipped {shipped.name}"


@dataclass
class Arch:
    """Exact counts and shapes of a model built on the meta device."""

    params: int
    vision_params: int
    largest_unit: int  # parameters of the largest FSDP unit (a decoder layer, or the embedding)
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int


def build_arch(hf_config: Any) -> Arch:
    """Counts ``hf_config``'s model's parameters exactly (built on the meta device)."""
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(hf_config)
    params = sum(p.numel() for p in model.parameters())  # tied weights are counted once
    vision = sum(p.numel() for p in model.model.visual.parameters())
    layer_mods = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    layer = max(sum(p.numel() for p in m.parameters()) for m in layer_mods)
    biggest = max(p.numel() for p in model.parameters())  # the embedding / LM head: their own FSDP units
    t = hf_config.get_text_config()
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return Arch(params, vision, max(layer, biggest), t.num_hidden_layers, t.hidden_size,
                t.intermediate_size, t.num_attention_heads, t.num_key_value_heads, head_dim,
                t.vocab_size)  # fmt: skip


def activation_bytes(arch: Arch, tokens: int, dtype_bytes: int, checkpointing: bool) -> int:
    """Activations kept for one backward of ``tokens`` tokens (module docstring: the formula)."""
    q, kv = arch.heads * arch.head_dim, arch.kv_heads * arch.head_dim
    per_layer = tokens * (4 * arch.hidden + 2 * q + 2 * kv + 4 * arch.intermediate) * dtype_bytes
    if checkpointing:
        return arch.layers * tokens * arch.hidden * dtype_bytes + per_layer
    return arch.layers * per_layer


@dataclass
class Plan:
    """Per-GPU bytes of each part, the totals per phase, and what to change when it does not fit."""

    job: str
    source: str
    arch: Arch
    trainable: int
    world: int
    parts: dict[str, int] = field(default_factory=dict)
    phases: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    gpu_bytes: int = 80 * GIB
    gpus_per_node_needed: int = 0

    @property
    def fits(self) -> bool:
        return not self.warnings


def make_plan(cfg: JobConfig, job: str, arch: Arch, source: str, gpu_gib: float = 80.0,
              gpus_per_node: int = 8) -> Plan:  # fmt: skip
    """Estimates ``cfg``'s per-GPU memory for ``job`` ("r1" or "s1") on GPUs of ``gpu_gib`` GiB."""
    from codepercept_rl.jobs.sft import TRAINABLE_BYTES, WEIGHT_BYTES, state_bytes_per_rank

    m, r1 = cfg.model, job == "r1"
    b = _DTYPE_BYTES[m.dtype]
    trainable = arch.params - (arch.vision_params if m.freeze_vision_tower else 0)
    world = cfg.trainer.nnodes * cfg.trainer.n_gpus_per_node if r1 else cfg.sft.num_processes
    gpu = int(gpu_gib * GIB)
    plan = Plan(job, source, arch, trainable, world, gpu_bytes=gpu)
    p = plan.parts
    p["weights (fp32, sharded)"] = -(-WEIGHT_BYTES * arch.params // world)
    p["grads (fp32, sharded)"] = -(-4 * trainable // world)
    p["AdamW moments (fp32, sharded)"] = -(-(TRAINABLE_BYTES - 4) * trainable // world)
    ref_offload = r1 and cfg.actor.use_kl_loss and cfg.ref.fsdp_config.param_offload
    ref = -(-b * arch.params // world) if r1 and cfg.actor.use_kl_loss and not ref_offload else 0
    p[f"reference ({m.dtype}, sharded{', offloaded' if ref_offload else ''})"] = ref
    state = state_bytes_per_rank(arch.params, trainable, world) + ref
    length = cfg.data.max_prompt_length + cfg.rollout.response_length if r1 else cfg.sft.max_length
    tokens = cfg.actor.ppo_micro_batch_size_per_device * length
    ckpt = m.enable_gradient_checkpointing
    act = {c: activation_bytes(arch, tokens, b, c) for c in (False, True)}
    chunk = min(m.logprob_chunk_size or tokens, tokens) * arch.vocab * 4
    unit = 2 * arch.largest_unit * b + 4 * arch.largest_unit
    p["FSDP unsharded unit"] = unit
    p[f"activations ({tokens} tokens, checkpointing {'on' if ckpt else 'off'})"] = act[ckpt]
    p["LM-head log-prob chunk (fp32)"] = chunk
    plan.notes.append(f"activations with checkpointing off: {act[False] / GIB:.1f} GiB, on: "
                      f"{act[True] / GIB:.1f} GiB")  # fmt: skip
    update = state + unit + act[ckpt] + chunk
    plan.phases["update (learner)"] = update
    plan.gpus_per_node_needed = cfg.trainer.n_gpus_per_node if r1 else min(world, gpus_per_node)
    vllm_share = 0
    if r1 and cfg.rollout.name == "vllm":
        tp = cfg.rollout.tensor_model_parallel_size
        vllm_share = int(cfg.rollout.gpu_memory_utilization * gpu)
        weights = -(-b * arch.params // tp)
        kv_token = -(-2 * arch.layers * arch.kv_heads * arch.head_dim * b // tp)
        kv = vllm_share - weights
        max_len = cfg.rollout.max_model_len or length
        p["vLLM weights"] = weights
        p["vLLM KV cache"] = max(kv, 0)
        fit_tokens = max(kv, 0) // kv_token
        plan.notes.append(f"vLLM KV cache: {kv_token} bytes/token/GPU, {fit_tokens} tokens fit = "
                          f"{fit_tokens // max_len} sequences of {max_len} at once")  # fmt: skip
        if fit_tokens < max_len:
            plan.warnings.append("vLLM: no room for one full-length sequence's KV cache: raise "
                                 "rollout.gpu_memory_utilization or rollout.tensor_model_parallel_size")  # fmt: skip
        if cfg.rollout.hybrid_engine:
            plan.phases["rollout (learner state + vLLM awake)"] = state + vllm_share
            if not cfg.rollout.enable_sleep_mode:
                plan.phases["update (learner)"] = update + vllm_share
            if state + vllm_share > gpu:
                room = math.floor((gpu - state) / gpu * 20) / 20
                fix = f"lower rollout.gpu_memory_utilization to {room:.2f}" if room > 0 else "more GPUs"
                plan.warnings.append(f"vLLM's share does not fit beside the learner state: {fix}")
        else:
            plan.phases[f"rollout ({tp} own GPU(s))"] = vllm_share
            plan.gpus_per_node_needed += tp
    for name, need in plan.phases.items():
        if need > gpu and name.startswith("update"):
            plan.warnings.append(f"{name} needs {need / GIB:.1f} GiB > {gpu_gib:g} GiB: " + _fix(
                cfg, r1, update - act[ckpt] + act[True], state - ref, gpu, vllm_share))  # fmt: skip
    if plan.gpus_per_node_needed > gpus_per_node:
        plan.warnings.append(f"needs {plan.gpus_per_node_needed} GPUs per node, a node has {gpus_per_node}: "
                             "set rollout.hybrid_engine=true or lower trainer.n_gpus_per_node")  # fmt: skip
    return plan


def _fix(cfg: JobConfig, r1: bool, with_ckpt: int, without_ref: int, gpu: int, vllm: int) -> str:
    extra = vllm if r1 and cfg.rollout.hybrid_engine and not cfg.rollout.enable_sleep_mode else 0
    if not cfg.model.enable_gradient_checkpointing and with_ckpt + extra <= gpu:
        return "set model.enable_gradient_checkpointing=true"
    if extra:
        return "set rollout.enable_sleep_mode=true"
    if r1 and cfg.actor.use_kl_loss and not cfg.ref.fsdp_config.param_offload:
        return "set ref.fsdp_config.param_offload=true, or more trainer.n_gpus_per_node / trainer.nnodes"
    return "lower actor.ppo_micro_batch_size_per_device, or more GPUs (trainer.nnodes / sft.num_processes)"


def format_plan(plan: Plan) -> str:
    """The plan as the text ``codepercept-rl plan`` prints."""
    a = plan.arch
    lines = [
        f"{plan.job.upper()} plan ({plan.source}): {a.params / 1e9:.3f}B parameters ({a.params}), "
        f"{plan.trainable / 1e9:.3f}B trainable, {plan.world} learner rank(s), {plan.gpu_bytes / GIB:g} GiB GPUs",
        "per GPU:",
    ]
    lines += [f"  {k:<46} {v / GIB:8.2f} GiB" for k, v in plan.parts.items()]
    lines += ["phases (peak per GPU):"]
    lines += [f"  {k:<46} {v / GIB:8.2f} GiB" for k, v in plan.phases.items()]
    lines += [f"GPUs per node: {plan.gpus_per_node_needed}"] + [f"note: {n}" for n in plan.notes]
    lines += [f"WARNING: {w}" for w in plan.warnings] or [
        "fits (estimate; CUDA context and slack not counted)"
    ]
    return "\n".join(lines)


def check_placement(cfg: JobConfig, job: str = "r1") -> None:
    """Refuses a job whose GPUs the Ray cluster does not have, instead of hanging on a placement.

    Needs (GPU jobs with Ray): R1 ``trainer.nnodes x n_gpus_per_node`` learner ranks plus, split
    (``rollout.hybrid_engine=false`` with vLLM), ``rollout.tensor_model_parallel_size`` GPUs on one node; S1
    ``sft.num_processes``. Starts Ray as ``cfg.ray`` says when this process has not yet.

    Raises:
        UserError: one line with the GPUs needed, the cluster's and what to change.
    """
    if not cfg.ray.enabled or cfg.trainer.device == "cpu":
        return
    import ray

    from codepercept_rl.learner.actor import init_ray

    init_ray(cfg.ray)
    per_node = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
    total = sum(per_node)
    if cfg.trainer.device == "auto" and total == 0:
        return
    if job == "s1":
        if cfg.sft.num_processes > total:
            raise UserError(f"S1 needs {cfg.sft.num_processes} GPUs (sft.num_processes), the cluster has "
                            f"{total}: lower sft.num_processes")  # fmt: skip
        return
    learners = cfg.trainer.n_gpus_per_node
    # As train.py reserves them: a split vLLM rollout actor holds its tensor-parallel GPUs, a split HF one none.
    split_vllm = not cfg.rollout.hybrid_engine and cfg.rollout.name == "vllm"
    split = cfg.rollout.tensor_model_parallel_size if split_vllm else 0
    need_total = cfg.trainer.nnodes * learners + split
    if need_total > total or split > max(per_node, default=0):
        have = max(per_node, default=0) if len(per_node) <= 1 else total
        where = "per node" if len(per_node) <= 1 else f"in all ({len(per_node)} nodes: {per_node})"
        need = learners + split if len(per_node) <= 1 else need_total
        raise UserError(f"needs {need} GPUs {where}, the cluster has {have}: set rollout.hybrid_engine=true or "
                        "lower trainer.n_gpus_per_node")  # fmt: skip


def main(argv: Sequence[str] | None = None) -> int:
    """``codepercept-rl plan RECIPE [overrides]``: print the per-GPU memory plan; exit 1 when it does not fit."""
    parser = argparse.ArgumentParser(prog="codepercept-rl plan", description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", help="a YAML recipe, e.g. recipes/r1_qwen3vl_8b.yaml")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. rollout.hybrid_engine=true")
    parser.add_argument("--gpu-memory-gib", type=float, default=80.0, help="memory of one GPU (default 80)")
    parser.add_argument("--gpus-per-node", type=int, default=8, help="GPUs a node has (default 8)")
    parser.add_argument("--job", choices=["r1", "s1"], help="default: s1 when the recipe has an sft section")
    args = parser.parse_args(argv)
    import yaml

    raw = yaml.safe_load(Path(args.recipe).read_text()) or {}
    job = args.job or ("s1" if "sft" in raw else "r1")
    cfg = load_config(args.recipe, args.overrides, schema=JobConfig)
    hf_config, source = load_hf_config(cfg.model.path, Path(args.recipe).stem)
    plan = make_plan(cfg, job, build_arch(hf_config), source, args.gpu_memory_gib, args.gpus_per_node)
    print(format_plan(plan))
    return 0 if plan.fits else 1
