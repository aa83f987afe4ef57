"""matplotlib job handler for the zygote: runs plotting code and captures the figure(s) it drew.

Runs inside the sandbox, in a child forked from a zygote that already imported numpy and
matplotlib, so a job pays only for its own drawing. Figures are captured whether the program calls
``savefig`` (a snapshot is taken at that moment, so a later ``plt.close()`` loses nothing),
``show`` (same) or nothing (figures still open at the end).

Instrumentation: ``options["instrument"]`` names hooks from :data:`INSTRUMENTS`. Each hook is an
object with ``install()`` (called before the program runs) and ``collect() -> dict`` (called after);
their JSON-able results travel with the result (as bytes the parent parses) and reach the caller as
``RenderResult.trace``.
Hooks are collected last, after the final capture of the figures, so that hooks recording at draw
time see every render; a hook with ``select(figures)`` is told first which figures the image shows
(so that its record describes the same figures as the image). ``chart`` (``mpl_instrument.py``)
feeds the chart-code metrics.

One drawing per figure: a figure is drawn when the program saves or shows it, or at the end if it was
neither, and drawn again only if the program changed it since (matplotlib marks it stale; the
drawing itself may leave it stale, as ``constrained_layout`` does, so the mark is cleared after each
capture). A second drawing of an unchanged figure can differ from the first (layout engines start
from the positions the first one left), and plain Python, where ``show`` draws nothing under Agg,
saves it once.

Compatibility (``options["compat"]``, on unless False): ``mpl_compat.py`` restores the names
matplotlib 3.9+ and numpy 2 removed; the ones the program used travel in the trace under
``"compat"`` (the renderer moves them to ``RenderResult.shims``).
"""

from __future__ import annotations

import builtins
import io
import json
import os
import traceback

INSTRUMENTS: dict[str, object] = {}
# Importable libraries of the plotting stack, pre-imported (their versions reach ``renderer.info()``).
STACK: tuple[str, ...] = ("pandas", "seaborn", "squarify", "matplotlib_venn", "networkx")

_state: dict = {}


def preload() -> dict:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import mpl_compat
    import numpy as np
    from mpl_instrument import ChartInstrument
    from PIL import Image  # noqa: F401  (used by the "all" policy)
    from zygote import classify_exception, write_result

    INSTRUMENTS["chart"] = ChartInstrument()  # installed only in the forked child, per job

    # The plotting stack chart code imports (ChartMimic's environment: pandas, seaborn, squarify,
    # matplotlib-venn, networkx), and optional matplotlib modules: import them now so jobs pay nothing.
    # At the fallback levels these are also all a job can import from an install the unprivileged uid
    # cannot read (a 0700 home): the worker drops to its uid after this.
    versions = {"matplotlib": matplotlib.__version__, "numpy": np.__version__}
    for name in STACK:
        try:
            module = __import__(name)
        except Exception:
            continue
        version = getattr(module, "__version__", None)
        if not isinstance(version, str):  # squarify has none: ask its distribution
            try:
                from importlib.metadata import version as dist_version

                version = dist_version(name.replace("_", "-"))
            except Exception:
                version = "?"
        versions[name] = version
    for name in ("matplotlib.patches", "matplotlib.colors", "matplotlib.ticker",
                 "mpl_toolkits.mplot3d", "matplotlib.gridspec", "matplotlib.dates", "mpl_toolkits.axes_grid1",
                 "mpl_toolkits.axes_grid1.inset_locator", "matplotlib.patheffects", "matplotlib.animation",
                 "matplotlib.cm", "matplotlib.lines", "matplotlib.collections", "matplotlib.path",
                 "matplotlib.transforms", "matplotlib.table", "matplotlib.font_manager", "matplotlib.markers",
                 "matplotlib.image", "matplotlib.scale", "matplotlib.projections.polar", "matplotlib.sankey",
                 "numpy.ma", "numpy.random", "numpy.linalg", "numpy.polynomial", "numpy.fft"):
        try:
            __import__(name)
        except Exception:
            pass
    _warm_up(plt, np)
    _state.update(classify_exception=classify_exception, write_result=write_result, dumps=json.dumps,
                  compat=mpl_compat)
    return versions


def _warm_up(plt, np) -> None:
    """Draw the common chart kinds once, so that forked jobs inherit warm caches (fonts, text
    layout, tickers, colormaps, the PNG writer) instead of each paying for them again."""
    fig, axes = plt.subplots(2, 3, figsize=(9, 5))
    x = np.arange(6)
    axes[0, 0].bar(x, x + 1, color="#1f77b4", label="bar", yerr=0.3)
    axes[0, 0].barh(x, x, alpha=0.3)
    axes[0, 0].legend(loc="upper left")
    axes[0, 1].plot(x, x**2, "o-", label="line")
    axes[0, 1].fill_between(x, x, x**2, alpha=0.2)
    axes[0, 1].set_yscale("log")
    axes[0, 1].annotate("peak", xy=(5, 25), xytext=(2, 20), arrowprops={"arrowstyle": "->"})
    sc = axes[0, 2].scatter(x, x, c=x, cmap="viridis", s=x * 10)
    fig.colorbar(sc, ax=axes[0, 2])
    axes[1, 0].pie([1, 2, 3], labels=["a", "b", "c"], autopct="%1.0f%%")
    im = axes[1, 1].imshow(np.arange(16.0).reshape(4, 4), cmap="coolwarm")
    axes[1, 1].text(1, 1, "1.0", ha="center", va="center")
    fig.colorbar(im, ax=axes[1, 1])
    axes[1, 2].hist(np.linspace(0, 1, 50), bins=10, edgecolor="black")
    axes[1, 2].boxplot([x, x + 1])
    for ax in axes.flat:
        ax.set_title("Title", fontsize=12, fontweight="bold")
        ax.set_xlabel("x label")
        ax.set_ylabel("y label")
        ax.grid(True, linestyle="--", alpha=0.5)
    fig.suptitle("Warm-up $x^2$")
    fig.tight_layout()
    for dpi in (100, 150):
        fig.savefig(io.BytesIO(), format="png", dpi=dpi)
    plt.close("all")
    fig = plt.figure()
    fig.add_subplot(projection="polar").plot(x, x)
    fig.savefig(io.BytesIO(), format="png")
    plt.close("all")


def _render(fig, opts: dict) -> bytes:
    if opts.get("figsize"):
        w, h = opts["figsize"]
        fig.set_size_inches(float(w), float(h))
    dpi = float(opts.get("dpi") or 100)
    w, h = fig.get_size_inches() * dpi
    max_pixels = int(opts.get("max_pixels") or 40_000_000)
    if not (w > 0 and h > 0) or w * h > max_pixels:
        raise MemoryError(f"figure of {w:.0f}x{h:.0f} px exceeds max_pixels={max_pixels}")
    buf = io.BytesIO()
    kwargs = {"bbox_inches": "tight"} if opts.get("tight") else {}
    _state["orig_savefig"](fig, buf, format="png", dpi=dpi, **kwargs)
    return buf.getvalue()


def _stack(pngs: list[bytes]) -> bytes:
    from PIL import Image

    imgs = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs]
    width = max(i.width for i in imgs)
    canvas = Image.new("RGB", (width, sum(i.height for i in imgs)), "white")
    y = 0
    for im in imgs:
        canvas.paste(im, (0, y))
        y += im.height
    buf = io.BytesIO()
    canvas.save(buf, format="PNG")
    return buf.getvalue()


def _trace(names: list[str], hooks: list) -> bytes | None:
    """Every hook's records (and the compatibility shims used) as JSON bytes; None when there are none."""
    try:
        used = [str(n)[:40] for n in list(_state["compat"].USED)[:20]] if _state.get("compat_on") else []
    except Exception:  # the program replaced the list: report nothing, the renderer validates anyway
        used = []
    if not hooks and not used:
        return None
    trace: dict = {"compat": used} if used else {}
    for name, hook in zip(names, hooks, strict=True):
        try:
            trace[name] = hook.collect()
        except Exception as exc:
            trace[name] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        return _state["dumps"](trace, default=str).encode()
    except Exception:  # e.g. the program broke json: no trace, the caller copes
        return None


def run(source: str, opts: dict, jobdir: str) -> None:
    import matplotlib
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    write_result = _state["write_result"]
    snapshots: dict[int, tuple[bytes, object]] = {}  # figure number → (PNG, the figure drawn)
    _state["orig_savefig"] = Figure.savefig

    def capture(fig) -> None:
        """Draw ``fig`` unless its current state is already captured (see the module docstring)."""
        num = getattr(fig, "number", None)
        if num is None:
            return
        done = snapshots.get(num)
        if done is not None and done[1] is fig and not fig.stale:
            return
        snapshots[num] = (_render(fig, opts), fig)
        fig.stale = False  # changes after this mark it stale again (artists tell their figure)

    def savefig(self, *args, **kwargs):  # the program's own savefig: capture, write nothing
        capture(self)

    def show(*args, **kwargs):
        for num in plt.get_fignums():
            capture(plt.figure(num))

    Figure.savefig = savefig
    plt.show = show
    matplotlib.use = lambda *a, **k: None
    plt.switch_backend = lambda *a, **k: None
    if opts.get("compat", True) is not False:
        _state["compat_on"] = True
        try:
            _state["compat"].install()
        except Exception:  # a shim that does not fit this matplotlib: the program runs without it
            pass
    names = [n for n in opts.get("instrument") or () if n in INSTRUMENTS]
    hooks = [INSTRUMENTS[n] for n in names]
    for hook in hooks:
        hook.install()

    def finish(shown=None, **result) -> None:  # traces last: draw-time hooks see the final renders
        for hook in hooks:
            if shown is not None and hasattr(hook, "select"):
                try:
                    hook.select(shown)
                except Exception:
                    pass
        write_result(trace=_trace(names, hooks), **result)

    try:
        code = compile(source, "<generated>", "exec")
    except (SyntaxError, ValueError) as exc:
        write_result(error_kind="syntax", error=f"{type(exc).__name__}: {exc}")
        return
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    failure = None
    try:
        exec(code, namespace)
    except SystemExit as exc:
        if exc.code not in (None, 0):
            failure = ("runtime", f"SystemExit({exc.code!r})")
    except BaseException as exc:
        tb = traceback.format_exception_only(type(exc), exc)[-1].strip() + _program_line(exc, source)
        failure = (_state["classify_exception"](exc, os.path.realpath(jobdir)), tb)
    if failure is not None:
        finish(error_kind=failure[0], error=failure[1])
        return
    try:
        for num in plt.get_fignums():
            capture(plt.figure(num))  # not saved or shown yet, or changed since
    except MemoryError as exc:
        finish(error_kind="memory", error=str(exc) or "MemoryError")
        return
    except Exception as exc:
        finish(error_kind="runtime", error=f"{type(exc).__name__}: {exc}")
        return
    if not snapshots:
        finish(error_kind="no_output", error="the program drew no figure")
        return
    order = sorted(snapshots)
    policy = opts.get("figures") or "last"
    if policy == "first":
        shown = [order[0]]
    elif policy == "all":
        shown = order
    else:
        shown = [order[-1]]
    png = snapshots[shown[0]][0] if len(shown) == 1 else _stack([snapshots[n][0] for n in shown])
    finish(shown=[snapshots[n][1] for n in shown], error_kind=None, error=None, png=png, figures=len(order))


def _program_line(exc: BaseException, source: str) -> str:
    """`` (line N: <the line>)``: where in the program the exception arose (its deepest frame in the
    program itself, not in matplotlib), so a runtime error points at the model's line."""
    line = None
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == "<generated>":
            line = tb.tb_lineno
        tb = tb.tb_next
    if line is None:
        return ""
    lines = source.splitlines()
    text = lines[line - 1].strip()[:120] if 0 < line <= len(lines) else ""
    return f" (line {line}: {text})" if text else f" (line {line})"
