"""Traces of real plots rendered in the sandbox: texts, calls, element counts, colours, axes layout.

python -m pytest tests/reward_servers/test_tracer.py -q
"""

from __future__ import annotations

import json

import pytest

from reward_servers.sandbox import Sandbox, SandboxConfig
from reward_servers.tracer import MAX_ELEMENTS, MAX_POINTS


@pytest.fixture(scope="module")
def sb():
    with Sandbox(SandboxConfig(timeout_s=10.0), worker_index=9) as s:
        yield s


def trace_of(sb: Sandbox, code: str) -> dict:
    res = sb.run("import matplotlib.pyplot as plt\nimport numpy as np\n" + code)
    assert res.status == "ok", res.error
    json.dumps(res.trace, allow_nan=False)  # strict JSON
    return res.trace


def test_line_bar_scatter_text(sb: Sandbox) -> None:
    t = trace_of(
        sb,
        "fig, ax = plt.subplots()\n"
        "ax.plot([0, 1, 2], [0, 1, 4], color='#ff0000', label='square')\n"
        "ax.bar([0, 1, 2], [3, 2, 1], color='#00ff00')\n"
        "ax.scatter([0.5, 1.5], [1, 2], color='#0000ff')\n"
        "ax.text(1, 3, 'peak')\n"
        "ax.annotate('here', xy=(2, 4), xytext=(1.5, 3.5), arrowprops={'arrowstyle': '->'})\n"
        "ax.set_title('Demo'); ax.set_xlabel('x'); ax.set_ylabel('y'); ax.legend()\n",
    )
    assert t["calls"] == {"plot": 1, "bar": 1, "scatter": 1, "text": 1, "annotate": 1, "legend": 1}
    assert t["counts"]["Line2D"] == 1
    assert t["counts"]["Rectangle"] == 3  # bars only; the axes background is not a user element
    assert t["counts"]["PathCollection"] == 1 and t["counts"]["Annotation"] == 1 and t["counts"]["Text"] == 1
    assert {"Demo", "x", "y", "peak", "here", "square"} <= set(t["texts"])
    assert not any(
        s.replace(".", "").replace("\u2212", "").isdigit() for s in t["texts"]
    )  # no auto tick labels
    assert {"#ff0000", "#00ff00", "#0000ff"} <= set(t["colors"])
    line = next(e for e in t["elements"] if e["kind"] == "Line2D")
    assert line["type"] == "line" and line["label"] == "square" and line["color"] == "#ff0000"
    assert line["points"] == [[0, 0], [1, 1], [2, 4]] and line["bbox"] == [0, 0, 2, 4]
    bars = [e for e in t["elements"] if e["kind"] == "Rectangle"]
    assert sorted(b["bbox"][3] for b in bars) == [1, 2, 3]  # bar heights, in data coordinates
    scatter = next(e for e in t["elements"] if e["kind"] == "PathCollection")
    assert scatter["n"] == 2 and scatter["facecolor"] == "#0000ff"
    (ax,) = t["axes"]
    assert (ax["title"], ax["xlabel"], ax["ylabel"], ax["legend"], ax["projection"]) == (
        "Demo",
        "x",
        "y",
        True,
        "rectilinear",
    )
    assert ax["grid"] == [1, 1, 0, 1, 0, 1]


def test_subplot_layout_and_figure(sb: Sandbox) -> None:
    t = trace_of(
        sb,
        "fig = plt.figure(figsize=(8, 4))\ngs = fig.add_gridspec(2, 3)\n"
        "a = fig.add_subplot(gs[:, 0]); a.plot([1, 2])\n"
        "b = fig.add_subplot(gs[0, 1:]); b.hist(np.arange(10), bins=5)\n"
        "c = fig.add_subplot(gs[1, 1:], projection='polar'); c.plot([0, 1], [1, 2])\n"
        "fig.suptitle('Layout')\n",
    )
    assert t["figures"] == [{"size_in": [8, 4], "dpi": 100, "n_axes": 3}]
    assert [a["grid"] for a in t["axes"]] == [[2, 3, 0, 2, 0, 1], [2, 3, 0, 1, 1, 3], [2, 3, 1, 2, 1, 3]]
    assert [a["projection"] for a in t["axes"]] == ["rectilinear", "rectilinear", "polar"]
    assert t["calls"] == {"plot": 2, "hist": 1, "suptitle": 1}  # hist's inner bar() calls are not counted
    assert t["counts"]["Rectangle"] == 5
    assert "Layout" in t["texts"]
    x0, y0, w, h = t["axes"][0]["bounds"]
    assert 0 <= x0 < 0.4 and w > 0 and h > 0.5


def test_patches_and_explicit_tick_labels(sb: Sandbox) -> None:
    t = trace_of(
        sb,
        "import matplotlib.patches as mp\nfig, ax = plt.subplots()\n"
        "ax.add_patch(mp.Circle((0.5, 0.5), 0.2, facecolor='yellow', edgecolor='black'))\n"
        "ax.add_patch(mp.Polygon([[0, 0], [1, 0], [0.5, 1]], closed=True, fill=False, edgecolor='purple'))\n"
        "ax.set_xticks([0, 1]); ax.set_xticklabels(['left', 'right'])\nax.axis('equal')\n",
    )
    assert t["calls"] == {"add_patch": 2}
    assert t["counts"] == {"Circle": 1, "Polygon": 1}
    circle = next(e for e in t["elements"] if e["kind"] == "Circle")
    assert circle["facecolor"] == "#ffff00" and circle["edgecolor"] == "#000000"
    assert circle["bbox"] == pytest.approx([0.3, 0.3, 0.7, 0.7], abs=1e-3)
    poly = next(e for e in t["elements"] if e["kind"] == "Polygon")
    assert poly["facecolor"] is None and poly["edgecolor"] == "#800080"
    assert {"left", "right"} <= set(t["texts"])


def test_3d_axes(sb: Sandbox) -> None:
    t = trace_of(
        sb,
        "ax = plt.figure().add_subplot(projection='3d')\n"
        "ax.plot([0, 1], [0, 1], [0, 1], color='red')\nax.scatter([0], [0], [1])\nax.set_zlabel('height')\n",
    )
    assert t["axes"][0]["projection"] == "3d" and t["axes"][0]["zlabel"] == "height"
    assert t["calls"] == {"plot": 1, "scatter": 1}
    assert {e["type"] for e in t["elements"]} == {"3d"}
    assert t["counts"] == {"Line3D": 1, "Path3DCollection": 1}
    assert "height" in t["texts"]


def test_bounds(sb: Sandbox) -> None:
    t = trace_of(sb, f"plt.bar(np.arange({MAX_ELEMENTS + 50}), 1.0)\n")
    assert t["truncated"] is True and len(t["elements"]) == MAX_ELEMENTS
    assert t["calls"] == {"bar": 1}
    t = trace_of(sb, "plt.plot(np.arange(1000) * 1.234567)\n")
    (line,) = t["elements"]
    assert len(line["points"]) == MAX_POINTS and line["points"][1] == [1, 1.235]


def test_tracer_failure_still_returns_the_render(sb: Sandbox) -> None:
    res = sb.run(
        "import matplotlib.axes\nimport matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
        "matplotlib.axes.Axes.get_subplotspec = None\n"
    )
    assert res.status == "ok" and res.png is not None
    assert "error" in res.trace and res.trace["calls"] == {"plot": 1}
