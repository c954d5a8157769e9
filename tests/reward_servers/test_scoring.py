"""Tests of reward_servers/scoring.py: rewards on real matplotlib renders and PNG decoding.

The sandbox is not needed: figures are trusted test code rendered in-process (Agg), and ``Render`` below
carries the only RenderResult fields that score_render reads (status, images/png, trace).

Run: pytest tests/reward_servers/test_scoring.py
"""

from __future__ import annotations

import io
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from reward_servers import metrics  # noqa: E402
from reward_servers.scoring import SCORERS, decode_png, score_render  # noqa: E402

NON_OK = ("no_code", "syntax_error", "exec_error", "timeout", "memory", "killed", "no_figure", "bad_request")
IMAGE_REWARDS = ("render", "ssim", "pixel", "edge", "rlrf")


@dataclass
class Render:
    """The fields of reward_servers.sandbox.RenderResult that score_render reads."""

    status: str = "ok"
    images: list[bytes] = field(default_factory=list)
    trace: dict = field(default_factory=dict)

    @property
    def png(self) -> bytes | None:
        return self.images[0] if self.images else None


def render_png(draw) -> bytes:
    fig = plt.figure(figsize=(6.4, 4.8), dpi=100)
    try:
        draw(fig)
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
    finally:
        plt.close(fig)
    return buf.getvalue()


def sine(fig, phase: float = 0.0) -> None:
    ax = fig.add_subplot(111)
    x = np.linspace(0, 10, 200)
    ax.plot(x, np.sin(x + phase), color="#1f77b4")
    ax.set_title("Sine")


def bars(fig) -> None:
    ax = fig.add_subplot(111)
    ax.bar(["a", "b", "c"], [3, 1, 2], color="orange")
    ax.set_title("Bars")


SINE_TRACE = {
    "axes": [{"grid": [1, 1, 0, 1, 0, 1], "bounds": [0.125, 0.11, 0.775, 0.77], "projection": "rectilinear"}],
    "calls": {"plot": 1, "set_title": 1},
    "elements": [{"type": "line", "kind": "Line2D", "color": "#1f77b4"}],
    "texts": ["Sine"],
}


@pytest.fixture(scope="module")
def pngs() -> dict[str, bytes]:
    return {
        "sine": render_png(sine),
        "near": render_png(lambda f: sine(f, 0.3)),
        "bars": render_png(bars),
        "blank": render_png(lambda f: None),
    }


@pytest.fixture(scope="module")
def target(pngs) -> np.ndarray:
    return decode_png(pngs["sine"])


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ rewards


@pytest.mark.parametrize("reward", IMAGE_REWARDS)
def test_identical_render_scores_one_and_worse_renders_lower(pngs, target, reward):
    scores = {k: score_render(Render(images=[png]), target, None, reward)[0] for k, png in pngs.items()}
    assert scores["sine"] == pytest.approx(1.0)
    assert scores["sine"] > scores["near"] > scores["bars"], scores
    # 0.15, not more: SSIM alone rates a blank page ~0.81 against a sparse line chart (white background)
    assert scores["sine"] - scores["blank"] > 0.15, scores
    assert all(0.0 <= s <= 1.0 for s in scores.values())


def test_render_blend_is_the_documented_combination(pngs, target):
    score, m = score_render(Render(images=[pngs["bars"]]), target, None)
    expected = 0.25 * max(0.0, m["ssim"]) + 0.5 * m["edge"] + 0.25 * (m["pixel"] + 1) / 2
    assert score == pytest.approx(expected) and m["image"] == pytest.approx(expected)
    assert set(m) == {"ssim", "edge", "pixel", "image"}
    assert score < 0.8  # another chart type is far from the target


def test_blank_render_ranks_below_a_wrong_chart(pngs, target):
    blank = score_render(Render(images=[pngs["blank"]]), target, None)[0]
    wrong = score_render(Render(images=[pngs["bars"]]), target, None)[0]
    assert blank < wrong


def disc(fig, dx: float = 0.0) -> None:
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.axis("off")
    ax.add_patch(plt.Circle((0.3 + dx, 0.5), 0.15, color="red"))
    ax.text(0.3 + dx, 0.1, "label", fontsize=20)


@pytest.mark.parametrize("reward", IMAGE_REWARDS)
def test_score_falls_as_a_shape_and_its_label_move_further(reward):
    disc_target = decode_png(render_png(disc))
    scores = [
        score_render(Render(images=[render_png(lambda f, d=d: disc(f, d))]), disc_target, None, reward)[0]
        for d in (0.0, 0.02, 0.05, 0.1, 0.2, 0.4)
    ]
    assert scores[0] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(scores, scores[1:], strict=False)), scores
    assert scores[1] > scores[-1], scores
    if reward != "edge":  # the edge F1 saturates at 0 once nothing overlaps; the blend keeps falling
        assert all(a > b for a, b in zip(scores, scores[1:], strict=False)), scores


def test_rlrf_maps_the_raw_reward_affinely(pngs, target):
    score, m = score_render(Render(images=[pngs["blank"]]), target, None, "rlrf")
    assert m == {"pixel": 0.0, "edge_recon": 0.0}  # a blank page correlates with nothing
    assert score == pytest.approx(0.5)


@pytest.mark.parametrize("status", NON_OK)
@pytest.mark.parametrize("reward", sorted(SCORERS))
def test_failed_renders_score_zero_with_no_metrics(pngs, target, status, reward):
    render = Render(status=status, images=[pngs["sine"]], trace=SINE_TRACE)
    assert score_render(render, target, Render(images=[pngs["sine"]], trace=SINE_TRACE), reward) == (0.0, {})


def test_exec_reward_needs_no_target(pngs):
    assert score_render(Render(images=[pngs["blank"]]), None, None, "exec") == (1.0, {"exec": 1.0})
    assert SCORERS["exec"](Render(status="timeout"), None, None) == (0.0, {"exec": 0.0})


def test_unknown_reward_is_refused_by_name(pngs, target):
    for status in ("ok", "timeout"):
        with pytest.raises(ValueError, match="'clip_score'.*render"):
            score_render(Render(status=status, images=[pngs["sine"]]), target, None, "clip_score")


def test_reference_render_is_the_target_when_no_target_image(pngs, target):
    render = Render(images=[pngs["near"]])
    assert score_render(render, None, Render(images=[pngs["sine"]])) == score_render(render, target, None)
    with pytest.raises(ValueError, match="needs a target image"):
        score_render(render, None, None, "ssim")
    with pytest.raises(ValueError, match="needs a target image"):
        score_render(render, None, Render(status="exec_error"), "edge")


def test_trace_f1s_join_the_blend_when_the_reference_has_a_trace(pngs, target):
    reference = Render(images=[pngs["sine"]], trace=SINE_TRACE)
    score, m = score_render(Render(images=[pngs["sine"]], trace=SINE_TRACE), target, reference)
    assert score == pytest.approx(1.0) and m["trace"] == 1.0
    # right picture, different trace: one extra text and a scatter call
    other = dict(SINE_TRACE, texts=["Sine", "extra"], calls={"plot": 1, "set_title": 1, "scatter": 1})
    score, m = score_render(Render(images=[pngs["sine"]], trace=other), target, reference)
    assert m["text_f1"] == pytest.approx(2 / 3) and m["type_f1"] == pytest.approx(0.8)
    assert m["element_f2"] == 1.0  # the same line, in the same place
    assert m["trace"] == pytest.approx(0.5 * 1.0 + 0.5 * (2 / 3 + 0.8 + 1 + 1) / 4)
    assert score == pytest.approx(0.5 * m["image"] + 0.5 * m["trace"])
    # the same calls, texts and colour, but the line drawn elsewhere: only element_f2 sees it
    line = {"type": "line", "kind": "Line2D", "axes": 0, "color": "#1f77b4", "bbox": [0.0, -1.0, 6.0, 1.0]}
    axes = [dict(SINE_TRACE["axes"][0], xlim=[0.0, 6.0], ylim=[-1.0, 1.0])]
    placed = dict(SINE_TRACE, axes=axes, elements=[line])
    moved = dict(placed, elements=[dict(line, bbox=[3.0, -1.0, 9.0, 1.0])])
    _, m = score_render(
        Render(images=[pngs["sine"]], trace=moved), target, Render(images=[pngs["sine"]], trace=placed)
    )
    assert m["text_f1"] == m["type_f1"] == m["color_f1"] == m["layout_f1"] == 1.0
    assert m["element_f2"] == 0.0 and m["trace"] == pytest.approx(0.5)


def test_a_missing_trace_cannot_raise_the_score(pngs, target):
    reference = Render(images=[pngs["sine"]], trace=SINE_TRACE)
    near_trace = dict(SINE_TRACE, texts=["Sine?"])
    honest = score_render(Render(images=[pngs["near"]], trace=near_trace), target, reference)
    for tampered in ({}, {"texts": "x", "axes": None}):
        score, m = score_render(Render(images=[pngs["near"]], trace=tampered), target, reference)
        assert m["trace"] == 0.0 and score < honest[0]


def test_trace_reward(pngs):
    reference = Render(images=[pngs["sine"]], trace=SINE_TRACE)
    score, m = score_render(Render(images=[pngs["bars"]], trace=SINE_TRACE), None, reference, "trace")
    assert score == 1.0 and set(m) == {"text_f1", "type_f1", "color_f1", "layout_f1", "element_f2", "trace",
                                       "elements", "ref_elements", "elements_ratio"}  # fmt: skip
    assert m["elements"] == m["ref_elements"] > 0 and m["elements_ratio"] == 1.0  # diagnostics, in no score
    with pytest.raises(ValueError, match="reference"):
        score_render(
            Render(images=[pngs["bars"]], trace=SINE_TRACE), None, Render(images=[pngs["sine"]]), "trace"
        )


def test_scores_are_deterministic(pngs, target):
    reference = Render(images=[pngs["sine"]], trace=SINE_TRACE)
    for reward in sorted(SCORERS):
        runs = [
            score_render(Render(images=[pngs["near"]], trace=SINE_TRACE), target, reference, reward)
            for _ in range(2)
        ]
        assert runs[0] == runs[1], reward


def test_broken_render_png_is_reported_as_the_render_image(target):
    with pytest.raises(ValueError, match="render image: not a valid PNG"):
        score_render(Render(images=[b"\x89PNG\r\n\x1a\nnot really"]), target, None)


def test_an_ok_render_without_image_scores_zero(target):
    assert score_render(Render(images=[]), target, None) == (0.0, {})


# ------------------------------------------------------------------------------------------------ decode


def test_decode_png_composites_transparency_on_white():
    rgba = np.zeros((4, 6, 4), np.uint8)
    rgba[:, :3] = [255, 0, 0, 255]  # opaque red left, transparent right
    out = decode_png(png_bytes(Image.fromarray(rgba, "RGBA")))
    assert out.shape == (4, 6, 3) and out.dtype == np.uint8
    assert (out[:, :3] == [255, 0, 0]).all() and (out[:, 3:] == 255).all()


def test_decode_png_handles_gray_palette_and_16bit(pngs):
    rgb = decode_png(pngs["sine"])
    gray = np.asarray(Image.fromarray(rgb).convert("L"))
    expected = np.repeat(gray[:, :, None], 3, axis=2)
    assert np.array_equal(decode_png(png_bytes(Image.fromarray(gray))), expected)
    assert np.array_equal(decode_png(png_bytes(Image.fromarray(gray).convert("P"))), expected)
    assert np.array_equal(decode_png(png_bytes(Image.fromarray(gray.astype(np.uint16) * 257))), expected)
    one_bit = decode_png(png_bytes(Image.fromarray(gray > 128)))
    assert set(np.unique(one_bit)) <= {0, 255}


def _png_claiming(width: int, height: int) -> bytes:
    """A small valid grayscale PNG whose IHDR is then rewritten to claim width x height."""
    raw = bytearray(png_bytes(Image.new("L", (8, 8), 255)))
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


@pytest.mark.parametrize("claimed", [(8000, 8000), (30000, 30000)])
def test_decode_png_refuses_decompression_bombs_before_decoding(claimed):
    with pytest.raises(ValueError, match="too large|decompression bomb"):
        decode_png(_png_claiming(*claimed))


def test_decode_png_refuses_a_text_chunk_bomb():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("comment", "a" * 4_000_000, zip=True)  # ~4 kB compressed, 4 MB once inflated
    buf = io.BytesIO()
    Image.new("L", (8, 8), 255).save(buf, format="PNG", pnginfo=info)
    with pytest.raises(ValueError, match="not a valid PNG.*too large"):
        decode_png(buf.getvalue())


def test_decode_png_pixel_cap_is_configurable(pngs):
    with pytest.raises(ValueError, match="640x480"):
        decode_png(pngs["sine"], max_pixels=1000)


@pytest.mark.parametrize(
    "data",
    [b"", b"hello", b"\x89PNG\r\n\x1a\n", "a string"],
    ids=["empty", "text", "signature_only", "str"],
)
def test_decode_png_refuses_garbage_with_a_clear_message(data):
    with pytest.raises(ValueError, match="PNG"):
        decode_png(data)


def test_decode_png_refuses_truncated_and_non_png_files(pngs):
    with pytest.raises(ValueError, match="not a valid PNG"):
        decode_png(pngs["sine"][: len(pngs["sine"]) // 2])
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="JPEG")
    with pytest.raises(ValueError, match="not a valid PNG"):
        decode_png(buf.getvalue())


def test_decoded_target_can_be_cached_as_a_canvas(pngs, target):
    render = Render(images=[pngs["near"]])
    assert score_render(render, metrics.to_canvas(target), None) == score_render(render, target, None)


def test_scoring_imports_no_torch():
    code = "import sys, reward_servers.scoring, reward_servers.metrics; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0
