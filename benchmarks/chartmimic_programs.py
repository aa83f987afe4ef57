"""Real chart programs: plain Python against visalign's matplotlib renderer, and metric self-scores.

Run from the repository root on a directory of ``*.py`` chart programs kept outside the repository,
e.g. ChartMimic's human-written reference programs (``dataset/ori_500`` of ChartMimic/ChartMimic):

    .venv/bin/python benchmarks/chartmimic_programs.py /tmp/cm/dataset/ori_500 --limit 250 \\
        --markdown --json /tmp/chartmimic_programs.json

For every program (several directories may be given; ``--limit N`` keeps N programs spread evenly
over the name-sorted list, so that every chart family is represented):

1. **plain Python**: a fresh ``python`` subprocess (this interpreter, ``MPLBACKEND=Agg``, a temporary
   working directory, ``--timeout`` seconds, ``--workers`` at a time). Settings are matched to
   visalign's capture: a small runner replaces ``Figure.savefig`` (and so ``plt.savefig``) by a PNG
   written at the moment of the call at ``--dpi`` with the figure's own size, ignoring the program's
   file name, format, ``dpi`` and ``bbox_inches`` (visalign's ``tight=False``); a figure still open
   at exit and never saved is saved then; the image kept is that of the highest figure number
   (visalign's ``figures="last"``; a number reused after ``plt.close`` keeps its latest save). The
   program then runs with ``runpy.run_path`` as ``__main__``. Recorded: exit status 0, an image
   written, the image not of one flat colour. No compatibility shims, nothing pre-imported.
2. **visalign**: ``get_renderer("matplotlib", workers=W, timeout=T, dpi=D, instrument=("chart",))``
   once with ``compat=True`` (the default) and once with ``compat=False``; ``ok`` / ``error_kind`` /
   ``shims`` per program.
3. **images**: for programs both plain Python and visalign (``compat=True``) render, the two RGB
   images (plain PNG decoded by visalign's own ``load_png``, white behind transparency) are compared
   pixel for pixel; for those that differ, SSIM (``visalign.metrics.ssim``; ``size`` differs is
   reported apart).
4. **metric self-scores** (``visalign.metrics.chart_code``): each program's ``chart`` trace against
   itself (``compare_chart_traces(t, t)``: must be F1 1.0 for text / layout / type / colour), and
   against the trace of its independent second render (the ``compat=False`` run, when both ran):
   a difference there means the trace depends on something other than the program (randomness,
   state). Invalid traces are reported.

Output: a plain summary (or ``--markdown`` tables) on stdout and, with ``--json PATH``, every
per-program record and the summary.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from visalign.metrics import ssim
from visalign.metrics.chart_code import F1_KEYS, compare_chart_traces, validate_chart_trace
from visalign.renderers import get_renderer
from visalign.renderers.base import is_blank, load_png

# The plain-Python runner: argv = program, output dir, dpi. Exit status is the program's.
RUNNER = textwrap.dedent("""
    import os, runpy, sys
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.figure import Figure

    program, outdir, dpi = sys.argv[1], sys.argv[2], float(sys.argv[3])
    orig = Figure.savefig
    saved = set()

    def savefig(self, *args, **kwargs):
        num = getattr(self, "number", 0)
        with open(os.path.join(outdir, f"fig-{num}.png"), "wb") as fh:
            orig(self, fh, format="png", dpi=dpi)
        saved.add(num)

    Figure.savefig = savefig
    sys.argv = [program]
    code = 0
    try:
        runpy.run_path(program, run_name="__main__")
    except SystemExit as exc:
        code = 0 if exc.code in (None, 0) else (exc.code if isinstance(exc.code, int) else 1)
    if code == 0:
        for num in plt.get_fignums():
            if num not in saved:
                savefig(plt.figure(num))
    sys.stdout.flush()
    os._exit(code)
""")


def natural_key(path: Path) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def pick(programs: list[Path], limit: int | None) -> list[Path]:
    """``limit`` programs spread evenly over the sorted list (all of them when None)."""
    if limit is None or limit >= len(programs):
        return programs
    step = len(programs) / limit
    return [programs[int(i * step)] for i in range(limit)]


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_plain(program: Path, runner: Path, timeout: float, dpi: float) -> dict[str, Any]:
    """Run one program in a fresh interpreter; returns the record and the PNG bytes (or None)."""
    with tempfile.TemporaryDirectory(prefix="cm-plain-") as tmp:
        outdir = os.path.join(tmp, "__out")
        os.mkdir(outdir)
        src = os.path.join(tmp, program.name)
        Path(src).write_bytes(program.read_bytes())
        env = {**os.environ, "MPLBACKEND": "Agg", "PYTHONHASHSEED": "0"}
        start = time.perf_counter()
        try:
            proc = subprocess.run([sys.executable, str(runner), src, outdir, str(dpi)], cwd=tmp, env=env,
                                  capture_output=True, text=True, timeout=timeout)
            rc, err = proc.returncode, last_line(proc.stderr) if proc.returncode else ""
        except subprocess.TimeoutExpired:
            rc, err = None, f"timeout after {timeout:g} s"
        seconds = time.perf_counter() - start
        nums = sorted(int(m.group(1)) for n in os.listdir(outdir) if (m := re.fullmatch(r"fig-(-?\d+)\.png", n)))
        png = Path(outdir, f"fig-{nums[-1]}.png").read_bytes() if nums and rc == 0 else None
    rec: dict[str, Any] = {"exit0": rc == 0, "returncode": rc, "error": err, "image": png is not None,
                           "blank": False, "seconds": round(seconds, 3), "figures": len(nums)}
    return {"rec": rec, "png": png}


def plain_kind(rec: dict[str, Any]) -> str:
    if rec["returncode"] is None:
        return "timeout"
    if not rec["exit0"]:
        m = re.match(r"([A-Za-z_][\w.]*(?:Error|Exception|Warning|Exit|Interrupt))\b", rec["error"])
        return f"error ({m.group(1)})" if m else "error"
    if not rec["image"]:
        return "no_output"
    return "blank" if rec["blank"] else "ok"


def render_all(sources: list[str], workers: int, timeout: float, dpi: float, compat: bool) -> tuple[list, float]:
    renderer = get_renderer("matplotlib", workers=workers, timeout=timeout, dpi=dpi, compat=compat,
                            instrument=("chart",))
    try:
        renderer.render_batch(sources[:1])  # warm-up: start the workers outside the timing
        start = time.perf_counter()
        results = renderer.render_batch(sources)
        return results, time.perf_counter() - start
    finally:
        renderer.close()


def chart_trace(res: Any) -> tuple[Any, str | None]:
    """The validated ``chart`` trace of a render, or (None, why not)."""
    if not res.ok:
        return None, f"render failed ({res.error_kind})"
    raw = res.trace.get("chart") if isinstance(res.trace, dict) else None
    if raw is None:
        return None, "no chart trace"
    try:
        return validate_chart_trace(raw), None
    except ValueError as exc:
        return None, f"invalid trace: {exc}"


def trace_diff(a: Any, b: Any) -> str:
    """A short description of how two chart traces differ (for the report)."""
    parts = []
    for name, x, y in (("text", a.text, b.text), ("layout", a.layout, b.layout)):
        ca, cb = Counter(x), Counter(y)
        if ca != cb:
            parts.append(f"{name}: -{sorted(map(str, (cb - ca).elements()))[:4]} +{sorted(map(str, (ca - cb).elements()))[:4]}")
    if a.types != b.types:
        parts.append(f"type: {dict(b.types)} vs {dict(a.types)}")
    if a.colors != b.colors:
        diff = {k: (b.colors.get(k), a.colors.get(k)) for k in set(a.colors) | set(b.colors)
                if a.colors.get(k) != b.colors.get(k)}
        parts.append(f"color: {str(diff)[:300]}")
    return "; ".join(parts) or "traces equal"


def summarise(records: list[dict[str, Any]], timings: dict[str, float]) -> dict[str, Any]:
    n = len(records)
    plain_ok = [r for r in records if r["plain"]["kind"] == "ok"]
    vis_ok = [r for r in records if r["compat"]["ok"]]
    strict_ok = [r for r in records if r["strict"]["ok"]]
    both = [r for r in records if r["plain"]["kind"] == "ok" and r["compat"]["ok"]]
    identical = [r for r in both if r["image"]["identical"]]
    differ = [r for r in both if not r["image"]["identical"]]
    ssims = [r["image"]["ssim"] for r in differ if r["image"]["ssim"] is not None]
    self_bad = [r for r in records if r["self"]["status"] not in ("ok", "skipped")]
    sized = [r["self"]["sizes"] for r in records if "sizes" in r["self"]]
    empty = {g: sum(1 for z in sized if z[g] == 0) for g in ("text", "layout", "type", "color")}
    cross = [r for r in records if r["cross"] is not None]
    cross_bad = [r for r in cross if any(r["cross"][k] != 1.0 for k in F1_KEYS)]
    return {
        "programs": n,
        "plain_ok": len(plain_ok),
        "plain_kinds": dict(Counter(r["plain"]["kind"] for r in records).most_common()),
        "visalign_ok": len(vis_ok),
        "visalign_strict_ok": len(strict_ok),
        "visalign_error_kinds": dict(Counter(r["compat"]["error_kind"] for r in records if not r["compat"]["ok"])),
        "visalign_strict_error_kinds": dict(Counter(r["strict"]["error_kind"] for r in records
                                                    if not r["strict"]["ok"])),
        "plain_only": [{"program": r["program"], "error_kind": r["compat"]["error_kind"],
                        "error": r["compat"]["error"]} for r in records
                       if r["plain"]["kind"] == "ok" and not r["compat"]["ok"]],
        "plain_only_strict": [{"program": r["program"], "error_kind": r["strict"]["error_kind"],
                               "error": r["strict"]["error"]} for r in records
                              if r["plain"]["kind"] == "ok" and not r["strict"]["ok"]],
        "visalign_only": [{"program": r["program"], "plain": r["plain"]["kind"], "plain_error": r["plain"]["error"],
                           "shims": r["compat"]["shims"]} for r in records
                          if r["compat"]["ok"] and r["plain"]["kind"] != "ok"],
        "thanks_to_shims": [{"program": r["program"], "shims": r["compat"]["shims"],
                             "strict_error": r["strict"]["error"]} for r in records
                            if r["compat"]["ok"] and not r["strict"]["ok"] and r["compat"]["shims"]],
        "shims_used": dict(Counter(s for r in records for s in r["compat"]["shims"])),
        "both_ok": len(both),
        "pixel_identical": len(identical),
        "differ": [{"program": r["program"], **r["image"]} for r in differ],
        "ssim_of_differing": {"n": len(ssims), "min": min(ssims, default=None),
                              "mean": float(np.mean(ssims)) if ssims else None},
        "strict_vs_compat_pixel_differ": [r["program"] for r in records if r["strict_same_pixels"] is False],
        "self_score_not_1": [{"program": r["program"], **r["self"]} for r in self_bad],
        "self_scored": sum(1 for r in records if r["self"]["status"] != "skipped"),
        "self_scored_empty_traces": empty,
        "cross_run_scored": len(cross),
        "cross_run_not_1": [{"program": r["program"], "f1": {k: r["cross"][k] for k in F1_KEYS},
                             "why": r["cross_why"]} for r in cross_bad],
        "seconds": {k: round(v, 1) for k, v in timings.items()},
    }


def markdown(s: dict[str, Any], args: argparse.Namespace) -> str:
    n = s["programs"]

    def pct(k: int) -> str:
        return f"{k} ({100 * k / n:.1f} %)" if n else str(k)

    out = [f"### Real chart programs: plain Python vs visalign ({n} programs, dpi {args.dpi:g}, "
           f"timeout {args.timeout:g} s, {args.workers} workers)", "",
           "| measure | count |", "|---|---|",
           f"| plain Python: exit 0 and a non-blank image | {pct(s['plain_ok'])} |",
           f"| visalign, `compat=True` (default): ok | {pct(s['visalign_ok'])} |",
           f"| visalign, `compat=False`: ok | {pct(s['visalign_strict_ok'])} |",
           f"| plain ok, visalign (`compat=True`) fails | {len(s['plain_only'])} |",
           f"| plain ok, visalign (`compat=False`) fails | {len(s['plain_only_strict'])} |",
           f"| visalign ok, plain fails | {len(s['visalign_only'])} |",
           f"| visalign ok only thanks to shims | {len(s['thanks_to_shims'])} |",
           f"| both ok | {s['both_ok']} |",
           f"| both ok, pixel-identical | {s['pixel_identical']} of {s['both_ok']} |",
           f"| both ok, differing: SSIM min / mean | "
           f"{_f(s['ssim_of_differing']['min'])} / {_f(s['ssim_of_differing']['mean'])} "
           f"(n={s['ssim_of_differing']['n']}) |",
           f"| `compat=True` vs `compat=False` images differ | {len(s['strict_vs_compat_pixel_differ'])} |",
           f"| self-score (trace vs itself) F1 ≠ 1.0 or no trace | {len(s['self_score_not_1'])} "
           f"(scored {s['self_scored']}) |",
           "| scored traces with nothing recorded (text / layout / type / colour) | "
           + " / ".join(str(v) for v in s["self_scored_empty_traces"].values()) + " |",
           f"| cross-run self-score (two renders) F1 ≠ 1.0 | {len(s['cross_run_not_1'])} "
           f"of {s['cross_run_scored']} |", ""]
    out += ["| error kind | plain Python | visalign `compat=True` | visalign `compat=False` |", "|---|---|---|---|"]
    kinds = dict.fromkeys([*s["plain_kinds"], *s["visalign_error_kinds"], *s["visalign_strict_error_kinds"]])
    for k in kinds:
        if k == "ok":
            continue
        out.append(f"| {k} | {s['plain_kinds'].get(k, 0)} | {s['visalign_error_kinds'].get(k, 0)} | "
                   f"{s['visalign_strict_error_kinds'].get(k, 0)} |")
    out.append("")
    if s["shims_used"]:
        out += ["Shims used: " + ", ".join(f"`{k}` ×{v}" for k, v in s["shims_used"].items()), ""]

    def listing(title: str, rows: list[dict[str, Any]], fmt) -> None:
        out.append(f"**{title}** ({len(rows)})" + (": none" if not rows else ""))
        out.extend(f"- {fmt(r)}" for r in rows[:args.show])
        if len(rows) > args.show:
            out.append(f"- ... {len(rows) - args.show} more (JSON)")
        out.append("")

    listing("plain ok, visalign fails", s["plain_only"],
            lambda r: f"`{r['program']}`: {r['error_kind']}: {r['error']}")
    listing("plain ok, visalign `compat=False` fails", s["plain_only_strict"],
            lambda r: f"`{r['program']}`: {r['error_kind']}: {r['error']}")
    listing("visalign ok, plain fails", s["visalign_only"],
            lambda r: f"`{r['program']}`: plain {r['plain']} ({r['plain_error']}); shims {r['shims']}")
    listing("visalign ok only thanks to shims", s["thanks_to_shims"],
            lambda r: f"`{r['program']}`: {', '.join(r['shims'])} (without: {r['strict_error']})")
    listing("images that differ from plain Python", s["differ"],
            lambda r: f"`{r['program']}`: SSIM {_f(r['ssim'])}, differing pixels {r['pixels_differ']}, "
                      f"sizes plain {r['plain_size']} / visalign {r['visalign_size']}")
    listing("self-score not 1.0", s["self_score_not_1"], lambda r: f"`{r['program']}`: {r['status']}")
    listing("cross-run self-score not 1.0", s["cross_run_not_1"],
            lambda r: f"`{r['program']}`: {', '.join(f'{k} {v:.3f}' for k, v in r['f1'].items() if v != 1.0)}"
                      f" — {r['why']}")
    sec = s["seconds"]
    out.append(f"Time: plain Python {sec.get('plain', 0)} s, visalign compat=True {sec.get('compat', 0)} s, "
               f"compat=False {sec.get('strict', 0)} s (render_batch only, {args.workers} workers).")
    return "\n".join(out)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dirs", nargs="+", type=Path, help="directories of *.py chart programs")
    ap.add_argument("--limit", type=int, default=None, help="programs to keep, spread evenly (default: all)")
    ap.add_argument("--workers", type=int, default=2, help="plain subprocesses / visalign workers at a time")
    ap.add_argument("--timeout", type=float, default=20.0, help="seconds per program (both sides)")
    ap.add_argument("--dpi", type=float, default=100.0, help="capture dpi (both sides)")
    ap.add_argument("--markdown", action="store_true", help="print markdown tables")
    ap.add_argument("--json", type=Path, default=None, help="write per-program records and the summary here")
    ap.add_argument("--show", type=int, default=15, help="rows per listing in the printed report")
    args = ap.parse_args(argv)

    programs: list[Path] = []
    for d in args.dirs:
        if not d.is_dir():
            ap.error(f"not a directory: {d}")
        programs += sorted(d.glob("*.py"), key=natural_key)
    programs = pick(programs, args.limit)
    if not programs:
        ap.error("no *.py programs found")
    names = [f"{p.parent.name}/{p.name}" for p in programs]
    sources = [p.read_text(encoding="utf-8", errors="replace") for p in programs]
    timings: dict[str, float] = {}

    with tempfile.TemporaryDirectory(prefix="cm-runner-") as tmp:
        runner = Path(tmp, "runner.py")
        runner.write_text(RUNNER)
        start = time.perf_counter()
        with ThreadPoolExecutor(args.workers) as pool:
            plain = []
            for i, res in enumerate(pool.map(lambda p: run_plain(p, runner, args.timeout, args.dpi), programs)):
                plain.append(res)
                if (i + 1) % 50 == 0:
                    print(f"plain python: {i + 1}/{len(programs)}", file=sys.stderr)
        timings["plain"] = time.perf_counter() - start
    print(f"plain python: {timings['plain']:.1f} s", file=sys.stderr)
    compat, timings["compat"] = render_all(sources, args.workers, args.timeout, args.dpi, compat=True)
    print(f"visalign compat=True: {timings['compat']:.1f} s", file=sys.stderr)
    strict, timings["strict"] = render_all(sources, args.workers, args.timeout, args.dpi, compat=False)
    print(f"visalign compat=False: {timings['strict']:.1f} s", file=sys.stderr)

    records = []
    for name, pl, rc, rs in zip(names, plain, compat, strict, strict=True):
        rec: dict[str, Any] = {"program": name}
        plain_img = None
        if pl["png"] is not None:
            try:
                plain_img = load_png(pl["png"])
                pl["rec"]["blank"] = is_blank(plain_img)
            except Exception as exc:  # an unreadable PNG counts as no image
                pl["rec"]["image"], pl["rec"]["error"] = False, f"unreadable PNG: {exc}"
        pl["rec"]["kind"] = plain_kind(pl["rec"])
        rec["plain"] = pl["rec"]
        for key, res in (("compat", rc), ("strict", rs)):
            rec[key] = {"ok": res.ok, "error_kind": res.error_kind, "error": (res.error or "")[:300],
                        "shims": list(res.shims), "seconds": round(res.seconds, 3)}
        rec["image"] = None
        if pl["rec"]["kind"] == "ok" and rc.ok:
            a = np.asarray(plain_img.convert("RGB"))
            b = np.asarray(rc.image.convert("RGB"))
            same_size = a.shape == b.shape
            identical = same_size and bool(np.array_equal(a, b))
            rec["image"] = {"identical": identical, "plain_size": list(plain_img.size),
                            "visalign_size": list(rc.image.size),
                            "pixels_differ": int(np.any(a != b, axis=-1).sum()) if same_size else None,
                            "ssim": None if identical or not same_size else round(ssim(rc.image, plain_img), 6)}
        rec["strict_same_pixels"] = (bool(np.array_equal(np.asarray(rc.image), np.asarray(rs.image)))
                                     if rc.ok and rs.ok else None)
        # metric self-scores
        t1, why1 = chart_trace(rc)
        t2, _ = chart_trace(rs)
        if not rc.ok:
            rec["self"] = {"status": "skipped"}  # nothing rendered: no trace to score, not a metric failure
        elif t1 is None:
            rec["self"] = {"status": why1}
        else:
            m = compare_chart_traces(t1, t1)
            bad = {k: round(m[k], 4) for k in F1_KEYS if m[k] != 1.0}
            rec["self"] = {"status": "ok" if not bad else f"F1 {bad}",
                           "sizes": {"text": len(t1.text), "layout": len(t1.layout), "type": sum(t1.types.values()),
                                     "color": sum(len(v) for v in t1.colors.values())}}
        rec["cross"] = {k: round(v, 6) for k, v in compare_chart_traces(t2, t1).items()} \
            if t1 is not None and t2 is not None else None
        rec["cross_why"] = trace_diff(t2, t1) if rec["cross"] and any(rec["cross"][k] != 1.0 for k in F1_KEYS) \
            else None
        records.append(rec)

    summary = summarise(records, timings)
    if args.json:
        args.json.write_text(json.dumps({"summary": summary, "records": records,
                                         "settings": {k: str(v) for k, v in vars(args).items()}}, indent=1))
    if args.markdown:
        print(markdown(summary, args))
    else:
        buf = io.StringIO()
        json.dump({k: v for k, v in summary.items() if not isinstance(v, list)}, buf, indent=1)
        print(buf.getvalue())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
