"""ChartMimic's low-level chart-code metrics (text, layout, type, colour), done right, plus a data score.

ChartMimic (Yang et al., 2024) scores generated chart code by what it *draws*: the strings, the
subplot grid, the plotting calls and their colours, each as precision / recall / F1 against the
reference program. Here both programs run once each in the sandboxed matplotlib renderer with the
``chart`` instrument (``renderers/_sandboxed/mpl_instrument.py`` documents what is recorded and
how); :func:`compare_chart_traces` compares the two traces as a pure function.

Differences from the original, on purpose:

- one sandboxed execution per program serves all four metrics (and the image), with a timeout;
  the original re-runs each program once per metric in a fresh ``python3``, without a timeout;
- no state crosses samples (each program runs in a fresh fork): the original's type evaluator kept
  the previous sample's numbers when a program logged nothing;
- empty sides are defined (see below) and nothing divides by zero (the original's colour metric
  does on an empty reference);
- colours are matched one-to-one with the Hungarian algorithm
  (:func:`scipy.optimize.linear_sum_assignment`), exact and polynomial; the original enumerates
  permutations (factorial) and so first thins more than 10 colours greedily, which we do not need;
- the trace is untrusted data (the program shares the process that records it): it is validated
  (types, lengths) and never evaluated; the original reads result files back with ``eval()``.

Kinds a reader sees. The trace names calls as the program made them; the scores compare what a
reader of the chart sees. Type counts calls by :func:`reader_kind` (:data:`READER_KINDS`:
``matshow`` draws the same image as ``imshow``, ``loglog`` / ``semilogx`` / ``semilogy`` / ``step``
draw lines as ``plot`` does, ``pcolormesh`` / ``pcolorfast`` the grid ``pcolor`` draws, seaborn's
``bxp`` / ``violin`` the ``boxplot`` / ``violinplot``); ``bar`` and ``barh`` stay two types (the
orientation is part of the chart type). Colours are grouped by :func:`color_group`
(:data:`COLOR_GROUPS`): the reader kinds, with ``bar`` and ``barh`` together, ``fill_between`` and
``fill_betweenx`` together and ``errorbar`` with the lines, as ChartMimic's colour evaluator groups
them, so a chart-type error is not punished twice; every other kind stays apart (a line colour
never matches a bar colour). Projections stay apart too (``polar.bar`` is not ``bar``).

The colour unit: **each distinct colour once per colour group** (a hex colour or a colormap name),
whatever the number of calls or artists that drew it: eighteen ``imshow(cmap="viridis")`` panels
are one colour, as one is. ChartMimic counts the same way (a set of (call, colour) pairs).

Scores. Text and layout: multiset match, matched = Σ_item min(count_pred, count_ref),
P = matched / |pred|, R = matched / |ref|. Type: matched = Σ_kind min(n_pred, n_ref) over reader
kinds, P = matched / Σ n_pred, R = matched / Σ n_ref. Colour: within each colour group, the optimal
one-to-one matching of predicted to reference colours maximising the total similarity, where two
hex colours score ``max(0, 1 - ΔE2000 / 100)`` (CIEDE2000 in CIELAB, D65) and colormap names score
1 when equal, else 0; matched = the sum of matched similarities over groups, P = matched / #pred
colours, R = matched / #ref colours (distinct per group). F1 = 2PR / (P + R), 0 when P + R = 0.

Empty sides: both empty → P = R = F1 = 1 (nothing to draw, nothing drawn); one side empty → 0.
A missing or malformed predicted trace scores 0 everywhere; a missing or malformed reference trace
raises ``ValueError`` (a broken reference is a dataset bug, not the model's fault).

Data (not in ChartMimic, whose four scores ignore the plotted values): ``"data"``, a similarity in
[0, 1] between the series the two programs plotted (bar heights, line and scatter coordinates, pie
fractions; see :func:`series_similarity` for one pair of series and :func:`compare_chart_traces`
for the whole trace). It is F1-shaped like the others: series are matched one-to-one within each
call kind, so extra and missing series cost alike, and the both-empty / one-empty rules above hold.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from scipy.optimize import linear_sum_assignment

if TYPE_CHECKING:
    from ..renderers.base import Renderer, RenderResult

CHART_INSTRUMENT = "chart"
METRIC_GROUPS: tuple[str, ...] = ("text", "layout", "type", "color")
METRIC_KEYS: tuple[str, ...] = tuple(f"{g}_{s}" for g in METRIC_GROUPS for s in ("precision", "recall", "f1"))
F1_KEYS: tuple[str, ...] = tuple(f"{g}_f1" for g in METRIC_GROUPS)
DATA_KEY = "data"
SCORE_KEYS: tuple[str, ...] = (*METRIC_KEYS, DATA_KEY)  # everything compare_chart_traces returns

# Limits of a valid trace (the instrument caps itself at these; anything beyond is hostile).
MAX_ITEMS = 2000   # strings, layout rows
MAX_COLORS = 500   # colours, all kinds together (keeps the O(n³) matching well under a second)
MAX_STRING = 1000
MAX_KINDS = 200
MAX_SERIES = 200   # data series
MAX_VALUES = 1000  # values per coordinate of one series
# Kinds (after any ``polar.`` prefix) whose values are lengths from a zero baseline, and those
# whose x coordinates are data too (for the others only y is compared: see series_similarity).
ZERO_BASED_KINDS = frozenset({"bar", "barh", "pie"})
XY_KINDS = frozenset({"scatter"})
# Calls that draw what another call draws (for type, data and colour): name → the reader's kind.
READER_KINDS: dict[str, str] = {
    "matshow": "imshow", "loglog": "plot", "semilogx": "plot", "semilogy": "plot", "step": "plot",
    "pcolormesh": "pcolor", "pcolorfast": "pcolor", "bxp": "boxplot", "violin": "violinplot",
}
# Reader kinds whose colours are matched together (ChartMimic's colour groups): kind → group.
COLOR_GROUPS: dict[str, str] = {"barh": "bar", "fill_betweenx": "fill_between", "errorbar": "plot"}
_HEX = re.compile(r"#[0-9a-f]{6}")
_NAME = re.compile(r"[A-Za-z0-9_.+\-]{1,100}")
_LAYOUT_BOUND = 1_000_000


@dataclass(frozen=True)
class DataSeries:
    """One plotted series of a ``chart`` trace (validated): NaN marks a missing value.

    Attributes:
        kind: the plotting call's kind, as in ``ChartTrace.types`` (``bar``, ``polar.plot``, ...).
        y: the values: bar heights (widths for ``barh``), line / scatter y, pie fractions.
        x: the other coordinate (bar centres, line / scatter x), or None (pie).
        axes: the Axes' number in the trace (not used for scoring).
        truncated: the instrument cut the series short.
    """

    kind: str
    y: tuple[float, ...]
    x: tuple[float, ...] | None = None
    axes: int = 0
    truncated: bool = False


@dataclass(frozen=True)
class ChartTrace:
    """A validated ``chart`` trace (see ``mpl_instrument.py``): what one program drew.

    Attributes:
        text: strings drawn (tick labels excluded), one per line.
        layout: one ``(nrows, ncols, row_start, row_end, col_start, col_end)`` per Axes.
        types: number of outermost whitelisted plotting calls per kind.
        colors: per call kind, the colours of its artists (``#rrggbb``) or colormap names.
        truncated: the instrument hit its size caps.
        data: the plotted series, in calling order (empty for a version-1 trace).
    """

    text: tuple[str, ...]
    layout: tuple[tuple[int, ...], ...]
    types: dict[str, int]
    colors: dict[str, tuple[str, ...]]
    truncated: bool = False
    data: tuple[DataSeries, ...] = ()


# ---- validation ----------------------------------------------------------------------------------

def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _values(entry: dict, name: str) -> tuple[float, ...]:
    values = entry[name]
    if not isinstance(values, list) or len(values) > MAX_VALUES:
        raise ValueError(f"trace field 'data' must hold lists of at most {MAX_VALUES} values")
    if not all(v is None or type(v) in (int, float) for v in values):
        raise ValueError("trace field 'data' must hold numbers or null")
    try:
        arr = np.array([math.nan if v is None else v for v in values], dtype=float)
    except (OverflowError, TypeError, ValueError):
        raise ValueError("trace field 'data' must hold numbers or null") from None
    arr[~np.isfinite(arr)] = math.nan
    return tuple(arr.tolist())


def _validate_data(data: object) -> tuple[DataSeries, ...]:
    if not isinstance(data, list) or len(data) > MAX_SERIES:
        raise ValueError(f"trace field 'data' must be a list of at most {MAX_SERIES} series")
    out = []
    for entry in data:
        if not (isinstance(entry, dict) and isinstance(entry.get("kind"), str) and _NAME.fullmatch(entry["kind"])
                and "y" in entry):
            raise ValueError("trace field 'data' must hold dicts with a call name 'kind' and values 'y'")
        axes = entry.get("axes", 0)
        if not (_is_int(axes) and 0 <= axes <= _LAYOUT_BOUND):
            raise ValueError("trace field 'data' must number its axes with small non-negative integers")
        x = _values(entry, "x") if entry.get("x") is not None else None
        out.append(DataSeries(entry["kind"], _values(entry, "y"), x, axes, entry.get("truncated") is True))
    return tuple(out)


def validate_chart_trace(trace: object) -> ChartTrace:
    """Check an untrusted ``chart`` trace's shape and return it as a :class:`ChartTrace`.

    Raises ``ValueError`` (never anything else) on a trace that is not a dict with ``text`` (list
    of str), ``layout`` (list of 6 ints), ``type`` (dict str → int ≥ 0) and ``color`` (dict
    str → list of ``#rrggbb`` or colormap names), or one that exceeds the size limits. ``data``
    is optional (version-1 traces have none): a list of at most :data:`MAX_SERIES` dicts with
    ``kind`` (a call name), ``y`` and optionally ``x`` (lists of at most :data:`MAX_VALUES` numbers
    or null; non-finite numbers read as missing), ``axes`` (int) and ``truncated`` (bool).

    Example:
        >>> t = validate_chart_trace({"text": ["Title"], "layout": [[1, 1, 0, 0, 0, 0]],
        ...                           "type": {"bar": 1}, "color": {"bar": ["#1f77b4"]}})
        >>> t.types, t.colors
        ({'bar': 1}, {'bar': ('#1f77b4',)})
        >>> validate_chart_trace({"text": 5})
        Traceback (most recent call last):
        ...
        ValueError: trace field 'text' must be a list, got int
    """
    if not isinstance(trace, dict):
        raise ValueError(f"a chart trace must be a dict, got {type(trace).__name__}")
    if "error" in trace:
        raise ValueError(f"the instrument failed: {str(trace['error'])[:200]}")

    def field(name: str, kind: type) -> Any:
        if name not in trace:
            raise ValueError(f"trace field {name!r} is missing")
        value = trace[name]
        if not isinstance(value, kind):
            raise ValueError(f"trace field {name!r} must be a {kind.__name__}, got {type(value).__name__}")
        if len(value) > (MAX_KINDS if kind is dict else MAX_ITEMS):
            raise ValueError(f"trace field {name!r} has {len(value)} entries (limit exceeded)")
        return value

    text = field("text", list)
    if not all(isinstance(s, str) and len(s) <= MAX_STRING for s in text):
        raise ValueError(f"trace field 'text' must hold strings of at most {MAX_STRING} characters")
    layout = []
    for row in field("layout", list):
        if not (isinstance(row, list) and len(row) == 6
                and all(_is_int(v) and abs(v) <= _LAYOUT_BOUND for v in row)):
            raise ValueError("trace field 'layout' must hold lists of 6 integers")
        layout.append(tuple(row))
    types: dict[str, int] = {}
    for kind, count in field("type", dict).items():
        if not (isinstance(kind, str) and _NAME.fullmatch(kind) and _is_int(count) and 0 <= count <= 10**9):
            raise ValueError("trace field 'type' must map call names to non-negative integers")
        if count:
            types[kind] = count
    colors: dict[str, tuple[str, ...]] = {}
    total = 0
    for kind, values in field("color", dict).items():
        if not (isinstance(kind, str) and _NAME.fullmatch(kind) and isinstance(values, list)):
            raise ValueError("trace field 'color' must map call names to lists")
        total += len(values)
        if total > MAX_COLORS:
            raise ValueError(f"trace field 'color' has more than {MAX_COLORS} colours (limit exceeded)")
        if not all(isinstance(c, str) and (_HEX.fullmatch(c) or _NAME.fullmatch(c)) for c in values):
            raise ValueError("trace field 'color' must hold '#rrggbb' colours or colormap names")
        if values:
            colors[kind] = tuple(values)
    truncated = trace.get("truncated", False)
    data = _validate_data(trace["data"]) if "data" in trace else ()
    return ChartTrace(tuple(text), tuple(layout), types, colors, truncated is True, data)


# ---- colour difference ---------------------------------------------------------------------------

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])


def hex_to_lab(colors: Sequence[str]) -> np.ndarray:
    """sRGB hex colours (``#rrggbb``) to CIELAB (D65, 2° observer), shape ``(n, 3)``.

    Example:
        >>> hex_to_lab(["#ff0000", "#000000"]).round(2).tolist()
        [[53.24, 80.09, 67.2], [0.0, 0.0, 0.0]]
    """
    rgb = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for c in colors], dtype=float).reshape(-1, 3) / 255
    lin = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = lin @ _SRGB_TO_XYZ.T / _D65
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    lab = np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)
    return lab


def ciede2000(lab1: np.ndarray, lab2: np.ndarray, kL: float = 1.0, kC: float = 1.0, kH: float = 1.0
              ) -> np.ndarray:
    """CIEDE2000 colour difference ΔE00 between CIELAB colours (arrays ``(..., 3)``, broadcast).

    Follows Sharma, Wu & Dalal, "The CIEDE2000 color-difference formula: implementation notes,
    supplementary test data, and mathematical observations", Color Res. Appl. 30(1), 2005
    (equations 2–22, including the hue-angle conventions at C' = 0 and across 0°/360°); the tests hold
    it to that paper's published test pairs.

    Example:
        >>> float(ciede2000(np.array([50.0, 2.6772, -79.7751]), np.array([50.0, 0.0, -82.7485])).round(4))
        2.0425
    """
    lab1 = np.asarray(lab1, dtype=float)
    lab2 = np.asarray(lab2, dtype=float)
    L1, a1, b1 = lab1[..., 0], lab1[..., 1], lab1[..., 2]
    L2, a2, b2 = lab2[..., 0], lab2[..., 1], lab2[..., 2]
    c_bar = (np.hypot(a1, b1) + np.hypot(a2, b2)) / 2
    g = 0.5 * (1 - np.sqrt(c_bar**7 / (c_bar**7 + 25.0**7)))
    a1p, a2p = (1 + g) * a1, (1 + g) * a2
    c1p, c2p = np.hypot(a1p, b1), np.hypot(a2p, b2)
    h1p = np.where((a1p == 0) & (b1 == 0), 0.0, np.degrees(np.arctan2(b1, a1p)) % 360)
    h2p = np.where((a2p == 0) & (b2 == 0), 0.0, np.degrees(np.arctan2(b2, a2p)) % 360)
    cc = c1p * c2p
    dh = h2p - h1p
    dhp = np.where(cc == 0, 0.0, np.where(dh > 180, dh - 360, np.where(dh < -180, dh + 360, dh)))
    d_lp = L2 - L1
    d_cp = c2p - c1p
    d_hp = 2 * np.sqrt(cc) * np.sin(np.radians(dhp) / 2)
    l_bar = (L1 + L2) / 2
    cp_bar = (c1p + c2p) / 2
    hsum = h1p + h2p
    hp_bar = np.where(cc == 0, hsum,
                      np.where(np.abs(h1p - h2p) <= 180, hsum / 2,
                               np.where(hsum < 360, (hsum + 360) / 2, (hsum - 360) / 2)))
    t = (1 - 0.17 * np.cos(np.radians(hp_bar - 30)) + 0.24 * np.cos(np.radians(2 * hp_bar))
         + 0.32 * np.cos(np.radians(3 * hp_bar + 6)) - 0.20 * np.cos(np.radians(4 * hp_bar - 63)))
    d_theta = 30 * np.exp(-(((hp_bar - 275) / 25) ** 2))
    r_c = 2 * np.sqrt(cp_bar**7 / (cp_bar**7 + 25.0**7))
    s_l = 1 + 0.015 * (l_bar - 50) ** 2 / np.sqrt(20 + (l_bar - 50) ** 2)
    s_c = 1 + 0.045 * cp_bar
    s_h = 1 + 0.015 * cp_bar * t
    r_t = -np.sin(np.radians(2 * d_theta)) * r_c
    tl, tc, th = d_lp / (kL * s_l), d_cp / (kC * s_c), d_hp / (kH * s_h)
    return np.sqrt(np.maximum(tl**2 + tc**2 + th**2 + r_t * tc * th, 0.0))


def color_similarity_matrix(pred: Sequence[str], ref: Sequence[str]) -> np.ndarray:
    """Similarity of every predicted to every reference colour, shape ``(len(pred), len(ref))``.

    Two hex colours: ``max(0, 1 - ΔE2000 / 100)``; two colormap names: 1 if equal else 0; a hex
    colour against a colormap name: 0.

    Example:
        >>> color_similarity_matrix(["#1f77b4", "viridis"], ["#1f77b4", "viridis", "magma"]).round(3).tolist()
        [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    """
    # computed on the distinct colours, then spread out: charts repeat their colours a lot
    up, pi = np.unique(np.asarray(list(pred), dtype=object).astype(str), return_inverse=True)
    ur, ri = np.unique(np.asarray(list(ref), dtype=object).astype(str), return_inverse=True)
    sim = (up[:, None] == ur[None, :]).astype(float)  # equal names (and equal hex colours): 1
    ph = np.array([c.startswith("#") for c in up], dtype=bool)
    rh = np.array([c.startswith("#") for c in ur], dtype=bool)
    if ph.any() and rh.any():
        de = ciede2000(hex_to_lab(list(up[ph]))[:, None, :], hex_to_lab(list(ur[rh]))[None, :, :])
        sim[np.ix_(ph, rh)] = np.clip(1 - de / 100, 0.0, 1.0)
    return sim[np.ix_(pi.ravel(), ri.ravel())]


# ---- data similarity -----------------------------------------------------------------------------

def _base_kind(kind: str) -> str:
    return kind.rsplit(".", 1)[-1]


def _map_base(kind: str, table: Mapping[str, str]) -> str:
    prefix, _, base = kind.rpartition(".")
    base = table.get(base, base)
    return f"{prefix}.{base}" if prefix else base


def reader_kind(kind: str) -> str:
    """The kind of chart a reader sees for a recorded call kind (:data:`READER_KINDS`), projection kept.

    Example:
        >>> reader_kind("matshow"), reader_kind("polar.semilogy"), reader_kind("barh")
        ('imshow', 'polar.plot', 'barh')
    """
    return _map_base(kind, READER_KINDS)


def color_group(kind: str) -> str:
    """The group whose colours are matched together for a recorded call kind (:data:`COLOR_GROUPS`).

    Example:
        >>> color_group("barh"), color_group("matshow"), color_group("plot"), color_group("3d.bar")
        ('bar', 'imshow', 'plot', '3d.bar')
    """
    return _map_base(reader_kind(kind), COLOR_GROUPS)


def reader_types(types: Mapping[str, int]) -> dict[str, int]:
    """Call counts by :func:`reader_kind`.

    Example:
        >>> reader_types({"imshow": 2, "matshow": 1, "bar": 1})
        {'imshow': 3, 'bar': 1}
    """
    out: dict[str, int] = {}
    for kind, n in types.items():
        out[reader_kind(kind)] = out.get(reader_kind(kind), 0) + n
    return out


def grouped_colors(colors: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """Colours by :func:`color_group`, each distinct colour once per group (the colour unit).

    Example:
        >>> grouped_colors({"imshow": ["viridis"] * 18, "matshow": ["viridis"], "barh": ["#1f77b4"]})
        {'imshow': ['viridis'], 'bar': ['#1f77b4']}
    """
    out: dict[str, list[str]] = {}
    for kind, values in colors.items():
        group = out.setdefault(color_group(kind), [])
        group.extend(c for c in dict.fromkeys(values) if c not in group)
    return out


def _scale(ref: np.ndarray, zero_based: bool) -> float:
    """The reference's value range (including 0 when ``zero_based``), else max |r|, else 1."""
    finite = ref[np.isfinite(ref)]
    if finite.size == 0:
        return 1.0
    lo, hi = float(finite.min()), float(finite.max())
    if zero_based:
        lo, hi = min(lo, 0.0), max(hi, 0.0)
    with np.errstate(over="ignore"):
        span = hi - lo
    if math.isfinite(span) and span > 0:
        return span
    peak = float(np.abs(finite).max())
    return peak if peak > 0 else 1.0


def _channel_matrix(pred: Sequence[Sequence[float]], ref: Sequence[Sequence[float]], zero_based: bool
                    ) -> np.ndarray:
    """Channel similarity (see :func:`series_similarity`) of every pred to every ref value list."""
    n_p, n_r = len(pred), len(ref)
    out = np.zeros((n_p, n_r))
    if n_p == 0 or n_r == 0:
        return out
    width = max(1, max(len(v) for v in (*pred, *ref)))
    lp = np.array([len(v) for v in pred])
    lr = np.array([len(v) for v in ref])
    P = np.full((n_p, width), np.nan)
    R = np.full((n_r, width), np.nan)
    for i, v in enumerate(pred):
        P[i, :len(v)] = v
    for j, v in enumerate(ref):
        R[j, :len(v)] = v
    scales = np.array([_scale(R[j, :lr[j]], zero_based) for j in range(n_r)])
    cols = np.arange(width)[None, :]
    for i in range(n_p):
        with np.errstate(over="ignore", invalid="ignore"):
            err = np.minimum(np.abs(P[i][None, :] - R) / scales[:, None], 1.0)
        pn, rn = np.isnan(P[i])[None, :], np.isnan(R)
        err = np.where(pn & rn, 0.0, np.where(pn | rn, 1.0, err))  # both missing: agree; one: 1
        aligned = cols < np.minimum(lp[i], lr)[:, None]
        longest = np.maximum(lp[i], lr)
        total = np.where(aligned, 1.0 - err, 0.0).sum(axis=1)
        out[i] = np.where(longest == 0, 1.0, total / np.maximum(longest, 1))
    return out


def data_similarity_matrix(pred: Sequence[DataSeries], ref: Sequence[DataSeries]) -> np.ndarray:
    """:func:`series_similarity` of every predicted to every reference series, ``(len(pred), len(ref))``.

    Series of different reader kinds (:func:`reader_kind`) score 0.

    Example:
        >>> bars = [DataSeries("bar", (5.0, 2.0, 6.0)), DataSeries("plot", (1.0, 2.0))]
        >>> data_similarity_matrix([DataSeries("bar", (5.0, 2.0, 8.0))], bars).round(4).tolist()
        [[0.8889, 0.0]]
    """
    out = np.zeros((len(pred), len(ref)))
    pk, rk = [reader_kind(s.kind) for s in pred], [reader_kind(s.kind) for s in ref]
    for kind in set(pk) & set(rk):
        pi = [i for i, k in enumerate(pk) if k == kind]
        ri = [j for j, k in enumerate(rk) if k == kind]
        zero_based = _base_kind(kind) in ZERO_BASED_KINDS
        sim = _channel_matrix([pred[i].y for i in pi], [ref[j].y for j in ri], zero_based)
        if _base_kind(kind) in XY_KINDS:
            sim_x = _channel_matrix([pred[i].x or () for i in pi], [ref[j].x or () for j in ri], zero_based)
            sim = (sim + sim_x) / 2
        out[np.ix_(pi, ri)] = sim
    return out


def series_similarity(pred: DataSeries, ref: DataSeries) -> float:
    """How close one predicted series is to one reference series, in [0, 1].

    Series of different reader kinds (:func:`reader_kind`) score 0. Otherwise, for a list of predicted values ``p`` (length
    ``n_p``) and reference values ``r`` (length ``n_r``), aligned by index::

        S   = max(r ∪ {0}) - min(r ∪ {0})   for bar, barh and pie (lengths from a zero baseline),
              max(r) - min(r)               for the other kinds (plot, scatter, ...),
              over the finite r; when S is 0 or not finite: max |r|; when that is 0 too: 1
        e_i = min(1, |p_i - r_i| / S)       (1 when exactly one of p_i, r_i is missing, 0 when both)
        s   = Σ_{i < min(n_p, n_r)} (1 - e_i) / max(n_p, n_r)      (1 when n_p = n_r = 0)

    so each point is worth 1 / max(n_p, n_r): a point off by the reference's whole range or more,
    missing, or extra (the length mismatch) counts 0, and ``s = 1`` exactly when the values agree.
    The y values (bar heights / ``barh`` widths, line and scatter y, pie fractions) are compared;
    scatter compares x too, and scores the mean of its x and y similarities. Bar positions and line
    x are not compared (bars sit at category positions; layout and text cover the axes). The scale
    is the reference's, so inflating the prediction cannot make errors look small; it makes the
    score asymmetric (not needed: the reference is fixed). Pie values are the wedge fractions, so a
    pie is compared by its shares, whatever totals the programs passed.

    Example:
        >>> ref = DataSeries("bar", (5.0, 2.0, 6.0))         # S = 6 - 0
        >>> round(series_similarity(DataSeries("bar", (5.0, 2.0, 8.0)), ref), 4)  # (1 + 1 + 4/6) / 3
        0.8889
        >>> round(series_similarity(DataSeries("bar", (5.0, 2.0)), ref), 4)       # (1 + 1 + 0) / 3
        0.6667
        >>> series_similarity(DataSeries("bar", (5.0,)), DataSeries("barh", (5.0,)))
        0.0
    """
    return float(data_similarity_matrix([pred], [ref])[0, 0])


def _data_match(pred: Sequence[DataSeries], ref: Sequence[DataSeries]) -> float:
    sim = data_similarity_matrix(pred, ref)
    if not sim.size:
        return 0.0
    rows, cols = linear_sum_assignment(sim, maximize=True)
    return float(sim[rows, cols].sum())


# ---- comparison ----------------------------------------------------------------------------------

def _prf(matched: float, n_pred: int, n_ref: int) -> tuple[float, float, float]:
    if n_pred == 0 and n_ref == 0:
        return 1.0, 1.0, 1.0
    if n_pred == 0 or n_ref == 0:
        return 0.0, 0.0, 0.0
    p = min(max(matched / n_pred, 0.0), 1.0)
    r = min(max(matched / n_ref, 0.0), 1.0)
    f = 2 * p * r / (p + r) if p + r > 0 else 0.0
    return p, r, f


def _multiset_match(pred: Sequence[Any], ref: Sequence[Any]) -> float:
    cp, cr = Counter(pred), Counter(ref)
    return float(sum(min(n, cr[k]) for k, n in cp.items()))


def _color_match(pred: Mapping[str, Sequence[str]], ref: Mapping[str, Sequence[str]]) -> float:
    """Σ over colour groups of the best one-to-one matching (arguments already grouped)."""
    matched = 0.0
    for kind in pred.keys() & ref.keys():
        sim = color_similarity_matrix(pred[kind], ref[kind])
        if sim.size:
            rows, cols = linear_sum_assignment(sim, maximize=True)
            matched += float(sim[rows, cols].sum())
    return matched


def zero_metrics() -> dict[str, float]:
    """All twelve metrics and the data score at 0.0 (a predicted program that did not run)."""
    return dict.fromkeys(SCORE_KEYS, 0.0)


def compare_chart_traces(pred_trace: Mapping[str, Any] | ChartTrace | None,
                         ref_trace: Mapping[str, Any] | ChartTrace | None) -> dict[str, float]:
    """Text / layout / type / colour precision, recall and F1, and the data score, of a predicted trace.

    Both arguments are ``chart`` traces (``RenderResult.trace["chart"]``) or :class:`ChartTrace`.
    A missing or malformed predicted trace gives 0.0 everywhere; a missing or malformed reference
    trace raises ``ValueError``. Empty sides: both empty → 1.0, one empty → 0.0 (module docstring).
    Returns the twelve ``METRIC_KEYS`` and ``"data"`` (:data:`SCORE_KEYS`).

    ``data``: the predicted series are matched one-to-one to the reference series by the Hungarian
    algorithm, maximising the total :func:`series_similarity` (series of different call kinds
    score 0, so in effect each kind is matched on its own, like the colours); with ``matched`` the
    sum of the matched similarities, ``n_pred`` / ``n_ref`` the numbers of series::

        data = 2 · matched / (n_pred + n_ref)         (1 when both have no series, 0 when one has none)

    which is the F1 of P = matched / n_pred and R = matched / n_ref: identical series give 1, and
    an unmatched series (extra in the prediction or missing from it) counts 0 in both ways alike.
    Series are matched across Axes (the axes' arrangement is the layout score's business).

    Example:
        >>> ref = {"text": ["Sales", "Q3"], "layout": [[1, 1, 0, 0, 0, 0]],
        ...        "type": {"bar": 1}, "color": {"bar": ["#1f77b4"]}}
        >>> pred = {"text": ["Sales", "Q4"], "layout": [[1, 1, 0, 0, 0, 0]],
        ...         "type": {"barh": 1}, "color": {"barh": ["#1f77b4"]}}
        >>> m = compare_chart_traces(pred, ref)
        >>> m["text_f1"], m["layout_f1"], m["type_f1"], m["color_f1"]  # barh's colour matches bar's
        (0.5, 1.0, 0.0, 1.0)
        >>> compare_chart_traces(ref, ref)["color_f1"]
        1.0
        >>> ref["data"] = [{"kind": "bar", "y": [5, 2, 6]}]
        >>> pred["data"] = [{"kind": "bar", "y": [5, 2, 8]}, {"kind": "plot", "y": [1, 2]}]
        >>> round(compare_chart_traces(pred, ref)["data"], 4)   # 2 · (8/9) / (2 + 1)
        0.5926
    """
    ref = ref_trace if isinstance(ref_trace, ChartTrace) else None
    if ref is None:
        if ref_trace is None:
            raise ValueError("the reference has no chart trace")
        try:
            ref = validate_chart_trace(ref_trace)
        except ValueError as exc:
            raise ValueError(f"invalid reference chart trace: {exc}") from None
    pred = pred_trace if isinstance(pred_trace, ChartTrace) else None
    if pred is None:
        try:
            pred = validate_chart_trace(pred_trace)
        except ValueError:
            return zero_metrics()
    out: dict[str, float] = {}
    pred_types, ref_types = reader_types(pred.types), reader_types(ref.types)
    pred_colors, ref_colors = grouped_colors(pred.colors), grouped_colors(ref.colors)
    groups = {
        "text": (_multiset_match(pred.text, ref.text), len(pred.text), len(ref.text)),
        "layout": (_multiset_match(pred.layout, ref.layout), len(pred.layout), len(ref.layout)),
        "type": (float(sum(min(n, ref_types.get(k, 0)) for k, n in pred_types.items())),
                 sum(pred_types.values()), sum(ref_types.values())),
        "color": (_color_match(pred_colors, ref_colors),
                  sum(len(v) for v in pred_colors.values()), sum(len(v) for v in ref_colors.values())),
    }
    for group, (matched, n_pred, n_ref) in groups.items():
        p, r, f = _prf(matched, n_pred, n_ref)
        out[f"{group}_precision"], out[f"{group}_recall"], out[f"{group}_f1"] = p, r, f
    out[DATA_KEY] = _prf(_data_match(pred.data, ref.data), len(pred.data), len(ref.data))[2]
    return out


# ---- from renders and programs -------------------------------------------------------------------

def chart_metrics_from_renders(pred: RenderResult, ref: RenderResult) -> dict[str, Any]:
    """The twelve metrics and ``data`` from two instrumented renders (the reward uses this on ``Sample.rendered``).

    A failed predicted render gives zeros plus ``pred_error_kind`` / ``pred_error``; a predicted
    trace that is missing or malformed (the program tampered with the recorder) gives zeros with
    ``pred_error_kind="invalid_trace"``. A failed or trace-less reference raises ``ValueError``.
    """
    if not ref.ok:
        raise ValueError(f"the reference program failed to render ({ref.error_kind}): {ref.error}")
    ref_trace = (ref.trace or {}).get(CHART_INSTRUMENT) if isinstance(ref.trace, dict) else None
    if ref_trace is None:
        raise ValueError("the reference render has no 'chart' trace: render with instrument=('chart',)")
    try:
        ref_checked = validate_chart_trace(ref_trace)
    except ValueError as exc:
        raise ValueError(f"invalid reference chart trace: {exc}") from None
    if not pred.ok:
        return {**zero_metrics(), "pred_error_kind": pred.error_kind, "pred_error": pred.error}
    pred_trace = pred.trace.get(CHART_INSTRUMENT) if isinstance(pred.trace, dict) else None
    try:
        pred_checked = validate_chart_trace(pred_trace)
    except ValueError as exc:
        return {**zero_metrics(), "pred_error_kind": "invalid_trace", "pred_error": str(exc)}
    return compare_chart_traces(pred_checked, ref_checked)


def _check_renderer(renderer: Renderer) -> None:
    opts = getattr(renderer, "options", None)
    if getattr(renderer, "name", None) != "matplotlib" or not isinstance(opts, dict) \
            or CHART_INSTRUMENT not in (opts.get("instrument") or ()):
        raise ValueError("chart-code metrics need a matplotlib renderer created with instrument=('chart',)")


def chart_code_metrics_batch(pairs: Sequence[tuple[str, str]], *, renderer: Renderer | None = None,
                             timeout: float = 10.0, workers: int | None = None) -> list[dict[str, Any]]:
    """:func:`chart_code_metrics` for many ``(pred_code, ref_code)`` pairs, rendered in one batch.

    Each distinct program runs once (a reference shared by a group of predictions is rendered once).
    Raises ``ValueError`` naming the first pair whose reference fails to render.

    Example:
        >>> ref = "import matplotlib.pyplot as plt\\nplt.bar([1, 2], [3, 4], color='red')\\nplt.title('A')"
        >>> pred = ref.replace("'A'", "'B'")
        >>> [round(m["text_f1"], 2) for m in chart_code_metrics_batch([(ref, ref), (pred, ref)], workers=1)]
        [1.0, 0.0]
    """
    pairs = [tuple(p) for p in pairs]
    for i, pair in enumerate(pairs):
        if len(pair) != 2 or not isinstance(pair[1], str):
            raise TypeError(f"pair {i} must be (pred_code, ref_code) with a str reference")
    if not pairs:
        return []
    sources = list(dict.fromkeys(s for pair in pairs for s in pair if isinstance(s, str)))
    own = renderer is None
    if renderer is None:
        from ..renderers.matplotlib import MatplotlibRenderer

        workers = workers or max(1, min(os.cpu_count() or 1, len(sources)))
        renderer = MatplotlibRenderer(timeout=timeout, workers=workers, instrument=(CHART_INSTRUMENT,))
    else:
        _check_renderer(renderer)
    try:
        by_source = dict(zip(sources, renderer.render_batch(sources), strict=True))
    finally:
        if own:
            renderer.close()
    out = []
    for i, (pred_code, ref_code) in enumerate(pairs):
        if isinstance(pred_code, str):
            pred_res = by_source[pred_code]
        else:
            pred_res = _failed(f"pred_code must be str, got {type(pred_code).__name__}")
        try:
            out.append(chart_metrics_from_renders(pred_res, by_source[ref_code]))
        except ValueError as exc:
            raise ValueError(f"pair {i}: {exc}") from None
    return out


def _failed(message: str) -> RenderResult:
    from ..renderers.base import RenderResult

    return RenderResult.failure("syntax", message)


def chart_code_metrics(pred_code: str, ref_code: str, *, renderer: Renderer | None = None,
                       timeout: float = 10.0) -> dict[str, Any]:
    """ChartMimic's text / layout / type / colour P/R/F1 of ``pred_code`` against ``ref_code``.

    Runs each program once in the sandboxed matplotlib renderer with the ``chart`` instrument
    (``renderer``: one made with ``instrument=("chart",)``, left open; else one is created and
    closed), then :func:`compare_chart_traces`. A predicted program that fails gives 0.0 for all
    twelve numbers plus ``pred_error_kind`` and ``pred_error``; a reference that fails raises
    ``ValueError``.

    Example:
        >>> ref = "import matplotlib.pyplot as plt\\nplt.bar([1, 2], [3, 4])\\nplt.title('Sales')"
        >>> m = chart_code_metrics(ref.replace("bar(", "barh("), ref)
        >>> m["text_f1"], m["layout_f1"], m["type_f1"]
        (1.0, 1.0, 0.0)
        >>> chart_code_metrics("raise SystemExit(3)", ref)["pred_error_kind"]
        'runtime'
    """
    return chart_code_metrics_batch([(pred_code, ref_code)], renderer=renderer, timeout=timeout)[0]


def mean_f1(metrics: Mapping[str, float]) -> float:
    """Mean of the four F1 scores (ChartMimic's low-level score, on a 0–1 scale).

    Example:
        >>> mean_f1({"text_f1": 1.0, "layout_f1": 1.0, "type_f1": 0.5, "color_f1": 0.5})
        0.75
    """
    return float(math.fsum(float(metrics[k]) for k in F1_KEYS) / len(F1_KEYS))
