"""Tests of reward_servers/metrics.py on real matplotlib renders (Agg, in-process) and hand-made traces.

Run: pytest tests/reward_servers/test_metrics.py
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from reward_servers import metrics as M  # noqa: E402

IMAGE_METRICS = {
    "ssim_gray": M.ssim_gray,
    "ssim_rgb": M.ssim_rgb,
    "pixel": M.pixel_rms_reward,
    "edge": M.edge_similarity,
    "edge_recon": M.edge_recon,
}


def render_rgb(draw, figsize=(6.4, 4.8), dpi=100) -> np.ndarray:
    """Renders a trusted figure to PNG with matplotlib and decodes it with PIL: (H, W, 3) uint8."""
    fig = plt.figure(figsize=figsize, dpi=dpi)
    try:
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def sine_chart(fig, phase: float = 0.0) -> None:
    ax = fig.add_subplot(111)
    x = np.linspace(0, 10, 200)
    ax.plot(x, np.sin(x + phase), "b-")
    ax.set_title("Sine")
    ax.set_xlabel("x")


def bar_chart(fig) -> None:
    ax = fig.add_subplot(111)
    ax.bar(["a", "b", "c"], [3, 1, 2], color="orange")
    ax.set_title("Bars")


def disc_scene(fig, dx: float = 0.0) -> None:
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.add_patch(plt.Circle((0.3 + dx, 0.5), 0.15, color="red"))
    ax.text(0.3 + dx, 0.1, "label", fontsize=20)


@pytest.fixture(scope="module")
def charts() -> dict[str, np.ndarray]:
    return {
        "sine": render_rgb(sine_chart),
        "sine_shifted": render_rgb(lambda f: sine_chart(f, 0.3)),
        "bars": render_rgb(bar_chart),
        "blank": render_rgb(lambda f: None),
    }


# ------------------------------------------------------------------------------------------------ canvas


def test_to_canvas_letterboxes_on_white_and_keeps_aspect():
    img = np.zeros((100, 200, 3), dtype=np.uint8)  # black, twice as wide as tall
    canvas = M.to_canvas(img, size=64)
    assert canvas.shape == (64, 64, 3) and canvas.dtype == np.uint8
    assert (canvas[:16] == 255).all() and (canvas[48:] == 255).all()  # white bands above and below
    assert (canvas[16:48] == 0).all()  # the black image, scaled to 64x32, centred
    assert M.to_canvas(canvas, size=64) is canvas  # idempotent on canvases


def test_to_canvas_composites_rgba_on_white():
    rgba = np.zeros((10, 10, 4), dtype=np.uint8)  # fully transparent black
    rgba[:, 5:, 3] = 128  # right half: half-transparent black
    rgb = M.as_rgb(rgba)
    assert (rgb[:, :5] == 255).all()
    assert (rgb[:, 5:] == 127).all()  # (0*128 + 255*127 + 127) // 255


def test_grayscale_palette_and_16bit_inputs_match_their_rgb_equivalent(charts):
    rgb = charts["sine"]
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    as_rgb_of_gray = np.repeat(gray[:, :, None], 3, axis=2)
    expected = M.to_canvas(as_rgb_of_gray)
    assert np.array_equal(M.to_canvas(gray), expected)
    assert np.array_equal(M.to_canvas(gray[:, :, None]), expected)
    assert np.array_equal(M.to_canvas(Image.fromarray(gray).convert("P")), expected)
    assert np.array_equal(M.to_canvas(Image.fromarray(gray.astype(np.uint16) * 257)), expected)
    assert np.array_equal(M.to_canvas(as_rgb_of_gray.astype(np.float64) / 255.0), expected)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((0, 5, 3), np.uint8), np.zeros((4, 4, 2), np.uint8), np.zeros((4, 4), np.int64), np.zeros(7)],
)
def test_as_rgb_refuses_bad_arrays_with_a_clear_message(bad):
    with pytest.raises(ValueError, match="expected"):
        M.as_rgb(bad)


# ----------------------------------------------------------------------------------------- image metrics


@pytest.mark.parametrize("name", sorted(IMAGE_METRICS))
def test_identical_renders_score_one(charts, name):
    assert IMAGE_METRICS[name](charts["sine"], charts["sine"]) == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["ssim_gray", "ssim_rgb", "pixel", "edge", "edge_recon"])
def test_blank_and_other_chart_score_clearly_lower(charts, name):
    fn, ref = IMAGE_METRICS[name], charts["sine"]
    same, near = fn(ref, ref), fn(charts["sine_shifted"], ref)
    other, blank = fn(charts["bars"], ref), fn(charts["blank"], ref)
    assert same > near > other, (same, near, other)
    assert same - blank > 0.15, (same, blank)


def test_blank_page_has_no_edges_and_no_correlation(charts):
    assert M.edge_similarity(charts["blank"], charts["sine"]) == 0.0
    assert M.pixel_rms_reward(charts["blank"], charts["sine"]) == 0.0


def test_moving_a_shape_further_lowers_the_scores_monotonically():
    ref = render_rgb(disc_scene)
    moved = [render_rgb(lambda f, d=d: disc_scene(f, d)) for d in (0.02, 0.05, 0.1, 0.2, 0.4)]
    for name in ("ssim_gray", "ssim_rgb", "pixel", "edge_recon"):
        scores = [IMAGE_METRICS[name](m, ref) for m in moved]
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), (name, scores)
    edges = [M.edge_similarity(m, ref) for m in moved]
    assert all(a >= b for a, b in zip(edges, edges[1:], strict=False)) and edges[0] > edges[-1], edges


def test_metrics_are_deterministic(charts):
    a, b = charts["sine"], charts["bars"]
    first = [fn(a, b) for fn in IMAGE_METRICS.values()]
    second = [fn(a.copy(), b.copy()) for fn in IMAGE_METRICS.values()]
    assert first == second
    assert M.to_canvas(a).tobytes() == M.to_canvas(a.copy()).tobytes()


def test_symmetric_metrics_are_symmetric(charts):
    a, b = charts["sine"], charts["bars"]
    for name in ("ssim_gray", "pixel", "edge"):
        assert IMAGE_METRICS[name](a, b) == pytest.approx(IMAGE_METRICS[name](b, a)), name


DEGENERATE = {
    "white": np.full((50, 80, 3), 255, np.uint8),
    "gray": np.full((50, 80, 3), 128, np.uint8),
    "black": np.zeros((50, 80), np.uint8),
    "tiny": np.array([[[10, 200, 30]]], np.uint8),
    "wide": np.tile(np.linspace(0, 255, 3000, dtype=np.uint8)[None, :, None], (4, 1, 3)),
    "tall": np.zeros((3000, 3, 4), np.uint8),  # transparent: white once composited
}


@pytest.mark.parametrize("a", sorted(DEGENERATE))
@pytest.mark.parametrize("name", sorted(IMAGE_METRICS))
def test_degenerate_images_give_finite_scores_in_range(charts, name, a):
    fn = IMAGE_METRICS[name]
    for b in (DEGENERATE["gray"], DEGENERATE["tiny"], charts["sine"]):
        value = fn(DEGENERATE[a], b)
        assert np.isfinite(value) and -1.0 <= value <= 1.0, (a, value)
    assert fn(DEGENERATE[a], DEGENERATE[a]) == pytest.approx(1.0)


def test_blank_pages_are_identical_whatever_their_size_or_encoding():
    white = DEGENERATE["white"]
    for other in (DEGENERATE["tall"], np.full((7, 7), 255, np.uint8), np.ones((9, 4))):
        for fn in IMAGE_METRICS.values():
            assert fn(white, other) == pytest.approx(1.0)


# ----------------------------------------------------------------------------------------- trace metrics


def test_soft_f1_degenerate_cases():
    assert M.soft_f1(np.zeros((0, 0))) == 1.0
    assert M.soft_f1(np.zeros((2, 0))) == 0.0
    assert M.soft_f1(np.zeros((0, 3))) == 0.0
    # best matching, not greedy: greedy takes 0.9 then 0.0 (F1 0.45); optimal 0.8 + 0.8 (F1 0.8)
    assert M.soft_f1(np.array([[0.9, 0.8], [0.8, 0.0]])) == pytest.approx(0.8)
    # NaN / inf / out-of-range similarities (a tampered trace) read as 0 or are clipped to 1
    assert M.soft_f1(np.array([[np.nan, np.inf, 7.0]])) == pytest.approx(2 * 1.0 / 4)


def test_text_f1_hand_computed():
    # normalisation: case, whitespace and $ delimiters; "y" vs "z" do not match -> M = 2, F1 = 4/6
    assert M.text_f1(["Title", "x", "y"], ["  title ", "$x$", "z"]) == pytest.approx(2 / 3)
    # fuzzy: difflib ratio of "abcde" / "abcdf" = 2*4/10 = 0.8 -> F1 = 2*0.8/2
    assert M.text_f1(["abcde"], ["abcdf"]) == pytest.approx(0.8)
    # "abcd" / "abce" = 0.75 >= 0.7 counts; "ab" / "ac" = 0.5 does not
    assert M.text_f1(["abcd", "ab"], ["abce", "ac"]) == pytest.approx(2 * 0.75 / 4)
    # multisets: a repeated string matches once per occurrence
    assert M.text_f1(["A", "A"], ["A"]) == pytest.approx(2 / 3)
    assert M.text_f1([], []) == 1.0 and M.text_f1(["A"], []) == 0.0 and M.text_f1(["", " "], []) == 1.0


def test_type_f1_hand_computed():
    # M = min(2,1) + min(1,0) = 1; F1 = 2*1 / (3 + 2)
    assert M.type_f1({"plot": 2, "bar": 1}, {"plot": 1, "scatter": 1}) == pytest.approx(0.4)
    assert M.type_f1({"plot": 2}, {"plot": 2}) == 1.0
    assert M.type_f1({}, {}) == 1.0 and M.type_f1({"plot": 1}, {}) == 0.0
    # ill-typed counts are ignored, not trusted
    assert M.type_f1({"plot": 1}, {"plot": 1, "bar": "9", "text": True, "pie": -3}) == 1.0


def test_delta_e2000_against_published_values():
    # independent CIEDE2000 values (sRGB, D65): red/blue 52.88, red/darkred 23.75 (Colors.jl docs)
    d = M.delta_e2000(["#ff0000", "#ff0000", "#00ff00"], ["#0000ff", "#8b0000", "#00ff00"])
    assert d.shape == (3, 3)
    assert d[0, 0] == pytest.approx(52.88, abs=0.05)
    assert d[1, 1] == pytest.approx(23.75, abs=0.05)
    assert d[2, 2] == pytest.approx(0.0, abs=1e-9)
    assert M.color_similarity(d[1, 1]) == pytest.approx(1 - 23.75 / 40, abs=0.002)
    assert M.color_similarity(d[0, 0]) == 0.0
    with pytest.raises(ValueError, match="'red'"):
        M.hex_to_rgb(["red"])


def test_color_f1_matches_by_delta_e_with_best_assignment():
    ref = [("line", "#ff0000"), ("line", "#0000ff")]
    assert M.color_f1(ref, list(reversed(ref))) == pytest.approx(1.0)  # order does not matter
    # dark red matches red (similarity 1 - 23.75/40), blue matches blue: M = 1.40625, F1 = M
    dark = M.color_f1(ref, [("line", "#8b0000"), ("line", "#0000ff")])
    assert dark == pytest.approx((1 - 23.75 / 40 + 1) / 2, abs=0.002)
    # same colour on a different element type does not count
    assert M.color_f1(ref, [("patch", "#ff0000"), ("line", "#0000ff")]) == pytest.approx(0.5)
    assert M.color_f1([], []) == 1.0 and M.color_f1(ref, []) == 0.0


def test_element_colors_prefers_color_then_face_then_edge_and_skips_malformed():
    trace = {
        "elements": [
            {"type": "line", "color": "#FF0000"},
            {"type": "patch", "color": None, "facecolor": "#00ff00", "edgecolor": "#000000"},
            {"type": "patch", "facecolor": None, "edgecolor": "#0000ff"},
            {"type": "text", "color": "red"},
            "not an element",
        ]
    }
    assert M.element_colors(trace) == [("line", "#ff0000"), ("patch", "#00ff00"), ("patch", "#0000ff")]


def test_layout_f1_hand_computed():
    grid = [{"grid": [1, 2, 0, 1, 0, 1], "bounds": [0.1, 0.1, 0.35, 0.8], "projection": "rectilinear"}]
    grid.append({"grid": [1, 2, 0, 1, 1, 2], "bounds": [0.55, 0.1, 0.35, 0.8], "projection": "rectilinear"})
    assert M.layout_f1(grid, grid) == 1.0
    # one subplot instead of two: M = 1, F1 = 2/3
    assert M.layout_f1(grid, grid[:1]) == pytest.approx(2 / 3)
    # same grid cell, different projection: halved
    polar = [dict(grid[0], projection="polar")]
    assert M.layout_f1(grid[:1], polar) == pytest.approx(0.5)
    # no grid (fig.add_axes): IoU of bounds; [0,0,1,1] vs [0,0,0.5,1] -> 0.5
    assert M.layout_f1(
        [{"bounds": [0, 0, 1, 1]}], [{"bounds": [0, 0, 0.5, 1], "grid": None}]
    ) == pytest.approx(0.5)


def test_trace_f1s_on_a_hand_made_trace_and_on_garbage():
    ref = {
        "axes": [{"grid": [1, 1, 0, 1, 0, 1], "bounds": [0.1, 0.1, 0.8, 0.8], "projection": "rectilinear"}],
        "calls": {"plot": 1, "set_title": 1},
        "elements": [{"type": "line", "color": "#1f77b4"}],
        "texts": ["Sine"],
    }
    keys = ("text_f1", "type_f1", "color_f1", "layout_f1", "element_f2")
    assert M.trace_f1s(ref, ref) == dict.fromkeys(keys, 1.0)
    for garbage in (None, {}, {"axes": "x", "calls": [1], "elements": 3, "texts": {"a": 1}}, [1, 2]):
        assert M.trace_f1s(ref, garbage) == dict.fromkeys(keys, 0.0), garbage
    assert M.trace_f1s({}, {}) == dict.fromkeys(keys, 1.0)


def _shapes_trace(*shapes: tuple[str, float, float]) -> dict:
    """A 3x3-grid trace (xlim, ylim 0-3) of patches (kind, x0, y0), each 0.8 wide, as the tracer writes them."""
    elements = [
        {"type": "patch", "kind": kind, "axes": 0, "color": "#008000", "bbox": [x, y, x + 0.8, y + 0.8]}
        for kind, x, y in shapes
    ]
    axes = [{"grid": [1, 1, 0, 1, 0, 1], "xlim": [0.0, 3.0], "ylim": [0.0, 3.0]}]
    return {"axes": axes, "calls": {"add_patch": len(shapes)}, "elements": elements, "texts": []}


def test_element_f2_hand_computed():
    ref = _shapes_trace(("Circle", 0.1, 2.1), ("Rectangle", 2.1, 2.1))
    assert M.element_f2(ref, ref) == 1.0
    # k = 2: one left out 5(k-1)/(5k-1) = 5/9, one wrong added 5k/(5k+1) = 10/11 (recall weighs 4x)
    assert M.element_f2(ref, _shapes_trace(("Circle", 0.1, 2.1))) == pytest.approx(5 / 9)
    extra = _shapes_trace(("Circle", 0.1, 2.1), ("Rectangle", 2.1, 2.1), ("Polygon", 1.1, 0.1))
    assert M.element_f2(ref, extra) == pytest.approx(10 / 11)
    # one cell off (1/3 of the span, past the 0.25 tolerance) matches nothing: 5·1 / (4·2 + 2)
    moved = _shapes_trace(("Circle", 0.1, 2.1), ("Rectangle", 1.1, 2.1))
    assert M.element_f2(ref, moved) == pytest.approx(0.5)
    # a tenth of a cell off keeps 1 - (0.1/3)/0.25 of the pair; another kind halves it
    nudged = _shapes_trace(("Circle", 0.1, 2.1), ("Rectangle", 2.2, 2.1))
    assert M.element_f2(ref, nudged) == pytest.approx((1 + 1 - 0.1 / 3 / 0.25) / 2)
    kind = _shapes_trace(("Circle", 0.1, 2.1), ("Circle", 2.1, 2.1))
    assert M.element_f2(ref, kind) == pytest.approx(0.75)
    # a lines' element does not pair with a patch, nor one on another axes
    assert M.element_f2(ref, dict(ref, elements=[dict(e, type="line") for e in ref["elements"]])) == 0.0
    assert M.element_f2(ref, dict(ref, elements=[dict(e, axes=1) for e in ref["elements"]])) == 0.0
    # texts are text_f1's, not elements
    with_text = dict(ref, elements=[*ref["elements"], {"type": "text", "kind": "Text", "bbox": [0, 0, 1, 1]}])
    assert M.element_f2(ref, with_text) == 1.0
    assert M.element_f2({}, {}) == 1.0 and M.element_f2(ref, {}) == 0.0


def test_element_f2_scales_positions_by_the_reference_axes():
    # a bar one unit off on a 0-6 axis: d = 1/6, position term 1 - (1/6) / 0.25 = 1/3
    def bars(h: float) -> dict:
        el = {"type": "patch", "kind": "Rectangle", "axes": 0, "bbox": [-0.4, 0.0, 0.4, h]}
        return {"axes": [{"xlim": [-0.5, 0.5], "ylim": [0.0, 6.0]}], "elements": [el]}

    assert M.element_f2(bars(4.0), bars(5.0)) == pytest.approx(1 / 3)
    # no limits: a span of 1 data unit
    no_limits = {"elements": bars(4.0)["elements"]}
    assert M.element_f2(
        no_limits, {"elements": [dict(no_limits["elements"][0], bbox=[-0.4, 0.0, 0.4, 4.1])]}
    ) == (pytest.approx(1 - 0.1 / 0.25))


@pytest.mark.parametrize(
    "bbox",
    [None, [0, 0, 1], [float("nan"), 0, 1, 1], [0, 0, float("inf"), 1], [0, 0, 1e300, 1], ["0", 0, 1, 1]],
)
@pytest.mark.parametrize("limit", [None, [0, 0], [0, float("nan")], ["0", 3], [0, 1e300]])
def test_element_f2_survives_hostile_boxes_and_limits(bbox, limit):
    ref = _shapes_trace(("Circle", 0.1, 2.1))
    hostile = {"axes": [{"xlim": limit, "ylim": limit}], "elements": [dict(ref["elements"][0], bbox=bbox)]}
    assert M.element_f2(ref, hostile) == 0.0  # a bad box is a misplaced element, never a better one
    assert 0.0 <= M.element_f2(hostile, ref) <= 1.0
    assert M.element_f2(hostile, hostile) == 1.0


@pytest.mark.parametrize(
    "bounds",
    [[float("nan"), 0, 1, 1], [0, 0, float("inf"), 1], [0, 0, -1, -1], [0, 0, 1e300, 1e300], [0, 0, "1", 1]],
)
def test_layout_f1_survives_hostile_bounds(bounds):
    ref = [{"bounds": [0, 0, 1, 1]}]
    assert M.layout_f1(ref, [{"bounds": bounds}]) == 0.0
    assert M.layout_f1(ref, [{"bounds": bounds}, {"bounds": [0, 0, 1, 1]}]) == pytest.approx(2 / 3)


# ------------------------------------------------------------------------------------------- perceptual


def test_perceptual_similarity_names_what_is_missing(monkeypatch, tmp_path):
    monkeypatch.delenv(M.PERCEPTUAL_ENV, raising=False)
    with pytest.raises(RuntimeError, match="ONNX image encoder.*perceptual"):
        M.perceptual_similarity(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8))
    with pytest.raises(RuntimeError, match="missing.onnx"):
        M.perceptual_similarity(
            np.zeros((4, 4, 3), np.uint8), np.zeros((4, 4, 3), np.uint8), tmp_path / "missing.onnx"
        )


def test_perceptual_similarity_with_a_tiny_local_onnx_encoder(tmp_path, charts):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    # A fixed 3->8 1x1 convolution, ReLU and 4x4 average pooling: a real (if tiny) image encoder.
    weights = np.random.default_rng(0).normal(size=(8, 3, 1, 1)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("AveragePool", ["r"], ["y"], kernel_shape=[4, 4], strides=[4, 4]),
        ],
        "tiny_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 8, 8])],
        [helper.make_tensor("w", TensorProto.FLOAT, weights.shape, weights.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    path = tmp_path / "tiny.onnx"
    onnx.save(model, str(path))
    same = M.perceptual_similarity(charts["sine"], charts["sine"], path)
    other = M.perceptual_similarity(charts["sine"], charts["bars"], path)
    assert same == pytest.approx(1.0)
    assert -1.0 <= other < same
