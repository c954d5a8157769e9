"""FSDP2 wrapping of a Hugging Face Qwen-VL model: ``fully_shard`` per decoder layer and per vision block.

Each transformer block (the classes the model lists in ``_no_split_modules``: decoder layers and vision
blocks) becomes its own FSDP unit, so only one block's full weights are gathered at a time; the root unit
takes the rest (embeddings, tied LM head, norms, the vision patch embed and merger). Parameters stay fp32
("master weights"); with ``dtype=bfloat16`` they are cast to bf16 for compute and gradients are reduced in
fp32. The same wrapping runs on a 1-rank CPU mesh (gloo) and an N-GPU mesh (NCCL).
"""

from __future__ import annotations

import importlib.util
import logging

import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from transformers import PreTrainedModel

log = logging.getLogger(__name__)

__all__ = [
    "pick_attn_implementation", "freeze_vision_tower", "apply_fsdp2", "compute_dtype", "trainable_parameter_count"
]  # fmt: skip

# float64: numerical checks only (the verl parity suite compares update math without fp32 rounding noise).
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float64": torch.float64}


def pick_attn_implementation(requested: str, device: torch.device) -> str:
    """``auto`` -> ``flash_attention_2`` on CUDA when ``flash_attn`` is installed, else ``sdpa``.

    Raises:
        ValueError: ``flash_attention_2`` was asked for without CUDA or without the ``flash_attn`` package.
    """
    has_flash = device.type == "cuda" and importlib.util.find_spec("flash_attn") is not None
    if requested == "auto":
        return "flash_attention_2" if has_flash else "sdpa"
    if requested == "flash_attention_2" and not has_flash:
        raise ValueError(
            "model.attn_implementation=flash_attention_2 needs CUDA and the flash_attn package; use auto or sdpa"
        )
    return requested


def freeze_vision_tower(model: PreTrainedModel) -> int:
    """Stops gradients to the whole vision tower (patch embed, blocks, merger); returns the frozen count.

    Raises:
        ValueError: the model has no ``model.visual`` tower (not a Qwen-VL model).
    """
    visual = getattr(model.model, "visual", None)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower at model.visual; cannot freeze it")
    visual.requires_grad_(False)
    return sum(p.numel() for p in visual.parameters())


def trainable_parameter_count(model: torch.nn.Module) -> int:
    """Number of parameters (elements, unsharded) that receive gradients."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def compute_dtype(dtype: str) -> torch.dtype:
    """The torch dtype of a ``model.dtype`` name.

    Raises:
        ValueError: ``float16`` (needs loss scaling, not supported) or an unknown name.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"model.dtype={dtype!r} is not supported for training; use float32 or bfloat16")
    return _DTYPES[dtype]


def apply_fsdp2(
    model: PreTrainedModel, mesh: DeviceMesh, dtype: str = "float32", *, param_offload: bool = False
) -> PreTrainedModel:
    """Shards ``model`` in place over ``mesh``: one FSDP unit per block in ``_no_split_modules``, then the root.

    Args:
        model: a Hugging Face model on CPU or this rank's device, fp32 parameters.
        mesh: the 1-D ``fsdp`` mesh from :func:`codepercept_rl.learner.dist.init_distributed`.
        dtype: compute dtype, ``float32`` or ``bfloat16`` (parameters are kept in their own dtype: fp32 master
            weights for a trained model, the compute dtype for a frozen one); ``float64`` for numerical checks.
        param_offload: keep the parameter shards in host memory between uses (FSDP2 ``CPUOffloadPolicy``,
            verl's ``fsdp_config.param_offload``): each unit is copied to the device for its forward only.

    Returns:
        The same module, now an ``FSDPModule`` whose parameters are ``DTensor`` shards.

    Raises:
        ValueError: ``float16`` (needs loss scaling, not supported) or a model with no block to shard.
    """
    compute = compute_dtype(dtype)
    offload: OffloadPolicy = (
        CPUOffloadPolicy(pin_memory=mesh.device_type == "cuda") if param_offload else OffloadPolicy()
    )
    policy = MixedPrecisionPolicy(
        param_dtype=compute, reduce_dtype=torch.promote_types(compute, torch.float32)
    )
    block_names = set(model._no_split_modules or ())
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    if not blocks:
        raise ValueError(f"{type(model).__name__} lists no block classes in _no_split_modules to shard")
    for block in blocks:
        fully_shard(block, mesh=mesh, mp_policy=policy, offload_policy=offload)
    # The root keeps embeddings and the (tied) LM head together: sharding them apart would break the tie.
    fully_shard(model, mesh=mesh, mp_policy=policy, offload_policy=offload)
    log.info("FSDP2: %d blocks sharded over %d rank(s), compute dtype %s%s", len(blocks), mesh.size(), dtype,
             ", parameters offloaded to host memory" if param_offload else "")  # fmt: skip
    return model
