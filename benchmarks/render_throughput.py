"""Render throughput: visalign's renderers against what evaluation harnesses usually do.

Run from the repository root (the final numbers belong on a quiet machine):

    .venv/bin/python benchmarks/render_throughput.py --markdown
    .venv/bin/python benchmarks/render_throughput.py --kinds matplotlib --workers 2 --repeat 3

Every section renders the same inputs with the same number of workers (``--workers``) three ways:

- **visalign**: ``get_renderer(kind, workers=W)``, created once; only ``render_batch`` over the whole
  input set is timed, after one small warm-up batch.
- **baseline**, what harnesses do per sample:
  matplotlib: a fresh ``python file.py`` per program (ChartMimic style: the program is written to a
  temporary directory with ``plt.savefig(...)`` of the current figure appended; it keeps its own
  ``savefig`` calls too), W at a time, ``MPLBACKEND=Agg``;
  latex: a fresh ``pdflatex`` + ``pdftoppm`` per source in the same standalone wrapping (visalign's
  ``prepare`` with the whole preamble compiled each time), at the renderer's dpi, no sandbox;
  html: a fresh Chromium launch per page (Playwright) + screenshot + close, one Playwright driver per
  worker thread started before timing (so the baseline pays for the browser, not for the driver),
  with the renderer's viewport and full-page setting;
  svg: none (resvg already runs in-process; the ceiling is the comparison).
- **ceiling**, no isolation at all:
  matplotlib: a ``multiprocessing`` pool of W processes created before timing that exec each program
  (its own ``savefig``/``show`` made no-ops) and render the last figure once to PNG bytes in memory;
  svg: resvg in-process (``resvg_py.svg_to_bytes``) in a pool of W processes.
  The parent decodes every PNG into a PIL image, as visalign does.

Timings are the best of ``--repeat`` runs; the methods of a section take turns in each run so that
background load hits them alike. Every visalign result must be ``ok``: failures are printed. A
renderer that cannot be created (not written yet, missing system dependency) prints
``skipped: <reason>`` for its section.

Inputs: ``benchmarks/charts/*.py`` (matplotlib) and, generated here from fixed seeds, ~20 LaTeX tables
and formulas, ~50 SVGs and ~20 HTML pages.
"""

from __future__ import annotations

import argparse
import io
import multiprocessing
import os
import queue
import random
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CHARTS_DIR = HERE / "charts"
KINDS = ("matplotlib", "latex", "svg", "html")
UNITS = {"matplotlib": "charts", "latex": "docs", "svg": "SVGs", "html": "pages"}
DPI = 100.0  # matplotlib: visalign's default dpi; the baseline's appended savefig and the ceiling use it too
CHROMIUM = os.environ.get("VISALIGN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


class Skip(Exception):
    """A section cannot run here (renderer missing, tool missing); the message says why."""


@dataclass
class Outcome:
    """One item of one method: did it produce an image, and if not why."""

    ok: bool
    error: str = ""


@dataclass
class Section:
    """The timings of one kind; seconds are best-of-repeat wall-clock for the whole input set."""

    kind: str
    items: int
    workers: int
    visalign_s: float | None = None
    baseline_s: float | None = None
    ceiling_s: float | None = None
    baseline_name: str = ""
    ceiling_name: str = ""
    failures: dict[str, list[str]] = field(default_factory=dict)
    skipped: str | None = None

    def rate(self, seconds: float | None) -> float | None:
        return None if not seconds else self.items / seconds


# ----------------------------------------------------------------------------------------------------
# helpers


def decode_png(data: bytes) -> Any:
    """PNG bytes -> RGB PIL image (what every method has to hand back)."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.convert("RGB")


def open_renderer(kind: str, workers: int, timeout: float) -> Any:
    """``get_renderer(kind)``, or :class:`Skip` with the reason it cannot be created."""
    try:
        from visalign.renderers import get_renderer

        return get_renderer(kind, timeout=timeout, workers=workers)
    except Exception as exc:  # import error, missing browser / TeX, unfinished renderer...
        raise Skip(f"visalign {kind} renderer unavailable ({type(exc).__name__}: {exc})") from exc


def visalign_outcomes(results: Sequence[Any]) -> list[Outcome]:
    return [Outcome(bool(r.ok), "" if r.ok else f"{r.error_kind}: {r.error}") for r in results]


def run_threads(fn: Callable[[int], Outcome], n: int, workers: int) -> list[Outcome]:
    """``fn(i)`` for i in range(n) on ``workers`` threads; an exception is a failed outcome."""

    def safe(i: int) -> Outcome:
        try:
            return fn(i)
        except Exception as exc:
            return Outcome(False, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=workers) as ex:
        return list(ex.map(safe, range(n)))


def measure(methods: dict[str, Callable[[], list[Outcome]]], repeat: int
            ) -> tuple[dict[str, float], dict[str, list[Outcome]]]:
    """Run each method ``repeat`` times, taking turns; best seconds and the last outcomes of each."""
    best: dict[str, float] = {}
    last: dict[str, list[Outcome]] = {}
    for _ in range(repeat):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            outcomes = fn()
            dt = time.perf_counter() - t0
            best[name] = min(dt, best.get(name, float("inf")))
            last[name] = outcomes
    return best, last


def failures(names: Sequence[str], outcomes: Sequence[Outcome]) -> list[str]:
    return [f"{n}: {o.error}" for n, o in zip(names, outcomes, strict=True) if not o.ok]


def warmup_slice(n: int, workers: int) -> slice:
    return slice(0, min(n, max(2 * workers, 4)))


# ----------------------------------------------------------------------------------------------------
# matplotlib

HARNESS_SUFFIX = """

# --- appended by the benchmark harness (ChartMimic style) ---
import matplotlib.pyplot as _harness_plt
_harness_plt.savefig({path!r}, dpi={dpi})
"""


def load_charts(limit: int | None) -> tuple[list[str], list[str]]:
    files = sorted(CHARTS_DIR.glob("chart_*.py"))[:limit]
    if not files:
        raise Skip(f"no chart programs in {CHARTS_DIR}")
    return [f.name for f in files], [f.read_text() for f in files]


def python_per_sample(sources: Sequence[str], workers: int, timeout: float, tmp: Path) -> list[Outcome]:
    """Baseline (b): write each program with an appended savefig and run a fresh interpreter on it."""
    env = {**os.environ, "MPLBACKEND": "Agg"}
    run_dir = Path(tempfile.mkdtemp(dir=tmp))

    def one(i: int) -> Outcome:
        d = run_dir / f"sample_{i:03d}"
        d.mkdir()
        out = d / "harness_out.png"
        prog = d / "program.py"
        prog.write_text(sources[i] + HARNESS_SUFFIX.format(path=str(out), dpi=DPI))
        try:
            proc = subprocess.run([sys.executable, str(prog)], cwd=d, env=env, capture_output=True,
                                  text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(False, f"timeout after {timeout:.0f} s")
        if proc.returncode != 0:
            tail = (proc.stderr.strip().splitlines() or ["?"])[-1]
            return Outcome(False, f"exit {proc.returncode}: {tail}")
        if not out.exists():
            return Outcome(False, "no PNG written")
        decode_png(out.read_bytes())
        return Outcome(True)

    return run_threads(one, len(sources), workers)


_mpl: dict[str, Any] = {}


def _mpl_worker_init(workdir: str) -> None:
    """Ceiling worker: import and warm matplotlib once, like a visalign zygote does."""
    os.chdir(workdir)  # anything a program writes lands here, not in the repository
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    for name in ("numpy", "matplotlib.patches", "matplotlib.ticker", "matplotlib.gridspec"):
        __import__(name)
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1], label="warm")
    ax.set_title("warm")
    ax.legend()
    fig.savefig(io.BytesIO(), format="png")
    plt.close("all")
    _mpl.update(plt=plt, savefig=Figure.savefig)
    Figure.savefig = lambda self, *a, **k: None  # the program's own savefig: draw nothing, write nothing
    plt.show = lambda *a, **k: None


def _mpl_worker_run(source: str) -> tuple[bool, bytes | str]:
    """Ceiling job: exec the program, render its last figure once to PNG bytes."""
    plt = _mpl["plt"]
    try:
        exec(compile(source, "<chart>", "exec"), {"__name__": "__main__"})
        nums = plt.get_fignums()
        if not nums:
            return False, "no figure"
        buf = io.BytesIO()
        _mpl["savefig"](plt.figure(nums[-1]), buf, format="png", dpi=DPI)
        return True, buf.getvalue()
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"
    finally:
        plt.close("all")


def pool_outcomes(pool: Any, fn: Callable[[str], tuple[bool, bytes | str]], sources: Sequence[str]
                  ) -> list[Outcome]:
    out = []
    for ok, payload in pool.imap(fn, sources, chunksize=1):
        if ok:
            decode_png(payload)  # type: ignore[arg-type]
            out.append(Outcome(True))
        else:
            out.append(Outcome(False, str(payload)))
    return out


def bench_matplotlib(args: argparse.Namespace, tmp: Path) -> Section:
    names, sources = load_charts(args.limit)
    sec = Section("matplotlib", len(sources), args.workers, baseline_name="python file.py per sample",
                  ceiling_name="in-process pool, no isolation")
    warm = sources[warmup_slice(len(sources), args.workers)]
    ctx = multiprocessing.get_context("spawn")
    with open_renderer("matplotlib", args.workers, args.timeout) as renderer, \
            ctx.Pool(args.workers, initializer=_mpl_worker_init, initargs=(str(tmp),)) as pool:
        renderer.render_batch(warm)
        python_per_sample(warm[: args.workers], args.workers, args.timeout, tmp)  # font cache, page cache
        pool_outcomes(pool, _mpl_worker_run, warm)
        best, last = measure({
            "visalign": lambda: visalign_outcomes(renderer.render_batch(sources)),
            "baseline": lambda: python_per_sample(sources, args.workers, args.timeout, tmp),
            "ceiling": lambda: pool_outcomes(pool, _mpl_worker_run, sources),
        }, args.repeat)
    sec.visalign_s, sec.baseline_s, sec.ceiling_s = best["visalign"], best["baseline"], best["ceiling"]
    sec.failures = {k: failures(names, v) for k, v in last.items()}
    return sec


# ----------------------------------------------------------------------------------------------------
# latex

LATEX_PREAMBLE = r"""\documentclass[border=4pt]{standalone}
\usepackage{amsmath,amssymb,booktabs,multirow,makecell,array,xcolor}
\begin{document}
"""

FORMULAS = [
    r"x = \frac{-b \pm \sqrt{b^2 - 4ac}}{2a}",
    r"\int_0^1 x^{n}\,dx = \frac{1}{n+1}",
    r"\int_{-\infty}^{\infty} e^{-x^2}\,dx = \sqrt{\pi}",
    r"e^{i\pi} + 1 = 0",
    r"\sum_{k=1}^{n} k^2 = \frac{n(n+1)(2n+1)}{6}",
    r"\lim_{n \to \infty} \left(1 + \frac{1}{n}\right)^{n} = e",
    r"\mathbf{A} = \begin{bmatrix} a_{11} & a_{12} \\ a_{21} & a_{22} \end{bmatrix}, \quad"
    r" \det \mathbf{A} = a_{11}a_{22} - a_{12}a_{21}",
    r"\mathcal{L}(\theta) = -\frac{1}{N}\sum_{i=1}^{N} \log p_\theta(y_i \mid x_i)"
    r" + \lambda \lVert \theta \rVert_2^2",
]


def latex_sources(n: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """Tables (booktabs, multirow, multicolumn, makecell) and display formulas, as a model writes them."""
    rng = random.Random(seed)
    models = ["ResNet-50", "ViT-B/16", "ConvNeXt-T", "Swin-T", "DeiT-S", "EffNet-B3", "RegNetY", "MLP-Mixer"]
    datasets = ["ImageNet", "CIFAR-10", "CIFAR-100", "Places365", "iNat", "COCO"]
    names, out = [], []
    for i in range(n):
        kind = i % 5
        if kind in (0, 1):  # booktabs table, the second flavour with multirow + multicolumn
            cols = rng.sample(datasets, rng.randint(3, 5))
            rows = rng.sample(models, rng.randint(4, 7))
            spec = "l" + "c" * len(cols)
            lines = [rf"\begin{{tabular}}{{{spec}}}", r"\toprule"]
            if kind == 1:
                lines += [rf"\multirow{{2}}{{*}}{{Model}} & \multicolumn{{{len(cols)}}}{{c}}{{Top-1 accuracy (\%)}} \\",
                          rf"\cmidrule(lr){{2-{len(cols) + 1}}}", " & " + " & ".join(cols) + r" \\"]
            else:
                lines.append("Model & " + " & ".join(cols) + r" \\")
            lines.append(r"\midrule")
            for r in rows:
                vals = [f"{rng.uniform(55, 97):.1f}" for _ in cols]
                best = max(range(len(vals)), key=lambda k: float(vals[k]))
                vals[best] = rf"\textbf{{{vals[best]}}}"
                lines.append(f"{r} & " + " & ".join(vals) + r" \\")
            lines += [r"\bottomrule", r"\end{tabular}"]
            names.append(f"latex_{i:02d}_{'booktabs' if kind == 0 else 'multirow'}")
        elif kind == 2:  # makecell
            lines = [r"\begin{tabular}{|c|c|c|}", r"\hline",
                     r"\thead{Method} & \thead{Train\\time (h)} & \thead{Memory\\(GB)} \\", r"\hline"]
            for r in rng.sample(models, 4):
                lines.append(rf"\makecell{{{r}\\(ours)}} & {rng.uniform(2, 40):.1f} & {rng.uniform(4, 80):.0f} \\")
                lines.append(r"\hline")
            lines.append(r"\end{tabular}")
            names.append(f"latex_{i:02d}_makecell")
        else:  # a bare display formula
            lines = [FORMULAS[i % len(FORMULAS)]]
            names.append(f"latex_{i:02d}_formula")
        out.append("\n".join(lines) + "\n")
    return names, out


def wrap_latex(source: str) -> str:
    """The standalone document a fragment renders in (a full document is used as is)."""
    if r"\documentclass" in source:
        return source
    body = source.strip()
    if not body.startswith(r"\begin{tabular"):
        body = rf"$\displaystyle {body}$"
    return LATEX_PREAMBLE + body + "\n\\end{document}\n"


def latex_wrapper() -> Callable[[str], str]:
    """visalign's own wrapping (``visalign.renderers.latex.prepare``, full preamble), else :func:`wrap_latex`."""
    try:
        from visalign.renderers.latex import prepare
    except ImportError:
        return wrap_latex

    def wrap(source: str) -> str:
        try:
            return prepare(source).tex
        except Exception:
            return wrap_latex(source)

    return wrap


def pdflatex_per_sample(sources: Sequence[str], workers: int, timeout: float, dpi: float, tmp: Path
                        ) -> list[Outcome]:
    """Baseline: a fresh pdflatex + pdftoppm per source, no sandbox."""
    run_dir = Path(tempfile.mkdtemp(dir=tmp))
    wrap = latex_wrapper()

    def one(i: int) -> Outcome:
        d = run_dir / f"doc_{i:03d}"
        d.mkdir()
        (d / "doc.tex").write_text(wrap(sources[i]))
        try:
            tex = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "-no-shell-escape",
                                  "doc.tex"], cwd=d, capture_output=True, text=True, timeout=timeout)
            if tex.returncode != 0 or not (d / "doc.pdf").exists():
                err = next((ln for ln in tex.stdout.splitlines() if ln.startswith("!")), "no PDF")
                return Outcome(False, f"pdflatex: {err}")
            ppm = subprocess.run(["pdftoppm", "-png", "-r", f"{dpi:g}", "-singlefile", "doc.pdf", "page"],
                                 cwd=d, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return Outcome(False, f"timeout after {timeout:.0f} s")
        if ppm.returncode != 0:
            return Outcome(False, f"pdftoppm: {ppm.stderr.strip()}")
        decode_png((d / "page.png").read_bytes())
        return Outcome(True)

    return run_threads(one, len(sources), workers)


def bench_latex(args: argparse.Namespace, tmp: Path) -> Section:
    names, sources = latex_sources()
    names, sources = names[: args.limit], sources[: args.limit]
    sec = Section("latex", len(sources), args.workers, baseline_name="pdflatex + pdftoppm per sample")
    missing = [t for t in ("pdflatex", "pdftoppm") if not any(
        os.access(os.path.join(p, t), os.X_OK) for p in os.environ.get("PATH", "").split(os.pathsep))]
    if missing:
        raise Skip(f"{', '.join(missing)} not on PATH")
    with open_renderer("latex", args.workers, args.timeout) as renderer:
        dpi = float(renderer.info().get("dpi") or 150)
        warm = sources[warmup_slice(len(sources), args.workers)]
        renderer.render_batch(warm)
        pdflatex_per_sample(warm[: args.workers], args.workers, args.timeout, dpi, tmp)
        best, last = measure({
            "visalign": lambda: visalign_outcomes(renderer.render_batch(sources)),
            "baseline": lambda: pdflatex_per_sample(sources, args.workers, args.timeout, dpi, tmp),
        }, args.repeat)
    sec.visalign_s, sec.baseline_s = best["visalign"], best["baseline"]
    sec.failures = {k: failures(names, v) for k, v in last.items()}
    return sec


# ----------------------------------------------------------------------------------------------------
# svg

PALETTE = ["#264653", "#2a9d8f", "#e9c46a", "#f4a261", "#e76f51", "#457b9d", "#8338ec", "#ff006e", "#3a86ff"]


def svg_sources(n: int = 50, seed: int = 0) -> tuple[list[str], list[str]]:
    """Bar charts, line charts, gradient icons and shape compositions, 240-480 px."""
    rng = random.Random(seed)
    names, out = [], []
    for i in range(n):
        w, h = rng.choice([(320, 240), (400, 300), (480, 320), (256, 256)])
        head = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" '
                f'font-family="DejaVu Sans, sans-serif">\n<rect width="{w}" height="{h}" fill="#ffffff"/>\n')
        body: list[str] = []
        kind = ("bars", "line", "icon", "shapes")[i % 4]
        if kind == "bars":
            k = rng.randint(4, 8)
            bw = (w - 60) / k
            for j in range(k):
                v = rng.uniform(0.15, 0.9) * (h - 70)
                body.append(f'<rect x="{40 + j * bw + 4:.1f}" y="{h - 30 - v:.1f}" width="{bw - 8:.1f}" '
                            f'height="{v:.1f}" fill="{rng.choice(PALETTE)}"/>')
                body.append(f'<text x="{40 + j * bw + bw / 2:.1f}" y="{h - 12}" font-size="{min(11, bw / 3.3):.0f}" '
                            f'text-anchor="middle">{2016 + j}</text>')
            body.append(f'<line x1="36" y1="{h - 30}" x2="{w - 16}" y2="{h - 30}" stroke="#333"/>')
            body.append(f'<text x="{w / 2}" y="22" font-size="15" text-anchor="middle">Sales by year</text>')
        elif kind == "line":
            pts = " ".join(f"{30 + j * (w - 50) / 19:.1f},{h / 2 + rng.uniform(-h / 3, h / 3):.1f}"
                           for j in range(20))
            body.append(f'<polyline points="{pts}" fill="none" stroke="{rng.choice(PALETTE)}" '
                        'stroke-width="2.5" stroke-linejoin="round"/>')
            body += [f'<line x1="30" y1="{y}" x2="{w - 20}" y2="{y}" stroke="#e5e5e5"/>'
                     for y in range(40, h - 20, 40)]
            body.append(f'<text x="30" y="22" font-size="14">Metric {i}</text>')
        elif kind == "icon":
            a, b = rng.sample(PALETTE, 2)
            s = min(w, h) - 40
            body.append(f'<defs><linearGradient id="g{i}" x1="0" y1="0" x2="1" y2="1"><stop offset="0" '
                        f'stop-color="{a}"/><stop offset="1" stop-color="{b}"/></linearGradient></defs>')
            body.append(f'<rect x="{(w - s) / 2}" y="20" width="{s}" height="{s}" rx="{s / 5:.0f}" fill="url(#g{i})"/>')
            body.append(f'<circle cx="{w / 2}" cy="{20 + s / 2}" r="{s / 4:.0f}" fill="#ffffff" opacity="0.9"/>')
            body.append(f'<path d="M{w / 2 - s / 8:.0f} {20 + s / 2:.0f} l{s / 10:.0f} {s / 10:.0f} '
                        f'l{s / 6:.0f} -{s / 5:.0f}" fill="none" stroke="{a}" stroke-width="{s / 16:.0f}" '
                        'stroke-linecap="round"/>')
        else:
            for _ in range(rng.randint(6, 14)):
                c = rng.choice(PALETTE)
                x, y = rng.uniform(0, w), rng.uniform(0, h)
                shape = rng.choice(["circle", "rect", "ellipse", "polygon"])
                if shape == "circle":
                    body.append(f'<circle cx="{x:.0f}" cy="{y:.0f}" r="{rng.uniform(10, 60):.0f}" fill="{c}" '
                                'opacity="0.8"/>')
                elif shape == "rect":
                    body.append(f'<rect x="{x:.0f}" y="{y:.0f}" width="{rng.uniform(20, 120):.0f}" '
                                f'height="{rng.uniform(20, 90):.0f}" fill="{c}" '
                                f'transform="rotate({rng.uniform(-30, 30):.0f} {x:.0f} {y:.0f})"/>')
                elif shape == "ellipse":
                    body.append(f'<ellipse cx="{x:.0f}" cy="{y:.0f}" rx="{rng.uniform(20, 80):.0f}" '
                                f'ry="{rng.uniform(10, 40):.0f}" fill="{c}"/>')
                else:
                    p = " ".join(f"{x + rng.uniform(-60, 60):.0f},{y + rng.uniform(-60, 60):.0f}" for _ in range(3))
                    body.append(f'<polygon points="{p}" fill="{c}" opacity="0.85"/>')
        names.append(f"svg_{i:02d}_{kind}")
        out.append(head + "\n".join(body) + "\n</svg>\n")
    return names, out


def _svg_worker_run(source: str) -> tuple[bool, bytes | str]:
    import resvg_py

    try:
        return True, bytes(resvg_py.svg_to_bytes(svg_string=source))
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}"


def bench_svg(args: argparse.Namespace, tmp: Path) -> Section:
    names, sources = svg_sources()
    names, sources = names[: args.limit], sources[: args.limit]
    sec = Section("svg", len(sources), args.workers, ceiling_name="resvg in-process pool, no isolation")
    try:
        import resvg_py  # noqa: F401
    except ImportError as exc:
        raise Skip(f"resvg_py not importable ({exc})") from exc
    ctx = multiprocessing.get_context("spawn")
    with open_renderer("svg", args.workers, args.timeout) as renderer, ctx.Pool(args.workers) as pool:
        warm = sources[warmup_slice(len(sources), args.workers)]
        renderer.render_batch(warm)
        pool_outcomes(pool, _svg_worker_run, warm)
        best, last = measure({
            "visalign": lambda: visalign_outcomes(renderer.render_batch(sources)),
            "ceiling": lambda: pool_outcomes(pool, _svg_worker_run, sources),
        }, args.repeat)
    sec.visalign_s, sec.ceiling_s = best["visalign"], best["ceiling"]
    sec.failures = {k: failures(names, v) for k, v in last.items()}
    return sec


# ----------------------------------------------------------------------------------------------------
# html

HTML_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ margin: 0; padding: 28px; font-family: "DejaVu Sans", Arial, sans-serif; background: {bg}; color: #0f172a; }}
h1 {{ font-size: 26px; margin: 0 0 16px; }}
.grid {{ display: grid; grid-template-columns: repeat({cols}, 1fr); gap: 14px; margin-bottom: 20px; }}
.card {{ background: #fff; border-radius: 12px; padding: 16px; box-shadow: 0 2px 6px rgba(0,0,0,.1); }}
.card b {{ display: block; font-size: 24px; color: {accent}; }}
table {{ border-collapse: collapse; width: 100%; background: #fff; }}
th {{ background: {accent}; color: #fff; text-align: left; padding: 8px 10px; }}
td {{ padding: 8px 10px; border-bottom: 1px solid #e2e8f0; }}
.btn {{ display: inline-block; padding: 10px 22px; border-radius: 8px; background: {accent}; color: #fff; }}
</style></head>
<body>
<h1>{title}</h1>
<div class="grid">{cards}</div>
<table><thead><tr><th>Item</th><th>Owner</th><th>Value</th><th>Change</th></tr></thead>
<tbody>{rows}</tbody></table>
<p style="margin-top:18px">{text} <span class="btn">Open report</span></p>
</body></html>
"""


def html_sources(n: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """Dashboard-like pages: a title, KPI cards in a CSS grid, a table, a button; no external resources."""
    rng = random.Random(seed)
    words = ["Revenue", "Orders", "Users", "Churn", "Latency", "Uptime", "Tickets", "NPS", "Margin", "Leads"]
    people = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Margaret", "Ken"]
    names, out = [], []
    for i in range(n):
        cols = rng.randint(2, 4)
        cards = "".join(f'<div class="card">{w}<b>{rng.randint(10, 9999):,}</b></div>'
                        for w in rng.sample(words, cols))
        rows = "".join(f"<tr><td>{rng.choice(words)} {k + 1}</td><td>{rng.choice(people)}</td>"
                       f"<td>{rng.uniform(1, 500):.1f}</td><td>{rng.uniform(-20, 20):+.1f}%</td></tr>"
                       for k in range(rng.randint(4, 10)))
        out.append(HTML_PAGE.format(title=f"Team dashboard #{i + 1}", bg=rng.choice(["#f1f5f9", "#fdf6ec", "#eef2ff"]),
                                    cols=cols, accent=rng.choice(PALETTE), cards=cards, rows=rows,
                                    text="Figures refresh hourly. " * rng.randint(1, 4)))
        names.append(f"html_{i:02d}")
    return names, out


def page_options(renderer: Any) -> tuple[tuple[int, int], bool]:
    """The html renderer's viewport and full-page setting if its info() says, else Design2Code's
    (1280x720, full page)."""
    info = renderer.info()
    v, full_page = info.get("viewport"), bool(info.get("full_page", True))
    if isinstance(v, dict) and "width" in v and "height" in v:
        return (int(v["width"]), int(v["height"])), full_page
    if isinstance(v, (list, tuple)) and len(v) == 2:
        return (int(v[0]), int(v[1])), full_page
    return (1280, 720), full_page


class BrowserPerSample:
    """Baseline: W threads, each with its own Playwright driver (started once), launching Chromium per page."""

    def __init__(self, workers: int, viewport: tuple[int, int], full_page: bool, timeout: float) -> None:
        self.viewport, self.full_page, self.timeout_ms = viewport, full_page, timeout * 1000
        self.args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
        self.jobs: queue.Queue[tuple[int, str, list[Outcome | None], threading.Event] | None] = queue.Queue()
        self.ready = threading.Barrier(workers + 1)
        self.threads = [threading.Thread(target=self._loop, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()
        self.ready.wait(timeout=120)

    def _loop(self) -> None:
        from playwright.sync_api import sync_playwright

        with sync_playwright() as p:
            self.ready.wait()
            while (job := self.jobs.get()) is not None:
                i, html, results, done = job
                try:
                    browser = p.chromium.launch(executable_path=CHROMIUM, args=self.args, timeout=self.timeout_ms)
                    try:
                        page = browser.new_page(viewport={"width": self.viewport[0], "height": self.viewport[1]})
                        page.set_content(html, timeout=self.timeout_ms)
                        decode_png(page.screenshot(full_page=self.full_page, timeout=self.timeout_ms))
                        results[i] = Outcome(True)
                    finally:
                        browser.close()
                except Exception as exc:
                    results[i] = Outcome(False, f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
                finally:
                    if all(r is not None for r in results):
                        done.set()

    def run(self, sources: Sequence[str]) -> list[Outcome]:
        results: list[Outcome | None] = [None] * len(sources)
        done = threading.Event()
        for i, s in enumerate(sources):
            self.jobs.put((i, s, results, done))
        done.wait()
        return [r if r is not None else Outcome(False, "lost") for r in results]

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for t in self.threads:
            t.join(timeout=30)


def bench_html(args: argparse.Namespace, tmp: Path) -> Section:
    names, sources = html_sources()
    names, sources = names[: args.limit], sources[: args.limit]
    sec = Section("html", len(sources), args.workers, baseline_name="Chromium launch per sample")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError as exc:
        raise Skip(f"playwright not importable ({exc})") from exc
    if not os.access(CHROMIUM, os.X_OK):
        raise Skip(f"no Chromium at {CHROMIUM} (set VISALIGN_CHROMIUM)")
    with open_renderer("html", args.workers, args.timeout) as renderer:
        baseline = BrowserPerSample(args.workers, *page_options(renderer), args.timeout)
        try:
            warm = sources[warmup_slice(len(sources), args.workers)]
            renderer.render_batch(warm)
            baseline.run(warm[: args.workers])
            best, last = measure({
                "visalign": lambda: visalign_outcomes(renderer.render_batch(sources)),
                "baseline": lambda: baseline.run(sources),
            }, args.repeat)
        finally:
            baseline.close()
    sec.visalign_s, sec.baseline_s = best["visalign"], best["baseline"]
    sec.failures = {k: failures(names, v) for k, v in last.items()}
    return sec


# ----------------------------------------------------------------------------------------------------
# report

BENCHES: dict[str, Callable[[argparse.Namespace, Path], Section]] = {
    "matplotlib": bench_matplotlib, "latex": bench_latex, "svg": bench_svg, "html": bench_html}


def fmt_rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.1f}"


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def print_section(sec: Section, repeat: int) -> None:
    unit = UNITS[sec.kind]
    if sec.skipped:
        print(f"{sec.kind}: skipped: {sec.skipped}")
        return
    print(f"{sec.kind}: {sec.items} {unit}, {sec.workers} workers, best of {repeat}")
    rows = [("(a) visalign", sec.visalign_s), (f"(b) baseline: {sec.baseline_name}", sec.baseline_s),
            (f"(c) ceiling: {sec.ceiling_name}", sec.ceiling_s)]
    for label, seconds in rows:
        if seconds is not None:
            print(f"  {label:<52} {sec.rate(seconds):8.2f} {unit}/s  ({seconds:.2f} s)")
    va, vb, vc = sec.rate(sec.visalign_s), sec.rate(sec.baseline_s), sec.rate(sec.ceiling_s)
    parts = []
    if (r := ratio(va, vb)) is not None:
        parts.append(f"visalign/baseline = {r:.1f}x")
    if (r := ratio(va, vc)) is not None:
        parts.append(f"visalign/ceiling = {r:.2f}")
    if parts:
        print("  " + "   ".join(parts))
    ab, ac = ratio(va, vb), ratio(va, vc)
    if sec.kind == "matplotlib" and ab is not None and ac:
        print(f"  goals: a/b >= 8: {'yes' if ab >= 8 else 'NO'} ({ab:.1f}x); "
              f"a within 1.5x of c: {'yes' if ac >= 1 / 1.5 else 'NO'} (c/a = {1 / ac:.2f})")
    for method, fails in sec.failures.items():
        for line in fails:
            print(f"  FAIL [{method}] {line}")
        if method == "visalign" and not fails:
            print(f"  all {sec.items} visalign results ok")


def markdown(sections: Sequence[Section]) -> str:
    lines = ["| kind | visalign items/s | baseline items/s | ratio | ceiling | visalign/ceiling |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for sec in sections:
        if sec.skipped:
            lines.append(f"| {sec.kind} | skipped | | | | |")
            continue
        va, vb, vc = sec.rate(sec.visalign_s), sec.rate(sec.baseline_s), sec.rate(sec.ceiling_s)
        r, rc = ratio(va, vb), ratio(va, vc)
        lines.append(f"| {sec.kind} | {fmt_rate(va)} | {fmt_rate(vb)} | {'—' if r is None else f'{r:.1f}x'} | "
                     f"{fmt_rate(vc)} | {'—' if rc is None else f'{rc:.2f}'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated subset of " + ",".join(KINDS))
    parser.add_argument("--workers", type=int, default=2, help="workers for every method (default 2)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per method; the best is kept (default 1)")
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per item (default 20)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N inputs of each kind")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table for the README")
    args = parser.parse_args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    if unknown := sorted(set(kinds) - set(KINDS)):
        parser.error(f"unknown kinds {unknown}; choose from {','.join(KINDS)}")
    if args.workers < 1 or args.repeat < 1:
        parser.error("--workers and --repeat must be >= 1")

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average "
          f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    sections = []
    with tempfile.TemporaryDirectory(prefix="visalign-bench-") as tmp:
        for kind in kinds:
            try:
                sec = BENCHES[kind](args, Path(tmp))
            except Skip as exc:
                sec = Section(kind, 0, args.workers, skipped=str(exc))
            except Exception as exc:
                traceback.print_exc()
                sec = Section(kind, 0, args.workers, skipped=f"benchmark error ({type(exc).__name__}: {exc})")
            print_section(sec, args.repeat)
            sections.append(sec)
    if args.markdown:
        print()
        print(f"Render throughput, {args.workers} workers, best of {args.repeat} "
              "(items per second; ratio = visalign / baseline):")
        print()
        print(markdown(sections))
    bad = any(sec.failures.get("visalign") for sec in sections)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
