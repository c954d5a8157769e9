"""Code-grounded captions: written from the execution trace of a program, and checked against it.

    from data_tools.captions import template_caption, verify_caption
    caption = template_caption(render.trace, subject="a bar chart of 3 bars")
    report = verify_caption(caption, render.trace, subject="a bar chart of 3 bars")
    assert not report.dropped          # every sentence of a template caption holds

The trace (``reward_servers.tracer``, schema in docs/reward_servers_contract.md) lists what the program drew:
element kinds and counts, texts, colours, coordinates, axes. ``template_caption`` turns it into sentences
deterministically. ``verify_caption`` re-checks any caption (a template one, or one an LLM refined) sentence by
sentence and drops a sentence when one of its checkable claims fails:

* every number must be a number of the trace (a count, a limit, a coordinate, a bbox centre, a figure size, a
  number inside a drawn text) or of the subject; a number directly before an element noun ("3 circles") must
  equal that noun's count in the trace (nouns that name a subset, "2 squares", must not exceed it);
* every quoted string must be a text the program drew (or an axes title/label);
* every colour word must name a colour of a drawn element (colours are named by hue/lightness buckets).

What this does *not* check: relations ("A is left of B"), shapes words without a number, and anything said
without a number, quote or colour. The subject (a noun phrase the generator makes true by construction) is
trusted as a source of facts.
"""

from __future__ import annotations

import colorsys
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# trace "kind" -> (singular, plural) noun used in captions
KIND_NOUNS: dict[str, tuple[str, str]] = {
    "Rectangle": ("rectangle", "rectangles"),
    "Circle": ("circle", "circles"),
    "Ellipse": ("ellipse", "ellipses"),
    "Polygon": ("polygon", "polygons"),
    "Wedge": ("wedge", "wedges"),
    "Arc": ("arc", "arcs"),
    "Line2D": ("line", "lines"),
    "Line3D": ("3D line", "3D lines"),
    "PathCollection": ("scatter series", "scatter series"),
    "Poly3DCollection": ("3D polygon collection", "3D polygon collections"),
    "FancyArrowPatch": ("arrow", "arrows"),
    "FancyArrow": ("arrow", "arrows"),
}
_TEXT_KINDS = ("Text", "Text3D", "Annotation")
# Nouns that name a subset of some kinds: "2 squares" must not exceed the rectangles, but may be fewer.
_SUBSET_NOUNS = (
    ("square", "squares", ("Rectangle",)),
    ("bar", "bars", ("Rectangle",)),
    ("triangle", "triangles", ("Polygon",)),
    ("curve", "curves", ("Line2D", "Line3D")),
    ("slice", "slices", ("Wedge",)),
)


def _noun_table() -> dict[str, tuple[tuple[str, ...], bool]]:
    """noun (singular and plural, lower case) -> (trace kinds it counts, whether the count must be exact)."""
    table: dict[str, tuple[tuple[str, ...], bool]] = {}
    for one, many in KIND_NOUNS.values():
        kinds = tuple(k for k, v in KIND_NOUNS.items() if v[0] == one)
        table[one.lower()] = table[many.lower()] = (kinds, True)
    for one, many, kinds in _SUBSET_NOUNS:
        table[one] = table[many] = (kinds, False)
    table["shape"] = table["shapes"] = (("Rectangle", "Circle", "Polygon", "Ellipse", "Wedge"), True)
    table["text element"] = table["text elements"] = (_TEXT_KINDS, True)
    return table


_NOUNS = _noun_table()
_NUMBER_WORDS = {
    word: i
    for i, word in enumerate(
        ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
         "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen", "twenty"]
    )
}  # fmt: skip
_QUOTED = re.compile(r"\"([^\"]+)\"|“([^”]+)”|'([^']+)'")
_NUMBER = re.compile(r"(?<![\w.])[-−]?\d+(?:\.\d+)?(?!\w)")
_WORD_NUMBER = re.compile(r"\b(" + "|".join(_NUMBER_WORDS) + r")\b", re.IGNORECASE)
_NOUN_AFTER = re.compile(
    r"^\s+(?:[a-z]+\s+){0,2}?(" + "|".join(sorted(map(re.escape, _NOUNS), key=len, reverse=True)) + r")\b"
)

COLOR_NAMES = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "pink", "brown", "olive")
COLOR_NAMES += ("gray", "black", "white")
_COLOR_WORD = re.compile(
    r"\b(" + "|".join(COLOR_NAMES + ("grey", "violet", "magenta")) + r")\b", re.IGNORECASE
)
_SYNONYMS = {"grey": "gray", "violet": "purple", "magenta": "pink"}


def color_name(hex_color: str) -> str:
    """A basic colour name for ``#rrggbb`` by hue/lightness bucket (e.g. ``#1f77b4`` -> "blue").

    Raises:
        ValueError: the string is not ``#rrggbb``.
    """
    if not re.fullmatch(r"#[0-9a-fA-F]{6}", hex_color or ""):
        raise ValueError(f"not a #rrggbb colour: {hex_color!r}")
    r, g, b = (int(hex_color[i : i + 2], 16) / 255 for i in (1, 3, 5))
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.18:
        return "black"
    if s < 0.15:
        return "white" if v > 0.93 else "gray"
    deg = h * 360
    if deg < 15 or deg >= 345:
        return "brown" if v < 0.55 else ("pink" if s < 0.45 else "red")
    if deg < 42:
        return "brown" if v < 0.65 else "orange"
    if deg < 70:
        return "olive" if v < 0.78 else "yellow"
    if deg < 165:
        return "green"
    if deg < 195:
        return "cyan"
    if deg < 255:
        return "blue"
    if deg < 320:
        return "pink" if v > 0.8 and s < 0.5 else "purple"
    return "pink"


@dataclass
class TraceFacts:
    """What a trace makes true, in the forms captions can state."""

    numbers: set[float] = field(default_factory=set)
    texts: set[str] = field(default_factory=set)
    colors: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(default_factory=dict)  # by trace kind
    n_texts: int = 0

    def count_of(self, kinds: Iterable[str]) -> int:
        """Total count of the given trace kinds (texts count as the number of drawn strings)."""
        kinds = tuple(kinds)
        if kinds == _TEXT_KINDS:
            return self.n_texts
        return sum(self.counts.get(k, 0) for k in kinds)


def numbers(value: Any, n: int) -> list[float] | None:
    """``value`` as a list of ``n`` finite floats, or None (traces are untrusted JSON: check before use)."""
    if not isinstance(value, list | tuple) or len(value) < n:
        return None
    out = value[:n]
    if not all(isinstance(x, int | float) and not isinstance(x, bool) and abs(x) < 1e12 for x in out):
        return None
    return [float(x) for x in out]


def _counts(trace: Mapping[str, Any]) -> dict[str, int]:
    """The trace's element counts by kind, integers only."""
    counts = trace.get("counts", {})
    if not isinstance(counts, Mapping):
        return {}
    return {str(k): v for k, v in counts.items() if isinstance(v, int) and not isinstance(v, bool)}


def _norm_text(s: str) -> str:
    return " ".join(s.replace("$", "").split()).casefold()


def _add_number(out: set[float], x: Any) -> None:
    if isinstance(x, bool) or not isinstance(x, int | float) or x != x or abs(x) > 1e12:
        return
    out.update({float(x), round(float(x), 2), round(float(x), 1), float(round(x))})


def _numbers_in(text: str) -> list[float]:
    found = [float(m.group(0).replace("−", "-")) for m in _NUMBER.finditer(text)]
    return found + [float(_NUMBER_WORDS[m.group(1).lower()]) for m in _WORD_NUMBER.finditer(text)]


def trace_facts(trace: Mapping[str, Any], subject: str = "") -> TraceFacts:
    """Collect the facts of a trace (and of a trusted ``subject`` phrase) that captions may state."""
    f = TraceFacts()
    elements = [e for e in trace.get("elements", []) if isinstance(e, Mapping)]
    f.counts = _counts(trace)
    texts = [str(t) for t in trace.get("texts", [])]
    axes = [a for a in trace.get("axes", []) if isinstance(a, Mapping)]
    for a in axes:
        texts += [str(a.get(k) or "") for k in ("title", "xlabel", "ylabel", "zlabel")]
    texts += [str(e["label"]) for e in elements if e.get("label") and not str(e["label"]).startswith("_")]
    f.texts = {_norm_text(t) for t in texts if t.strip()}
    f.n_texts = len([t for t in trace.get("texts", []) if str(t).strip()])
    for value in [*f.counts.values(), len(axes), len(trace.get("figures", [])), f.n_texts]:
        _add_number(f.numbers, value)
    _add_number(f.numbers, len(trace.get("colors", [])))
    for group in _group_counts(f.counts).values():
        _add_number(f.numbers, group)
    for fig in trace.get("figures", []):
        for x in numbers(fig.get("size_in") if isinstance(fig, Mapping) else None, 2) or []:
            _add_number(f.numbers, x)
    for a in axes:
        for key in ("xlim", "ylim", "zlim"):
            for x in numbers(a.get(key), 2) or []:
                _add_number(f.numbers, x)
    for e in elements:
        _add_number(f.numbers, e.get("n"))
        box = numbers(e.get("bbox"), 4)
        if box is not None:
            for x in box:
                _add_number(f.numbers, x)
            _add_number(f.numbers, (box[0] + box[2]) / 2)
            _add_number(f.numbers, (box[1] + box[3]) / 2)
            _add_number(f.numbers, box[2] - box[0])
            _add_number(f.numbers, box[3] - box[1])
        points = e.get("points")
        for p in points if isinstance(points, list) else []:
            for x in numbers(p, 2) or []:
                _add_number(f.numbers, x)
    for t in [*texts, subject]:
        for x in _numbers_in(t):
            _add_number(f.numbers, x)
    for c in trace.get("colors", []):
        try:
            f.colors.add(color_name(str(c)))
        except ValueError:
            continue  # a malformed colour in an untrusted trace: it simply supports no colour word
    for word in _COLOR_WORD.findall(subject):
        f.colors.add(_SYNONYMS.get(word.lower(), word.lower()))
    return f


def _group_counts(counts: Mapping[str, int]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for kind, n in counts.items():
        if kind in KIND_NOUNS:
            noun = KIND_NOUNS[kind][0]
            groups[noun] = groups.get(noun, 0) + n
    return groups


def _number_ok(x: float, numbers: set[float]) -> bool:
    return any(abs(x - y) <= 0.005 + 0.005 * abs(y) for y in numbers)


@dataclass
class VerifiedCaption:
    """A caption after checking: the sentences kept, and each dropped one with the claim that failed."""

    kept: list[str]
    dropped: list[tuple[str, str]]

    @property
    def text(self) -> str:
        """The kept sentences joined."""
        return " ".join(self.kept)


def split_sentences(caption: str) -> list[str]:
    """Split on sentence ends (a period inside a number such as 2.5 does not split)."""
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"'“(])", caption.strip()) if s.strip()]


def check_sentence(sentence: str, facts: TraceFacts) -> str | None:
    """The first claim of ``sentence`` that the facts do not support (a reason string), or None if all hold."""
    for m in _QUOTED.finditer(sentence):
        label = next(g for g in m.groups() if g is not None)
        if _norm_text(label) not in facts.texts:
            return f"no drawn text {label!r}"
    bare = _QUOTED.sub(" ", sentence)
    for m in list(_NUMBER.finditer(bare)) + list(_WORD_NUMBER.finditer(bare)):
        token = m.group(0)
        x = (
            float(_NUMBER_WORDS[token.lower()])
            if token.lower() in _NUMBER_WORDS
            else float(token.replace("−", "-"))
        )
        noun = _NOUN_AFTER.match(bare[m.end() :].lower())
        if noun is not None and float(x).is_integer():
            kinds, exact = _NOUNS[noun.group(1)]
            have = facts.count_of(kinds)
            if (exact and x != have) or (not exact and not 0 < x <= have):
                return f"{token} {noun.group(1)}: the trace has {have}"
        elif not _number_ok(x, facts.numbers):
            return f"number {token} is not in the trace"
    for word in _COLOR_WORD.findall(bare):
        name = _SYNONYMS.get(word.lower(), word.lower())
        if name not in facts.colors:
            return f"no {name} element in the trace"
    return None


def verify_caption(caption: str, trace: Mapping[str, Any], subject: str = "") -> VerifiedCaption:
    """Check every sentence of ``caption`` against ``trace`` (and the trusted ``subject``); drop failing ones."""
    facts = trace_facts(trace, subject)
    kept, dropped = [], []
    for sentence in split_sentences(caption):
        reason = check_sentence(sentence, facts)
        if reason is None:
            kept.append(sentence)
        else:
            dropped.append((sentence, reason))
    return VerifiedCaption(kept, dropped)


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _quote(s: object) -> str:
    return '"' + " ".join(str(s).replace('"', "'").split()) + '"'


def _centre(e: Mapping[str, Any]) -> tuple[float, float] | None:
    box = numbers(e.get("bbox"), 4)
    if box is None:
        return None
    return round((box[0] + box[2]) / 2, 2), round((box[1] + box[3]) / 2, 2)


def _fmt(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".") if x != int(x) else str(int(x))


def template_caption(trace: Mapping[str, Any], subject: str = "", max_texts: int = 12) -> str:
    """A deterministic caption stating only facts of the trace (and the subject), sentence by sentence."""
    sentences = []
    if subject:
        sentences.append(f"The image shows {subject}.")
    figures, axes = trace.get("figures", []), [a for a in trace.get("axes", []) if isinstance(a, Mapping)]
    size = numbers(figures[0].get("size_in"), 2) if figures and isinstance(figures[0], Mapping) else None
    if size is not None:
        w, h = size
        panels = f"{len(axes)} panel" + ("s" if len(axes) != 1 else "")
        sentences.append(f"The figure is {_fmt(w)} by {_fmt(h)} inches with {panels}.")
    for i, a in enumerate(axes[:4]):
        where = "The panel" if len(axes) == 1 else f"Panel {i + 1}"
        kind = "3D" if a.get("projection") == "3d" else ("polar" if a.get("projection") == "polar" else "")
        if kind:
            sentences.append(f"{where} is a {kind} plot.")
        if a.get("title"):
            sentences.append(f"{where} is titled {_quote(a['title'])}.")
        labels = [
            f"the {k[0]}-axis is labelled {_quote(a[k])}" for k in ("xlabel", "ylabel", "zlabel") if a.get(k)
        ]
        if labels:
            sentences.append(f"In {where.lower()}, {_join(labels)}.")
        xlim, ylim = numbers(a.get("xlim"), 2), numbers(a.get("ylim"), 2)
        if a.get("axis_on") and a.get("projection") == "rectilinear" and xlim and ylim:
            (x0, x1), (y0, y1) = xlim, ylim
            sentences.append(
                f"In {where.lower()}, x runs from {_fmt(round(x0, 2))} to {_fmt(round(x1, 2))} "
                f"and y from {_fmt(round(y0, 2))} to {_fmt(round(y1, 2))}."
            )
        if a.get("legend"):
            sentences.append(f"{where} has a legend.")
    groups = _group_counts(_counts(trace))
    if groups:
        parts = [
            f"{n} {KIND_NOUNS[k][0] if False else _plural(noun, n)}"
            for noun, n in groups.items()
            for k in [""]
        ]
        sentences.append(f"It draws {_join(parts)}.")
    texts = [t for t in trace.get("texts", []) if str(t).strip()]
    if texts:
        shown = ", ".join(_quote(str(t)) for t in texts[:max_texts])
        more = f" and {len(texts) - max_texts} more" if len(texts) > max_texts else ""
        sentences.append(f"The texts drawn are {shown}{more}.")
    elements = [e for e in trace.get("elements", []) if isinstance(e, Mapping)]
    shapes = [
        e
        for e in elements
        if e.get("type") == "patch" and e.get("kind") in ("Circle", "Rectangle", "Polygon")
    ]
    if 0 < len(shapes) <= 8 and len(shapes) == len(elements):
        for e in shapes:  # small pictures: place every shape (what the miniature pipeline has to learn)
            c, colour = _centre(e), e.get("facecolor") or e.get("color")
            if c is None or not colour:
                continue
            noun = KIND_NOUNS[str(e["kind"])][0]
            sentences.append(
                f"A {color_name(str(colour))} {noun} is centred at ({_fmt(c[0])}, {_fmt(c[1])})."
            )
    names = []
    for c in trace.get("colors", []):
        try:
            name = color_name(str(c))
        except ValueError:
            continue
        if name not in names:
            names.append(name)
    if names:
        sentences.append(f"The colours used are {_join(names)}.")
    return " ".join(sentences)


def _plural(noun: str, n: int) -> str:
    for one, many in KIND_NOUNS.values():
        if one == noun:
            return one if n == 1 else many
    return noun
