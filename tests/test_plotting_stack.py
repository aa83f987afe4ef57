"""What real chart-to-code answers need from the matplotlib renderer (issue 14).

The plotting stack models write against (seaborn, pandas, squarify, matplotlib-venn), pre-imported in
the zygote; the compatibility layer for names matplotlib 3.9+ and numpy 2 removed; one drawing per
figure (a ``constrained_layout`` figure shown with ``plt.show()`` renders as plain Python saves it);
and the chart-code metrics on the kinds a reader sees. The programs are written the way model
answers are.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from visalign.metrics.chart_code import chart_code_metrics_batch, compare_chart_traces
from visalign.renderers import get_renderer
from visalign.renderers.matplotlib import COMPAT_SHIMS, font_cache_dir


@pytest.fixture(scope="module")
def renderer():
    with get_renderer("matplotlib", timeout=15, workers=2, instrument=("chart",)) as r:
        yield r


def answer(src: str) -> str:
    return textwrap.dedent(src).lstrip()


# ---- the plotting stack ------------------------------------------------------------------------------

SEABORN_HEATMAP = answer("""
    import matplotlib.pyplot as plt
    import numpy as np
    import pandas as pd
    import seaborn as sns

    # Data
    regions = ["North", "South", "East", "West"]
    quarters = ["Q1", "Q2", "Q3", "Q4"]
    values = np.array([[12, 15, 14, 18], [9, 11, 13, 12], [16, 14, 19, 21], [7, 9, 8, 11]])
    df = pd.DataFrame(values, index=regions, columns=quarters)

    # Plot
    plt.figure(figsize=(8, 6))
    sns.heatmap(df, annot=True, fmt="d", cmap="YlGnBu", linewidths=0.5, cbar_kws={"label": "Sales (k$)"})
    plt.title("Quarterly Sales by Region")
    plt.xlabel("Quarter")
    plt.ylabel("Region")
    plt.tight_layout()
    plt.show()
""")

SQUARIFY_TREEMAP = answer("""
    import matplotlib.pyplot as plt
    import squarify

    sizes = [35, 25, 20, 12, 8]
    labels = ["Cloud\\n35%", "Mobile\\n25%", "Desktop\\n20%", "IoT\\n12%", "Other\\n8%"]
    colors = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"]

    fig, ax = plt.subplots(figsize=(10, 6))
    squarify.plot(sizes=sizes, label=labels, color=colors, alpha=0.8, ax=ax, text_kwargs={"fontsize": 12})
    ax.set_title("Revenue Share by Segment", fontsize=16)
    ax.axis("off")
    plt.show()
""")

VENN_DIAGRAM = answer("""
    import matplotlib.pyplot as plt
    from matplotlib_venn import venn3

    plt.figure(figsize=(7, 7))
    v = venn3(subsets=(20, 10, 12, 10, 9, 4, 3), set_labels=("Python", "R", "SQL"),
              set_colors=("#ff9999", "#66b3ff", "#99ff99"), alpha=0.7)
    plt.title("Languages Used by Data Scientists")
    plt.show()
""")


@pytest.mark.slow
def test_plotting_stack_is_preloaded_and_renders(renderer):
    """seaborn, pandas, squarify and matplotlib-venn are imported in the zygote (a job finds them in
    ``sys.modules`` before importing anything) and the answers that use them render."""
    preloaded = answer("""
        import sys
        missing = [m for m in ("seaborn", "pandas", "squarify", "matplotlib_venn") if m not in sys.modules]
        assert not missing, missing
        import matplotlib.pyplot as plt
        plt.plot([1, 2, 3])
    """)
    res = renderer.render_batch([preloaded, SEABORN_HEATMAP, SQUARIFY_TREEMAP, VENN_DIAGRAM])
    for r in res:
        assert r.ok, (r.error_kind, r.error)
        assert r.shims == ()
    heatmap, treemap, venn = (r.trace["chart"] for r in res[1:])
    assert heatmap["type"] == {"pcolormesh": 1} and heatmap["color"] == {"pcolormesh": ["YlGnBu"]}
    assert "Quarterly Sales by Region" in heatmap["text"] and "Sales (k$)" in heatmap["text"]
    assert treemap["type"] == {"squarify": 1}
    assert treemap["color"] == {"squarify": ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f"]}
    assert venn["type"] == {"venn": 1} and "#ff9999" in venn["color"]["venn"]  # and the blended overlaps
    assert len(venn["color"]["venn"]) == 7 and "Python" in venn["text"]
    versions = renderer.info()["versions"]
    assert {"seaborn", "pandas", "squarify", "matplotlib_venn"} <= set(versions) and "?" not in versions.values()


def test_dataset_loaders_cannot_reach_the_network_or_host(renderer, tmp_path):
    """The new libraries run in the same sandbox: seaborn's loader and pandas' readers fail cleanly."""
    secret = tmp_path / "secret.csv"
    secret.write_text("a,b\nTOPSECRET,1\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(secret, 0o644)
    progs = [
        "import seaborn as sns\ndf = sns.load_dataset('tips')\nsns.barplot(data=df, x='day', y='tip')\n",
        f"import pandas as pd\nimport matplotlib.pyplot as plt\ndf = pd.read_csv({str(secret)!r})\n"
        "plt.title(str(df.iloc[0, 0]))\n",
    ]
    for r in renderer.render_batch(progs):
        assert not r.ok and r.error_kind in ("sandbox", "runtime"), (r.error_kind, r.error)
        assert "TOPSECRET" not in str(r.trace)


# ---- the compatibility layer ----------------------------------------------------------------------

OLD_API = answer("""
    import matplotlib.pyplot as plt
    import matplotlib.cm as cm
    import numpy as np

    np.random.seed(0)
    data = [np.random.normal(m, 1.0, 50) for m in (1, 2, 3)]
    cmap = cm.get_cmap("viridis", 3)
    fig, ax = plt.subplots()
    bp = ax.boxplot(data, labels=["A", "B", "C"], patch_artist=True)
    for patch, color in zip(bp["boxes"], [cmap(i) for i in range(3)]):
        patch.set_facecolor(color)
    ax.axhline(2.0, color="gray")
    leg = ax.legend([bp["boxes"][0]], ["first"])
    for handle in leg.legendHandles:
        handle.set_alpha(0.5)
    ax.set_title("Old API")
    plt.show()
""")


@pytest.mark.slow
def test_compat_layer_restores_removed_names_and_reports_them(renderer):
    from visalign.renderers._sandboxed import mpl_compat

    assert COMPAT_SHIMS == mpl_compat.SHIMS  # the renderer validates reports against the job's names
    res = renderer.render(OLD_API)
    assert res.ok, (res.error_kind, res.error)
    assert res.shims == ("boxplot.labels", "cm.get_cmap", "legend.legendHandles")
    assert set(res.shims) <= set(COMPAT_SHIMS) and res.to_json()["shims"] == list(res.shims)
    assert res.trace["chart"]["text"].count("A") == 0  # tick labels, not text
    numpy_aliases = renderer.render("import numpy as np\nimport matplotlib.pyplot as plt\n"
                                    "plt.plot([1, np.NaN, 3], color='C0')\nplt.axhline(np.Inf)\n")
    assert numpy_aliases.ok and numpy_aliases.shims == ("numpy.aliases",)
    forged = renderer.render("import matplotlib.pyplot as plt\nplt.plot([1, 2])\n"
                             "import mpl_compat\nmpl_compat.USED.extend(['evil', 'cm.get_cmap'] * 1000)\n")
    assert forged.shims in ((), ("cm.get_cmap",))  # only known names, each once, whatever the job wrote
    with get_renderer("matplotlib", timeout=15, workers=1, compat=False) as strict:
        old = strict.render(OLD_API)
    assert not old.ok and old.error_kind == "runtime" and "get_cmap" in old.error and old.shims == ()


# ---- one drawing per figure ---------------------------------------------------------------------------

CONSTRAINED_SHOW = answer("""
    import matplotlib.pyplot as plt
    import numpy as np

    x = np.linspace(0, 10, 200)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for i, ax in enumerate(axes.flat):
        ax.plot(x, np.sin(x + i), label=f"phase {i}")
        ax.set_title(f"Panel {i + 1}: a rather long title")
        ax.set_xlabel("time (s)")
        ax.set_ylabel("amplitude (mV)")
        ax.legend(loc="upper right")
    im = axes[1, 1].imshow(np.outer(np.sin(x[:20]), np.cos(x[:20])), cmap="coolwarm", aspect="auto")
    fig.colorbar(im, ax=axes[1, 1], label="product")
    fig.suptitle("Constrained layout, shown")
    plt.show()
""")

# Plain Python, as a harness without visalign runs an answer: Agg, ``show`` draws nothing; the image
# is what the program saved itself (its last ``savefig``, at the renderer's dpi), else the current
# figure saved once at the end.
PLAIN_PYTHON = """
import io, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure
saved, savefig = [], Figure.savefig
def own_savefig(fig, *args, **kwargs):
    buf = io.BytesIO()
    savefig(fig, buf, format="png", dpi=100)
    saved.append(buf.getvalue())
Figure.savefig = own_savefig
plt.show = lambda *a, **k: None
exec(compile(sys.stdin.read(), "<answer>", "exec"), {"__name__": "__main__"})
if not saved:
    plt.gcf().savefig(None)
sys.stdout.buffer.write(saved[-1])
"""


def _plain_python_png(program: str, tmp_path) -> np.ndarray:
    config = tmp_path / "mplconfig"
    cache = font_cache_dir()
    if cache:
        shutil.copytree(cache, config)
    env = {"PATH": os.environ.get("PATH", "/usr/bin"), "MPLBACKEND": "Agg", "MPLCONFIGDIR": str(config),
           "HOME": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", PLAIN_PYTHON], input=program.encode(), capture_output=True,
                         env=env, cwd=tmp_path, timeout=120, check=True)
    return np.asarray(Image.open(io.BytesIO(out.stdout)).convert("RGB"))


@pytest.mark.slow
@pytest.mark.parametrize("ending", ["plt.show()", "plt.savefig('figure.png', dpi=300)\nplt.show()"])
def test_shown_figure_is_drawn_once_like_plain_python(renderer, tmp_path, ending):
    program = CONSTRAINED_SHOW.replace("plt.show()", ending)
    res = renderer.render(program)
    assert res.ok, (res.error_kind, res.error)
    expected = _plain_python_png(program, tmp_path)
    got = np.asarray(res.image)
    assert got.shape == expected.shape
    assert np.array_equal(got, expected), f"{(got != expected).any(-1).sum()} pixels differ"


def test_changed_after_show_is_captured_again(renderer):
    """A figure changed after its snapshot is captured again (its final state), and only then."""
    program = answer("""
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(constrained_layout=True)
        ax.bar(["a", "b"], [1, 2], color="#1f77b4")
        ax.set_title("First")
        plt.show()
        ax.set_title("Second")
    """)
    res = renderer.render(program)
    assert res.ok and res.trace["chart"]["text"] == ["Second"]


# ---- the metrics on what a reader sees ------------------------------------------------------------

BAR = answer("""
    import matplotlib.pyplot as plt
    teams = ["Red", "Blue", "Green", "Gold"]
    wins = [12, 9, 15, 7]
    plt.figure(figsize=(8, 5))
    plt.{call}(teams, wins, color=["#d62728", "#1f77b4", "#2ca02c", "#bcbd22"])
    plt.title("Season Wins")
    plt.show()
""")

MANY_IMSHOW = answer("""
    import matplotlib.pyplot as plt
    import numpy as np
    rng = np.random.default_rng(1)
    fig, axes = plt.subplots(3, 6, figsize=(12, 6))
    for i, ax in enumerate(axes.flat):
        ax.imshow(rng.random((8, 8)), cmap="viridis")
        ax.set_title(f"Sample {i}")
        ax.axis("off")
    plt.tight_layout()
    plt.show()
""")

ONE_IMSHOW = answer("""
    import matplotlib.pyplot as plt
    import numpy as np
    data = np.random.default_rng(1).random((8, 8))
    plt.{call}(data, cmap="viridis")
    plt.colorbar()
    plt.title("Sample")
    plt.show()
""")

TWO_FIGURES = answer("""
    import matplotlib.pyplot as plt
    plt.figure()
    plt.plot([1, 2, 3], color="red")
    plt.title("Draft")
    plt.figure()
    plt.plot([3, 2, 1], color="blue")
    plt.title("Final")
    plt.show()
""")

COLOURED_LATER = answer("""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    bars = ax.bar(["x", "y", "z"], [3, 5, 2])
    for bar, c in zip(bars, ["#8c564b", "#e377c2", "#7f7f7f"]):
        bar.set_color(c)
    wedges = ax.fill_between([0, 1, 2], [0, 1, 0])
    wedges.set_facecolor("#17becf")
    ax.set_title("Colours set after the call")
    plt.show()
""")

COLOURED_AT_CALL = answer("""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots()
    ax.bar(["x", "y", "z"], [3, 5, 2], color=["#8c564b", "#e377c2", "#7f7f7f"])
    ax.fill_between([0, 1, 2], [0, 1, 0], color="#17becf")
    ax.set_title("Colours set after the call")
    plt.show()
""")


def test_colour_and_type_on_reader_visible_kinds(renderer):
    pairs = [
        (BAR.format(call="barh"), BAR.format(call="bar")),             # right colours, wrong orientation
        (ONE_IMSHOW.format(call="imshow"), MANY_IMSHOW),                # one viridis against eighteen
        (ONE_IMSHOW.format(call="matshow"), ONE_IMSHOW.format(call="imshow")),
        (TWO_FIGURES, TWO_FIGURES.replace('"Draft"', '"Other draft"').replace("red", "green")),
        (COLOURED_LATER, COLOURED_AT_CALL),
    ]
    barh, imshows, matshow, figures, later = chart_code_metrics_batch(pairs, renderer=renderer)
    assert barh["color_f1"] == 1.0 and barh["type_f1"] == 0.0 and barh["text_f1"] == 1.0
    assert imshows["color_f1"] == 1.0 and imshows["type_precision"] == 1.0
    assert matshow["type_f1"] == 1.0 and matshow["color_f1"] == 1.0
    assert figures["text_f1"] == 1.0 and figures["color_f1"] == 1.0 and figures["type_f1"] == 1.0
    assert all(v == 1.0 for k, v in later.items()), later
    # a line colour does not match a bar colour: kinds a reader tells apart stay apart
    line = {"text": [], "layout": [], "type": {"plot": 1}, "color": {"plot": ["#1f77b4"]}}
    bars = {"text": [], "layout": [], "type": {"bar": 1}, "color": {"bar": ["#1f77b4"]}}
    assert compare_chart_traces(line, bars)["color_f1"] == 0.0
