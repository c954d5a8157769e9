"""Rollout engines behind one interface: HF ``generate`` (CPU, CI) and vLLM (CUDA GPUs)."""

from codepercept_rl.rollout.hf import HFRolloutEngine, to_structured_messages
from codepercept_rl.rollout.types import Completion, RolloutEngine, RolloutPrompt, SamplingParams

__all__ = [
    "Completion",
    "HFRolloutEngine",
    "RolloutEngine",
    "RolloutPrompt",
    "SamplingParams",
    "to_structured_messages",
]
