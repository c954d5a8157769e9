"""A lean decode loop for HF rollouts of Qwen-VL models: the prefill is the model's own forward, every later token
one hand-written step over a preallocated KV cache.

HF ``generate`` pays per new token for a generic machinery: ``prepare_inputs_for_generation``, a fresh 4-D mask and
3-D rope positions, a ``DynamicCache`` that concatenates every layer's keys and values, the module tree's calls and
hooks. For the small models a CPU rollout uses that overhead is most of the step (measured on the quickstart's
tiny Qwen2.5-VL: 9 ms of a 12 ms step at 32 sequences). ``LeanDecoder`` keeps the numerics and drops the
machinery, the way vLLM runs its own model code on HF's weights:

- **prefill**: ``model(**inputs, use_cache=True)`` — the vision tower, the image-token merge and the 3-D rope
  positions exactly as HF computes them; its cache is copied once into a buffer of ``prompt + max_new_tokens``
  positions per layer;
- **decode**: one token per row per step through the text decoder's own parameters: RMSNorm, one q/k/v matmul
  (the three weights concatenated per call; Qwen3's q/k norms), rope, a write into the buffer,
  ``scaled_dot_product_attention`` over the filled prefix with the padding masked, o-projection, one gate/up
  matmul, down-projection. A text token's three rope components are equal,
  so its position is ``tokens so far in the row + rope_deltas`` (HF's own rule, and the learner's: its forward
  over prompt + response gives the response the same positions);
- **sampling**: HF's logits processors (suppressed tokens, repetition penalty, temperature, top-k), called as
  ``generate``'s sampling loop calls them, on every row, finished or not; then one of two samplers
  (``Processors.sampler``):

  - ``"fast"`` (the engine's default): top-p and the draw in one step over the few most likely tokens
    (``codepercept_rl/rollout/sampling.py``): generate's distribution, its own random stream, and a fraction of
    the time of HF's sort-based top-p and ``torch.multinomial``, which on a CPU core cost more than the model
    step of a small policy;
  - ``"hf"``: HF's ``TopPLogitsWarper`` and ``torch.multinomial`` on the softmax, so a seeded call draws the
    same tokens and the same random stream as ``generate``.

It is the same function as ``generate``, not an approximation: ``tests/rollout/test_lean_decode.py`` checks the
greedy tokens and the logits of every step against ``generate`` (and, with the ``"hf"`` sampler, the sampled
tokens and the random stream), and the log-probs against the learner's forward.
What it supports is what it checks (``supported``): Qwen2-VL, Qwen2.5-VL and Qwen3-VL (dense) with SDPA or eager
attention, batch-padded on the left, batches with at least one image (the rows' rope positions then come from
the image-aware rule both HF paths share); anything else (and stop strings) stays on ``generate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from codepercept_rl.rollout.sampling import SAMPLERS, sample

SUPPORTED_MODEL_TYPES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")


def supported(model: Any) -> str | None:
    """None when ``LeanDecoder`` can run ``model``; else the reason it cannot (the caller uses ``generate``)."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {SUPPORTED_MODEL_TYPES}"
    text = _text_model(model)
    if text is None or getattr(model, "lm_head", None) is None:
        return "no language_model / lm_head where Qwen-VL keeps them"
    attn = getattr(model.config, "_attn_implementation", "sdpa") or "sdpa"
    if attn not in ("sdpa", "eager"):
        return f"attention implementation {attn!r} (the lean loop is SDPA)"
    text_cfg = getattr(model.config, "text_config", model.config)
    if getattr(text_cfg, "use_sliding_window", False):
        return "sliding-window attention"
    if any(type(p).__name__ == "DTensor" for p in model.parameters()):
        return "sharded (DTensor) parameters: the lean loop calls submodules directly, past FSDP's hooks"
    return None


def _text_model(model: Any) -> Any:
    inner = getattr(model, "model", None)
    return getattr(inner, "language_model", None)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


@dataclass
class Processors:
    """HF's logits processors for one call, applied in ``generate``'s order, and how to draw from the result.

    ``sampler="fast"`` leaves top-p out of ``chain`` and applies it in :meth:`sample` (``sampling.sample``);
    ``"hf"`` keeps HF's ``TopPLogitsWarper`` in ``chain`` and draws with ``torch.multinomial``, as ``generate`` does.
    """

    chain: list[Any]
    top_p: float = 1.0
    sampler: str = "hf"

    @classmethod
    def build(
        cls,
        *,
        greedy: bool,
        temperature: float,
        top_p: float,
        top_k: int,
        repetition_penalty: float,
        suppress_ids: list[int],
        sampler: str = "hf",
    ) -> Processors:
        if sampler not in SAMPLERS:
            raise ValueError(f"sampler={sampler!r}: expected one of {SAMPLERS}")
        from transformers.generation.logits_process import (
            RepetitionPenaltyLogitsProcessor,
            SuppressTokensLogitsProcessor,
            TemperatureLogitsWarper,
            TopKLogitsWarper,
            TopPLogitsWarper,
        )

        chain: list[Any] = []
        if repetition_penalty != 1.0:
            chain.append(RepetitionPenaltyLogitsProcessor(penalty=repetition_penalty))
        if suppress_ids:
            chain.append(SuppressTokensLogitsProcessor(suppress_ids))
        if not greedy:
            if temperature != 1.0:
                chain.append(TemperatureLogitsWarper(temperature))
            if top_k > 0:
                chain.append(TopKLogitsWarper(top_k=top_k))
            if top_p < 1.0 and sampler == "hf":
                chain.append(TopPLogitsWarper(top_p=top_p))
        return cls(chain, top_p=top_p if sampler == "fast" else 1.0, sampler=sampler)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        for proc in self.chain:
            scores = proc(input_ids, scores)
        return scores

    def sample(self, scores: torch.Tensor) -> torch.Tensor:
        """One token per row from the processed ``scores`` (B, V)."""
        if self.sampler == "fast":
            return sample(scores, self.top_p)
        return torch.multinomial(F.softmax(scores, dim=-1), num_samples=1).squeeze(1)


class LeanDecoder:
    """Prefill with the model's forward, then decode ``max_new_tokens`` with a preallocated KV cache.

    Args:
        model: a supported Qwen-VL model (``supported(model) is None``), in eval mode.
    """

    def __init__(self, model: Any) -> None:
        reason = supported(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot run this model: {reason}")
        self.model = model
        self.text = _text_model(model)
        text_cfg = getattr(model.config, "text_config", model.config)
        self.layers = list(self.text.layers)
        attn0 = self.layers[0].self_attn
        self.head_dim = int(attn0.head_dim)
        self.num_kv_heads = int(text_cfg.num_key_value_heads)
        self.num_heads = int(text_cfg.num_attention_heads)
        self.scaling = float(attn0.scaling)
        self.qk_norm = hasattr(attn0, "q_norm")

    @staticmethod
    def accepts(inputs: dict[str, Any]) -> bool:
        """Whether :meth:`generate` takes this encoded batch: it needs at least one image (without one, HF's
        forward would place left-padded rows by cache position, generate by the mask)."""
        return inputs.get("image_grid_thw") is not None

    @torch.no_grad()
    def generate(
        self,
        inputs: dict[str, Any],
        *,
        max_new_tokens: int,
        processors: Processors,
        greedy: bool,
        eos_ids: list[int],
        pad_id: int,
        repeats: list[int] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``(new_tokens (B, T), raw_logits (B, T, V))`` as ``generate(..., output_logits=True)`` does:
        ``T`` is the step at which every row had ended (EOS) or ``max_new_tokens``; rows that ended earlier are
        padded with ``pad_id`` after their EOS.

        ``repeats`` (one count per row of ``inputs``) decodes row ``u`` of ``inputs`` ``repeats[u]`` times, as if
        it were repeated that many times in a row (``B = sum(repeats)``): the prompt is prefilled once and its
        KV cache copied to its samples, as vLLM's prefix cache does for the ``n`` samples of a request. The
        samples are drawn independently from there on.
        """
        if not self.accepts(inputs):
            raise ValueError("LeanDecoder.generate needs a batch with at least one image (use generate)")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 1")
        input_ids = inputs["input_ids"]
        mask = inputs.get("attention_mask")
        if mask is None:
            mask = torch.ones_like(input_ids)
        if repeats is not None and (len(repeats) != input_ids.shape[0] or min(repeats, default=0) < 1):
            raise ValueError(f"repeats={repeats}: one count >= 1 per prompt row ({input_ids.shape[0]} rows)")
        prompt_len = input_ids.shape[1]
        self.model.model.rope_deltas = None  # this prefill's, never a previous call's
        out = self.model(**inputs, use_cache=True, logits_to_keep=1)
        layers = self._fused()
        rope_deltas = self.model.model.rope_deltas
        if rope_deltas is None:
            rope_deltas = torch.zeros(input_ids.shape[0], 1, dtype=torch.long, device=input_ids.device)
        cache = out["cache"] if "cache" in out else out["past_key_values"]  # the field's name before HF 5.40
        logits = out.logits[:, -1].to(copy=True, dtype=torch.float32)
        index = None
        if repeats is not None:  # each prompt row's state, copied to its samples
            index = torch.repeat_interleave(
                torch.arange(len(repeats), device=input_ids.device), torch.tensor(repeats, device=input_ids.device)
            )  # fmt: skip
            input_ids, mask, rope_deltas, logits = (
                input_ids[index],
                mask[index],
                rope_deltas[index],
                logits[index],
            )
        batch = input_ids.shape[0]
        total = prompt_len + max_new_tokens
        keys, values = [], []
        for i in range(len(self.layers)):
            k, v = _layer_kv(cache, i)
            kbuf = k.new_empty(batch, k.shape[1], total, k.shape[3])
            vbuf = v.new_empty(batch, v.shape[1], total, v.shape[3])
            kbuf[:, :, :prompt_len] = k if index is None else k[index]
            vbuf[:, :, :prompt_len] = v if index is None else v[index]
            keys.append(kbuf)
            values.append(vbuf)
        del cache, out
        attn_mask = torch.zeros(batch, 1, 1, total, dtype=torch.bool, device=input_ids.device)
        attn_mask[:, 0, 0, :prompt_len] = mask.bool()
        # The next token's position in its row: the row's tokens so far (no padding), plus rope_deltas.
        position = mask.long().sum(-1, keepdim=True) + rope_deltas.to(input_ids.device)  # (B, 1)
        # Prompt + tokens so far (what the repetition penalty reads), filled in place: no concatenation per step.
        sequences = input_ids.new_empty(batch, total)
        sequences[:, :prompt_len] = input_ids
        unfinished = torch.ones(batch, dtype=torch.long, device=input_ids.device)
        eos = torch.tensor(eos_ids, device=input_ids.device)
        raw: list[torch.Tensor] = []
        new_tokens: list[torch.Tensor] = []
        for step in range(max_new_tokens):
            raw.append(logits)
            scores = processors(sequences[:, : prompt_len + step], logits)
            token = torch.argmax(scores, dim=-1) if greedy else processors.sample(scores)
            token = token * unfinished + pad_id * (1 - unfinished)
            new_tokens.append(token)
            sequences[:, prompt_len + step] = token
            unfinished = unfinished & ~torch.isin(token, eos)
            if not bool(unfinished.any()) or step + 1 == max_new_tokens:
                break
            slot = prompt_len + step
            attn_mask[:, 0, 0, slot] = True
            logits = self._step(layers, token, position, slot, keys, values, attn_mask[..., : slot + 1])
            position = position + 1
        return torch.stack(new_tokens, dim=1), torch.stack(raw, dim=1)

    def _fused(self) -> list[_Layer]:
        """Each layer's parameters for the decode step, q/k/v and gate/up concatenated: fewer, larger matmuls.
        Built per call (the weights change with every update; concatenating them costs one copy of the
        projections, small next to a call's decoding)."""
        layers = []
        for layer in self.layers:
            attn, mlp = layer.self_attn, layer.mlp
            biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
            layers.append(
                _Layer(
                    qkv=torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                    qkv_bias=None if biases[0] is None else torch.cat(biases),
                    o=attn.o_proj.weight,
                    gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                    down=mlp.down_proj.weight,
                    act=mlp.act_fn,
                    norm1=_norm(layer.input_layernorm),
                    norm2=_norm(layer.post_attention_layernorm),
                    q_norm=_norm(attn.q_norm) if self.qk_norm else None,
                    k_norm=_norm(attn.k_norm) if self.qk_norm else None,
                )
            )
        return layers

    def _step(
        self,
        layers: list[_Layer],
        token: torch.Tensor,
        position: torch.Tensor,
        slot: int,
        keys: list[torch.Tensor],
        values: list[torch.Tensor],
        attn_mask: torch.Tensor,
    ) -> torch.Tensor:
        """One decode step: ``token`` (B,) at ``position`` (B, 1), written to cache ``slot``; returns the next
        logits (B, V) in fp32."""
        batch = token.shape[0]
        hidden = self.text.embed_tokens(token[:, None])
        # A text token's three rope components are equal: HF's rotary module with (3, B, 1) positions.
        cos, sin = self.text.rotary_emb(hidden, position[None].expand(3, -1, -1))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q_size, kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        length = slot + 1
        gqa = self.num_heads != self.num_kv_heads
        for i, lay in enumerate(layers):
            residual = hidden
            qkv = F.linear(_rms(hidden, lay.norm1), lay.qkv, lay.qkv_bias)
            q, k, v = qkv.split([q_size, kv_size, kv_size], dim=-1)
            q = q.view(batch, 1, -1, self.head_dim)
            k = k.view(batch, 1, -1, self.head_dim)
            if lay.q_norm is not None:
                q, k = _rms(q, lay.q_norm), _rms(k, lay.k_norm)
            q, k = q.transpose(1, 2), k.transpose(1, 2)
            q = (q * cos) + (_rotate_half(q) * sin)
            keys[i][:, :, slot] = (k * cos + _rotate_half(k) * sin)[:, :, 0]
            values[i][:, :, slot] = v.view(batch, -1, self.head_dim)
            out = F.scaled_dot_product_attention(
                q, keys[i][:, :, :length], values[i][:, :, :length], attn_mask=attn_mask, scale=self.scaling,
                enable_gqa=gqa,
            )  # fmt: skip
            hidden = residual + F.linear(out.transpose(1, 2).reshape(batch, 1, -1), lay.o)
            gate, up = F.linear(_rms(hidden, lay.norm2), lay.gate_up).chunk(2, dim=-1)
            hidden = hidden + F.linear(lay.act(gate) * up, lay.down)
        hidden = self.text.norm(hidden)
        return self.model.lm_head(hidden)[:, -1].float()


@dataclass
class _Layer:
    qkv: torch.Tensor
    qkv_bias: torch.Tensor | None
    o: torch.Tensor
    gate_up: torch.Tensor
    down: torch.Tensor
    act: Any
    norm1: tuple[torch.Tensor, float]
    norm2: tuple[torch.Tensor, float]
    q_norm: tuple[torch.Tensor, float] | None
    k_norm: tuple[torch.Tensor, float] | None


def _norm(module: Any) -> tuple[torch.Tensor, float]:
    """An HF RMSNorm's (weight, eps)."""
    eps = getattr(module, "variance_epsilon", None)
    return module.weight, float(eps if eps is not None else module.eps)


def _rms(x: torch.Tensor, norm: tuple[torch.Tensor, float]) -> torch.Tensor:
    """HF's RMSNorm: normalised in fp32, cast back, then scaled."""
    weight, eps = norm
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


def _layer_kv(cache: Any, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer ``index``'s prefill keys and values (B, kv_heads, S, head_dim) from an HF cache."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return layers[index].keys, layers[index].values
    return cache.key_cache[index], cache.value_cache[index]
