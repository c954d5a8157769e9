"""The GRPO update written with verl 0.9's own functions: the reference the parity suite compares our learner to.

A plain (unsharded) Hugging Face model runs one forward over the whole mini-batch; log-probs and entropy come
from verl's ``logprobs_from_logits`` / ``entropy_from_logits`` on ``logits / temperature`` (what verl's FSDP
engine does), are laid out in verl's no-padding format and go into verl's ``ppo_loss`` with
``global_batch_info`` (``dp_size=1``, the mini-batch's token and sequence counts). Its backward leaves the
reference gradients in the model's ``.grad``.

Both sides run in float64 (``model.dtype=float64``), so the comparison measures the update's math, not fp32
rounding of two different batch layouts (in fp32 the two differ by about 1e-6 relative).

The case data (:func:`make_case`) is a real GRPO mini-batch: three prompts with images, groups with distinct
rewards, identical rewards and a group of one, an empty response, responses of different lengths.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from PIL import Image

from codepercept_rl.grpo.algos import grpo_advantages
from codepercept_rl.grpo.batch import PromptEncoder, Rollout, TrainBatch, build_micro_batches
from codepercept_rl.models.tiny import build_tiny_model
from codepercept_rl.rollout import RolloutPrompt
from codepercept_rl.rollout.hf import vision_token_ids

RESPONSE_LENGTH = 16  # the padded response width: verl's horizon for seq-mean-token-sum-norm
# (prompt, score, response length): distinct rewards; identical rewards (with an empty response); a group of one.
ROLLOUTS = [
    (0, 0.0, 5),
    (0, 1.0, 9),
    (0, 3.0, 12),
    (0, 2.0, 7),
    (1, 2.0, 6),
    (1, 2.0, 0),
    (1, 2.0, 10),
    (2, 1.5, 8),
]


@dataclass
class Case:
    """One mini-batch and the per-token inputs of the loss, for both sides."""

    model: torch.nn.Module
    processor: object
    encoder: PromptEncoder
    batch: TrainBatch
    trainable: list[int]  # rollouts with at least one response token (what the GRPO driver trains on)
    old_noise: list[torch.Tensor]  # per rollout, added to the current log-probs
    ref_noise: list[torch.Tensor]


def make_case(seed: int = 0, dtype: torch.dtype = torch.float64) -> Case:
    """The nano Qwen2.5-VL (seeded weights, in ``dtype``) and the mini-batch of :data:`ROLLOUTS`."""
    model, processor = build_tiny_model("qwen2_5_vl", "nano", seed=seed)
    model = model.to(dtype)
    model.set_attn_implementation("sdpa")
    colours = [(200, 30, 30), (30, 160, 60), (40, 60, 220)]
    prompts = [
        RolloutPrompt(
            [{"role": "user", "content": f"<image>Draw this, variant {i}."}], [Image.new("RGB", (56, 56), c)]
        )
        for i, c in enumerate(colours)
    ]
    g = torch.Generator().manual_seed(seed)
    banned = set(vision_token_ids(processor.tokenizer)) | set(processor.tokenizer.all_special_ids)
    allowed = torch.tensor([t for t in range(len(processor.tokenizer)) if t not in banned])
    rollouts = []
    for p, score, length in ROLLOUTS:
        ids = allowed[torch.randint(len(allowed), (length,), generator=g)].tolist()
        rollouts.append(Rollout(p, p, ids, "", "stop", score=score))
    adv = grpo_advantages(torch.tensor([r.score for r in rollouts]), [r.prompt_index for r in rollouts])
    for r, a in zip(rollouts, adv.tolist(), strict=True):
        r.advantage = a
    batch = TrainBatch(prompts, rollouts)
    trainable = [k for k, r in enumerate(rollouts) if r.token_ids]
    # Off-policy and reference log-probs: the current ones plus noise large enough that the clip, the dual
    # clip and every KL estimator's non-linear range are reached.
    old_noise = [torch.randn(len(r.token_ids), generator=g).to(dtype) * 0.8 for r in rollouts]
    ref_noise = [torch.randn(len(r.token_ids), generator=g).to(dtype) * 0.8 for r in rollouts]
    return Case(model, processor, PromptEncoder(processor), batch, trainable, old_noise, ref_noise)


@dataclass(frozen=True)
class Settings:
    """One configuration of the update, in verl's key names."""

    loss_agg_mode: str = "token-mean"
    temperature: float = 1.0
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.28
    clip_ratio_c: float = 3.0
    use_kl_loss: bool = True
    kl_loss_type: str = "low_var_kl"
    kl_loss_coef: float = 0.1
    on_policy: bool = False
    ref_shift: float = 0.0  # added to every reference log-prob (the stress case uses -100)
    old_shift: float = 0.0


def _verl_logprobs(model, case: Case, temperature: float):
    """One padded forward of all rollouts; per-rollout response log-probs and entropies (verl's functions)."""
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits

    order = list(range(len(case.batch.rollouts)))
    (mb,) = build_micro_batches(case.batch, order, case.encoder, len(order))
    logits = model(**mb.model_inputs(), use_cache=False).logits[:, :-1] / temperature  # (B, T-1, V)
    labels = mb.input_ids[:, 1:]
    B, T1, V = logits.shape
    lp = logprobs_from_logits(logits.reshape(-1, V), labels.reshape(-1)).view(B, T1)
    ent = entropy_from_logits(logits.reshape(-1, V)).view(B, T1)
    mask = mb.loss_mask[:, 1:].bool()
    return [lp[b][mask[b]] for b in range(B)], [ent[b][mask[b]] for b in range(B)]


def verl_update(case: Case, s: Settings) -> dict:
    """verl's loss, metrics and gradients of one mini-batch update under ``s`` (see the module docstring)."""
    from tensordict import TensorDict
    from verl.utils import tensordict_utils as tu
    from verl.utils.metric import Metric
    from verl.workers.config import ActorConfig
    from verl.workers.utils.losses import ppo_loss

    model = copy.deepcopy(case.model).train()
    model.zero_grad(set_to_none=True)
    dtype = next(model.parameters()).dtype
    resp_lp, resp_ent = _verl_logprobs(model, case, s.temperature)
    rollouts = case.batch.rollouts
    prompt_ids = [case.encoder.encode(case.batch.prompts[r.prompt_index])[0] for r in rollouts]
    bs, Lp, Lr = len(rollouts), max(len(p) for p in prompt_ids), RESPONSE_LENGTH
    prompts = torch.zeros(bs, Lp, dtype=torch.long)  # left-padded, as verl's rollouts are
    responses = torch.zeros(bs, Lr, dtype=torch.long)  # right-padded to the response length
    attention = torch.zeros(bs, Lp + Lr, dtype=torch.long)
    flat = []  # verl's no-padding layout: position t of a sequence holds log p(token t+1)
    for b, (r, p) in enumerate(zip(rollouts, prompt_ids, strict=True)):
        n = len(r.token_ids)
        prompts[b, Lp - len(p) :] = p
        responses[b, :n] = torch.tensor(r.token_ids, dtype=torch.long)
        attention[b, Lp - len(p) : Lp + n] = 1
        flat += [torch.zeros(len(p) - 1, dtype=dtype), resp_lp[b], torch.zeros(1, dtype=dtype)]
    response_mask = attention[:, Lp:].clone()

    def padded(per_seq):
        out = torch.zeros(bs, Lr, dtype=dtype)
        for b, t in enumerate(per_seq):
            out[b, : len(t)] = t
        return out

    current = [lp.detach() for lp in resp_lp]
    old = (
        current
        if s.on_policy
        else [c + n + s.old_shift for c, n in zip(current, case.old_noise, strict=True)]
    )
    ref = [c + n + s.ref_shift for c, n in zip(current, case.ref_noise, strict=True)]
    adv = torch.tensor([r.advantage for r in rollouts])[:, None] * response_mask
    data = TensorDict(
        {"prompts": prompts, "responses": responses, "attention_mask": attention, "response_mask": response_mask,
         "old_log_probs": padded(old), "advantages": adv, "ref_log_prob": padded(ref)},
        batch_size=[bs],
    )  # fmt: skip
    # Sequences that carry a loss: our driver trains only on non-empty responses (tests/grpo/test_verl_parity.py).
    nonempty = int((response_mask.sum(-1) > 0).sum())
    tu.assign_non_tensor(
        data, dp_size=1, batch_num_tokens=int(response_mask.sum()), global_batch_size=nonempty
    )
    cfg = ActorConfig(
        strategy="fsdp", ppo_mini_batch_size=bs, rollout_n=1, use_dynamic_bsz=True, ppo_max_token_len_per_gpu=4096,
        loss_agg_mode=s.loss_agg_mode, clip_ratio_low=s.clip_ratio_low, clip_ratio_high=s.clip_ratio_high,
        clip_ratio_c=s.clip_ratio_c, use_kl_loss=s.use_kl_loss, kl_loss_type=s.kl_loss_type,
        kl_loss_coef=s.kl_loss_coef,
    )  # fmt: skip
    loss, metrics = ppo_loss(cfg, {"log_probs": torch.cat(flat)}, data)
    loss.backward()
    values = {k: float(v.aggregate()) if isinstance(v, Metric) else float(v) for k, v in metrics.items()}
    mask = response_mask.bool()
    entropy = torch.cat([e.detach() for e in resp_ent])
    return {
        "loss": float(loss.detach()),
        "metrics": values,
        "entropy": float(entropy.mean()) if mask.any() else 0.0,
        "grads": {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None},
        "old": old,
        "ref": ref,
    }
