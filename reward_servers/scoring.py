"""Scores a sandbox render against a target image and/or a reference render.

``score_render(render, target, reference, reward)`` is what the sandbox's zygote (a trusted process) calls
after running untrusted code; ``SCORERS`` maps reward names to scorers; ``decode_png`` turns PNG bytes,
which come from untrusted code, into RGB safely. Metric definitions live in reward_servers/metrics.py.

Rewards, each a score in [0, 1] plus named metrics (raw values, before any mapping):

- ``render`` (default): image = 0.25·clip(ssim, 0, 1) + 0.5·edge + 0.25·(pixel + 1)/2 on the 256x256 canvas
  (``ssim``: grayscale SSIM; ``edge``: Canny edge F1; ``pixel``: RLRF's R_recon in [-1, 1]). The edge F1
  carries half the weight because SSIM and pixel correlation are inflated by the white background that
  dominates STEM figures (a blank page gets SSIM ≈ 0.8 against a sparse line chart). When the reference
  has a trace, score = 0.5·image + 0.5·trace, trace being 0.5·element_f2 + 0.5·(the mean of ChartMimic's four
  trace F1s) of the render's trace against it. Cost: ≈ 30-40 ms a call for a 640x480 render on one core,
  about a third of it PNG decoding, ≈ 60-75 ms with a 200-element trace (``python benchmarks/metrics_cost.py``,
  measured before element_f2, which took ≈ 11 ms on two random 200-element traces).
- ``ssim``: clip(grayscale SSIM, 0, 1). ``pixel``: (R_recon + 1) / 2. ``edge``: the Canny edge F1.
- ``rlrf``: RLRF's image reward, (R_recon + R_edge) / 2 in [-1, 1], mapped affinely to [0, 1] by (x + 1) / 2
  (affine, so GRPO's within-group normalised advantages are the same as with the raw reward).
- ``exec``: 1.0 whenever the code ran and drew a figure (status ``ok``).
- ``trace``: 0.5·element_f2 + 0.5·mean(text_f1, type_f1, color_f1, layout_f1); needs a reference render with a
  trace. element_f2 (``metrics.element_f2``) matches the drawn elements by type, kind and bbox, recall
  weighted (β = 2): the four F1s see neither kinds nor positions, which the paper's code judge gives half its
  points (element counts 20, positions 30), and F1 made leaving out an uncertain element pay (see the metric).

With a reference trace, ``render`` and ``trace`` also report ``elements`` and ``ref_elements`` (how many elements
the render and the reference drew, texts aside) and ``elements_ratio``: diagnostics in no score, that show an
answer drawing less or more than its target (GRPO can learn to hedge by drawing less).

Any status other than ``ok`` scores (0.0, {}). With no target image, an ``ok`` reference render is the target.
The render's trace is taken as it is: a missing or tampered trace scores as an empty one rather than
dropping the trace term, so breaking the tracer can never raise a score.

Security: ``decode_png`` refuses non-PNG data, images over ``max_pixels`` (checked from the header before
any pixel is decoded) and truncated or corrupt files. It does not bound the size of the PNG's compressed
bytes (the sandbox caps its output files) nor PIL's own text-chunk handling (PIL limits those itself).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from reward_servers import metrics

if TYPE_CHECKING:
    from reward_servers.sandbox import RenderResult

MAX_PIXELS = 40_000_000
RENDER_WEIGHTS = {"ssim": 0.25, "edge": 0.5, "pixel": 0.25}
TRACE_WEIGHT = 0.5
TRACE_KEYS = ("text_f1", "type_f1", "color_f1", "layout_f1")  # ChartMimic's four F1s, averaged
# Share of ``trace`` that element_f2 (kinds and positions of the drawn elements) carries; the four F1s share the
# rest. The paper's code judge gives element counts and positions 50 of its 100 points, and the four F1s see
# neither (an answer with every shape of the wrong kind, colour and cell scored trace 0.75 without it).
ELEMENT_WEIGHT = 0.5

Scorer = Callable[
    ["RenderResult", "np.ndarray | None", "RenderResult | None"], tuple[float, dict[str, float]]
]


def decode_png(png: bytes, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decodes PNG bytes to an (H, W, 3) uint8 RGB array, transparency composited on white.

    Args:
        png: the file's bytes.
        max_pixels: refuse images with more pixels than this (decompression bombs); checked from the
            header, before decoding.

    Raises:
        ValueError: not bytes, not a PNG, too many pixels, or a truncated / corrupt file (the message
            says which).
    """
    if not isinstance(png, (bytes, bytearray, memoryview)):
        raise ValueError(f"expected PNG bytes, got {type(png).__name__}")
    # PIL's own errors for unreadable / truncated / corrupt files (ValueError: e.g. an oversized text chunk).
    pil_errors = (OSError, SyntaxError, EOFError, ValueError)
    with warnings.catch_warnings():
        # PIL warns (and past twice its own limit raises) on huge images: turn both into our error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(png), formats=["PNG"])
        except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
            raise ValueError(f"PNG refused as a decompression bomb: {err}") from err
        except pil_errors as err:
            raise ValueError(f"not a valid PNG ({len(png)} bytes): {err}") from err
        w, h = img.size
        if w * h > max_pixels:
            raise ValueError(f"PNG too large: {w}x{h} = {w * h} pixels > max_pixels={max_pixels}")
        try:
            img.load()
        except pil_errors as err:
            raise ValueError(f"not a valid PNG ({len(png)} bytes): {err}") from err
    return metrics.pil_to_rgb(img)


def _target_canvas(target: np.ndarray | None, reference: RenderResult | None, reward: str) -> np.ndarray:
    if target is not None:
        return metrics.to_canvas(target)
    if reference is not None and reference.status == "ok" and reference.png is not None:
        return metrics.to_canvas(decode_png(reference.png))
    raise ValueError(f"reward {reward!r} needs a target image or a reference render with status 'ok'")


def _reference_trace(reference: RenderResult | None) -> Mapping[str, Any] | None:
    if reference is None or reference.status != "ok" or not isinstance(reference.trace, Mapping):
        return None
    return reference.trace or None


def _canvases(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None, reward: str
) -> tuple[np.ndarray, np.ndarray]:
    tgt = _target_canvas(target, reference, reward)
    try:
        pred = decode_png(render.png)
    except ValueError as err:
        raise ValueError(f"render image: {err}") from err
    return metrics.to_canvas(pred), tgt


def score_blend(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """The default "render" reward (module docstring): SSIM, edge F1 and R_recon, plus trace F1s if known."""
    pred, tgt = _canvases(render, target, reference, "render")
    out = {
        "ssim": metrics.ssim_gray(pred, tgt),
        "edge": metrics.edge_similarity(pred, tgt),
        "pixel": metrics.pixel_rms_reward(pred, tgt),
    }
    mapped = {"ssim": max(0.0, out["ssim"]), "edge": out["edge"], "pixel": (out["pixel"] + 1.0) / 2.0}
    out["image"] = sum(RENDER_WEIGHTS[k] * mapped[k] for k in RENDER_WEIGHTS)
    ref_trace = _reference_trace(reference)
    if ref_trace is None:
        return out["image"], out
    out.update(_trace_terms(ref_trace, render.trace))
    return (1.0 - TRACE_WEIGHT) * out["image"] + TRACE_WEIGHT * out["trace"], out


def _trace_terms(ref_trace: Mapping[str, Any], trace: Any) -> dict[str, float]:
    """The trace scores, their blend ``trace``, and (diagnostics, in no score) ``elements`` / ``ref_elements``
    drawn by the render and the reference, texts aside, and their ratio ``elements_ratio`` (when the reference
    drew any)."""
    out = metrics.trace_f1s(ref_trace, trace)
    chartmimic = sum(out[k] for k in TRACE_KEYS) / len(TRACE_KEYS)
    out["trace"] = ELEMENT_WEIGHT * out["element_f2"] + (1.0 - ELEMENT_WEIGHT) * chartmimic
    drawn, ref_drawn = metrics.drawn_elements(trace), metrics.drawn_elements(ref_trace)
    out["elements"], out["ref_elements"] = float(drawn), float(ref_drawn)
    if ref_drawn:
        out["elements_ratio"] = drawn / ref_drawn
    return out


def score_ssim(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """clip(grayscale SSIM, 0, 1) on the canvases."""
    pred, tgt = _canvases(render, target, reference, "ssim")
    ssim = metrics.ssim_gray(pred, tgt)
    return max(0.0, ssim), {"ssim": ssim}


def score_pixel(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """(R_recon + 1) / 2 on the RGB canvases."""
    pred, tgt = _canvases(render, target, reference, "pixel")
    pixel = metrics.pixel_rms_reward(pred, tgt)
    return (pixel + 1.0) / 2.0, {"pixel": pixel}


def score_edge(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """Canny edge F1 on the canvases."""
    pred, tgt = _canvases(render, target, reference, "edge")
    edge = metrics.edge_similarity(pred, tgt)
    return edge, {"edge": edge}


def score_rlrf(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """RLRF: ((R_recon + R_edge) / 2 + 1) / 2, the raw terms under "pixel" and "edge_recon"."""
    pred, tgt = _canvases(render, target, reference, "rlrf")
    pixel = metrics.pixel_rms_reward(pred, tgt)
    edge = metrics.edge_recon_from_maps(metrics.edge_map(pred), metrics.edge_map(tgt))
    return ((pixel + edge) / 2.0 + 1.0) / 2.0, {"pixel": pixel, "edge_recon": edge}


def score_exec(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """1.0 if the code ran and drew a figure (status ``ok``), else 0.0."""
    ok = 1.0 if render.status == "ok" else 0.0
    return ok, {"exec": ok}


def score_trace(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None
) -> tuple[float, dict[str, float]]:
    """The ``trace`` blend (module docstring) against the reference render's trace."""
    ref_trace = _reference_trace(reference)
    if ref_trace is None:
        raise ValueError(
            "reward 'trace' needs a reference render with status 'ok' and a trace (pass reference_code)"
        )
    out = _trace_terms(ref_trace, render.trace)
    return out["trace"], out


SCORERS: dict[str, Scorer] = {
    "render": score_blend,
    "ssim": score_ssim,
    "pixel": score_pixel,
    "edge": score_edge,
    "rlrf": score_rlrf,
    "exec": score_exec,
    "trace": score_trace,
}


def score_render(
    render: RenderResult, target: np.ndarray | None, reference: RenderResult | None, reward: str = "render"
) -> tuple[float, dict[str, float]]:
    """Scores one render with the named reward.

    Args:
        render: the sandbox's result for the model's code (only status, png/images and trace are read).
        target: the target image (anything ``metrics.to_canvas`` takes, usually ``decode_png`` output or a
            canvas from it), or None to use the reference render as the target.
        reference: the render of the reference code, or None.
        reward: a key of ``SCORERS``.

    Returns:
        (score in [0, 1], metrics); (0.0, {}) for any status other than "ok" or an ok render without an image.

    Raises:
        ValueError: unknown reward; an image reward with neither target nor ok reference; "trace" without a
            reference trace; the render's PNG cannot be decoded (message from ``decode_png``).
    """
    if reward not in SCORERS:
        raise ValueError(f"unknown reward {reward!r}; expected one of {sorted(SCORERS)}")
    if render.status != "ok" or (reward != "exec" and reward != "trace" and render.png is None):
        return 0.0, {}
    score, out = SCORERS[reward](render, target, reference)
    return float(min(1.0, max(0.0, score))), {k: float(v) for k, v in out.items()}
