"""A vLLM engine colocated with a real ``Learner`` (verl's hybrid engine, on CPU): one process, weights streamed
from the learner parameter by parameter (``Learner.iter_full_params``) into the engine in buckets.

In-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``); `make test-vllm` runs this file in a pytest process
of its own. vLLM on CPU has no sleep mode (``enable_sleep_mode`` needs CUDA's memory pool), so the engine's
``sleep`` / ``wake_up`` are no-ops here and only the weight stream is checked.
"""

from __future__ import annotations

import dataclasses
import json
import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # before vLLM is imported
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here (make test-vllm runs this in .venv-vllm)"
)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from codepercept_rl.config.schema import ModelConfig, OptimConfig, RolloutConfig  # noqa: E402
from codepercept_rl.data import S1Dataset, collate  # noqa: E402
from codepercept_rl.grpo.workers import ColocatedRolloutWorker  # noqa: E402
from codepercept_rl.learner import Learner, LearnerConfig, sft_loss  # noqa: E402
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams  # noqa: E402
from codepercept_rl.rollout.vllm_engine import VLLMRolloutEngine  # noqa: E402

MAX_PROMPT, RESPONSE = 448, 16


def _prompts() -> list[RolloutPrompt]:
    return [
        RolloutPrompt([{"role": "user", "content": "<image>Write matplotlib code."}], [Image.new("RGB", (64, 64), "red")]),
        RolloutPrompt([{"role": "user", "content": "<image>Describe."}], [Image.new("RGB", (96, 64), "blue")]),
    ]  # fmt: skip


@pytest.mark.timeout(600)
def test_learner_step_streamed_in_buckets_matches_the_learners_forward(tmp_path) -> None:
    torch.set_num_threads(1)
    cfg = LearnerConfig(
        model=ModelConfig(tiny_preset="nano", tiny_arch="qwen3_vl"),
        optim=OptimConfig(lr=5e-2, lr_warmup_steps_ratio=0.0),
        total_steps=1,
    )
    folder = Learner(cfg).export_hf(tmp_path / "s1")  # S1's export: R1's model.path
    learner = Learner(dataclasses.replace(cfg, model=ModelConfig(path=str(folder), dtype="float32")))
    worker = ColocatedRolloutWorker(learner, RolloutConfig(name="vllm", response_length=RESPONSE), MAX_PROMPT)
    engine = worker.engine
    assert engine.llm.llm_engine.model_config.max_model_len == MAX_PROMPT + RESPONSE
    params = SamplingParams(n=1, temperature=0.0, max_tokens=RESPONSE)
    before = engine.generate(_prompts(), params)

    # One real optimizer step of the learner.
    Image.new("RGB", (64, 64), "green").save(tmp_path / "0.png")
    messages = [{"role": "user", "content": "<image>Draw this."},
                {"role": "assistant", "content": "```python\nplt.bar(['a', 'b'], [1, 2])\n```"}]  # fmt: skip
    (tmp_path / "s1.jsonl").write_text(
        json.dumps({"id": "r0", "task": "code", "images": ["0.png"], "messages": messages})
    )
    ds = S1Dataset([tmp_path / "s1.jsonl"], learner.processor, max_length=512)
    tok = learner.processor.tokenizer
    mb = collate(ds.examples, tok.pad_token_id, learner.processor.image_token_id)
    learner.train_step([mb], sft_loss, float(mb.loss_mask.sum()))

    # Buckets (64 KiB; the config's unit is MiB) smaller than the largest tensor: that tensor is a bucket alone,
    # fused layers (qkv, gate_up) span buckets.
    engine.bucket_bytes = 64 * 1024
    largest = max(t.numel() * t.element_size() for _, t in learner.iter_full_params())
    assert largest > engine.bucket_bytes
    sent = worker.sync_weights()  # sleep, wake weights, stream, wake KV cache (no-ops on CPU but the stream)
    assert sent == sum(t.numel() * t.element_size() for _, t in learner.iter_full_params())
    assert engine.stats["weight_buckets"] > 2

    after = engine.generate(_prompts(), params)
    hf = HFRolloutEngine(learner.rollout_model(), learner.processor).generate(_prompts(), params)
    diffs = []
    for ga, gb in zip(after, hf, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert ca.token_ids == cb.token_ids
            diffs += [abs(a - b) for a, b in zip(ca.logprobs, cb.logprobs, strict=True)]
    print(f"max abs log-prob diff vLLM vs learner HF forward: {max(diffs):.2e} over {len(diffs)} tokens")
    assert max(diffs) < 5e-4
    moved = max(abs(a - b) for ga, gb in zip(after, before, strict=True) for ca, cb in zip(ga, gb, strict=True)
                for a, b in zip(ca.logprobs, cb.logprobs, strict=False))  # fmt: skip
    assert moved > 1e-3  # the step reached the engine


def test_sleep_then_wake_by_tags_follows_verls_order_on_cuda() -> None:
    """The CUDA path, with a stand-in for vLLM's ``LLM`` (CPU vLLM has no sleep mode to run it for real)."""
    calls: list[tuple] = []

    class FakeLLM:
        def sleep(self, level: int) -> None:
            calls.append(("sleep", level))

        def wake_up(self, tags: list[str] | None = None) -> None:
            calls.append(("wake_up", tags))

    engine = VLLMRolloutEngine.__new__(VLLMRolloutEngine)
    engine.llm, engine.enable_sleep_mode, engine._asleep, engine._awake_tags = FakeLLM(), True, False, set()
    engine.sleep(level=2)
    engine.wake_up(tags=["weights"])
    assert engine._asleep  # the KV cache is still freed while the weights arrive
    engine.wake_up(tags=["kv_cache"])
    engine.wake_up()  # awake already: nothing to do
    assert calls == [("sleep", 2), ("wake_up", ["weights"]), ("wake_up", ["kv_cache"])] and not engine._asleep
