"""Execution tracer: what a matplotlib program drew (the paper's "tracer log", ChartMimic-style inputs).

Runs inside the sample child: :func:`install` wraps the plotting methods of Axes / Axes3D / Figure to count calls
before user code runs; :func:`build_trace` walks every captured figure afterwards and returns the trace schema of
docs/reward_servers_contract.md (user-drawn elements only). :func:`build_trace` never raises: a failure yields
``{"error": ...}`` and the render is still returned.

    python -c "from reward_servers import tracer; import matplotlib.pyplot as plt; tracer.install(); \\
               plt.bar([1, 2], [3, 4]); print(tracer.build_trace([plt.gcf()])['calls'])"
"""

from __future__ import annotations

import functools
import math
from collections import Counter
from typing import Any

import matplotlib.axes
import matplotlib.axes._base
import matplotlib.collections as mcoll
import matplotlib.colors as mcolors
import matplotlib.figure
import matplotlib.image as mimage
import matplotlib.lines as mlines
import matplotlib.patches as mpatches
import matplotlib.text as mtext
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.artist import Artist

MAX_ELEMENTS = 2000
MAX_POINTS = 64
MAX_TEXTS = 2000
MAX_TEXT_CHARS = 500

# Plotting methods counted in "calls" (by method name). Setters (set_title, ...) are layout, not plotting calls.
PLOT_METHODS = (
    "plot", "scatter", "bar", "barh", "bar_label", "hist", "hist2d", "pie", "fill", "fill_between",
    "fill_betweenx", "errorbar", "stem", "step", "stairs", "boxplot", "violinplot", "imshow", "matshow",
    "pcolor", "pcolormesh", "pcolorfast", "contour", "contourf", "tricontour", "tricontourf", "tripcolor",
    "triplot", "quiver", "quiverkey", "barbs", "streamplot", "text", "annotate", "arrow", "table", "legend",
    "add_patch", "add_line", "add_collection", "add_artist", "add_image", "add_table", "axhline", "axvline",
    "axline", "axhspan", "axvspan", "hlines", "vlines", "stackplot", "hexbin", "loglog", "semilogx",
    "semilogy", "eventplot", "broken_barh", "specgram", "spy", "ecdf",
    # Axes3D
    "plot3D", "plot_surface", "plot_wireframe", "plot_trisurf", "scatter3D", "bar3d", "voxels", "text3D",
    "text2D", "contour3D", "contourf3D", "add_collection3d",
    # Figure
    "suptitle", "supxlabel", "supylabel", "figimage", "colorbar",
)  # fmt: skip

_USER_FORMATTERS = (
    mticker.FixedFormatter, mticker.FuncFormatter, mticker.FormatStrFormatter, mticker.StrMethodFormatter,
)  # fmt: skip
_state = {"depth": 0, "calls": Counter()}


def install() -> None:
    """Wrap plotting methods so that :func:`build_trace` can report calls by method name (outermost calls only)."""
    # add_patch / add_line / ... live on _AxesBase; plot, bar, ... on Axes; Axes3D overrides several.
    classes: list[type] = [
        matplotlib.axes._base._AxesBase,
        matplotlib.axes.Axes,
        matplotlib.figure.FigureBase,
    ]
    try:
        from mpl_toolkits.mplot3d import Axes3D

        classes.append(Axes3D)
    except ImportError:  # mplot3d ships with matplotlib; only a broken install lacks it
        pass
    for cls in classes:
        for name in PLOT_METHODS:
            fn = cls.__dict__.get(name)  # only methods defined on this class: no double wrapping
            if callable(fn) and not getattr(fn, "_cp_traced", False):
                setattr(cls, name, _counted(name, fn))


def reset() -> None:
    """Forget counted calls (used between independent traces in one process, e.g. tests)."""
    _state["calls"] = Counter()
    _state["depth"] = 0


def _counted(name: str, fn: Any) -> Any:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        # why depth: hist() calls bar(), Axes3D.plot calls Axes.plot; count only what the user called.
        if _state["depth"] == 0:
            _state["calls"][name] += 1
        _state["depth"] += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _state["depth"] -= 1

    wrapper._cp_traced = True  # type: ignore[attr-defined]
    return wrapper


def build_trace(figures: list[matplotlib.figure.Figure]) -> dict:
    """Walk ``figures`` (already drawn) and return the trace dict; never raises."""
    try:
        return _Walker().walk(figures)
    except Exception as e:  # noqa: BLE001 - the contract: a tracer failure is reported, the render still returns
        return {"error": f"{type(e).__name__}: {e}"[:500], "calls": dict(_state["calls"])}


class _Walker:
    def __init__(self) -> None:
        self.elements: list[dict] = []
        self.texts: list[str] = []
        self.truncated = False

    def walk(self, figures: list[matplotlib.figure.Figure]) -> dict:
        fig_infos, axes_infos = [], []
        for fi, fig in enumerate(figures):
            w, h = fig.get_size_inches()
            fig_infos.append({"size_in": [_num(w), _num(h)], "dpi": _num(fig.dpi), "n_axes": len(fig.axes)})
            for ax in fig.axes:
                ai = len(axes_infos)
                axes_infos.append(self._axes_info(ax, fi))
                self._walk_axes(ax, ai)
            for suptitle in (fig._suptitle, fig._supxlabel, fig._supylabel):
                if suptitle is not None:
                    self._add_text(suptitle.get_text())
            for art in list(fig.texts) + list(fig.patches) + list(fig.lines) + list(fig.images):
                self._add_element(art, None, None)
            for legend in fig.legends:
                self._legend_texts(legend)
        elements = self.elements
        counts = Counter(e["kind"] for e in elements)
        colors: list[str] = []
        for e in elements:
            for key in ("color", "facecolor", "edgecolor"):
                c = e.get(key)
                if c and c not in colors:
                    colors.append(c)
        trace = {
            "figures": fig_infos,
            "axes": axes_infos,
            "calls": dict(_state["calls"]),
            "elements": elements,
            "texts": self.texts,
            "counts": dict(counts),
            "colors": colors,
        }
        if self.truncated:
            trace["truncated"] = True
        return trace

    # ----------------------------------------------------------------- axes
    def _axes_info(self, ax: matplotlib.axes.Axes, fig_index: int) -> dict:
        grid = None
        ss = ax.get_subplotspec()
        if ss is not None:
            nrows, ncols = ss.get_gridspec().get_geometry()
            grid = [nrows, ncols, ss.rowspan.start, ss.rowspan.stop, ss.colspan.start, ss.colspan.stop]
        name = ax.name if ax.name in ("polar", "3d") else "rectilinear"
        info = {
            "figure": fig_index,
            "bounds": [_num(v) for v in ax.get_position().bounds],
            "projection": name,
            "title": ax.get_title(),
            "xlabel": ax.get_xlabel(),
            "ylabel": ax.get_ylabel(),
            "xlim": [_num(v) for v in ax.get_xlim()],
            "ylim": [_num(v) for v in ax.get_ylim()],
            "grid": grid,
            "axis_on": bool(ax.axison),
            "legend": ax.get_legend() is not None,
        }
        if name == "3d":
            info["zlabel"] = ax.get_zlabel()
            info["zlim"] = [_num(v) for v in ax.get_zlim()]
        return info

    def _walk_axes(self, ax: matplotlib.axes.Axes, ai: int) -> None:
        for title in (ax._left_title, ax.title, ax._right_title):
            self._add_text(title.get_text())
        self._add_text(ax.get_xlabel())
        self._add_text(ax.get_ylabel())
        if ax.name == "3d":
            self._add_text(ax.get_zlabel())
        for axis in (ax.xaxis, ax.yaxis):
            # Tick labels the user set (set_xticklabels gives a FixedFormatter or, since matplotlib 3.9, a
            # FuncFormatter; format strings too); the default Scalar/Log formatters are automatic, not user text.
            if isinstance(axis.get_major_formatter(), _USER_FORMATTERS):
                for label in axis.get_ticklabels():
                    self._add_text(label.get_text())
        auto = {
            id(ax.patch),
            id(ax.xaxis),
            id(ax.yaxis),
            id(ax.title),
            id(ax._left_title),
            id(ax._right_title),
        }
        auto |= {id(s) for s in ax.spines.values()}
        legend = ax.get_legend()
        if legend is not None:
            auto.add(id(legend))
            self._legend_texts(legend)
        if ax.name == "3d":
            auto |= {id(ax.zaxis)}
        for art in ax.get_children():
            if id(art) in auto or not art.get_visible():
                continue
            self._add_element(art, ax, ai)

    def _legend_texts(self, legend: Any) -> None:
        for t in legend.get_texts():
            self._add_text(t.get_text())
        self._add_text(legend.get_title().get_text())

    # -------------------------------------------------------------- elements
    def _add_text(self, s: str | None) -> None:
        if s and s.strip() and len(self.texts) < MAX_TEXTS:
            self.texts.append(s[:MAX_TEXT_CHARS])

    def _add_element(self, art: Artist, ax: matplotlib.axes.Axes | None, ai: int | None) -> None:
        if isinstance(art, mtext.Text):
            if not art.get_text().strip():
                return
            self._add_text(art.get_text())
        if len(self.elements) >= MAX_ELEMENTS:
            self.truncated = True
            return
        kind = type(art).__name__
        module = type(art).__module__
        if "mplot3d" in module:
            etype = "3d"
        elif isinstance(art, mlines.Line2D):
            etype = "line"
        elif isinstance(art, mtext.Text):
            etype = "text"
        elif isinstance(art, mpatches.Patch):
            etype = "patch"
        elif isinstance(art, mcoll.Collection):
            etype = "collection"
        elif isinstance(art, mimage.AxesImage | mimage.FigureImage):
            etype = "image"
        else:
            return  # containers, tables' cells are reported via their own artists, etc.
        label = art.get_label()
        el: dict[str, Any] = {
            "type": etype,
            "kind": kind,
            "axes": ai,
            "color": None,
            "facecolor": None,
            "edgecolor": None,
            "alpha": _num(art.get_alpha()),
            "zorder": _num(art.get_zorder()),
            "label": label if isinstance(label, str) and label and not label.startswith("_") else None,
            "text": art.get_text()[:MAX_TEXT_CHARS] if isinstance(art, mtext.Text) else None,
            "bbox": None,
            "points": None,
            "n": 1,
        }
        points = None
        if isinstance(art, mlines.Line2D):
            el["color"] = _hex(art.get_color())
            xy = np.asarray(art.get_xydata(), dtype=float)
            points = xy
        elif isinstance(art, mtext.Text):
            el["color"] = _hex(art.get_color())
            points = np.asarray([art.get_position()], dtype=float)
        elif isinstance(art, mpatches.Patch):
            el["facecolor"] = _hex(art.get_facecolor()) if art.get_fill() else None
            el["edgecolor"] = _hex(art.get_edgecolor())
            el["color"] = el["facecolor"] or el["edgecolor"]
            if ax is not None and "mplot3d" not in module:
                verts = art.get_verts()  # display coordinates
                points = ax.transData.inverted().transform(verts) if len(verts) else None
        elif isinstance(art, mcoll.Collection):
            el["facecolor"] = _first_hex(art.get_facecolor())
            el["edgecolor"] = _first_hex(art.get_edgecolor())
            el["color"] = el["facecolor"] or el["edgecolor"]
            offsets = np.asarray(art.get_offsets(), dtype=float)
            paths = art.get_paths()
            el["n"] = int(max(len(offsets) if offsets.ndim == 2 else 0, len(paths)))
            if offsets.ndim == 2 and len(offsets) > 1 or (len(offsets) == 1 and not paths):
                points = offsets
            elif paths and "mplot3d" not in module:
                points = np.concatenate([p.vertices for p in paths[:MAX_POINTS]]) if paths else None
        elif isinstance(art, mimage.AxesImage):
            x0, x1, y0, y1 = art.get_extent()
            el["bbox"] = [_num(min(x0, x1)), _num(min(y0, y1)), _num(max(x0, x1)), _num(max(y0, y1))]
        if points is not None and len(points):
            finite = points[np.isfinite(points).all(axis=1)] if points.ndim == 2 else points[:0]
            if len(finite):
                lo, hi = finite.min(axis=0), finite.max(axis=0)
                el["bbox"] = [_num(lo[0]), _num(lo[1]), _num(hi[0]), _num(hi[1])]
                el["points"] = [[_num(x), _num(y)] for x, y in finite[:MAX_POINTS, :2]]
        self.elements.append(el)


def _num(v: Any) -> float | None:
    """A finite float rounded to 4 significant digits, else None (the trace must be strict JSON)."""
    if v is None:
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(f):
        return None
    return float(f"{f:.4g}")


def _hex(c: Any) -> str | None:
    try:
        rgba = mcolors.to_rgba(c)
    except (ValueError, TypeError):
        return None
    if rgba[3] == 0:
        return None
    return mcolors.to_hex(rgba, keep_alpha=False)


def _first_hex(arr: Any) -> str | None:
    a = np.asarray(arr)
    if a.ndim == 2 and len(a):
        return _hex(tuple(a[0]))
    return _hex(arr) if a.ndim == 1 and a.size in (3, 4) else None
