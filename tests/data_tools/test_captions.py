"""The caption checker drops every sentence with a false number, label, count or colour, and keeps true ones."""

from __future__ import annotations

import json

import pytest

from data_tools.captions import color_name, split_sentences, template_caption, verify_caption
from data_tools.generators import generate
from data_tools.teacher.refine import compact_trace

# A trace written by hand after the schema (docs/reward_servers_contract.md): two bars and a title.
TRACE = {
    "figures": [{"size_in": [6.0, 4.0], "dpi": 100.0, "n_axes": 1}],
    "axes": [
        {
            "figure": 0, "bounds": [0.1, 0.1, 0.8, 0.8], "projection": "rectilinear", "title": "Sales",
            "xlabel": "Quarter", "ylabel": "Units", "xlim": [-0.5, 1.5], "ylim": [0.0, 7.0],
            "grid": [1, 1, 0, 1, 0, 1], "axis_on": True, "legend": False,
        }
    ],
    "calls": {"bar": 1},
    "elements": [
        {"type": "patch", "kind": "Rectangle", "axes": 0, "color": "#1f77b4", "facecolor": "#1f77b4",
         "edgecolor": None, "alpha": None, "zorder": 1.0, "label": None, "text": None,
         "bbox": [-0.4, 0.0, 0.4, 3.0], "points": None, "n": 1},
        {"type": "patch", "kind": "Rectangle", "axes": 0, "color": "#ff7f0e", "facecolor": "#ff7f0e",
         "edgecolor": None, "alpha": None, "zorder": 1.0, "label": None, "text": None,
         "bbox": [0.6, 0.0, 1.4, 6.5], "points": None, "n": 1},
    ],
    "texts": ["Sales", "Quarter", "Units"],
    "counts": {"Rectangle": 2},
    "colors": ["#1f77b4", "#ff7f0e"],
}  # fmt: skip


@pytest.mark.parametrize(
    "sentence",
    [
        "The chart has 2 bars.",
        "There are two rectangles.",
        'The panel is titled "Sales".',
        "The tallest bar reaches 6.5.",
        "The bars are blue and orange.",
        "The y-axis runs from 0 to 7.",
        "The figure is 6 by 4 inches.",
    ],
)
def test_true_sentences_are_kept(sentence):
    assert verify_caption(sentence, TRACE).dropped == []


@pytest.mark.parametrize(
    ("sentence", "reason"),
    [
        ("The chart has 3 bars.", "3 bars: the trace has 2"),
        ("There are five rectangles.", "five rectangles: the trace has 2"),
        ("It draws 1 circle.", "1 circle: the trace has 0"),
        ('The panel is titled "Revenue".', "no drawn text 'Revenue'"),
        ("The tallest bar reaches 9.", "number 9 is not in the trace"),
        ("One bar is green.", "no green element"),
    ],
)
def test_false_sentences_are_dropped_with_the_failed_claim(sentence, reason):
    checked = verify_caption("The chart has 2 bars. " + sentence, TRACE)
    assert checked.kept == ["The chart has 2 bars."]
    assert len(checked.dropped) == 1 and reason in checked.dropped[0][1]


def test_template_of_hand_trace_is_fully_verified_and_mentions_the_facts():
    caption = template_caption(TRACE, subject="a bar chart of 2 bars")
    assert verify_caption(caption, TRACE, subject="a bar chart of 2 bars").dropped == []
    for fact in (
        '"Sales"',
        '"Quarter"',
        '"Units"',
        "2 rectangles",
        "blue",
        "orange",
        "x runs from -0.5 to 1.5",
    ):
        assert fact in caption


def test_subject_numbers_are_facts_only_when_given():
    assert verify_caption("A stack of 15 cubes.", TRACE).dropped
    assert not verify_caption("A stack of 15 cubes.", TRACE, subject="a stack of 15 unit cubes").dropped


def test_sentence_split_keeps_decimals():
    assert split_sentences("Bar A is 2.5 high. Bar B is 3.") == ["Bar A is 2.5 high.", "Bar B is 3."]


@pytest.mark.parametrize(
    ("hex_color", "name"),
    [("#ff0000", "red"), ("#1f77b4", "blue"), ("#2ca02c", "green"), ("#ff7f0e", "orange"), ("#800080", "purple"),
     ("#000000", "black"), ("#ffffff", "white"), ("#808080", "gray"), ("#17becf", "cyan"), ("#8c564b", "brown")],
)  # fmt: skip
def test_color_names(hex_color, name):
    assert color_name(hex_color) == name


def test_color_name_rejects_garbage():
    with pytest.raises(ValueError, match="not a #rrggbb"):
        color_name("red")


def test_false_facts_injected_into_real_captions_are_dropped(renderer):
    """On real traces: add one false claim of each kind to a true caption; exactly those sentences go."""
    for family in ("stat_chart", "shapes", "cube_stacking"):
        prog = generate(family, 4)
        res = renderer.render(prog.code)
        assert res.status == "ok"
        true = template_caption(res.trace, prog.subject)
        n_rect = res.trace["counts"].get("Rectangle", 0)
        lies = [
            f"It draws {n_rect + 7} rectangles.",
            'A text reads "Definitely not drawn".',
            "One element is at (123.45, -987.6).",
        ]
        checked = verify_caption(true + " " + " ".join(lies), res.trace, prog.subject)
        assert [s for s, _ in checked.dropped] == lies
        assert checked.text == true


def test_forged_or_malformed_traces_never_raise():
    """User code can forge its trace; captions must degrade (say less), never crash the builder."""
    forged = {
        "figures": ["x", {"size_in": "big"}],
        "axes": [{"xlim": ["a", None], "ylim": [1], "axis_on": True, "projection": "rectilinear", "title": 5}],
        "elements": [{"kind": "Circle", "type": "patch", "bbox": [1, "2", None, 4], "points": [[1], "zz", [1e300, 2]],
                      "facecolor": "not-a-colour"}, "junk"],
        "counts": {"Circle": "many", "Rectangle": True},
        "texts": [1, None, "ok"],
        "colors": ["#12", 7, "#00ff00"],
    }  # fmt: skip
    caption = template_caption(forged)
    assert "green" in caption
    checked = verify_caption(caption + " It draws 2 circles.", forged)
    assert checked.dropped and checked.dropped[-1][0] == "It draws 2 circles."
    assert json.loads(compact_trace(forged))["colours"] == ["green"]
