"""The vision tower's patch embedding as one matmul: Qwen-VL's ``Conv3d`` whose kernel equals its stride.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL embed an image as non-overlapping patches of ``temporal x patch x patch``
pixels (kernel == stride, no padding), and their processors hand the tower the patches already cut out: the
conv's input is ``(N, C, t, p, p)``, exactly one kernel per patch. The convolution is then a matrix product of the
flattened patches with the flattened kernel, and computing it as one is what vLLM's Qwen-VL model code does.
On a CPU the op itself is much faster so: PyTorch's 3-D convolution has no fast path for this shape (measured
at 1 thread, 256 patches into 128 channels, forward + backward: 46.7 ms as ``Conv3d``, 2.3 ms as a matmul in
fp32; 63.1 ms against 1.1 ms in bf16). In a whole step it is a small share: the quickstart's S1 step went from
0.236 s to 0.225 s.

:func:`use_linear_patch_embed` swaps such convs' class in place for :class:`PatchConv3d`: same parameters (the
5-D ``weight`` and ``bias``, so checkpoints, state dicts, FSDP2 shards and vLLM's loader see the same names and
shapes), the same outputs up to fp32 summation order (``tests/models/test_patch_embed.py``), and the stock
``Conv3d`` path for any input that is not one kernel per sample.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["PatchConv3d", "use_linear_patch_embed"]


class PatchConv3d(nn.Conv3d):
    """A ``Conv3d`` with kernel == stride that computes one-kernel-per-sample inputs as a matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 5 or tuple(x.shape[2:]) != tuple(self.kernel_size):
            return super().forward(x)
        out = F.linear(x.reshape(x.shape[0], -1), self.weight.reshape(self.out_channels, -1), self.bias)
        return out.view(x.shape[0], self.out_channels, 1, 1, 1)


def _is_patch_conv(module: nn.Module) -> bool:
    return (
        type(module) is nn.Conv3d
        and tuple(module.kernel_size) == tuple(module.stride)
        and all(p == 0 for p in module.padding)  # type: ignore[union-attr]  # a tuple for Conv3d
        and all(d == 1 for d in module.dilation)
        and module.groups == 1
        and module.padding_mode == "zeros"
    )


def use_linear_patch_embed(model: nn.Module) -> int:
    """Turns every kernel == stride ``Conv3d`` of ``model`` into a :class:`PatchConv3d`, in place (parameters,
    hooks and FSDP state untouched). Idempotent; returns how many modules it changed."""
    changed = 0
    for module in model.modules():
        if _is_patch_conv(module):
            module.__class__ = PatchConv3d
            changed += 1
    return changed
