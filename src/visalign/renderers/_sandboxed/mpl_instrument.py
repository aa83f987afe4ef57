"""The ``chart`` instrumentation hook: what a matplotlib program drew, for ChartMimic's code metrics.

Runs inside the sandbox, in the forked child, before the untrusted program (standalone: stdlib,
numpy and matplotlib only, never visalign). ``install()`` patches matplotlib classes; ``collect()``
returns a small JSON-able dict read by ``visalign.metrics.chart_code``:

    {"version": 3,
     "text":   ["Q3 Sales", "Region", ...],            # strings drawn, tick labels excluded
     "layout": [[nrows, ncols, row0, row1, col0, col1], ...],   # one per Axes
     "type":   {"bar": 1, "plot": 2, "polar.plot": 1},  # outermost whitelisted plotting calls
     "color":  {"bar": ["#4c72b0", ...], "imshow": ["RdBu_r"]},  # colours of the artists they made
     "data":   [{"kind": "bar", "axes": 0, "y": [5.0, 2.0, 8.0], "x": [0.0, 1.0, 2.0],
                 "truncated": false}, ...],                 # the plotted values, one entry per series
     "truncated": false}

Version 2 added ``data``; the other keys are as in version 1 (a version-1 trace reads as one without
data series). Version 3: colours are read from the artists' final state and listed once per kind;
everything describes only the figure(s) the image shows; ``squarify`` and ``venn`` calls.

Which figures: the handler tells the hook (:meth:`ChartInstrument.select`) which figures its image
shows (the last one by default); text, layout, calls, colours and data of any other figure (a draft
the program drew first, a figure it saved and closed) are left out, so the metrics and the image
describe the same figure(s). Without a selection (a program that failed) everything is kept.

What is recorded, and where:

- text: ``Text.draw`` (every string matplotlib draws goes through it, whichever renderer and
  whatever path effects: ChartMimic patches the PDF backend's ``draw_text``, which Agg never calls
  and path effects bypass). One item per non-empty line, as ``draw_text`` would see it. Tick labels
  are excluded: ``Tick.__init__`` tags its ``label1`` / ``label2`` (2D, polar and 3D axes all make
  their ticks there). Strings are grouped per figure *render* (``Figure.draw``) and a new render of
  a figure replaces its previous one, so a figure drawn twice (``savefig`` then the final capture,
  ``tight_layout``, ``bbox_inches="tight"``) counts once, in its final state.
- layout: recorded at the same moment (the last render of each figure), for every Axes of the
  figure, its subfigures and inset (child) axes: ``(nrows, ncols, row_start, row_end, col_start,
  col_end)`` of its SubplotSpec in its GridSpec, ends inclusive (ChartMimic's definition). Axes
  without a SubplotSpec (``fig.add_axes``, insets, colorbars of such axes) use the fallback
  ``(0, 0, top, bottom, left, right)``: nrows = ncols = 0 marks "not a grid cell" and the edges are
  the axes' position in tenths of the figure, rows counted from the top, so they only ever match an
  axes placed at about the same spot.
- type: calls of the whitelisted Axes / Axes3D methods in :data:`PLOT_METHODS`, counted only when no
  other whitelisted call is running (``hist`` → ``bar``, ``errorbar`` → ``plot``, ``boxplot`` →
  ``bxp`` → ``plot`` count once, as the outer call). Calls on non-rectilinear axes are named after
  the projection: ``polar.plot``, ``3d.scatter``. Colorbars draw their gradient with
  ``pcolormesh``: that is matplotlib's doing, not the program's, and is not counted. Library calls
  that draw a chart of their own kind count as that kind, and the calls they make inside do not:
  ``squarify.plot`` (kind ``squarify``, a treemap, drawn with ``bar``) and matplotlib-venn's
  ``venn2`` / ``venn3`` (and their ``_unweighted`` forms: kind ``venn``). Names are recorded as
  called (``matshow``, ``barh``); the metrics map them to the kinds a reader sees.
- color: for each counted call, the distinct colours of the artists it made (lines: colour;
  patches: face, or edge when the face is transparent; collections: face colours, or edge colours
  when faces are transparent), as ``#rrggbb`` without alpha, or the colormap name when the artist
  is colour-mapped (an anonymous ``ListedColormap`` from ``colors=[...]`` gives its colours).
  They are read when the figure is drawn for its capture (its last drawing), so colours the program
  set after the call (``bar.set_color``, ``patch.set_facecolor``) count. Each distinct colour is
  listed once per kind, in the order first seen.

- data: the values plotted by each counted call of :data:`DATA_METHODS` on 2D (rectilinear or polar)
  axes, recorded when the call returns, in calling order. One series per ``bar`` / ``barh`` call
  (``y``: the bar heights, widths for ``barh``, as passed (``bottom`` / ``left`` not added);
  ``x``: the bar centres along the other axis), per line of ``plot`` / ``loglog`` / ``semilogx`` /
  ``semilogy`` / ``step`` (``x``, ``y``: its data after unit conversion: categories and dates become
  numbers), per ``scatter`` call (``x``, ``y``: its offsets) and per ``pie`` call (``y``: the wedge
  sizes as fractions of the full circle, so ``pie([1, 2, 3])`` and ``pie([10, 20, 30])`` record the same;
  no ``x``). ``axes`` numbers the Axes in the order they first received a recorded series.
  Non-finite values (NaN, inf, masked points) are recorded as ``null``. Calls whose data cannot be
  read are skipped (counted in ``errors``).

Everything is capped (:data:`MAX_ITEMS` strings and layout rows, :data:`MAX_COLORS` colours,
:data:`MAX_COLORS_PER_CALL` per call, :data:`MAX_SERIES` data series of at most
:data:`MAX_VALUES` values per coordinate and :data:`MAX_DATA_VALUES` numbers in all; ``truncated``
says so, and a series cut short carries its own ``truncated``).
The program shares this process and can tamper with all of it: the caller treats the result as
untrusted data and validates it.
"""

from __future__ import annotations

import functools
import math
import re

MAX_ITEMS = 2000          # strings and layout rows (each) in one trace
MAX_COLORS = 500          # colours in one trace (the parent matches them in O(n³))
MAX_TEXT_LEN = 500        # characters kept of one string
MAX_COLORS_PER_CALL = 100  # distinct colours kept from one plotting call
MAX_KINDS = 200           # distinct call kinds
MAX_CALLS = 20_000        # counted plotting calls kept (their artists are read again at each capture)
MAX_SERIES = 200          # data series in one trace
MAX_VALUES = 1000         # values kept per coordinate of one series
MAX_DATA_VALUES = 100_000  # numbers (x and y together) in all the data series of one trace
_MAX_ARTISTS_PER_CALL = 20_000

# Whitelisted plotting methods of ``matplotlib.axes.Axes`` (pyplot's wrappers call these).
PLOT_METHODS: tuple[str, ...] = (
    # lines
    "plot", "loglog", "semilogx", "semilogy", "step", "errorbar", "stem", "stairs", "ecdf",
    "hlines", "vlines", "axhline", "axvline", "axline", "eventplot",
    # areas and spans
    "fill", "fill_between", "fill_betweenx", "stackplot", "axhspan", "axvspan",
    # bars and distributions
    "bar", "barh", "grouped_bar", "broken_barh", "hist", "hist2d", "pie", "scatter",
    "boxplot", "bxp", "violinplot", "violin",
    # grids, images and fields
    "imshow", "matshow", "pcolor", "pcolormesh", "pcolorfast", "contour", "contourf", "hexbin", "spy",
    "tricontour", "tricontourf", "tripcolor", "triplot", "quiver", "barbs", "streamplot",
    # signal plots and tables
    "specgram", "psd", "acorr", "xcorr", "table",
)
# Whitelisted methods of ``mpl_toolkits.mplot3d.Axes3D`` (aliases map to their canonical name).
PLOT_METHODS_3D: tuple[str, ...] = (
    "plot", "scatter", "bar", "bar3d", "plot_surface", "plot_wireframe", "plot_trisurf", "contour",
    "contourf", "tricontour", "tricontourf", "quiver", "voxels", "errorbar", "stem", "fill_between",
    "plot3D", "scatter3D", "contour3D", "contourf3D",
)
# Methods whose plotted values are recorded under ``data`` (on 2D axes only).
DATA_METHODS: tuple[str, ...] = ("bar", "barh", "plot", "loglog", "semilogx", "semilogy", "step", "scatter", "pie")
_ALIASES = {"plot3D": "plot", "scatter3D": "scatter", "contour3D": "contour", "contourf3D": "contourf"}
_TICK_LABEL_TAG = "_visalign_tick_label"
_FIGURE_KEY = "_visalign_figure_key"
_AXES_KEY = "_visalign_axes_key"


class ChartInstrument:
    """Records text, layout, plotting calls, colours and plotted data of one program (one forked child).

    Example (what the handler does in the child):
        >>> hook = ChartInstrument()
        >>> hook.install()                                    # doctest: +SKIP
        >>> exec(program)                                     # doctest: +SKIP
        >>> hook.collect()["type"]                            # doctest: +SKIP
        {'bar': 1}
    """

    def __init__(self) -> None:
        self.depth = 0                      # > 0 while a whitelisted (or suppressed) call runs
        self.calls: list[dict] = []         # counted calls: kind, figure key, artists, colours
        self.truncated = False
        self.errors = 0                     # our own failures while recording (never raised)
        self.renders: dict[int, tuple[list[str], list[list[int]]]] = {}  # figure key → last render
        self.data: list[dict] = []          # plotted series, in calling order (with their figure key)
        self.selected: set[int] | None = None  # keys of the figures the image shows (None: all)
        self._inner: list | None = None     # results of the calls a library call makes inside
        self.n_values = 0                   # numbers in ``data``
        self._next_axes = 0
        self._stack: list[dict[int, list[str]]] = []
        self._next_key = 0
        self.installed = False

    # ---- installation ----------------------------------------------------------------------------

    def install(self) -> None:
        """Patch matplotlib; idempotent. Never raises on a missing optional piece (mplot3d)."""
        if self.installed:
            return
        self.installed = True
        from matplotlib import axis as maxis
        from matplotlib import text as mtext
        from matplotlib.axes import Axes
        from matplotlib.figure import Figure

        self._patch_text(mtext.Text)
        self._patch_ticks(maxis.Tick)
        self._patch_figure(Figure)
        for name in PLOT_METHODS:
            self._wrap_method(Axes, name)
        try:
            from mpl_toolkits.mplot3d import Axes3D
        except Exception:
            Axes3D = None
        if Axes3D is not None:
            for name in PLOT_METHODS_3D:
                self._wrap_method(Axes3D, name)
        for module, names, kind in (("squarify", ("plot",), "squarify"),
                                    ("matplotlib_venn", ("venn2", "venn3", "venn2_unweighted",
                                                         "venn3_unweighted"), "venn")):
            try:
                mod = __import__(module)
            except Exception:
                continue
            for name in names:
                if callable(getattr(mod, name, None)):
                    setattr(mod, name, self._library_call(getattr(mod, name), kind))
        try:
            from matplotlib.colorbar import Colorbar
        except Exception:
            Colorbar = None
        if Colorbar is not None:  # the colorbar's own pcolormesh is not a plotting call of the program
            for name in ("_draw_all", "_add_solids", "_add_solids_patches"):
                if name in Colorbar.__dict__:
                    setattr(Colorbar, name, self._suppressed(Colorbar.__dict__[name]))

    def _patch_text(self, text_cls) -> None:
        orig = text_cls.draw
        inst = self

        @functools.wraps(orig)
        def draw(text, renderer, *args, **kwargs):
            if inst._stack:
                try:
                    inst._record_text(text)
                except Exception:
                    inst.errors += 1
            return orig(text, renderer, *args, **kwargs)

        text_cls.draw = draw

    def _patch_ticks(self, tick_cls) -> None:
        orig = tick_cls.__init__

        @functools.wraps(orig)
        def __init__(tick, *args, **kwargs):
            orig(tick, *args, **kwargs)
            for label in (getattr(tick, "label1", None), getattr(tick, "label2", None)):
                if label is not None:
                    setattr(label, _TICK_LABEL_TAG, True)

        tick_cls.__init__ = __init__

    def _patch_figure(self, figure_cls) -> None:
        orig = figure_cls.draw
        inst = self

        @functools.wraps(orig)
        def draw(fig, renderer, *args, **kwargs):
            texts: dict[int, list[str]] = {}
            inst._stack.append(texts)
            try:
                return orig(fig, renderer, *args, **kwargs)
            finally:
                inst._stack.pop()
                try:
                    key = inst._figure_key(fig)
                    lines = [line for group in texts.values() for line in group][:MAX_ITEMS]
                    inst.renders[key] = (lines, _figure_layout(fig))
                    for call in inst.calls:  # colours as drawn: what the program set after the call too
                        if call["figure"] == key:
                            call["colors"] = _call_colors(call["artists"])
                except Exception:
                    inst.errors += 1

        figure_cls.draw = draw

    def _wrap_method(self, cls, name: str) -> None:
        func = cls.__dict__.get(name)
        if func is None or not callable(func):
            return
        base = _ALIASES.get(name, name)
        inst = self

        @functools.wraps(func)
        def wrapper(ax, *args, **kwargs):
            if inst.depth:  # called from inside another plotting call: not the program's own call
                result = func(ax, *args, **kwargs)
                if inst._inner is not None and len(inst._inner) < _MAX_ARTISTS_PER_CALL:
                    inst._inner.append(result)
                return result
            inst.depth += 1
            try:
                result = func(ax, *args, **kwargs)
            finally:
                inst.depth -= 1
            try:
                inst._record_call(_kind(ax, base), result, _root_figure(ax))
            except Exception:
                inst.errors += 1
            if base in DATA_METHODS:
                try:
                    inst._record_data(ax, base, result)
                except Exception:
                    inst.errors += 1
            return result

        setattr(cls, name, wrapper)

    def _library_call(self, func, kind: str):
        """Wrap a library's chart function (``squarify.plot``, ``venn3``): one call of ``kind``,
        whose artists are those of the plotting calls it makes inside, or those it returns."""
        inst = self

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            if inst.depth:
                return func(*args, **kwargs)
            inst.depth += 1
            outer, inst._inner = inst._inner, []
            try:
                result = func(*args, **kwargs)
            finally:
                inst.depth -= 1
                inner, inst._inner = inst._inner, outer
            try:
                patches = getattr(result, "patches", None)  # a VennDiagram: its region patches
                made = [p for p in patches if p is not None] if isinstance(patches, list) else inner
                inst._record_call(kind, made, _owner_figure(made))
            except Exception:
                inst.errors += 1
            return result

        return wrapper

    def _figure_key(self, fig) -> int:
        """A key of our own for a (root) figure: ids of closed figures get reused."""
        key = getattr(fig, _FIGURE_KEY, None)
        if not isinstance(key, int) or isinstance(key, bool):
            key = self._next_key = self._next_key + 1
            setattr(fig, _FIGURE_KEY, key)
        return key

    def _suppressed(self, func):
        inst = self

        @functools.wraps(func)
        def wrapper(*args, **kwargs):
            inst.depth += 1
            try:
                return func(*args, **kwargs)
            finally:
                inst.depth -= 1

        return wrapper

    # ---- recording -------------------------------------------------------------------------------

    def _record_text(self, text) -> None:
        if getattr(text, _TICK_LABEL_TAG, False) or not text.get_visible():
            return
        s = text.get_text()
        if not isinstance(s, str) or not s:
            return
        current = self._stack[-1]
        if id(text) in current or len(current) >= MAX_ITEMS:  # the same Text twice in one render
            return
        current[id(text)] = [line[:MAX_TEXT_LEN] for line in s.split("\n") if line.strip()]

    def _record_call(self, kind: str, result, fig) -> None:
        if len(self.calls) >= MAX_CALLS:
            self.truncated = True
            return
        artists = list(_artists(result))
        key = self._figure_key(fig) if fig is not None else None
        self.calls.append({"kind": kind, "figure": key, "artists": artists,
                           "colors": _call_colors(artists, at_call=True)})

    def _record_data(self, ax, base: str, result) -> None:
        kind = _kind(ax, base)
        if kind.startswith("3d."):  # projected 3D data: not recorded
            return
        series = _series(base, result)
        if not series:
            return
        key = getattr(ax, _AXES_KEY, None)
        if not isinstance(key, int) or isinstance(key, bool):
            key = self._next_axes
            self._next_axes += 1
            setattr(ax, _AXES_KEY, key)
        for channels in series:
            if len(self.data) >= MAX_SERIES:
                self.truncated = True
                return
            entry: dict = {"kind": kind, "axes": key, "_figure": self._figure_key(_root_figure(ax))}
            cut = False
            for name in ("x", "y"):
                values = channels.get(name)
                if values is None:
                    continue
                room = min(MAX_VALUES, MAX_DATA_VALUES - self.n_values)
                if len(values) > room:
                    values, cut = values[:max(room, 0)], True
                entry[name] = _json_floats(values)
                self.n_values += len(entry[name])
            entry["truncated"] = cut
            if cut:
                self.truncated = True
            self.data.append(entry)

    def select(self, figures) -> None:
        """Keep only what the given figures (those the image shows) drew."""
        self.selected = {self._figure_key(_root_figure(f) or f) for f in figures}

    def _shown(self, key) -> bool:
        return self.selected is None or key in self.selected

    def collect(self) -> dict:
        """The JSON-able record of the shown figures, as last drawn (see the module docstring)."""
        text: list[str] = []
        layout: list[list[int]] = []
        for key, (lines, rows) in self.renders.items():
            if self._shown(key):
                text.extend(lines)
                layout.extend(rows)
        types: dict[str, int] = {}
        colors: dict[str, list[str]] = {}
        seen: dict[str, set[str]] = {}
        n_colors = 0
        truncated = self.truncated or len(text) > MAX_ITEMS or len(layout) > MAX_ITEMS
        for call in self.calls:
            if not self._shown(call["figure"]):
                continue
            kind = call["kind"]
            if kind not in types and len(types) >= MAX_KINDS:
                truncated = True
                continue
            types[kind] = types.get(kind, 0) + 1
            for c in call["colors"]:
                if c in seen.setdefault(kind, set()):
                    continue
                if n_colors >= MAX_COLORS:
                    truncated = True
                    break
                seen[kind].add(c)
                colors.setdefault(kind, []).append(c)
                n_colors += 1
        data = [{k: v for k, v in d.items() if k != "_figure"} for d in self.data if self._shown(d["_figure"])]
        return {"version": 3, "text": text[:MAX_ITEMS], "layout": layout[:MAX_ITEMS],
                "type": types, "color": colors, "data": data,
                "truncated": bool(truncated), "errors": self.errors}


# ---- helpers -------------------------------------------------------------------------------------

def _safe_name(name: object) -> str:
    """A name the validator accepts: letters, digits and ``_.+-``, at most 60 characters."""
    return re.sub(r"[^A-Za-z0-9_.+\-]", "_", str(name))[:60]


def _kind(ax, base: str) -> str:
    proj = getattr(ax, "name", "rectilinear")
    if not isinstance(proj, str) or proj == "rectilinear":
        return base
    return f"{_safe_name(proj)}.{base}"


def _root_figure(artist):
    """The top-level Figure an Axes or artist belongs to (not a SubFigure), or None."""
    try:
        fig = artist.get_figure(root=True)  # matplotlib >= 3.10
    except TypeError:
        fig = artist.get_figure() if hasattr(artist, "get_figure") else getattr(artist, "figure", None)
        for _ in range(10):
            parent = getattr(fig, "_parent", None)
            if parent is None or parent is fig:
                break
            fig = parent
    except Exception:
        return None
    return fig


def _owner_figure(artists):
    """The figure of the first artist in ``artists`` (a call's results) that has one."""
    for artist in _artists(artists):
        fig = _root_figure(artist)
        if fig is not None:
            return fig
    return None


def _call_colors(artists, at_call: bool = False) -> list[str]:
    """The distinct colours of a call's artists, in order first seen, at most MAX_COLORS_PER_CALL.

    ``at_call``: read right after the plotting call, before the program finished the figure. 3D
    collections are skipped then: their ``get_facecolor`` projects and depth-sorts them with the axes'
    view of that moment, and that state would survive into the real drawing (a ``bar3d`` chart changed
    its pixels when instrumented); they are read when the figure is drawn for its capture.
    """
    colors: list[str] = []
    seen: set[str] = set()
    for artist in _artists(artists):
        if at_call and type(artist).__module__.startswith("mpl_toolkits.mplot3d"):
            continue
        for c in _artist_colors(artist):
            if c not in seen:
                seen.add(c)
                colors.append(c)
                if len(colors) >= MAX_COLORS_PER_CALL:
                    return colors
    return colors


def _all_axes(fig, depth: int = 0) -> list:
    if depth > 5:
        return []
    out = []
    todo = list(getattr(fig, "axes", []))
    while todo and len(out) < MAX_ITEMS:
        ax = todo.pop(0)
        out.append(ax)
        todo.extend(getattr(ax, "child_axes", []) or [])
    for sub in getattr(fig, "subfigs", []) or []:
        out.extend(_all_axes(sub, depth + 1))
    return out


def _figure_layout(fig) -> list[list[int]]:
    rows: list[list[int]] = []
    for ax in _all_axes(fig)[:MAX_ITEMS]:
        spec = ax.get_subplotspec() if hasattr(ax, "get_subplotspec") else None
        if spec is not None:
            nrows, ncols = spec.get_gridspec().get_geometry()
            rows.append([int(nrows), int(ncols), int(spec.rowspan.start), int(spec.rowspan.stop) - 1,
                         int(spec.colspan.start), int(spec.colspan.stop) - 1])
        else:
            x0, y0, x1, y1 = (float(v) for v in ax.get_position(original=True).extents)
            if all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                rows.append([0, 0, round((1 - y1) * 10), round((1 - y0) * 10), round(x0 * 10), round(x1 * 10)])
    return rows


def _artists(result):
    """The artists in a plotting call's return value (lists, tuples, containers, dicts, sets)."""
    import numpy as np
    from matplotlib.artist import Artist

    stack = [(result, 0)]
    n = 0
    while stack and n < _MAX_ARTISTS_PER_CALL:
        obj, d = stack.pop()
        if isinstance(obj, Artist):
            n += 1
            yield obj
            continue  # a ContourSet or a Container-like artist is one artist
        if d > 4 or isinstance(obj, (str, bytes, np.ndarray)) or obj is None:
            continue
        if isinstance(obj, dict):
            items = list(obj.values())
        elif isinstance(obj, (list, tuple)):
            items = list(obj)
        elif hasattr(obj, "lines") and hasattr(obj, "arrows"):  # StreamplotSet
            items = [obj.lines, obj.arrows]
        elif hasattr(obj, "wedges"):  # PieContainer (matplotlib >= 3.11): the wedges, not the labels
            items = [obj.wedges]
        else:
            continue
        stack.extend((item, d + 1) for item in reversed(items))


def _cmap_colors(cmap) -> list[str]:
    from matplotlib.colors import ListedColormap, to_hex

    name = getattr(cmap, "name", None)
    if isinstance(cmap, ListedColormap) and (not isinstance(name, str) or name == "from_list"):
        colors = cmap.colors
        try:
            return [to_hex(c, keep_alpha=False) for c in list(colors)[:MAX_COLORS_PER_CALL]]
        except (ValueError, TypeError):
            return []
    return [_safe_name(name)] if name else []


def _rows_to_hex(rgba) -> list[str]:
    import numpy as np
    from matplotlib.colors import to_hex

    arr = np.asarray(rgba, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] not in (3, 4) or arr.shape[0] == 0:
        return []
    if arr.shape[1] == 4:
        arr = arr[arr[:, 3] > 0]
    if arr.shape[0] == 0:
        return []
    rgb = np.clip(np.round(arr[:, :3] * 255), 0, 255).astype(np.int64)
    _, first = np.unique(rgb, axis=0, return_index=True)
    return [to_hex(tuple(rgb[i] / 255.0)) for i in sorted(first)[:MAX_COLORS_PER_CALL]]


def _artist_colors(artist) -> list[str]:
    from matplotlib.collections import Collection
    from matplotlib.colors import to_rgba
    from matplotlib.image import AxesImage, _ImageBase
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.text import Text

    if isinstance(artist, Text):
        return []
    if isinstance(artist, (Collection, _ImageBase)):
        arr = artist.get_array() if hasattr(artist, "get_array") else None
        if arr is not None:
            if isinstance(artist, AxesImage) and getattr(arr, "ndim", 2) == 3:
                return []  # an RGB(A) image: no colormap, colours are data
            return _cmap_colors(artist.get_cmap())
        if isinstance(artist, _ImageBase):
            return []
        faces = _rows_to_hex(artist.get_facecolor())
        return faces or _rows_to_hex(artist.get_edgecolor())
    if isinstance(artist, Line2D):
        color = artist.get_color()
        if isinstance(color, str) and color.lower() == "none":
            color = artist.get_markerfacecolor()
        try:
            return _rows_to_hex(to_rgba(color))
        except (ValueError, TypeError):
            return []
    if isinstance(artist, Patch):
        face = _rows_to_hex(artist.get_facecolor()) if artist.get_fill() else []
        return face or _rows_to_hex(artist.get_edgecolor())
    return []


def _floats(values):
    """A flat float array from plotted values, NaN where masked; raises on non-numbers."""
    import numpy as np

    arr = np.ma.asarray(values)
    arr = np.ma.filled(arr.astype(float), np.nan)
    return arr.reshape(-1)


def _json_floats(arr) -> list:
    """Python floats, ``None`` for NaN and ±inf (JSON has neither)."""
    return [float(v) if math.isfinite(v) else None for v in arr.tolist()]


def _series(base: str, result) -> list[dict]:
    """The data series a call of :data:`DATA_METHODS` drew: ``[{"x": array, "y": array}, ...]``.

    Arrays may be longer than :data:`MAX_VALUES` (the caller cuts them). Raises on anything odd;
    the caller counts that as an error and records nothing for the call.
    """
    import numpy as np
    from matplotlib.container import BarContainer
    from matplotlib.lines import Line2D
    from matplotlib.patches import Wedge

    if base in ("bar", "barh"):
        if not isinstance(result, BarContainer):
            return []
        patches = list(result.patches)[:MAX_VALUES + 1]
        horizontal = getattr(result, "orientation", None) == "horizontal" or base == "barh"
        values = getattr(result, "datavalues", None)
        try:
            y = _floats(values)[:MAX_VALUES + 1] if values is not None else None
        except (TypeError, ValueError):
            y = None
        if y is None or y.size != min(len(result.patches), MAX_VALUES + 1):  # datavalues missing or not numbers: the patches
            y = np.array([p.get_width() if horizontal else p.get_height() for p in patches], dtype=float)
        if horizontal:
            x = [p.get_y() + p.get_height() / 2 for p in patches]
        else:
            x = [p.get_x() + p.get_width() / 2 for p in patches]
        return [{"x": np.array(x, dtype=float), "y": y}]
    if base == "scatter":
        offsets = _floats(result.get_offsets()[:MAX_VALUES + 1])
        if offsets.size % 2:
            return []
        xy = offsets.reshape(-1, 2)
        return [{"x": xy[:, 0], "y": xy[:, 1]}]
    if base == "pie":
        wedges = [a for a in _artists(result) if isinstance(a, Wedge)]
        fractions = np.array([(w.theta2 - w.theta1) / 360.0 for w in wedges], dtype=float)
        return [{"y": fractions}] if wedges else []
    out = []  # plot, loglog, semilogx, semilogy, step: one series per line
    for line in _artists(result):
        if isinstance(line, Line2D):
            xy = _floats(line.get_xydata()[:MAX_VALUES + 1])
            if xy.size % 2:
                continue
            xy = xy.reshape(-1, 2)
            out.append({"x": xy[:, 0], "y": xy[:, 1]})
        if len(out) > MAX_SERIES:
            break
    return out
