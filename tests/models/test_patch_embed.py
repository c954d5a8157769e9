"""The vision tower's patch conv computed as one matmul (``codepercept_rl/models/patch_embed.py``): the same function
and gradients as the stock ``Conv3d``, the same parameters, and on every model this project builds or loads.

Run: pytest tests/models/test_patch_embed.py (a few seconds).
"""

from __future__ import annotations

import copy

import pytest
import torch
from PIL import Image, ImageDraw
from torch import nn

from codepercept_rl.models import build_tiny_model, load_model
from codepercept_rl.models.patch_embed import PatchConv3d, use_linear_patch_embed

torch.set_num_threads(1)


def _pair(bias: bool, dtype: torch.dtype) -> tuple[nn.Conv3d, nn.Conv3d]:
    """A stock Qwen-style patch conv (kernel == stride) and a swapped copy with the same weights."""
    torch.manual_seed(0)
    stock = nn.Conv3d(3, 32, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=bias).to(dtype)
    fast = copy.deepcopy(stock)
    assert use_linear_patch_embed(fast) == 1
    assert type(fast) is PatchConv3d and type(stock) is nn.Conv3d
    return stock, fast


@pytest.mark.parametrize("bias", [False, True])  # Qwen2.5-VL's has no bias, Qwen3-VL's has one
@pytest.mark.parametrize(("dtype", "tol"), [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_matmul_equals_conv_forward_and_backward(bias: bool, dtype: torch.dtype, tol: float) -> None:
    stock, fast = _pair(bias, dtype)
    x = torch.randn(40, 3, 2, 14, 14, dtype=dtype)  # what the tower passes: one kernel per patch
    xs, xf = x.clone().requires_grad_(), x.clone().requires_grad_()
    ys, yf = stock(xs), fast(xf)
    assert yf.shape == ys.shape == (40, 32, 1, 1, 1) and yf.dtype == dtype
    scale = ys.abs().max().item()
    assert (yf - ys).abs().max().item() <= tol * scale
    g = torch.randn_like(ys)
    ys.backward(g)
    yf.backward(g)
    for a, b in [(xs.grad, xf.grad), (stock.weight.grad, fast.weight.grad)] + (
        [(stock.bias.grad, fast.bias.grad)] if bias else []
    ):
        assert b is not None and b.shape == a.shape
        assert (a.float() - b.float()).abs().max().item() <= tol * a.float().abs().max().item()


def test_other_inputs_take_the_stock_conv() -> None:
    stock, fast = _pair(True, torch.float32)
    x = torch.randn(2, 3, 4, 28, 42)  # several kernels per sample: a real convolution
    out = fast(x)
    assert out.shape == (2, 32, 2, 2, 3)
    torch.testing.assert_close(out, stock(x), rtol=0, atol=0)


def test_only_kernel_equals_stride_convs_are_swapped_and_parameters_stay() -> None:
    model = nn.Sequential(
        nn.Conv3d(3, 8, kernel_size=2, stride=2),
        nn.Conv3d(8, 8, kernel_size=3, stride=1, padding=1),  # overlapping: not a patch embedding
        nn.Conv3d(8, 8, kernel_size=2, stride=2, padding=1),  # padded: not one either
        nn.Conv2d(3, 8, kernel_size=2, stride=2),
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert use_linear_patch_embed(model) == 1
    assert [type(m).__name__ for m in model] == ["PatchConv3d", "Conv3d", "Conv3d", "Conv2d"]
    assert use_linear_patch_embed(model) == 0  # idempotent
    after = model.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)


def _image() -> Image.Image:
    img = Image.new("RGB", (84, 70), "white")
    ImageDraw.Draw(img).ellipse((10, 10, 60, 50), outline="red", width=3)
    return img


@pytest.mark.parametrize("arch", ["qwen2_5_vl", "qwen3_vl"])
def test_built_and_loaded_models_use_it_and_see_the_same(arch: str, tmp_path) -> None:
    model, processor = build_tiny_model(arch, "nano", out_dir=tmp_path / "m", seed=0)
    proj = model.model.visual.patch_embed.proj
    assert type(proj) is PatchConv3d
    loaded, _ = load_model(tmp_path / "m")
    assert type(loaded.model.visual.patch_embed.proj) is PatchConv3d
    # The stock module with the same weights gives the same image features.
    stock = copy.deepcopy(model)
    stock.model.visual.patch_embed.proj.__class__ = nn.Conv3d
    inputs = processor.image_processor(images=[_image()], return_tensors="pt")
    with torch.no_grad():
        ours = model.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
        ref = stock.model.visual(inputs["pixel_values"], grid_thw=inputs["image_grid_thw"])
    ours = ours.pooler_output if hasattr(ours, "pooler_output") else ours
    ref = ref.pooler_output if hasattr(ref, "pooler_output") else ref
    ours, ref = (t[0] if isinstance(t, (tuple, list)) else t for t in (ours, ref))
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert sorted(model.state_dict()) == sorted(stock.state_dict())
