"""Rollouts with Hugging Face models: the engine on CPU, in CI, and wherever vLLM is absent.

    engine = HFRolloutEngine(model, processor, micro_batch_size=16)
    groups = engine.generate(prompts, SamplingParams(n=8, temperature=1.0, top_p=0.85, max_tokens=256))

Prompts are repeated ``n`` times and generated in micro-batches of ``micro_batch_size`` sequences (left padded);
``on_complete`` is called for each completion as its micro-batch ends, so reward scoring overlaps the rest of the
generation. Log-probs are of the sampled tokens under ``logits / temperature`` (what the learner recomputes), not
under the top-p/top-k truncated distribution. A prompt longer than ``max_prompt_tokens`` is not generated: its
completions come back empty with ``finish_reason="prompt_too_long"`` and are counted in ``stats``.

``decode="lean"`` (the default) decodes Qwen-VL models with ``LeanDecoder`` (``codepercept_rl/rollout/decode.py``):
the model's own prefill, then a hand-written step over a preallocated KV cache, the same logits as ``generate``
at a fraction of its per-token overhead; a prompt's samples in one micro-batch share its prefill (the prompt
runs once, its KV cache is copied to each sample), as vLLM's prefix cache shares it. Other models, calls with stop
strings and micro-batches without an image use ``model.generate`` (``decode="generate"`` forces it;
``decode_fallback`` says why a lean engine fell back). The lean loop draws sampled tokens with ``sampler="fast"``
(the default: top-p over the few most likely tokens and an inverse-CDF draw, ``codepercept_rl/rollout/sampling.py``;
generate's distribution, not its random stream) or ``sampler="hf"`` (HF's top-p warper and ``torch.multinomial``:
the very tokens ``generate`` draws for a seed).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from codepercept_rl.rollout.decode import LeanDecoder, Processors, supported
from codepercept_rl.rollout.sampling import SAMPLERS
from codepercept_rl.rollout.types import (
    Completion,
    CompletionCallback,
    RolloutPrompt,
    SamplingParams,
)

_IMAGE_TAG = re.compile(r"<image>")


def to_structured_messages(messages: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages with ``<image>`` placeholders in string content -> the structured form chat templates take."""
    out = []
    for msg in messages:
        content = msg.get("content")
        if isinstance(content, str):
            parts: list[dict[str, Any]] = []
            pieces = _IMAGE_TAG.split(content)
            for i, piece in enumerate(pieces):
                if i > 0:
                    parts.append({"type": "image"})
                if piece:
                    parts.append({"type": "text", "text": piece})
            out.append({**msg, "content": parts if len(pieces) > 1 else content})
        else:
            out.append(dict(msg))
    return out


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>", "<|vision_pad|>")


def vision_token_ids(tokenizer: Any) -> list[int]:
    """Ids of the Qwen-VL vision placeholder tokens the tokenizer knows (they must not be generated)."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]


class HFRolloutEngine:
    """Batched multimodal sampling with ``model.generate``.

    Args:
        model: a Hugging Face image-text-to-text model (colocated: the learner's own module, or a copy).
        processor: its processor (chat template + image processor + tokenizer).
        micro_batch_size: sequences per ``generate`` call.
        max_prompt_tokens: prompts longer than this (after image expansion) are skipped; None: no limit.
        decode: ``"lean"``: ``LeanDecoder`` where it supports the model, else ``generate``; ``"generate"``:
            always ``model.generate``.
        sampler: how the lean loop draws a sampled token: ``"fast"`` (``sampling.sample``) or ``"hf"`` (HF's
            warper and ``multinomial``, generate's random stream). ``generate`` always draws its own way.
        synced_gpus: the ranks of a sharded (FSDP) model call ``generate`` together, one call per rank at a time:
            ``generate(synced_gpus=True)`` keeps a rank whose rows have ended stepping until every rank's have
            (each step's forward gathers weights from all ranks). Always ``generate``, never the lean loop.
    """

    def __init__(
        self,
        model: Any,
        processor: Any,
        *,
        micro_batch_size: int = 16,
        max_prompt_tokens: int | None = None,
        decode: str = "lean",
        sampler: str = "fast",
        synced_gpus: bool = False,
    ) -> None:
        if decode not in ("lean", "generate"):
            raise ValueError(f"decode={decode!r}: expected 'lean' or 'generate'")
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
        self.sampler = sampler
        self.synced_gpus = synced_gpus
        self.model = model
        self.processor = processor
        self.micro_batch_size = micro_batch_size
        self.max_prompt_tokens = max_prompt_tokens
        # lean_sequences: how many of the generated sequences the lean loop decoded (the rest: generate);
        # prefilled_prompts: the prefills it ran for them (a prompt's samples in one micro-batch share one)
        self.stats = {
            "prompts_too_long": 0,
            "generated_sequences": 0,
            "generated_tokens": 0,
            "lean_sequences": 0,
            "prefilled_prompts": 0,
        }
        tok = processor.tokenizer
        self._pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        eos = [tok.eos_token_id]
        im_end = tok.convert_tokens_to_ids("<|im_end|>")
        if isinstance(im_end, int) and im_end != tok.unk_token_id and im_end not in eos:
            eos.append(im_end)
        self._eos_ids = [e for e in eos if e is not None]
        # A policy must never emit vision placeholders: the model would look for image features for them
        # when the completion is fed back (old log-probs, the update) and fail.
        self._suppress_ids = vision_token_ids(tok)
        if synced_gpus:
            self.decode_fallback: str | None = "synced_gpus=True (ranks in lockstep)"
        else:
            self.decode_fallback = supported(model) if decode == "lean" else "decode='generate'"
        self._lean = LeanDecoder(model) if self.decode_fallback is None else None

    # ------------------------------------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Sequence[RolloutPrompt],
        params: SamplingParams,
        on_complete: CompletionCallback | None = None,
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, ``result[prompt_index][sample_index]``."""
        results: list[list[Completion | None]] = [[None] * params.n for _ in prompts]
        texts = [self._prompt_text(p) for p in prompts]
        images = [p.pil_images() for p in prompts]
        todo: list[tuple[int, int]] = []
        for i, (text, imgs) in enumerate(zip(texts, images, strict=True)):
            if self.max_prompt_tokens is not None and self._prompt_len(text, imgs) > self.max_prompt_tokens:
                self.stats["prompts_too_long"] += 1
                for j in range(params.n):
                    results[i][j] = Completion("", [], [], "prompt_too_long", i, j)
                    if on_complete is not None:
                        on_complete(results[i][j])
                continue
            todo.extend((i, j) for j in range(params.n))
        generator_seed = params.seed
        for start in range(0, len(todo), self.micro_batch_size):
            chunk = todo[start : start + self.micro_batch_size]
            if generator_seed is not None:
                torch.manual_seed(generator_seed + start)
            for comp in self._generate_chunk(chunk, texts, images, params):
                results[comp.prompt_index][comp.sample_index] = comp
                if on_complete is not None:
                    on_complete(comp)
        return [[c for c in row if c is not None] for row in results]

    def update_weights(self, named_tensors: Iterable[tuple[str, Any]]) -> None:
        """Copy new weights into the model in place (names as in ``model.state_dict()``)."""
        state = self.model.state_dict()
        with torch.no_grad():
            for name, tensor in named_tensors:
                if name not in state:
                    raise KeyError(f"update_weights: the rollout model has no parameter '{name}'")
                state[name].copy_(tensor)

    def sleep(self) -> None:
        """No-op: HF generate shares the learner's memory."""

    def wake_up(self) -> None:
        """No-op: HF generate shares the learner's memory."""

    # ------------------------------------------------------------------------------------------------------------
    def _prompt_text(self, prompt: RolloutPrompt) -> str:
        messages = to_structured_messages(prompt.messages)
        return self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def _prompt_len(self, text: str, images: list[Any]) -> int:
        enc = self.processor(text=[text], images=images or None, return_tensors="pt")
        return int(enc["input_ids"].shape[1])

    def _generate_kwargs(self, params: SamplingParams, greedy: bool) -> dict[str, Any]:
        """``model.generate``'s arguments for ``params``."""
        gen_kwargs: dict[str, Any] = {
            "max_new_tokens": params.max_tokens,
            "do_sample": not greedy,
            "eos_token_id": self._eos_ids,
            "pad_token_id": self._pad_id,
            "return_dict_in_generate": True,
            "output_logits": True,
            "repetition_penalty": params.repetition_penalty,
            "suppress_tokens": self._suppress_ids or None,
            "synced_gpus": self.synced_gpus,
        }
        if not greedy:
            gen_kwargs.update(
                temperature=params.temperature, top_p=params.top_p, top_k=max(params.top_k, 0) or None
            )
        if params.stop:
            gen_kwargs.update(stop_strings=list(params.stop), tokenizer=self.processor.tokenizer)
        return gen_kwargs

    @torch.no_grad()
    def _generate_chunk(
        self,
        chunk: list[tuple[int, int]],
        texts: list[str],
        images: list[list[Any]],
        params: SamplingParams,
    ) -> list[Completion]:
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # generation continues from the right end of every row
        device = next(self.model.parameters()).device

        def encode(rows: list[int]) -> dict[str, Any]:
            batch_images = [img for i in rows for img in images[i]]
            enc = self.processor(text=[texts[i] for i in rows], images=batch_images or None, padding=True,
                                 return_tensors="pt")  # fmt: skip
            return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in enc.items()}

        # A prompt's samples are adjacent in the chunk: the lean loop prefills each prompt once for all of them.
        prompts: list[int] = []
        repeats: list[int] = []
        for i, _ in chunk:
            if prompts and prompts[-1] == i:
                repeats[-1] += 1
            else:
                prompts.append(i)
                repeats.append(1)
        lean = self._lean is not None and not params.stop
        enc = encode(prompts if lean else [i for i, _ in chunk])
        greedy = params.temperature == 0
        was_training = self.model.training
        self.model.eval()
        try:
            if lean and self._lean.accepts(enc):
                processors = Processors.build(
                    greedy=greedy,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    top_k=params.top_k,
                    repetition_penalty=params.repetition_penalty,
                    suppress_ids=self._suppress_ids,
                    sampler=self.sampler,
                )
                self.stats["lean_sequences"] += len(chunk)
                self.stats["prefilled_prompts"] += len(prompts)
                new_tokens, logits = self._lean.generate(
                    enc,
                    max_new_tokens=params.max_tokens,
                    processors=processors,
                    greedy=greedy,
                    eos_ids=self._eos_ids,
                    pad_id=self._pad_id,
                    repeats=repeats if len(prompts) < len(chunk) else None,
                )
            else:
                if lean:  # no image in the chunk: generate, on every row
                    enc = encode([i for i, _ in chunk])
                out = self.model.generate(**enc, **self._generate_kwargs(params, greedy))
                new_tokens = out.sequences[:, enc["input_ids"].shape[1] :]  # (B, T_new)
                logits = torch.stack(out.logits, dim=1).float()  # (B, T_new, V)
        finally:
            self.model.train(was_training)
        temp = params.temperature if not greedy else 1.0
        logprobs = torch.log_softmax(logits / temp, dim=-1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        completions = []
        for row, (i, j) in enumerate(chunk):
            ids = new_tokens[row].tolist()
            end = len(ids)
            finish = "length"
            for t, tid in enumerate(ids):
                if tid in self._eos_ids:
                    end, finish = t + 1, "stop"
                    break
            ids = ids[:end]
            text = tok.decode(ids, skip_special_tokens=True)
            if params.stop and finish == "length":
                # generate's stop_strings ends the row; cut the text at the first stop string like vLLM does.
                cut = min((text.find(s) for s in params.stop if s in text), default=-1)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
            completions.append(Completion(text, ids, logprobs[row, :end].tolist(), finish, i, j))
            self.stats["generated_sequences"] += 1
            self.stats["generated_tokens"] += len(ids)
        return completions
