"""``RolloutWorker`` sizes its vLLM engine's context as verl does: prompt + response tokens, or as set.

No vLLM here: the engine class is replaced by one that records its arguments (the engine itself, with that
length, runs in tests/rollout/test_vllm_multiproc.py).
"""

from __future__ import annotations

import pytest

import codepercept_rl.rollout.vllm_engine as vllm_engine
from codepercept_rl.config.schema import ModelConfig, RolloutConfig
from codepercept_rl.grpo.workers import RolloutWorker


class _RecordingEngine:
    def __init__(self, model_path: str, **kwargs) -> None:
        self.model_path, self.kwargs = model_path, kwargs
        self.stats: dict[str, int] = {}


@pytest.fixture
def recorded(monkeypatch):
    monkeypatch.setattr(vllm_engine, "VLLMRolloutEngine", _RecordingEngine)


def _worker(max_prompt_tokens, **rollout) -> RolloutWorker:
    return RolloutWorker(
        ModelConfig(path="runs/s1/hf"), RolloutConfig(name="vllm", **rollout), max_prompt_tokens
    )


def test_max_model_len_is_prompt_plus_response(recorded):
    engine = _worker(2048, response_length=8192).engine
    assert engine.kwargs["max_model_len"] == 2048 + 8192
    assert engine.kwargs["max_prompt_tokens"] == 2048


def test_rollout_max_model_len_overrides(recorded):
    assert _worker(2048, response_length=8192, max_model_len=4096).engine.kwargs["max_model_len"] == 4096


def test_no_prompt_length_and_no_max_model_len_is_refused(recorded):
    with pytest.raises(ValueError, match="rollout.max_model_len"):
        _worker(None, response_length=8192)
