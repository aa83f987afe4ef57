"""ChartMimic's low-level chart-code metrics and the ``chart_code`` reward, on the real sandboxed renderer.

One instrumented renderer serves the whole module; programs are rendered in batches.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np
import pytest

from visalign.metrics.chart_code import (
    METRIC_KEYS,
    SCORE_KEYS,
    DataSeries,
    chart_code_metrics,
    chart_code_metrics_batch,
    ciede2000,
    color_similarity_matrix,
    compare_chart_traces,
    data_similarity_matrix,
    hex_to_lab,
    series_similarity,
    validate_chart_trace,
)
from visalign.renderers import get_renderer
from visalign.rewards.base import Sample
from visalign.rewards.chart_code import ChartCodeReward
from visalign.rewards.render import RenderService

CHARTS = Path(__file__).resolve().parents[1] / "benchmarks" / "charts"


def chart(name: str) -> str:
    return (CHARTS / f"{name}.py").read_text()


def prog(src: str) -> str:
    return "import matplotlib.pyplot as plt\nimport numpy as np\n" + textwrap.dedent(src)


def f1s(m: dict) -> tuple[float, ...]:
    return tuple(round(m[f"{g}_f1"], 6) for g in ("text", "layout", "type", "color"))


@pytest.fixture(scope="module")
def renderer():
    with get_renderer("matplotlib", timeout=10, workers=2, instrument=("chart",)) as r:
        yield r


def traces(renderer, sources: list[str]) -> list[dict]:
    results = renderer.render_batch(sources)
    for src, res in zip(sources, results, strict=True):
        assert res.ok, (res.error_kind, res.error, src[-200:])
    return [res.trace["chart"] for res in results]


# ---- CIEDE2000 -----------------------------------------------------------------------------------

# Sharma, Wu & Dalal, "The CIEDE2000 color-difference formula: implementation notes, supplementary
# test data, and mathematical observations", Color Res. Appl. 30(1):21-30, 2005, Table 1
# (pair number, L1 a1 b1, L2 a2 b2, ΔE00). Pairs 7-16 probe the hue-angle discontinuities.
SHARMA_PAIRS = [
    (1, (50.0000, 2.6772, -79.7751), (50.0000, 0.0000, -82.7485), 2.0425),
    (4, (50.0000, -1.3802, -84.2814), (50.0000, 0.0000, -82.7485), 1.0000),
    (7, (50.0000, 0.0000, 0.0000), (50.0000, -1.0000, 2.0000), 2.3669),
    (9, (50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0009), 7.1792),
    (11, (50.0000, 2.4900, -0.0010), (50.0000, -2.4900, 0.0011), 7.2195),
    (13, (50.0000, -0.0010, 2.4900), (50.0000, 0.0009, -2.4900), 4.8045),
    (15, (50.0000, -0.0010, 2.4900), (50.0000, 0.0011, -2.4900), 4.7461),
    (16, (50.0000, 2.5000, 0.0000), (50.0000, 0.0000, -2.5000), 4.3065),
    (17, (50.0000, 2.5000, 0.0000), (73.0000, 25.0000, -18.0000), 27.1492),
    (19, (50.0000, 2.5000, 0.0000), (56.0000, -27.0000, -3.0000), 31.9030),
    (25, (60.2574, -34.0099, 36.2677), (60.4626, -34.1751, 39.4387), 1.2644),
    (29, (22.7233, 20.0904, -46.6940), (23.0331, 14.9730, -42.5619), 2.0373),
    (31, (90.8027, -2.0831, 1.4410), (91.1528, -1.6435, 0.0447), 1.4441),
    (33, (6.7747, -0.2908, -2.4247), (5.8714, -0.0985, -2.2286), 0.6377),
    (34, (2.0776, 0.0795, -1.1350), (0.9033, -0.0636, -0.5514), 0.9082),
]


@pytest.mark.parametrize(("pair", "lab1", "lab2", "expected"), SHARMA_PAIRS)
def test_ciede2000_matches_sharma_2005(pair, lab1, lab2, expected):
    assert round(float(ciede2000(np.array(lab1), np.array(lab2))), 4) == expected, pair
    assert round(float(ciede2000(np.array(lab2), np.array(lab1))), 4) == expected, pair  # symmetric


def test_ciede2000_vectorised_and_lab_conversion():
    rng = np.random.default_rng(0)
    hexes = [f"#{v:06x}" for v in rng.integers(0, 1 << 24, 40)]
    lab = hex_to_lab(hexes)
    from skimage.color import deltaE_ciede2000, rgb2lab  # an independent implementation, as a cross-check

    rgb = np.array([[int(h[i:i + 2], 16) for i in (1, 3, 5)] for h in hexes], float)[None] / 255
    np.testing.assert_allclose(lab, rgb2lab(rgb)[0], atol=0.01)  # skimage rounds the sRGB matrix differently
    pairwise = ciede2000(lab[:, None], lab[None, :])
    np.testing.assert_allclose(pairwise, deltaE_ciede2000(lab[:, None], lab[None, :]), atol=1e-6)
    assert np.allclose(np.diag(pairwise), 0)
    sim = color_similarity_matrix(["#1f77b4", "#1f77b5", "viridis"], ["#1f77b4", "viridis", "magma"])
    assert sim[0, 0] == 1.0 and 0.99 < sim[1, 0] < 1.0 and sim[2, 1] == 1.0 and sim[2, 2] == 0 and sim[0, 1] == 0


# ---- the trace and the metrics on real programs --------------------------------------------------

SELF_CHARTS = ["chart_01_bar", "chart_19_subplots_2x2", "chart_11_pie", "chart_16_heatmap",
               "chart_13_histogram", "chart_18_radar", "chart_21_gridspec_marginals", "chart_29_hexbin"]


@pytest.mark.slow
def test_reference_against_itself_scores_one(renderer):
    sources = [chart(n) for n in SELF_CHARTS]
    first, second = traces(renderer, sources), traces(renderer, sources)  # two separate executions each
    for name, a, b in zip(SELF_CHARTS, first, second, strict=True):
        assert a == b, name
        m = compare_chart_traces(a, b)
        assert set(m) == set(SCORE_KEYS) == {*METRIC_KEYS, "data"}
        assert all(v == 1.0 for v in m.values()), (name, m)
        assert a["text"] and a["layout"] and a["type"], name
    bar, grid, pie, heat = first[:4]
    assert bar["type"] == {"bar": 1} and len(bar["color"]["bar"]) == 5
    assert bar["version"] == 3 and bar["data"] == [
        {"kind": "bar", "axes": 0, "x": [0.0, 1.0, 2.0, 3.0, 4.0], "y": [482.0, 365.0, 529.0, 301.0, 414.0],
         "truncated": False}]
    assert [d["kind"] for d in grid["data"]] == ["plot", "bar", "scatter"]  # hist: no data series
    assert sorted({d["axes"] for d in grid["data"]}) == [0, 1, 2]
    assert [d["kind"] for d in pie["data"]] == ["pie"] and abs(sum(pie["data"][0]["y"]) - 1) < 1e-9
    assert sorted(map(tuple, grid["layout"])) == [(2, 2, r, r, c, c) for r in (0, 1) for c in (0, 1)]
    assert grid["type"] == {"plot": 1, "bar": 1, "hist": 1, "scatter": 1}
    assert pie["type"] == {"pie": 1} and "Apple" in pie["text"] and "20.1%" in pie["text"]
    assert heat["type"] == {"imshow": 1} and heat["color"] == {"imshow": ["RdBu_r"]}  # colorbar: no pcolormesh
    assert "Revenue" not in heat["text"] and "Pearson r" in heat["text"]  # tick labels out, colorbar label in


@pytest.mark.slow
def test_perturbations_lower_the_right_metric(renderer):
    bar = chart("chart_01_bar")
    two = prog("""
        fig, axes = plt.subplots(1, 2, figsize=(8, 4))
        axes[0].plot([1, 2, 3], [3, 1, 2], color="#2a9d8f")
        axes[1].scatter([1, 2, 3], [1, 2, 3], color="#e76f51")
        axes[0].set_title("Left")
        axes[1].set_title("Right")
    """)
    cases = {
        "title": (bar.replace("Q3 2023 Sales by Region", "Q4 2023 Sales by Region"), bar),
        "barh": (bar.replace("ax.bar(", "ax.barh("), bar),
        "near colour": (bar.replace("#4C72B0", "#4C72B8"), bar),
        "far colour": (bar.replace("#4C72B0", "#FFFF00"), bar),
        "grid": (two.replace("plt.subplots(1, 2", "plt.subplots(2, 1"), two),
    }
    out = dict(zip(cases, chart_code_metrics_batch(list(cases.values()), renderer=renderer), strict=True))
    text, layout, type_, color = f1s(out["title"])
    assert text < 1 and (layout, type_, color) == (1, 1, 1), out["title"]
    assert out["title"]["text_precision"] == out["title"]["text_recall"] == 7 / 8
    text, layout, type_, color = f1s(out["barh"])
    assert type_ == 0 and (text, layout) == (1, 1), out["barh"]
    near, far = out["near colour"], out["far colour"]
    assert f1s(near)[:3] == (1, 1, 1) and 0.99 < near["color_f1"] < 1, near
    assert f1s(far)[:3] == (1, 1, 1) and 0.8 < far["color_f1"] < near["color_f1"], far
    text, layout, type_, color = f1s(out["grid"])
    assert layout == 0 and (text, type_, color) == (1, 1, 1), out["grid"]


@pytest.mark.slow
def test_nested_calls_counted_once_and_render_dedup(renderer):
    data = "rng = np.random.default_rng(0)\nd = rng.normal(size=200)\n"
    sources = [
        prog(data + "plt.hist(d, bins=12, color='#336699')\n"),
        prog(data + "plt.errorbar([1, 2, 3], [2, 3, 1], yerr=[0.2, 0.1, 0.3], fmt='o-', capsize=3)\n"),
        prog(data + "plt.boxplot([d, d + 1], patch_artist=True)\nplt.violinplot([d])\n"),
        prog(data + "plt.stackplot([1, 2, 3], [1, 2, 3], [2, 2, 2])\nplt.stem([1, 2], [3, 4])\n"),
        prog(data + "im = plt.imshow(np.eye(4), cmap='magma')\nplt.colorbar(im)\nplt.clim(0, 2)\n"),
        # a figure rendered three times (two savefig, then changed: the final capture) counts once
        prog("""
            fig, ax = plt.subplots()
            ax.bar(["Alpha", "Beta"], [1, 2])
            ax.set_title("First")
            ax.set_xlabel("Group")
            plt.savefig("a.png")
            plt.savefig("b.png", bbox_inches="tight")
            ax.set_title("Final title\\nsecond line")
            fig.tight_layout()
        """),
        prog("""
            fig = plt.figure()
            ax = fig.add_axes([0.1, 0.1, 0.8, 0.8])
            ax.plot([1, 2], [1, 2])
            ax3 = fig.add_subplot(2, 2, 4, projection="3d")
            ax3.plot_surface(*np.meshgrid(np.arange(3.0), np.arange(3.0)), np.eye(3), cmap="viridis")
            ax3.scatter3D([1, 2], [1, 2], [1, 2], color="red")
        """),
        # two figures, the first saved and closed: the image shows the second, and so does the trace
        prog("""
            for title in ("One", "Two"):
                fig, ax = plt.subplots()
                ax.plot([1, 2])
                ax.set_title(title)
                plt.savefig(title + ".png")
                if title == "One":
                    plt.close(fig)
        """),
    ]
    hist, err, box, stack, image, redraw, mixed, two_figs = traces(renderer, sources)
    assert hist["type"] == {"hist": 1} and hist["color"] == {"hist": ["#336699"]}
    assert err["type"] == {"errorbar": 1}
    assert box["type"] == {"boxplot": 1, "violinplot": 1}
    assert stack["type"] == {"stackplot": 1, "stem": 1}
    assert image["type"] == {"imshow": 1} and image["color"] == {"imshow": ["magma"]}
    assert redraw["type"] == {"bar": 1}
    assert sorted(redraw["text"]) == ["Final title", "Group", "second line"]  # no tick labels, no "First"
    assert mixed["type"] == {"plot": 1, "3d.plot_surface": 1, "3d.scatter": 1}
    assert mixed["color"]["3d.plot_surface"] == ["viridis"] and mixed["color"]["3d.scatter"] == ["#ff0000"]
    assert sorted(map(tuple, mixed["layout"])) == [(0, 0, 1, 9, 1, 9), (2, 2, 1, 1, 1, 1)]
    assert two_figs["text"] == ["Two"] and two_figs["type"] == {"plot": 1}
    assert two_figs["layout"] == [[1, 1, 0, 0, 0, 0]]


@pytest.mark.slow
def test_no_state_leaks_between_samples(renderer):
    busy = prog("plt.bar([1, 2], [3, 4], color='red')\nplt.plot([1, 2])\nplt.title('Busy')\n")
    quiet = prog("fig, ax = plt.subplots()\nax.set_title('Quiet')\n")  # draws, but logs no plotting call
    first = renderer.render(busy)
    assert first.ok and first.trace["chart"]["type"] == {"bar": 1, "plot": 1}
    # the pool hands out its zygotes in turn: over three renders, one runs where `busy` ran
    for _ in range(3):
        res = renderer.render(quiet)
        assert res.ok and res.trace["chart"]["type"] == {} and res.trace["chart"]["color"] == {}
        assert res.trace["chart"]["text"] == ["Quiet"]
    m = chart_code_metrics(quiet, busy, renderer=renderer)
    assert m["type_f1"] == 0 and m["color_f1"] == 0 and m["type_recall"] == 0 and m["layout_f1"] == 1


def test_empty_sides_and_failures(renderer):
    empty = {"text": [], "layout": [], "type": {}, "color": {}}
    full = {"text": ["a"], "layout": [[1, 1, 0, 0, 0, 0]], "type": {"bar": 2}, "color": {"bar": ["#000000"]},
            "data": [{"kind": "bar", "y": [1, 2]}]}
    assert set(compare_chart_traces(empty, empty).values()) == {1.0}
    assert set(compare_chart_traces(empty, full).values()) == {0.0}
    assert set(compare_chart_traces(full, empty).values()) == {0.0}  # colour: no division by zero
    assert compare_chart_traces(None, full) == dict.fromkeys(SCORE_KEYS, 0.0)
    with pytest.raises(ValueError):
        compare_chart_traces(full, None)
    ref = prog("plt.bar([1, 2], [3, 4])\nplt.title('T')\n")
    broken = chart_code_metrics_batch([("raise ValueError('boom')", ref), ("plt.plot(", ref), (None, ref)],
                                      renderer=renderer)
    for m, kind in zip(broken, ["runtime", "syntax", "syntax"], strict=True):
        assert m["pred_error_kind"] == kind and all(m[k] == 0.0 for k in SCORE_KEYS), m
    with pytest.raises(ValueError, match="reference"):
        chart_code_metrics(ref, "import sys\nsys.exit(2)", renderer=renderer)
    with pytest.raises(ValueError, match="instrument"):
        chart_code_metrics(ref, ref, renderer=object())


@pytest.mark.slow
def test_validator_and_hostile_programs(renderer):
    good = {"text": ["a"], "layout": [[1, 1, 0, 0, 0, 0]], "type": {"bar": 1}, "color": {"bar": ["#000000"]}}
    bad = [
        None, [], "trace", {"error": "x"}, {**good, "text": "abc"}, {**good, "text": [1]},
        {**good, "text": ["a"] * 100_000}, {**good, "text": ["x" * 10_000]},
        {**good, "layout": [[1, 1, 0, 0, 0]]}, {**good, "layout": [[1, 1, 0, 0, 0, True]]},
        {**good, "layout": [[1, 1, 0, 0, 0, 10**30]]}, {**good, "type": {"bar": -1}},
        {**good, "type": {"bar": 1.5}}, {**good, "type": {"<script>": 1}},
        {**good, "color": {"bar": ["red"] * 3000}}, {**good, "color": {"bar": ["#GGGGGG"]}},
        {**good, "color": {"bar": "#000000"}}, {k: v for k, v in good.items() if k != "color"},
        {**good, "data": {}}, {**good, "data": [{"kind": "bar"}]}, {**good, "data": [{"y": [1]}]},
        {**good, "data": [{"kind": "<b>", "y": [1]}]}, {**good, "data": [{"kind": "bar", "y": [True]}]},
        {**good, "data": [{"kind": "bar", "y": ["1"]}]}, {**good, "data": [{"kind": "bar", "y": [10**400]}]},
        {**good, "data": [{"kind": "bar", "y": [1] * 1001}]}, {**good, "data": [{"kind": "bar", "y": [1]}] * 201},
        {**good, "data": [{"kind": "bar", "y": [1], "x": 3}]}, {**good, "data": [{"kind": "bar", "y": [1], "axes": -1}]},
    ]
    for trace in bad:
        with pytest.raises(ValueError):
            validate_chart_trace(trace)
        assert compare_chart_traces(trace, good) == dict.fromkeys(SCORE_KEYS, 0.0)
        with pytest.raises(ValueError):
            compare_chart_traces(good, trace)
    assert validate_chart_trace(good).types == {"bar": 1}

    ref = prog("plt.bar([1, 2], [3, 4])\nplt.title('T')\n")
    tamper = ref + "import sys\nhook = sys.modules['mpl_instrument'].ChartInstrument\n"
    hostile = [
        tamper + "hook.collect = lambda self: {'text': 'x', 'layout': 7, 'type': {'bar': -1}, 'color': None}\n",
        tamper + "hook.collect = lambda self: {'text': ['T'] * 500000, 'layout': [], 'type': {}, 'color': {}}\n",
        tamper + "def boom(self):\n    raise RuntimeError('no trace for you')\nhook.collect = boom\n",
        tamper + "hook.collect = lambda self: {'text': [object()], 'layout': [[1] * 6], 'type': {}, 'color': {}}\n",
        ref + "import sys\nsys.modules['zygote']._state['result_fd'] = 1\n",
    ]
    results = chart_code_metrics_batch([(h, ref) for h in hostile], renderer=renderer)
    for m in results:  # a clean result each time: zeros, never a crash or a leak of the reference's numbers
        assert all(m[k] == 0.0 for k in SCORE_KEYS), m
    assert [m.get("pred_error_kind") for m in results] == [
        "invalid_trace", "invalid_trace", "invalid_trace",
        None,       # object() went through json's default=str: well-formed data that matches nothing
        "runtime",  # the child wrote its result where nobody reads it
    ]
    # breaking json changes nothing: the worker bound its own serializer before the program ran
    sabotage = ref + "import json\njson.dumps = json.dump = lambda *a, **k: None\n"
    assert chart_code_metrics_batch([(sabotage, ref)], renderer=renderer)[0]["text_f1"] == 1.0
    assert renderer.render(ref).ok  # and the next program is fine


# ---- the data score ------------------------------------------------------------------------------

def trace_with(*series: dict) -> dict:
    return {"text": [], "layout": [], "type": {}, "color": {}, "data": list(series)}


def test_series_similarity_by_hand():
    bar = DataSeries("bar", (5.0, 2.0, 6.0))
    # bars: S = max(5, 2, 6, 0) - min(5, 2, 6, 0) = 6; errors 0, 0, |8 - 6| / 6 = 1/3
    # → (1 + 1 + 2/3) / 3 = 8/9
    assert series_similarity(DataSeries("bar", (5.0, 2.0, 8.0)), bar) == pytest.approx(8 / 9)
    assert series_similarity(bar, bar) == 1.0
    # a point off by the whole scale or more counts 0, not less: (1 + 1 + 0) / 3
    assert series_similarity(DataSeries("bar", (5.0, 2.0, 100.0)), bar) == pytest.approx(2 / 3)
    # length mismatch: each point is worth 1 / max(n_pred, n_ref); missing or extra points count 0
    assert series_similarity(DataSeries("bar", (5.0, 2.0)), bar) == pytest.approx(2 / 3)
    assert series_similarity(DataSeries("bar", (5.0, 2.0, 6.0, 1.0)), bar) == pytest.approx(3 / 4)
    # missing values (NaN): both missing agree, one missing is a full error; S over finite r = 3 - 0
    ref = DataSeries("bar", (1.0, math.nan, 3.0))
    assert series_similarity(DataSeries("bar", (1.0, math.nan)), ref) == pytest.approx(2 / 3)
    assert series_similarity(DataSeries("bar", (1.0, 5.0, 3.0)), ref) == pytest.approx(2 / 3)
    # lines: S = the range of r, not from 0: ref 100..102, S = 2; a flat hedge at 101 errs 1/2, 0, 1/2
    line = DataSeries("plot", (100.0, 101.0, 102.0))
    assert series_similarity(DataSeries("plot", (101.0, 101.0, 101.0)), line) == pytest.approx(2 / 3)
    # constant reference line: S = max |r| = 4; error 1 / 4 on both points
    assert series_similarity(DataSeries("plot", (3.0, 3.0)), DataSeries("plot", (4.0, 4.0))) == 0.75
    # all-zero reference: S = 1
    assert series_similarity(DataSeries("bar", (0.5, 0.0)), DataSeries("bar", (0.0, 0.0))) == 0.75
    # scatter: mean of x and y; x: S = 2, errors 0, 0, 1/2 → 5/6; y identical → 1; (5/6 + 1) / 2
    sc = DataSeries("scatter", (1.0, 2.0, 3.0), (0.0, 1.0, 2.0))
    assert series_similarity(DataSeries("scatter", (1.0, 2.0, 3.0), (0.0, 1.0, 3.0)), sc) == pytest.approx(11 / 12)
    # line x is not compared
    assert series_similarity(DataSeries("plot", (1.0, 2.0), (5.0, 6.0)), DataSeries("plot", (1.0, 2.0), (0.0, 1.0))) == 1
    # different kinds never match; empty series of one kind agree
    assert series_similarity(DataSeries("bar", (5.0,)), DataSeries("barh", (5.0,))) == 0.0
    assert series_similarity(DataSeries("plot", ()), DataSeries("plot", ())) == 1.0
    # pies compare fractions: S = max fraction (0 is in the range) = 0.4; errors .375, .125, .125, .375
    pie = DataSeries("pie", (0.4, 0.3, 0.2, 0.1))
    assert series_similarity(DataSeries("pie", (0.25,) * 4), pie) == pytest.approx(0.75)


def test_data_score_of_traces():
    ref = trace_with({"kind": "bar", "y": [5, 2, 6]})
    one = trace_with({"kind": "bar", "y": [5, 2, 8]})
    assert compare_chart_traces(one, ref)["data"] == pytest.approx(8 / 9)  # one pair: F1 = its similarity
    assert compare_chart_traces(ref, ref)["data"] == 1.0
    empty = trace_with()
    assert compare_chart_traces(empty, empty)["data"] == 1.0
    assert compare_chart_traces(empty, ref)["data"] == 0.0 and compare_chart_traces(ref, empty)["data"] == 0.0
    # version-1 traces (no "data") read as having no series
    v1 = {"text": [], "layout": [], "type": {}, "color": {}}
    assert compare_chart_traces(v1, v1)["data"] == 1.0 and compare_chart_traces(v1, ref)["data"] == 0.0
    # an extra predicted series and a missing one cost the same: 2 · 1 / (2 + 1)
    extra = trace_with({"kind": "bar", "y": [5, 2, 6]}, {"kind": "plot", "y": [1, 2]})
    assert compare_chart_traces(extra, ref)["data"] == pytest.approx(2 / 3)
    assert compare_chart_traces(ref, extra)["data"] == pytest.approx(2 / 3)
    # 2 · (8/9) / (2 + 1), as in the doctest
    extra_off = trace_with({"kind": "bar", "y": [5, 2, 8]}, {"kind": "plot", "y": [1, 2]})
    assert compare_chart_traces(extra_off, ref)["data"] == pytest.approx(16 / 27)
    # the Hungarian matching pairs series by value, not by order (and across axes)
    two = trace_with({"kind": "bar", "y": [1, 2, 3]}, {"kind": "bar", "y": [30, 10, 20], "axes": 1})
    swapped = trace_with({"kind": "bar", "y": [30, 10, 20]}, {"kind": "bar", "y": [1, 2, 3], "axes": 1})
    assert compare_chart_traces(swapped, two)["data"] == 1.0
    sim = data_similarity_matrix(validate_chart_trace(swapped).data, validate_chart_trace(two).data)
    assert sim[0, 1] == 1.0 and sim[1, 0] == 1.0 and sim[0, 0] < 1
    # the same values under another kind: no credit (the type score already says bar ≠ barh)
    assert compare_chart_traces(trace_with({"kind": "barh", "y": [5, 2, 6]}), ref)["data"] == 0.0
    # the other twelve numbers ignore data
    m = compare_chart_traces(one, ref)
    assert all(m[k] == 1.0 for k in METRIC_KEYS)
    # missing values from the trace, and non-finite numbers a hostile program might write, read as NaN
    nan_ref = trace_with({"kind": "plot", "y": [1, None, 3]})
    assert compare_chart_traces(trace_with({"kind": "plot", "y": [1, float("nan"), 3]}), nan_ref)["data"] == 1.0


def test_data_recorded_and_scored_on_renders(renderer):
    sources = [
        prog("""
            fig, (a, b) = plt.subplots(1, 2)
            a.bar(["x", "y", "z"], [5, 2, np.nan], bottom=1)
            a.barh([1, 2], [-3, 4], left=[1, 1])
            a.plot([1, 2, 3], [3, np.inf, 1], [1, 2], [0, 0])
            b.scatter([1, 2, 3], [3, np.nan, 1])
            b.pie([1, 2, 1])
            b.hist([1, 2, 2])
            fig.add_subplot(2, 2, 4, projection="3d").scatter([1], [2], [3])
        """),
        prog("""
            plt.plot(np.arange(1500.0))
            plt.scatter(["a", "b"], [1, 2])
        """),
        prog("plt.pie([10, 20, 10])\n"),
        prog("plt.pie([1, 1, 1, 1])\n"),
        prog("plt.pie([4, 3, 2, 1])\n"),
        # unreadable data: the call is skipped (an error counted), the program runs on
        prog("""
            import matplotlib.lines
            plt.plot(["a", "b", "c"], ["u", "v", "u"])
            def broken(self):
                raise RuntimeError("no data")
            matplotlib.lines.Line2D.get_xydata = broken
            plt.plot([1, 2])
            plt.bar([1], [2])
        """),
    ]
    mixed, longer, pie_a, pie_flat, pie_ref, odd = traces(renderer, sources)
    by_kind = [(d["kind"], d["axes"]) for d in mixed["data"]]
    assert by_kind == [("bar", 0), ("barh", 0), ("plot", 0), ("plot", 0), ("scatter", 1), ("pie", 1)]  # no hist, 3D
    assert [(d["kind"], d["axes"]) for d in longer["data"]] == [("plot", 0), ("scatter", 0)]
    bar, barh, line, flat, scatter, pie = mixed["data"]
    long, cats = longer["data"]
    assert bar["y"] == [5.0, 2.0, None] and bar["x"] == [0.0, 1.0, 2.0]  # heights, not tops; NaN → null
    assert barh["y"] == [-3.0, 4.0] and barh["x"] == [1.0, 2.0]
    assert line == {"kind": "plot", "axes": 0, "x": [1.0, 2.0, 3.0], "y": [3.0, None, 1.0], "truncated": False}
    assert flat["y"] == [0.0, 0.0]
    assert scatter["x"] == [1.0, None, 3.0] and scatter["y"] == [3.0, None, 1.0]  # a masked point
    assert pie["y"] == pytest.approx([0.25, 0.5, 0.25]) and "x" not in pie
    assert long["truncated"] is True and len(long["y"]) == 1000 and longer["truncated"] is True
    assert mixed["truncated"] is False
    assert cats["x"] == [0.0, 1.0] and cats["y"] == [1.0, 2.0]  # categories as numbers
    assert mixed["errors"] == 0
    assert not any(d["truncated"] for d in pie_a["data"])
    # pies compare fractions: the same shares from other totals score 1; flat vs 4:3:2:1 as by hand
    assert compare_chart_traces(pie_a, {**pie_a, "data": [pie]})["data"] == pytest.approx(1.0)
    assert compare_chart_traces(pie_flat, pie_ref)["data"] == pytest.approx(0.75)
    assert [d["kind"] for d in odd["data"]] == ["plot", "bar"] and odd["errors"] == 1
    assert odd["data"][0]["x"] == [0.0, 1.0, 2.0] and odd["data"][0]["y"] == [0.0, 1.0, 0.0]
    assert odd["type"] == {"plot": 2, "bar": 1}


@pytest.mark.slow
def test_data_score_sees_hedged_values(renderer):
    ref = chart("chart_01_bar")
    hedge = ref.replace("sales = [482, 365, 529, 301, 414]", "sales = [418, 418, 418, 418, 418]")
    close = ref.replace("sales = [482, 365, 529, 301, 414]", "sales = [480, 365, 529, 301, 414]")
    same_shape = ref.replace("ax.bar(regions, sales", "ax.bar(regions, [v + 0 for v in sales]")
    out = chart_code_metrics_batch([(hedge, ref), (close, ref), (same_shape, ref)], renderer=renderer)
    # S = 529 - 0; errors 64, 53, 111, 117, 4 → 1 - 349 / (5 · 529)
    assert out[0]["data"] == pytest.approx(1 - 349 / (5 * 529))
    assert out[1]["data"] == pytest.approx(1 - 2 / (5 * 529))
    assert out[2]["data"] == 1.0 and all(out[2][k] == 1.0 for k in METRIC_KEYS)
    assert out[0]["type_f1"] == out[0]["layout_f1"] == out[0]["color_f1"] == 1.0  # blind to the values


# ---- the reward ----------------------------------------------------------------------------------

class CountingService(RenderService):
    """A render service on the module's renderer that counts the programs it renders."""

    def __init__(self, renderer) -> None:
        super().__init__(timeout=10)
        self.shared = renderer
        self.rendered: list[str] = []

    def renderer(self, kind: str):
        assert kind == "matplotlib" and "chart" in self.options["matplotlib"]["instrument"]
        service = self

        class Counting:
            def render_batch(self, sources):
                service.rendered.extend(sources)
                return service.shared.render_batch(sources)

        return Counting()

    def close(self) -> None:  # the module's renderer outlives the service
        pass


@pytest.mark.slow
def test_chart_code_reward(renderer):
    service = CountingService(renderer)
    reward = ChartCodeReward().bind(service)  # as a composite does: its own service is replaced
    ref = chart("chart_01_bar")
    codes = [ref, ref.replace("ax.bar(", "ax.barh("), "raise RuntimeError('no chart')",
             ref.replace("Q3 2023", "Q4 2023")]
    samples = [Sample(code=c, reference_code=ref, kind="matplotlib", group=0) for c in codes]
    samples += [Sample(code=ref, kind="matplotlib"), Sample(code="<svg/>", reference_code="<svg/>", kind="svg")]
    out = reward(samples)
    assert out.scores[0] == 1.0 and out.scores[4] is None and out.scores[5] is None
    assert all(0.0 <= s <= 1.0 for s in out.scores[:4])
    assert out.scores[2] == 0.0 and out.details[2]["error_kind"] == "runtime"
    # barh for bar: text, layout and colour (bar and barh share a colour group) 1; type 0
    assert out.scores[1] == 0.75 and out.details[1]["type_f1"] == 0.0 and out.details[1]["color_f1"] == 1.0
    assert 0.9 < out.scores[3] < 1.0
    assert set(SCORE_KEYS) <= set(out.details[3]) and out.details[3]["data"] == 1.0  # same values
    assert len(service.rendered) == 5  # four predictions, one shared reference
    again = reward(samples)  # renders are reused
    assert again.scores == out.scores and len(service.rendered) == 5
    text_only = ChartCodeReward(service, metric="text_f1")
    assert text_only(samples[:2]).scores == [1.0, 1.0] and len(service.rendered) == 5
    weighted = ChartCodeReward(service, weights={"type_f1": 1.0})
    assert weighted(samples[:2]).scores == [1.0, 0.0]
    # the data score: weighted by its own key, the four F1 also by their short names
    with_data = ChartCodeReward(service, weights={"text": 1, "layout": 1, "type": 1, "color": 1, "data": 4})
    assert with_data.weights == {"text_f1": 1.0, "layout_f1": 1.0, "type_f1": 1.0, "color_f1": 1.0, "data": 4.0}
    res = with_data(samples[:4])
    assert res.scores[0] == 1.0 and res.scores[2] == 0.0 and res.details[2]["data"] == 0.0
    assert res.scores[1] == pytest.approx(3 / 8)  # barh: text, layout, colour 1; type, data (kind) 0
    assert res.details[1]["data"] == 0.0 and res.details[1]["metric"] == "mean_f1"
    assert res.scores[3] == pytest.approx((out.details[3]["text_f1"] + 3 + 4) / 8)  # the values are right
    assert ChartCodeReward(service).weights["data"] == 0.0  # default: ChartMimic's four F1 only
    assert ChartCodeReward(service, metric="data")(samples[:2]).scores == [1.0, 0.0]
    with pytest.raises(ValueError, match="twice"):
        ChartCodeReward(service, weights={"text": 1, "text_f1": 1})
    with pytest.raises(ValueError, match="may only name"):
        ChartCodeReward(service, weights={"values": 1})
    with pytest.raises(ValueError):
        ChartCodeReward(service, weights={"data": float("nan")})
    with pytest.raises(ValueError):
        ChartCodeReward(service, metric="f1")
    bad_ref = Sample(code=ref, reference_code="raise SystemExit(1)", kind="matplotlib")
    no_code = Sample(code=None, reference_code=ref, kind=None)
    from_completion = Sample(completion=f"Here it is:\n```python\n{ref}```", reference_code=ref, kind="matplotlib")
    res = reward([bad_ref, no_code, from_completion])
    assert res.scores == [None, 0.0, 1.0] and res.details[0]["reference_error_kind"] == "runtime"
    assert res.details[1]["error_kind"] == "no_output" and no_code.kind == "matplotlib"
    # new samples: bad_ref's code, the extracted code, the broken and the good reference (each once)
    assert from_completion.code is not None and from_completion.code.strip() == ref.strip()
    assert len(service.rendered) == 5 + 3 + (from_completion.code != ref)
