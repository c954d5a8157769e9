"""The vLLM rollout engine as R1 runs it: vLLM's multi-process engine, serving S1's ``export_hf`` folder.

The engine core runs in its own process (``VLLM_ENABLE_V1_MULTIPROCESSING=1``, V1's default and the GPU
default), so ``collective_rpc`` arguments are serialised: weight updates must travel in a form that survives it.
Runs where vLLM is importable: `make test-vllm` runs this file in a pytest process of its own (vLLM caches its
environment once an engine has started, and tests/rollout/test_vllm_engine.py starts in-process engines).
"""

from __future__ import annotations

import os

import pytest

os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"  # before vLLM is imported
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here (make test-vllm runs this in .venv-vllm)"
)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import AutoProcessor, Qwen3VLProcessor  # noqa: E402
from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor  # noqa: E402
from vllm.v1.engine.core_client import SyncMPClient  # noqa: E402

from codepercept_rl.config.schema import ModelConfig, RolloutConfig  # noqa: E402
from codepercept_rl.grpo.workers import RolloutWorker  # noqa: E402
from codepercept_rl.learner import Learner, LearnerConfig  # noqa: E402
from codepercept_rl.models import load_model  # noqa: E402
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams  # noqa: E402
from codepercept_rl.rollout.hf import to_structured_messages  # noqa: E402

MAX_PROMPT, RESPONSE = 448, 64  # data.max_prompt_length, rollout.response_length


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("r1")
    learner = Learner(LearnerConfig(model=ModelConfig(tiny_preset="nano", tiny_arch="qwen3_vl")))
    s1 = learner.export_hf(root / "s1")  # what R1's model.path names
    worker = RolloutWorker(
        ModelConfig(path=str(s1), dtype="float32"),
        RolloutConfig(name="vllm", response_length=RESPONSE),
        max_prompt_tokens=MAX_PROMPT,
    )
    yield learner, worker, s1, root
    worker.engine.llm.llm_engine.engine_core.shutdown()  # stop the engine-core process before exit


def _prompts():
    return [
        RolloutPrompt(
            [{"role": "user", "content": "<image>Write matplotlib code."}],
            [Image.new("RGB", (64, 64), "red")],
        ),
        RolloutPrompt(
            [{"role": "user", "content": "<image>Describe."}], [Image.new("RGB", (96, 64), "blue")]
        ),
    ]


def _hf_engine(folder):
    model, processor = load_model(folder)
    return HFRolloutEngine(model, processor)


def _assert_same(a, b):
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert ca.token_ids == cb.token_ids
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=5e-4)


def test_export_loads_with_the_stock_processor(setup):
    learner, _, s1, _ = setup
    stock = AutoProcessor.from_pretrained(s1)
    assert type(stock) is Qwen3VLProcessor  # transformers' own class, as vLLM loads it
    assert isinstance(stock.video_processor, Qwen3VLVideoProcessor)
    # It reads the prompt as the learner's processor does (same image patches and placeholders).
    p = _prompts()[0]
    text = stock.apply_chat_template(
        to_structured_messages(p.messages), add_generation_prompt=True, tokenize=False
    )
    ours, theirs = (
        proc(text=[text], images=p.pil_images(), return_tensors="pt") for proc in (learner.processor, stock)
    )
    assert ours["input_ids"].tolist() == theirs["input_ids"].tolist()
    torch.testing.assert_close(ours["pixel_values"], theirs["pixel_values"])


def test_engine_is_multiprocess_and_holds_prompt_plus_response(setup):
    _, worker, _, _ = setup
    assert isinstance(worker.engine.llm.llm_engine.engine_core, SyncMPClient)
    assert worker.engine.llm.llm_engine.model_config.max_model_len == MAX_PROMPT + RESPONSE


def test_pushed_learner_weights_match_hf_generate(setup):
    learner, worker, s1, root = setup
    params = SamplingParams(n=2, temperature=0.0, max_tokens=8)
    before = worker.generate(_prompts(), params)
    _assert_same(before, _hf_engine(s1).generate(_prompts(), params))

    # A learner step's worth of change to every weight, pushed in buckets far smaller than the model, so
    # that fused vLLM layers (qkv, gate_up) get their weights in more than one bucket.
    with torch.no_grad():
        for p in learner.model.parameters():
            p.add_(torch.sin(p * 1000.0) * 0.05)
    worker.engine.bucket_bytes = 64 * 1024
    assert worker.update_weights(learner.state_dict_for_rollout()) == len(learner.state_dict_for_rollout())
    assert worker.engine.stats["weight_buckets"] > 8

    after = worker.generate(_prompts(), params)
    _assert_same(after, _hf_engine(learner.export_hf(root / "step1")).generate(_prompts(), params))
    # The push took effect (a random tiny model repeats one token, so its log-probs show the change).
    lp_before = [lp for g in before for c in g for lp in c.logprobs]
    lp_after = [lp for g in after for c in g for lp in c.logprobs]
    moved = max(abs(a - b) for a, b in zip(lp_after, lp_before, strict=True))
    assert moved > 1e-2
    assert worker.stats()["weight_updates"] == 1
