"""``caption_grounded``: a deterministic reward for the image -> caption task, grounded in the code's trace.

The reference code is ground truth (the paper's code-grounded captions), so its execution trace gives facts a
caption can be checked against without a judge. The trace comes from ``sample.reference_trace`` or from
rendering ``sample.reference_code`` in the reward backend's sandbox (once per distinct program).

Facts of the trace (``trace_facts``):

- texts: the strings the figure draws (titles, labels, annotations, legend entries, set tick labels);
- counts: elements per category (bar, rectangle, line, point, circle, polygon, arrow, wedge), collections
  counted by their items;
- colours: the everyday name (13 names, by hue / saturation / value) of every non-text element's colour;
- key coordinates: anchor points of text elements and vertices of small polygons (<= 6 vertices);
- numbers: every number in the trace (coordinates, bounding boxes, axis limits, numeric texts, counts).

Claims of the caption (``caption_claims``): counts ("three bars", "5 points"), other numbers, colour words
and quoted strings. Then, with weights ``reward.weights.{precision,recall,length}`` (default 0.4 / 0.4 / 0.2):

- precision: supported claims / claims (0 when the caption claims nothing checkable); a count must equal the
  trace's count, a number must be within max(2 %, 0.01) of a trace number, a colour must name a trace
  colour, a quoted string must match a drawn text (difflib ratio >= 0.7);
- recall: the mean over the fact kinds present of the share of facts the caption states (a text appears in it,
  a count >= 2 is claimed correctly, a colour is named, a coordinate value is mentioned);
- length: 1 between 5 words and a budget (twice the reference caption, at least 60 words; without one,
  40 + 15 per fact, at most 600), falling linearly to 0 at twice the budget, and below 5 words.

What is not checked: relations ("left of", "above"), shapes beyond the categories, and numbers spelled out
as words beyond twenty. A caption can only be hurt by stating a fact wrongly, not by phrasing it differently.
"""

from __future__ import annotations

import colorsys
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from codepercept_rl.rewards.backend import RewardBackend
from codepercept_rl.rewards.parts import ReferenceRenders, Table, resolve_weights, texts_of
from codepercept_rl.rewards.registry import register_reward
from codepercept_rl.rewards.types import RewardOutput, RewardSample
from reward_servers.metrics import normalise_text, text_similarity

CAPTION_WEIGHTS = {"precision": 0.4, "recall": 0.4, "length": 0.2}

PALETTE = (
    "red",
    "orange",
    "yellow",
    "green",
    "cyan",
    "blue",
    "purple",
    "magenta",
    "pink",
    "brown",
    "black",
    "gray",
    "white",
)
_COLOUR_WORDS = {**{name: name for name in PALETTE}, "grey": "gray", "violet": "purple", "teal": "cyan"}
_KIND_CATEGORY = {
    "Rectangle": "rectangle",
    "FancyBboxPatch": "rectangle",
    "Line2D": "line",
    "PathCollection": "point",
    "Circle": "circle",
    "Ellipse": "circle",
    "Polygon": "polygon",
    "RegularPolygon": "polygon",
    "FancyArrow": "arrow",
    "FancyArrowPatch": "arrow",
    "Arrow": "arrow",
    "Wedge": "wedge",
}
_SYNONYMS = {
    "bar": {"bar", "bars", "column", "columns"},
    "rectangle": {"rectangle", "rectangles", "box", "boxes", "square", "squares"},
    "line": {"line", "lines", "curve", "curves", "segment", "segments"},
    "point": {"point", "points", "dot", "dots", "marker", "markers"},
    "circle": {"circle", "circles", "disk", "disks", "disc", "discs", "ellipse", "ellipses"},
    "polygon": {"polygon", "polygons", "triangle", "triangles", "quadrilateral", "quadrilaterals"},
    "arrow": {"arrow", "arrows", "vector", "vectors"},
    "wedge": {"wedge", "wedges", "slice", "slices", "sector", "sectors"},
}
_NOUN_CATEGORY = {word: cat for cat, words in _SYNONYMS.items() for word in words}
_NUMBER_WORDS = {
    w: i
    for i, w in enumerate(
        [
            "zero",
            "one",
            "two",
            "three",
            "four",
            "five",
            "six",
            "seven",
            "eight",
            "nine",
            "ten",
            "eleven",
            "twelve",
            "thirteen",
            "fourteen",
            "fifteen",
            "sixteen",
            "seventeen",
            "eighteen",
            "nineteen",
            "twenty",
        ]
    )
}
_TOKEN = re.compile(r"-?\d+(?:\.\d+)?|[a-z]+")
_NUMBER = re.compile(r"(?<![a-z_\d.])-?\d+(?:\.\d+)?(?![a-z_\d])")
_QUOTED = re.compile(r"\"([^\"]{1,200})\"|“([^”]{1,200})”|'([^']{2,200})'")
_MAX_FACT_TEXTS = 40
_MAX_COORDS = 12
MIN_WORDS = 5


@dataclass
class Facts:
    """What a trace says, in the forms a caption can state."""

    texts: list[str] = field(default_factory=list)  # normalised
    counts: dict[str, int] = field(default_factory=dict)  # category -> count
    colours: set[str] = field(default_factory=set)  # palette names of non-text elements
    all_colours: set[str] = field(default_factory=set)  # ... and of texts (support for claims)
    coords: list[float] = field(default_factory=list)
    numbers: list[float] = field(default_factory=list)

    @property
    def n_facts(self) -> int:
        """Facts a caption is expected to state (recall's denominator summed over kinds)."""
        return (
            len(self.texts)
            + sum(1 for n in self.counts.values() if n >= 2)
            + len(self.colours)
            + len(self.coords)
        )


def _floats(values: Any) -> list[float]:
    out: list[float] = []
    stack = [values]
    while stack:
        v = stack.pop()
        if isinstance(v, bool):
            continue
        if isinstance(v, int | float):
            if v == v and abs(v) != float("inf"):
                out.append(float(v))
        elif isinstance(v, list | tuple):
            stack.extend(v)
    return out


def colour_name(hex_colour: str) -> str | None:
    """The everyday name of a ``#rrggbb`` colour, by hue / saturation / value; None if malformed.

    Hue bins rather than nearest-neighbour to pure colours: matplotlib's default cycle is muted (tab:blue is
    #1f77b4), and people call it blue, though it sits closer to gray than to #0000ff in CIEDE2000.
    """
    if not isinstance(hex_colour, str) or not re.fullmatch(r"#[0-9a-fA-F]{6}", hex_colour):
        return None
    r, g, b = (int(hex_colour[i : i + 2], 16) / 255.0 for i in (1, 3, 5))
    h, sat, v = colorsys.rgb_to_hsv(r, g, b)
    hue = h * 360.0
    if v < 0.2:
        return "black"
    if sat < 0.2:
        return "white" if v > 0.9 else "gray"
    if sat < 0.55 and v > 0.8 and (hue < 15 or hue >= 290):
        return "pink"
    if hue < 45 or hue >= 345:
        if v < 0.7:
            return "brown"
        return "red" if hue < 15 or hue >= 345 else "orange"
    for limit, name in ((70, "yellow"), (165, "green"), (195, "cyan"), (255, "blue")):
        if hue < limit:
            return name
    return "purple" if hue < 290 or v < 0.6 else "magenta"


def trace_facts(trace: Mapping[str, Any]) -> Facts:
    """Facts of an execution trace (module docstring); ill-typed parts of the trace are skipped."""
    facts = Facts()
    texts = trace.get("texts") if isinstance(trace.get("texts"), list) else []
    for t in texts[:_MAX_FACT_TEXTS]:
        if isinstance(t, str) and normalise_text(t):
            norm = normalise_text(t)
            facts.numbers.extend(float(m) for m in _NUMBER.findall(norm))
            if not _NUMBER.fullmatch(norm) and norm not in facts.texts:
                facts.texts.append(norm)
            elif _NUMBER.fullmatch(norm):
                facts.numbers.append(float(norm))
    calls = trace.get("calls") if isinstance(trace.get("calls"), Mapping) else {}
    counts: Counter[str] = Counter()
    elements = trace.get("elements") if isinstance(trace.get("elements"), list) else []
    colour_cache: dict[str, str | None] = {}
    for el in elements:
        if not isinstance(el, Mapping):
            continue
        category = _KIND_CATEGORY.get(str(el.get("kind")))
        if category == "rectangle" and (calls.get("bar") or calls.get("barh")):
            category = "bar"
        n = el.get("n") if isinstance(el.get("n"), int) and not isinstance(el.get("n"), bool) else 1
        if category is not None:
            counts[category] += max(0, n)
        points = _floats(el.get("points"))
        facts.numbers.extend(points)
        facts.numbers.extend(_floats(el.get("bbox")))
        is_text = el.get("type") == "text"
        if is_text or (category == "polygon" and len(points) <= 12):
            facts.coords.extend(round(v, 2) for v in points[:12])
        for key in ("color", "facecolor", "edgecolor"):
            c = el.get(key)
            if isinstance(c, str):
                if c not in colour_cache:
                    colour_cache[c] = colour_name(c)
                name = colour_cache[c]
                if name is not None:
                    facts.all_colours.add(name)
                    if not is_text and key != "edgecolor" and name != "white":
                        facts.colours.add(name)
                break
    facts.counts = dict(counts)
    facts.numbers.extend(float(n) for n in counts.values())
    for ax in trace.get("axes") if isinstance(trace.get("axes"), list) else []:
        if isinstance(ax, Mapping):
            facts.numbers.extend(_floats([ax.get("xlim"), ax.get("ylim")]))
    facts.coords = sorted(set(facts.coords))[:_MAX_COORDS]
    return facts


@dataclass
class Claims:
    """Checkable statements found in a caption."""

    counts: list[tuple[int, str]] = field(default_factory=list)  # (number, category)
    numbers: list[float] = field(default_factory=list)
    colours: list[str] = field(default_factory=list)
    quoted: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.counts) + len(self.numbers) + len(self.colours) + len(self.quoted)


def caption_claims(caption: str) -> Claims:
    """Claims of a caption (module docstring)."""
    claims = Claims()
    quoted_spans = []
    for m in _QUOTED.finditer(caption):
        claims.quoted.append(normalise_text(next(g for g in m.groups() if g is not None)))
        quoted_spans.append(m.span())
    # Numbers inside quotes belong to the quoted claim, not to the number claims.
    bare = caption
    for start, end in reversed(quoted_spans):
        bare = bare[:start] + " " + bare[end:]
    tokens = _TOKEN.findall(bare.lower())
    used: set[int] = set()
    for i, tok in enumerate(tokens):
        value = _NUMBER_WORDS.get(tok)
        if value is None and re.fullmatch(r"\d+", tok):
            value = int(tok)
        if value is None:
            continue
        for j in range(i + 1, min(i + 4, len(tokens))):
            category = _NOUN_CATEGORY.get(tokens[j])
            if category is not None:
                claims.counts.append((value, category))
                used.add(i)
                break
    for i, tok in enumerate(tokens):
        if i not in used and re.fullmatch(r"-?\d+(?:\.\d+)?", tok):
            claims.numbers.append(float(tok))
        elif tok in _COLOUR_WORDS:
            claims.colours.append(_COLOUR_WORDS[tok])
    return claims


def _near(value: float, candidates: Sequence[float]) -> bool:
    return any(abs(value - c) <= max(0.02 * abs(c), 0.01) for c in candidates)


def _count_ok(number: int, category: str, counts: Mapping[str, int]) -> bool:
    if counts.get(category) == number:
        return True
    # Bars are rectangles: accept either word for the same patches.
    twins = {"bar": "rectangle", "rectangle": "bar"}
    return category in twins and counts.get(twins[category]) == number


def _text_in(text: str, caption_norm: str, quoted: Sequence[str]) -> bool:
    # Whole words only: a one-letter label "a" must not be found inside every word of the caption.
    if re.search(r"(?<!\w)" + re.escape(text) + r"(?!\w)", caption_norm):
        return True
    return any(text_similarity(text, q) > 0 for q in quoted)


def grade_caption(caption: str, facts: Facts, reference_caption: str | None = None) -> dict[str, float]:
    """Precision, recall and length guard of a caption against trace facts (module docstring)."""
    claims = caption_claims(caption)
    caption_norm = normalise_text(caption)
    supported = sum(_count_ok(n, c, facts.counts) for n, c in claims.counts)
    supported += sum(_near(v, facts.numbers) for v in claims.numbers)
    supported += sum(c in facts.all_colours for c in claims.colours)
    supported += sum(any(text_similarity(q, t) > 0 for t in facts.texts) for q in claims.quoted)
    precision = supported / len(claims) if len(claims) else 0.0

    recalls = []
    if facts.texts:
        recalls.append(sum(_text_in(t, caption_norm, claims.quoted) for t in facts.texts) / len(facts.texts))
    big_counts = {c: n for c, n in facts.counts.items() if n >= 2}
    if big_counts:
        stated = {c for n, c in claims.counts if _count_ok(n, c, facts.counts)}
        stated |= {"rectangle" if c == "bar" else "bar" for c in stated if c in ("bar", "rectangle")}
        recalls.append(sum(c in stated for c in big_counts) / len(big_counts))
    if facts.colours:
        recalls.append(len(facts.colours & set(claims.colours)) / len(facts.colours))
    if facts.coords:
        recalls.append(sum(_near(v, claims.numbers) for v in facts.coords) / len(facts.coords))
    recall = sum(recalls) / len(recalls) if recalls else 0.0

    words = len(caption.split())
    if reference_caption:
        budget = max(60, 2 * len(reference_caption.split()))
    else:
        budget = min(600, 40 + 15 * facts.n_facts)
    if words == 0:
        length = 0.0
    elif words < MIN_WORDS:
        length = words / MIN_WORDS
    else:
        length = max(0.0, 1.0 - max(0, words - budget) / budget)
    return {"precision": precision, "recall": recall, "length": length, "claims": float(len(claims))}


@register_reward("caption_grounded")
class CaptionGroundedReward:
    """Precision / recall of a caption's facts against the reference code's trace, plus a length guard."""

    name = "caption_grounded"

    def __init__(self, weights: Mapping[str, float] | None = None) -> None:
        self.weights = resolve_weights(self.name, CAPTION_WEIGHTS, weights)
        self._references = ReferenceRenders()

    async def __call__(self, samples: Sequence[RewardSample], backend: RewardBackend) -> RewardOutput:
        table = Table(len(samples))
        texts = texts_of(samples, table)
        for i, text in enumerate(texts):
            if text is None:
                continue
            sample = samples[i]
            trace = sample.reference_trace
            if trace is None and sample.reference_code is not None:
                render = await self._references.get(backend, sample.reference_code)
                if render.status != "ok":
                    table.unscored(
                        i, "no_reference", f"reference code did not render: {render.status}: {render.error}"
                    )
                    continue
                trace = render.trace
            if not isinstance(trace, Mapping):
                table.unscored(i, "no_reference", "caption_grounded needs reference_code or reference_trace")
                continue
            grades = grade_caption(text, trace_facts(trace), sample.reference_caption)
            table.set(i, **grades)
            table.scores[i] = table.weigh(i, self.weights)
        return table.output()
