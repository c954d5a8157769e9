"""Image and trace similarity metrics for render-and-compare rewards.

Every metric is a pure, deterministic function: the same inputs give the same float, bit for bit, on the
same library versions. Nothing here imports torch; the optional perceptual metric runs an ONNX image encoder
through onnxruntime (the ``perceptual`` extra) and is never used by the default reward.

Canonical canvas (``to_canvas``), applied to *both* images before any pixel metric:

1. colour: grayscale, palette, 16-bit and RGBA inputs become 8-bit RGB; alpha is composited on white
   (matplotlib's transparent background then reads as the white page it is drawn on);
2. scale: the long side is resized to ``size`` px (default 256) with PIL's bilinear filter (area-aware when
   shrinking), the aspect ratio kept and the short side at least 1 px;
3. letterbox: the result is centred on a white ``size`` x ``size`` square.

A square letterbox (rather than the target's aspect) gives every pair the same canvas with no distortion,
and makes an aspect-ratio mismatch visible as white bands, which the metrics then penalise.

Image metrics (on canvases): ``ssim_gray``, ``ssim_rgb``, ``pixel_rms_reward`` (RLRF's R_recon),
``edge_similarity`` (Canny edge F1, the "edge" metric) and ``edge_recon`` (RLRF's edge term).
Trace metrics (on tracer dicts, see docs/reward_servers_contract.md): ``text_f1``, ``type_f1``, ``color_f1``,
``layout_f1`` (ChartMimic's) and ``element_f2`` (the elements' kinds and positions, recall-weighted), gathered by
``trace_f1s``. Degenerate cases are defined: two empty sets score 1.0, one empty
set 0.0, and blank or constant images never produce NaN.

Run the cost benchmark with ``python benchmarks/metrics_cost.py``; the tests with
``pytest tests/reward_servers/test_metrics.py``.
"""

from __future__ import annotations

import difflib
import functools
import os
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.optimize import linear_sum_assignment
from skimage.color import deltaE_ciede2000, rgb2lab
from skimage.feature import canny
from skimage.metrics import structural_similarity

CANVAS_SIZE = 256
# SSIM as in Wang et al. (2004): 11x11 Gaussian window, sigma 1.5, population covariance.
SSIM_KW: dict[str, Any] = {"gaussian_weights": True, "sigma": 1.5, "use_sample_covariance": False}
# Canny on the [0, 1] grayscale canvas. Shrinking first keeps Canny cheap (it is the costliest metric).
CANNY_SIGMA = 1.0
CANNY_LOW, CANNY_HIGH = 0.05, 0.15
EDGE_BLUR_SIGMA = 1.0
TEXT_MATCH_MIN = 0.7  # fuzzy text pairs below this similarity count as unmatched
# ΔE2000 at which colour similarity reaches 0 (for scale: red vs dark red ≈ 24, red vs blue ≈ 53).
COLOR_DELTA_E_MAX = 40.0
# element_f2: recall weight β, the bbox difference (share of the reference axes' span) at which a pair's
# position term reaches 0, and what a pair of another kind (a Circle for a Rectangle) keeps.
ELEMENT_BETA = 2.0
ELEMENT_POSITION_TOLERANCE = 0.25
ELEMENT_OTHER_KIND = 0.5
MAX_TRACE_ITEMS = 256  # items per side fed to a matching; bounds the Hungarian cost on hostile traces
MAX_TEXTS = (
    128  # fuzzy matching is O(n_ref * n_pred) SequenceMatcher calls: ~0.3 s at 128 x 128 similar strings
)
MAX_TEXT_CHARS = 200

ImageLike = np.ndarray | Image.Image  # anything as_rgb takes

_LUMA = np.array([0.299, 0.587, 0.114])  # ITU-R BT.601
_HEX = re.compile(r"^#[0-9a-fA-F]{6}$")


# --------------------------------------------------------------------------------------------- canvas


def pil_to_rgb(img: Image.Image) -> np.ndarray:
    """Converts a PIL image of any common mode to (H, W, 3) uint8 RGB, alpha composited on white."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # 16-bit PNG grayscale opens as I;16 / I (float as F in [0, 1]); PIL has no direct path to RGBA.
        arr = np.asarray(img).astype(np.float64)
        scale = 255.0 / 65535.0 if img.mode.startswith("I") else 255.0
        gray = np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode == "RGB":
        return np.asarray(img, dtype=np.uint8).copy()
    return _composite_on_white(np.asarray(img.convert("RGBA"), dtype=np.uint8))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    if rgba[:, :, 3].min() == 255:  # opaque (matplotlib's default savefig): skip the arithmetic
        return np.ascontiguousarray(rgba[:, :, :3])
    # Integer "over" operator with rounding: out = (c * a + 255 * (255 - a) + 127) // 255; fits in uint16.
    rgb = rgba[:, :, :3].astype(np.uint16)
    alpha = rgba[:, :, 3:4].astype(np.uint16)
    return ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)


def as_rgb(img: ImageLike) -> np.ndarray:
    """Returns an image as (H, W, 3) uint8 RGB on white.

    Args:
        img: a PIL image, or an array (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) of uint8, bool, or
            float in [0, 1].

    Raises:
        ValueError: for an empty array or an unsupported shape.
    """
    if isinstance(img, Image.Image):
        return pil_to_rgb(img)
    arr = np.asarray(img)
    if arr.ndim not in (2, 3) or arr.shape[0] == 0 or arr.shape[1] == 0:
        raise ValueError(f"expected an image of shape (H, W[, C]) with H, W > 0, got {arr.shape}")
    if arr.dtype != np.uint8:
        if arr.dtype == bool or np.issubdtype(arr.dtype, np.floating):
            arr = np.clip(np.rint(np.nan_to_num(arr.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
        else:
            raise ValueError(f"expected uint8, bool or float pixels, got dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    channels = arr.shape[2]
    if channels == 1:
        return np.repeat(arr, 3, axis=2)
    if channels == 3:
        return arr
    if channels == 4:
        return _composite_on_white(arr)
    raise ValueError(f"expected 1, 3 or 4 channels, got {channels}")


def to_canvas(img: ImageLike, size: int = CANVAS_SIZE) -> np.ndarray:
    """Maps an image to the canonical (size, size, 3) uint8 canvas (see the module docstring).

    Idempotent: a (size, size, 3) uint8 array is returned unchanged, so callers may cache canvases.

    Args:
        img: anything ``as_rgb`` takes (PIL image, gray / RGB / RGBA array).
        size: side of the square canvas in pixels.
    """
    rgb = as_rgb(img)
    h, w = rgb.shape[:2]
    if (h, w) == (size, size):
        return rgb
    scale = size / max(h, w)
    new_w, new_h = max(1, min(size, round(w * scale))), max(1, min(size, round(h * scale)))
    resized = np.asarray(Image.fromarray(rgb).resize((new_w, new_h), Image.Resampling.BILINEAR))
    canvas = np.full((size, size, 3), 255, dtype=np.uint8)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    canvas[top : top + new_h, left : left + new_w] = resized
    return canvas


def _pair(a: ImageLike, b: ImageLike, size: int) -> tuple[np.ndarray, np.ndarray]:
    return to_canvas(a, size), to_canvas(b, size)


def to_gray(canvas: np.ndarray) -> np.ndarray:
    """BT.601 luma of an RGB uint8 image, as float64 in [0, 1]."""
    return (canvas.astype(np.float64) @ _LUMA) / 255.0


# ---------------------------------------------------------------------------------------- image metrics


def ssim_gray(a: ImageLike, b: ImageLike, size: int = CANVAS_SIZE) -> float:
    """Mean SSIM of the BT.601 luma canvases (Wang et al. 2004: Gaussian window σ=1.5, data range 1).

    SSIM = mean over windows of ((2 μa μb + C1)(2 σab + C2)) / ((μa² + μb² + C1)(σa² + σb² + C2)),
    C1 = (0.01)², C2 = (0.03)². Lies in [-1, 1]; identical images give 1.0, constant images stay finite
    thanks to C1 and C2. The score layer clips it to [0, 1].
    """
    ca, cb = _pair(a, b, size)
    return float(structural_similarity(to_gray(ca), to_gray(cb), data_range=1.0, **SSIM_KW))


def ssim_rgb(a: ImageLike, b: ImageLike, size: int = CANVAS_SIZE) -> float:
    """Mean over R, G, B of the per-channel SSIM (same window and constants as ``ssim_gray``), in [-1, 1]."""
    ca, cb = _pair(a, b, size)
    fa, fb = ca.astype(np.float64) / 255.0, cb.astype(np.float64) / 255.0
    return float(structural_similarity(fa, fb, data_range=1.0, channel_axis=2, **SSIM_KW))


def _standardise(x: np.ndarray) -> np.ndarray:
    # Zero-variance images (blank pages) standardise to all zeros instead of 0/0 = NaN.
    x = x.astype(np.float64)
    std = x.std()
    return (x - x.mean()) / std if std > 1e-12 else np.zeros_like(x)


def _recon(x: np.ndarray, y: np.ndarray) -> float:
    diff = _standardise(x) - _standardise(y)
    return float(np.clip(1.0 - np.sqrt(np.mean(diff * diff)), -1.0, 1.0))


def pixel_rms_reward(a: ImageLike, b: ImageLike, size: int = CANVAS_SIZE) -> float:
    """RLRF's R_recon: clip(1 - RMS(norm(a) - norm(b)), -1, 1) on the RGB canvases.

    norm(x) = (x - mean(x)) / std(x) over all pixels and channels of one image (a constant image
    normalises to 0). For two non-constant images RMS² = 2 - 2ρ with ρ their Pearson correlation, so
    R_recon = 1 - sqrt(2 - 2ρ): 1 for identical, 0 at ρ = 0.5, -1 for a negative. A blank image against a
    non-blank one gives 0; two blank images give 1.
    """
    ca, cb = _pair(a, b, size)
    return _recon(ca, cb)


def edge_map(canvas: np.ndarray) -> np.ndarray:
    """Canny edges (σ=1, hysteresis 0.05 / 0.15 on [0, 1] luma) of a canvas, as a bool (H, W) array."""
    return canny(to_gray(canvas), sigma=CANNY_SIGMA, low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH)


_DILATE = np.ones((3, 3), dtype=bool)


def edge_f1_from_maps(ea: np.ndarray, eb: np.ndarray) -> float:
    """Edge F1 with a 1-pixel tolerance from two bool edge maps (see ``edge_similarity``)."""
    na, nb = int(ea.sum()), int(eb.sum())
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    precision = float((ea & ndimage.binary_dilation(eb, structure=_DILATE)).sum()) / na
    recall = float((eb & ndimage.binary_dilation(ea, structure=_DILATE)).sum()) / nb
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def edge_similarity(a: ImageLike, b: ImageLike, size: int = CANVAS_SIZE) -> float:
    """The "edge" metric: F1 of Canny edge pixels matched within a 3x3 neighbourhood, in [0, 1].

    P = |Ea ∩ dilate3x3(Eb)| / |Ea|, R = |Eb ∩ dilate3x3(Ea)| / |Eb|, F1 = 2PR / (P + R), with Ea, Eb the
    Canny maps of the two canvases. Both edgeless (two blank pages) -> 1.0; one edgeless -> 0.0.
    Preferred over ``edge_recon`` as the default because it ignores the white background, which dominates
    STEM figures and inflates correlation-based scores.
    """
    ca, cb = _pair(a, b, size)
    return edge_f1_from_maps(edge_map(ca), edge_map(cb))


def edge_recon_from_maps(ea: np.ndarray, eb: np.ndarray) -> float:
    """RLRF's edge term from two bool edge maps (see ``edge_recon``)."""
    prep = [
        ndimage.gaussian_filter(
            ndimage.binary_dilation(e, structure=_DILATE).astype(np.float64), EDGE_BLUR_SIGMA
        )
        for e in (ea, eb)
    ]
    return _recon(prep[0], prep[1])


def edge_recon(a: ImageLike, b: ImageLike, size: int = CANVAS_SIZE) -> float:
    """RLRF's edge reward: R_recon (``pixel_rms_reward``) on blurred, dilated Canny maps, in [-1, 1].

    Each map is dilated with a 3x3 square and blurred with a Gaussian of σ=1 px before standardisation.
    """
    ca, cb = _pair(a, b, size)
    return edge_recon_from_maps(edge_map(ca), edge_map(cb))


# ---------------------------------------------------------------------------------------- trace metrics
# Traces come from untrusted code (docs/reward_servers_contract.md, "Trace schema"): a field of the wrong
# type reads as empty and ill-typed items are skipped, so a tampered trace can lower its own score but
# never raise here. Each side is cut to MAX_TRACE_ITEMS items to bound the matching cost.


def soft_f1(sim: np.ndarray, beta: float = 1.0) -> float:
    """F1 (F-beta) of a best one-to-one matching under a similarity matrix (rows: reference, columns: prediction).

    The matching maximises the summed similarity (Hungarian algorithm); with M that sum,
    P = M / n_pred, R = M / n_ref and F1 = 2PR / (P + R) = 2M / (n_ref + n_pred). With ``beta`` the F-beta
    (1 + β²)PR / (β²P + R) = (1 + β²)M / (β² n_ref + n_pred): recall counts β times as much as precision.
    Both sides empty -> 1.0; one side empty -> 0.0. Entries are clipped to [0, 1], NaN / inf read as 0
    (similarities built from a tampered trace must not break the assignment).
    """
    n_ref, n_pred = sim.shape
    sim = np.clip(np.nan_to_num(sim, nan=0.0, posinf=0.0, neginf=0.0), 0.0, 1.0)
    if n_ref == 0 and n_pred == 0:
        return 1.0
    if n_ref == 0 or n_pred == 0:
        return 0.0
    rows, cols = linear_sum_assignment(sim, maximize=True)
    b2 = beta * beta
    return float((1.0 + b2) * sim[rows, cols].sum() / (b2 * n_ref + n_pred))


def _items(trace: Mapping[str, Any] | None, key: str, kind: type) -> list[Any]:
    value = trace.get(key) if isinstance(trace, Mapping) else None
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, kind)][:MAX_TRACE_ITEMS]


def normalise_text(s: str) -> str:
    """NFKC, casefold, drop mathtext ``$`` delimiters, collapse whitespace: "  $X$  Axis" -> "x axis"."""
    s = unicodedata.normalize("NFKC", s[:MAX_TEXT_CHARS]).casefold().replace("$", "")
    return " ".join(s.split())


def text_similarity(a: str, b: str) -> float:
    """Similarity of two normalised strings: difflib's ratio 2·matches / (len a + len b), 0 below 0.7."""
    if a == b:
        return 1.0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    # quick_ratio() bounds ratio() from above at a fraction of its cost: skip hopeless pairs early.
    if matcher.real_quick_ratio() < TEXT_MATCH_MIN or matcher.quick_ratio() < TEXT_MATCH_MIN:
        return 0.0
    ratio = matcher.ratio()
    return ratio if ratio >= TEXT_MATCH_MIN else 0.0


def text_f1(reference: Sequence[str], prediction: Sequence[str]) -> float:
    """Soft F1 of the strings drawn (multisets), matched one-to-one by ``text_similarity``.

    Strings are normalised by ``normalise_text``; empty ones are dropped. Exact matches count 1, fuzzy
    ones their ratio (e.g. "abcde" vs "abcdf" counts 0.8), pairs under 0.7 count 0; see ``soft_f1``.
    """
    ref = [t for t in (normalise_text(s) for s in reference if isinstance(s, str)) if t][:MAX_TEXTS]
    pred = [t for t in (normalise_text(s) for s in prediction if isinstance(s, str)) if t][:MAX_TEXTS]
    sim = np.array([[text_similarity(r, p) for p in pred] for r in ref]).reshape(len(ref), len(pred))
    return soft_f1(sim)


def type_f1(reference: Mapping[str, Any], prediction: Mapping[str, Any]) -> float:
    """F1 of plotting-call types as multisets: {"plot": 2, "bar": 1} vs {"plot": 1, "scatter": 1}.

    M = Σ_type min(n_ref, n_pred); F1 = 2M / (Σ n_ref + Σ n_pred). Non-integer or negative counts are
    ignored. Both empty -> 1.0, one empty -> 0.0.
    """

    def counts(calls: Mapping[str, Any]) -> dict[str, int]:
        if not isinstance(calls, Mapping):
            return {}
        return {
            str(k): v for k, v in calls.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
        }

    ref, pred = counts(reference), counts(prediction)
    n_ref, n_pred = sum(ref.values()), sum(pred.values())
    if n_ref == 0 and n_pred == 0:
        return 1.0
    if n_ref == 0 or n_pred == 0:
        return 0.0
    matched = sum(min(n, pred.get(k, 0)) for k, n in ref.items())
    return 2.0 * matched / (n_ref + n_pred)


def hex_to_rgb(colors: Iterable[str]) -> np.ndarray:
    """("#rrggbb", ...) -> (N, 3) float64 RGB in [0, 1]. Raises ValueError naming a malformed colour."""
    out = []
    for c in colors:
        if not isinstance(c, str) or not _HEX.match(c):
            raise ValueError(f"expected a colour as '#rrggbb', got {c!r}")
        out.append([int(c[i : i + 2], 16) / 255.0 for i in (1, 3, 5)])
    return np.array(out, dtype=np.float64).reshape(-1, 3)


def delta_e2000(a: Sequence[str], b: Sequence[str]) -> np.ndarray:
    """CIEDE2000 colour differences (sRGB, D65) between every colour of ``a`` and of ``b``: (len a, len b)."""
    lab_a, lab_b = rgb2lab(hex_to_rgb(a)[None]), rgb2lab(hex_to_rgb(b)[None])  # (1, N, 3)
    return deltaE_ciede2000(lab_a[0][:, None, :], lab_b[0][None, :, :]).reshape(len(a), len(b))


def color_similarity(delta_e: np.ndarray | float, threshold: float = COLOR_DELTA_E_MAX) -> np.ndarray:
    """Similarity max(0, 1 - ΔE2000 / threshold): 1 for the same colour, 0 from ``threshold`` (40) on."""
    return np.maximum(0.0, 1.0 - np.asarray(delta_e, dtype=np.float64) / threshold)


def element_colors(trace: Mapping[str, Any] | None) -> list[tuple[str, str]]:
    """(element type, colour) per traced element: its ``color``, else ``facecolor``, else ``edgecolor``.

    Elements without a well-formed colour are skipped.
    """
    out = []
    for el in _items(trace, "elements", dict):
        color = next((el.get(k) for k in ("color", "facecolor", "edgecolor") if el.get(k) is not None), None)
        if isinstance(color, str) and _HEX.match(color):
            out.append((str(el.get("type")), color.lower()))
    return out


def color_f1(
    reference: Sequence[tuple[str, str]],
    prediction: Sequence[tuple[str, str]],
    threshold: float = COLOR_DELTA_E_MAX,
) -> float:
    """Soft F1 of per-element colours: pairs of the same element type score ``color_similarity`` of their
    ΔE2000, other pairs 0; best one-to-one matching by ``soft_f1``.

    Args:
        reference: (element type, "#rrggbb") per reference element, e.g. from ``element_colors``.
        prediction: the same for the predicted render.
        threshold: ΔE2000 at which similarity reaches 0.
    """
    ref, pred = list(reference)[:MAX_TRACE_ITEMS], list(prediction)[:MAX_TRACE_ITEMS]
    if not ref or not pred:
        return soft_f1(np.zeros((len(ref), len(pred))))
    # ΔE on distinct colours only (usually a handful), then gathered into the element matrix.
    palette = sorted({c for _, c in ref} | {c for _, c in pred})
    index = {c: i for i, c in enumerate(palette)}
    sim_palette = color_similarity(delta_e2000(palette, palette), threshold)
    ri = np.array([index[c] for _, c in ref])
    pi = np.array([index[c] for _, c in pred])
    same_type = np.array([t for t, _ in ref])[:, None] == np.array([t for t, _ in pred])[None, :]
    return soft_f1(sim_palette[ri[:, None], pi[None, :]] * same_type)


def _box_iou(a: Sequence[float], b: Sequence[float]) -> float:
    ax0, ay0, aw, ah = a
    bx0, by0, bw, bh = b
    iw = max(0.0, min(ax0 + aw, bx0 + bw) - max(ax0, bx0))
    ih = max(0.0, min(ay0 + ah, by0 + bh) - max(ay0, by0))
    union = aw * ah + bw * bh - iw * ih
    return iw * ih / union if union > 0 else 0.0


def _axes_key(ax: Mapping[str, Any]) -> tuple[tuple[int, ...] | None, tuple[float, ...] | None, str]:
    grid, bounds = ax.get("grid"), ax.get("bounds")
    grid_ok = isinstance(grid, list) and len(grid) == 6 and all(isinstance(g, int) for g in grid)
    bounds_ok = (
        isinstance(bounds, list)
        and len(bounds) == 4
        and all(isinstance(v, (int, float)) and abs(v) <= 1e6 for v in bounds)  # False for NaN / inf
        and bounds[2] >= 0
        and bounds[3] >= 0
    )
    return (
        tuple(grid) if grid_ok else None,
        tuple(float(v) for v in bounds) if bounds_ok else None,
        str(ax.get("projection", "rectilinear")),
    )


def axes_similarity(a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
    """Similarity of two traced axes, in [0, 1].

    If both carry a subplot grid [nrows, ncols, row0, row1, col0, col1]: 1 when equal, else 0.
    Otherwise the IoU of their bounds (figure fraction). Halved when the projections differ.
    """
    (ga, ba, pa), (gb, bb, pb) = _axes_key(a), _axes_key(b)
    if ga is not None and gb is not None:
        sim = 1.0 if ga == gb else 0.0
    elif ba is not None and bb is not None:
        sim = _box_iou(ba, bb)
    else:
        sim = 0.0
    return sim if pa == pb else 0.5 * sim


def layout_f1(reference: Sequence[Mapping[str, Any]], prediction: Sequence[Mapping[str, Any]]) -> float:
    """Soft F1 of the axes layouts, axes matched one-to-one by ``axes_similarity`` (see ``soft_f1``)."""
    ref = [a for a in reference if isinstance(a, Mapping)][:MAX_TRACE_ITEMS]
    pred = [a for a in prediction if isinstance(a, Mapping)][:MAX_TRACE_ITEMS]
    sim = np.array([[axes_similarity(r, p) for p in pred] for r in ref]).reshape(len(ref), len(pred))
    return soft_f1(sim)


def _axes_spans(trace: Mapping[str, Any] | None) -> list[tuple[float, float]]:
    """(x span, y span) of each traced axes from its ``xlim`` / ``ylim``; 1.0 where a limit is missing or bad."""

    def span(lim: Any) -> float:
        ok = isinstance(lim, list) and len(lim) == 2 and all(isinstance(v, int | float) for v in lim)
        width = abs(float(lim[1]) - float(lim[0])) if ok else 0.0
        return width if 0.0 < width < 1e12 else 1.0  # False for NaN / inf: a bad limit falls back to 1

    return [(span(ax.get("xlim")), span(ax.get("ylim"))) for ax in _items(trace, "axes", dict)]


def _drawn(trace: Mapping[str, Any] | None) -> list[dict]:
    """The trace's user elements of any type but ``text`` (texts are ``text_f1``'s)."""
    return [el for el in _items(trace, "elements", dict) if el.get("type") != "text"]


def _geometry(trace: Mapping[str, Any] | None) -> tuple[list[str], list[str], list[Any], np.ndarray]:
    """Per drawn element (``_drawn``): types, kinds, axes indices (None if not an int) and an (n, 4) array of
    bboxes [x0, y0, x1, y1] in data coordinates, a row of NaN where the bbox is missing or ill-formed."""
    drawn = _drawn(trace)
    boxes = np.full((len(drawn), 4), np.nan)
    axes: list[Any] = []
    for i, el in enumerate(drawn):
        bbox, ax = el.get("bbox"), el.get("axes")
        if isinstance(bbox, list) and len(bbox) == 4 and all(isinstance(v, int | float) for v in bbox):
            box = np.asarray(bbox, dtype=np.float64)
            if np.isfinite(box).all() and np.abs(box).max() <= 1e12:
                boxes[i] = box
        axes.append(ax if isinstance(ax, int) and not isinstance(ax, bool) else None)
    return [str(el.get("type")) for el in drawn], [str(el.get("kind")) for el in drawn], axes, boxes


def element_similarity(
    reference: Mapping[str, Any] | None, prediction: Mapping[str, Any] | None
) -> np.ndarray:
    """(n_ref, n_pred) similarities of the drawn elements (texts aside) of two traces, in [0, 1].

    A pair scores 0 unless both are of the same ``type`` (patch, line, collection ...) on the same axes. Its
    position term is max(0, 1 - d / ``ELEMENT_POSITION_TOLERANCE``), d the largest difference of the four bbox
    coordinates in data units over the reference axes' span on that side (a shape one cell off on a 3x3 grid
    scores 0, a bar one unit off on a 0-6 axis 1/3); two elements without a bbox count as placed alike, one
    without as misplaced. A different ``kind`` (a Circle where a Rectangle is) halves it.
    """
    rtype, rkind, raxes, rbox = _geometry(reference)
    ptype, pkind, paxes, pbox = _geometry(prediction)
    if not rtype or not ptype:
        return np.zeros((len(rtype), len(ptype)))
    spans = _axes_spans(reference)
    sx, sy = np.array([spans[a] if a is not None and 0 <= a < len(spans) else (1.0, 1.0) for a in raxes]).T
    scale = np.stack([sx, sy, sx, sy], axis=1)  # (n_ref, 4)
    d = (np.abs(rbox[:, None, :] - pbox[None, :, :]) / scale[:, None, :]).max(
        axis=2
    )  # NaN if a bbox is missing
    place = np.clip(1.0 - d / ELEMENT_POSITION_TOLERANCE, 0.0, None)
    r_none, p_none = np.isnan(rbox[:, 0]), np.isnan(pbox[:, 0])
    place = np.where(
        r_none[:, None] | p_none[None, :], (r_none[:, None] & p_none[None, :]).astype(float), place
    )

    def same(a: list[Any], b: list[Any]) -> np.ndarray:
        index = {v: i for i, v in enumerate(dict.fromkeys([*a, *b]))}  # None is a value like any other here
        return np.array([index[v] for v in a])[:, None] == np.array([index[v] for v in b])[None, :]

    kind = np.where(same(rkind, pkind), 1.0, ELEMENT_OTHER_KIND)
    return place * kind * (same(rtype, ptype) & same(raxes, paxes))


def element_f2(reference: Mapping[str, Any] | None, prediction: Mapping[str, Any] | None) -> float:
    """Recall-weighted soft F-beta (β = ``ELEMENT_BETA`` = 2) of the drawn elements matched one-to-one by
    ``element_similarity``: how many of the reference's elements the prediction draws, of the right kind, in
    the right place.

    Recall weighs 4 times precision (β²), so an element left out costs more than a wrong one drawn: with k
    reference elements, omitting one scores 5(k-1)/(5k-1) and adding a wrong one 5k/(5k+1) (k = 2: 0.56 and
    0.91), and drawing an uncertain element pays once its similarity is above (k-1)/(5k-1) (0.11 at k = 2)
    where F1 asks for (k-1)/(2k-1) (0.33). Both without elements -> 1.0, one without -> 0.0.
    """
    return soft_f1(element_similarity(reference, prediction), beta=ELEMENT_BETA)


def drawn_elements(trace: Mapping[str, Any] | None) -> int:
    """How many elements a render drew, texts aside (shapes, bars, lines, markers ...: the trace's user
    elements of any type but ``text``; texts are ``text_f1``'s). A diagnostic, in no score: with the reference's
    count it shows an answer drawing less or more than its target."""
    return len(_drawn(trace))


def trace_f1s(reference: Mapping[str, Any] | None, prediction: Mapping[str, Any] | None) -> dict[str, float]:
    """The trace scores of a prediction against a reference: ChartMimic's four F1s (text_f1, type_f1, color_f1,
    layout_f1) and element_f2 (``element_f2``)."""
    ref_calls = reference.get("calls") if isinstance(reference, Mapping) else None
    pred_calls = prediction.get("calls") if isinstance(prediction, Mapping) else None
    return {
        "text_f1": text_f1(_items(reference, "texts", str), _items(prediction, "texts", str)),
        "type_f1": type_f1(ref_calls or {}, pred_calls or {}),
        "color_f1": color_f1(element_colors(reference), element_colors(prediction)),
        "layout_f1": layout_f1(_items(reference, "axes", dict), _items(prediction, "axes", dict)),
        "element_f2": element_f2(reference, prediction),
    }


# ------------------------------------------------------------------------------------ perceptual (extra)

PERCEPTUAL_ENV = "CODEPERCEPT_PERCEPTUAL_ONNX"
_IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
_IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@functools.lru_cache(maxsize=2)
def _onnx_encoder(path: str) -> tuple[Callable[[np.ndarray], np.ndarray], int]:
    try:
        import onnxruntime  # optional extra: imported only when the metric is used
    except ImportError as err:
        raise ImportError(
            "perceptual_similarity needs onnxruntime (the 'perceptual' extra: pip install onnxruntime) and a "
            "local ONNX image encoder such as DINOv2-small exported to ONNX"
        ) from err
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    inp = session.get_inputs()[0]
    side = inp.shape[-1] if isinstance(inp.shape[-1], int) else 224

    def encode(x: np.ndarray) -> np.ndarray:
        return np.asarray(session.run(None, {inp.name: x})[0], dtype=np.float64).reshape(-1)

    return encode, side


def perceptual_similarity(
    a: ImageLike, b: ImageLike, model_path: str | os.PathLike[str] | None = None
) -> float:
    """Cosine similarity of image embeddings from a local ONNX image encoder (e.g. DINOv2 or CLIP's vision
    tower exported to ONNX), in [-1, 1]. Optional: never part of the default reward.

    The encoder takes one float32 (1, 3, S, S) ImageNet-normalised image (S from its input shape, else 224)
    and returns an embedding of any shape, flattened. Images go through ``to_canvas(img, S)``. Nothing is
    downloaded: the model file must exist locally.

    Args:
        a, b: images (anything ``to_canvas`` takes).
        model_path: the .onnx file; defaults to $CODEPERCEPT_PERCEPTUAL_ONNX.

    Raises:
        RuntimeError: no model path given or the file does not exist.
        ImportError: onnxruntime (the ``perceptual`` extra) is not installed.
    """
    path = model_path if model_path is not None else os.environ.get(PERCEPTUAL_ENV)
    if not path or not os.path.isfile(path):
        raise RuntimeError(
            f"perceptual_similarity needs a local ONNX image encoder (e.g. DINOv2-small or CLIP ViT-B/32 "
            f"vision tower exported to ONNX) and onnxruntime (the 'perceptual' extra): pass model_path or "
            f"set ${PERCEPTUAL_ENV}; got {path!r}"
        )
    encode, side = _onnx_encoder(os.fspath(path))
    embeddings = []
    for img in (a, b):
        x = (to_canvas(img, side).astype(np.float32) / 255.0 - _IMAGENET_MEAN) / _IMAGENET_STD
        embeddings.append(encode(np.ascontiguousarray(x.transpose(2, 0, 1)[None])))
    ea, eb = embeddings
    denom = float(np.linalg.norm(ea) * np.linalg.norm(eb))
    return float(np.clip(ea @ eb / denom, -1.0, 1.0)) if denom > 0 else 0.0
