"""``codepercept-rl plan``: exact parameter counts, hand-computed bytes, and the Ray placement pre-flight."""

from __future__ import annotations

import pytest
from transformers import AutoConfig

from codepercept_rl.config import JobConfig, load_config
from codepercept_rl.errors import UserError
from codepercept_rl.plan import GIB, activation_bytes, build_arch, check_placement, load_hf_config, make_plan

H, FFN, L, HEADS, KV, V = 64, 128, 2, 4, 2, 1000  # text: hidden, intermediate, layers, heads, kv heads, vocab
VH, VI, DEPTH, OUT, P = 32, 48, 2, 64, 14  # vision: hidden, intermediate, depth, out, patch


def tiny_config():
    return AutoConfig.for_model(
        "qwen2_5_vl", hidden_size=H, intermediate_size=FFN, num_hidden_layers=L, num_attention_heads=HEADS,
        num_key_value_heads=KV, vocab_size=V, tie_word_embeddings=False,
        vision_config={"depth": DEPTH, "hidden_size": VH, "intermediate_size": VI, "num_heads": 2,
                       "out_hidden_size": OUT, "patch_size": P, "temporal_patch_size": 2,
                       "spatial_merge_size": 2, "fullatt_block_indexes": [1]},
    )  # fmt: skip


def hand_counts() -> tuple[int, int]:
    d, kv = H // HEADS, KV * (H // HEADS)
    layer = (H * H + H) + 2 * (H * kv + kv) + H * H + 3 * H * FFN + 2 * H  # q,k,v (bias), o, MLP, 2 norms
    text = V * H + L * layer + H + V * H  # embedding, layers, final norm, untied LM head
    block = 2 * VH + (VH * 3 * VH + 3 * VH) + (VH * VH + VH) + 2 * (VH * VI + VI) + (VI * VH + VH)
    merger = VH + (4 * VH * 4 * VH + 4 * VH) + (4 * VH * OUT + OUT)
    vision = 3 * 2 * P * P * VH + DEPTH * block + merger
    assert d == 16
    return text + vision, vision


def r1_cfg(*overrides: str) -> JobConfig:
    base = ["trainer.nnodes=1", "trainer.n_gpus_per_node=4", "model.dtype=bfloat16", "actor.use_kl_loss=true",
            "model.freeze_vision_tower=true", "rollout.name=vllm", "rollout.gpu_memory_utilization=0.5",
            "data.max_prompt_length=96", "rollout.response_length=32", "actor.ppo_micro_batch_size_per_device=2",
            "model.logprob_chunk_size=16", "trainer.device=cuda"]  # fmt: skip
    return load_config(None, [*base, *overrides], schema=JobConfig)


def test_meta_count_matches_hand_count():
    arch = build_arch(tiny_config())
    assert (arch.params, arch.vision_params) == hand_counts()


def test_plan_bytes_match_hand_computation():
    params, vision = hand_counts()
    trainable, world, b = params - vision, 4, 2
    cfg = r1_cfg()
    plan = make_plan(cfg, "r1", build_arch(tiny_config()), "tiny", gpu_gib=1.0)
    p = plan.parts
    assert p["weights (fp32, sharded)"] == -(-4 * params // world)
    assert p["grads (fp32, sharded)"] == -(-4 * trainable // world)
    assert p["AdamW moments (fp32, sharded)"] == -(-8 * trainable // world)
    assert p["reference (bfloat16, sharded)"] == -(-b * params // world)
    assert p["vLLM weights"] == b * params
    kv_token = 2 * L * KV * (H // HEADS) * b
    assert p["vLLM KV cache"] == int(0.5 * GIB) - b * params
    assert f"{kv_token} bytes/token/GPU" in plan.notes[-1]
    tokens = 2 * (96 + 32)
    per_layer = tokens * (4 * H + 2 * H + 2 * KV * (H // HEADS) + 4 * FFN) * b
    assert activation_bytes(plan.arch, tokens, b, False) == L * per_layer
    assert activation_bytes(plan.arch, tokens, b, True) == L * tokens * H * b + per_layer
    assert p["LM-head log-prob chunk (fp32)"] == 16 * V * 4
    assert plan.gpus_per_node_needed == 5  # 4 learner ranks + 1 split vLLM GPU
    assert plan.fits


def test_offload_and_hybrid_and_warnings():
    arch = build_arch(tiny_config())
    offloaded = make_plan(r1_cfg("ref.fsdp_config.param_offload=true"), "r1", arch, "tiny", gpu_gib=1.0)
    assert offloaded.parts["reference (bfloat16, sharded, offloaded)"] == 0
    split = make_plan(r1_cfg("trainer.n_gpus_per_node=8"), "r1", arch, "tiny", gpu_gib=1.0)
    assert any("set rollout.hybrid_engine=true" in w for w in split.warnings)
    hybrid = make_plan(
        r1_cfg("trainer.n_gpus_per_node=8", "rollout.hybrid_engine=true"), "r1", arch, "tiny", 1.0
    )
    assert hybrid.gpus_per_node_needed == 8 and hybrid.fits
    tight = make_plan(r1_cfg("rollout.hybrid_engine=true", "rollout.gpu_memory_utilization=0.95"), "r1", arch,
                      "tiny", gpu_gib=0.01)  # fmt: skip
    assert any("lower rollout.gpu_memory_utilization" in w for w in tight.warnings)


def test_shipped_configs_resolve_by_folder_name():
    cfg, source = load_hf_config("/models/Qwen3-VL-8B-Instruct")
    assert source == "shipped qwen3_vl_8b.json" and cfg.get_text_config().hidden_size == 4096
    assert load_hf_config(None, "r1_qwen2_5_vl_7b")[1] == "shipped qwen2_5_vl_7b.json"
    assert load_hf_config("/models/Qwen2.5-VL-3B-Instruct")[1] == "shipped qwen2_5_vl_3b.json"
    with pytest.raises(UserError, match="names no shipped config"):
        load_hf_config("/models/unknown")


@pytest.fixture(scope="module")
def fake_gpu_ray():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, num_gpus=8, include_dashboard=False)  # fake GPU resources: placement only
    yield
    ray.shutdown()


def test_placement_refuses_a_config_the_cluster_cannot_hold(fake_gpu_ray):
    cfg = load_config(None, ["trainer.device=cuda", "trainer.n_gpus_per_node=8", "rollout.name=vllm"],
                      schema=JobConfig)  # fmt: skip
    with pytest.raises(
        UserError, match="^needs 9 GPUs per node, the cluster has 8: set rollout.hybrid_engine"
    ):
        check_placement(cfg)
    check_placement(load_config(None, ["trainer.device=cuda", "trainer.n_gpus_per_node=7"], schema=JobConfig))
    check_placement(load_config(None, ["trainer.device=cuda", "trainer.n_gpus_per_node=8",
                                       "rollout.hybrid_engine=true"], schema=JobConfig))  # fmt: skip
    with pytest.raises(UserError, match="S1 needs 9 GPUs"):
        check_placement(
            load_config(None, ["trainer.device=cuda", "sft.num_processes=9"], schema=JobConfig), "s1"
        )
