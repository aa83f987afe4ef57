"""The eval report: one self-contained HTML page people read after ``visalign eval``.

It holds a metrics table (mean and 95 % bootstrap interval per reward), the execution rate, failures
by error kind, a distribution plot per reward (matplotlib, embedded as PNG), and a gallery of
reference | generated | difference, worst first, that the reader can re-sort.
"""

from __future__ import annotations

import base64
import difflib
import html
import io
import json
import math
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageChops

THUMB = 256


def bootstrap_ci(values: Sequence[float], n_resamples: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float, float]:
    """Mean of ``values`` and its percentile-bootstrap confidence interval.

    Returns ``(mean, low, high)``; NaN for all three when ``values`` is empty, and ``low == high ==
    mean`` for a single value.

    Example:
        >>> mean, low, high = bootstrap_ci([0.2, 0.4, 0.6, 0.8])
        >>> round(mean, 3), low <= mean <= high
        (0.5, True)
    """
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    mean = float(x.mean())
    if x.size == 1:
        return mean, mean, mean
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, x.size, size=(n_resamples, x.size))
    means = x[idx].mean(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return mean, float(low), float(high)


def summarize(records: Sequence[dict[str, Any]], rewards: Sequence[str]) -> dict[str, Any]:
    """Summary statistics of eval records (the content of ``summary.json``).

    Each record has ``scores`` (reward name -> float or None) and ``render`` (``ok``, ``error_kind``)
    when the sample was rendered.
    """
    summary: dict[str, Any] = {"rows": len(records), "rewards": {}}
    for name in rewards:
        vals = [r["scores"].get(name) for r in records]
        applicable = [v for v in vals if v is not None]
        mean, low, high = bootstrap_ci(applicable)
        summary["rewards"][name] = {"mean": mean, "ci95": [low, high], "n": len(applicable),
                                    "not_applicable": len(vals) - len(applicable)}
    rendered = [r["render"] for r in records if r.get("render")]
    if rendered:
        summary["execution_rate"] = sum(bool(r["ok"]) for r in rendered) / len(rendered)
        summary["failures"] = dict(Counter(r["error_kind"] for r in rendered if not r["ok"]).most_common())
    return summary


def _png_data_uri(img: Image.Image, max_side: int = THUMB) -> str:
    img = img.convert("RGB")
    img.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def difference_image(generated: Image.Image, reference: Image.Image) -> Image.Image:
    """Per-pixel absolute difference, generated resized to the reference; bright where they differ.

    Example:
        >>> a = Image.new("RGB", (4, 4), "white")
        >>> difference_image(a, a).getextrema()
        ((0, 0), (0, 0), (0, 0))
    """
    gen = generated.convert("RGB").resize(reference.size)
    return ImageChops.difference(gen, reference.convert("RGB"))


def _plot(records: Sequence[dict[str, Any]], name: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    vals = [r["scores"].get(name) for r in records if r["scores"].get(name) is not None]
    fig, ax = plt.subplots(figsize=(4.2, 2.6), dpi=100)
    if vals:
        ax.hist(vals, bins=min(30, max(5, len(vals) // 2)), color="#4c72b0", edgecolor="white")
        ax.axvline(float(np.mean(vals)), color="#c44e52", linestyle="--", label=f"mean {np.mean(vals):.3f}")
        ax.legend(frameon=False, fontsize=8)
    else:
        ax.text(0.5, 0.5, "no applicable scores", ha="center", va="center", transform=ax.transAxes)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("score", fontsize=9)
    ax.set_ylabel("samples", fontsize=9)
    ax.tick_params(labelsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


_CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px;background:#f6f7f9;color:#1d2330}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:26px 0 10px}.sub{color:#5b6475}
table.metrics{border-collapse:collapse;background:#fff;box-shadow:0 1px 3px rgba(0,0,0,.12)}
table.metrics td,table.metrics th{padding:6px 14px;border-bottom:1px solid #eceef2;text-align:right}
table.metrics th:first-child,table.metrics td:first-child{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}.plots img{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.12)}
.chips span{display:inline-block;margin:0 8px 8px 0;padding:3px 9px;border-radius:12px;background:#f8dcdc;font-size:13px}
.controls{margin:8px 0 14px;font-size:14px}.controls button{margin-right:6px;padding:4px 10px;border:1px solid #c9ced8;
border-radius:6px;background:#fff;cursor:pointer}.controls button.active{background:#1d2330;color:#fff}
.row{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:12px;padding:10px 12px}
.row header{display:flex;justify-content:space-between;font-size:14px;margin-bottom:8px}.row header b{word-break:break-all}
.triple{display:grid;grid-template-columns:repeat(3,minmax(0,1fr));gap:10px;align-items:start}
.triple figure{margin:0;text-align:center;font-size:12px;color:#5b6475}.triple img{max-width:100%;max-height:256px;
border:1px solid #eceef2}.fail{color:#8a1c1c;font-family:monospace;font-size:12px;white-space:pre-wrap;padding:20px 6px}
.scores{font-size:12px;color:#5b6475}
details.code{margin-top:8px;font-size:12px}details.code summary{cursor:pointer;color:#5b6475}
.codes{display:grid;grid-template-columns:repeat(2,minmax(0,1fr));gap:10px}.codes pre{background:#f6f7f9;padding:8px;
overflow:auto;max-height:360px;font-size:11.5px;white-space:pre}.diff .add{color:#1a6b1a;background:#e3f5e3}
.diff .del{color:#8a1c1c;background:#fbe3e3}.triple a img{cursor:zoom-in}
"""

_JS = """
function sortRows(key, dir){
  const box=document.getElementById('gallery');
  const rows=[...box.querySelectorAll('.row')];
  rows.sort((a,b)=>{const x=parseFloat(a.dataset[key]),y=parseFloat(b.dataset[key]);
    const xv=isNaN(x)?-Infinity:x, yv=isNaN(y)?-Infinity:y; return dir*(xv-yv) || (a.dataset.idx-b.dataset.idx);});
  rows.forEach(r=>box.appendChild(r));
  document.querySelectorAll('.controls button').forEach(b=>b.classList.toggle('active',
    b.dataset.key===key && b.dataset.dir===String(dir)));
}
"""


def write_report(records: Sequence[dict[str, Any]], summary: dict[str, Any], rewards: Sequence[str],
                 out_dir: str | Path, title: str = "visalign eval", images: dict[str, dict[str, Image.Image | None]]
                 | None = None, primary: str | None = None, max_gallery: int = 200) -> Path:
    """Write ``out_dir/report.html``.

    ``images`` maps a record id to ``{"reference": img, "generated": img}``; the gallery shows the
    ``max_gallery`` worst rows by the ``primary`` reward first (default: the first reward other than
    ``execution`` and ``format``).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if primary is None and rewards:  # sort by a graded reward rather than a pass/fail one when there is one
        graded = [r for r in rewards if r not in ("execution", "format")]
        primary = (graded or list(rewards))[0]
    images = images or {}
    rows_html = []
    for r in summary["rewards"].items():
        name, s = r
        ci = s["ci95"]
        cell = "—" if math.isnan(s["mean"]) else f"{s['mean']:.4f}"
        ci_cell = "—" if math.isnan(ci[0]) else f"[{ci[0]:.4f}, {ci[1]:.4f}]"
        rows_html.append(f"<tr><td>{html.escape(name)}</td><td>{cell}</td><td>{ci_cell}</td>"
                         f"<td>{s['n']}</td><td>{s['not_applicable']}</td></tr>")
    exec_html = ""
    if "execution_rate" in summary:
        exec_html = f"<p>Execution rate: <b>{summary['execution_rate']:.1%}</b> of rendered samples.</p>"
        if summary.get("failures"):
            chips = "".join(f"<span>{c} {html.escape(str(k))}</span>" for k, c in summary["failures"].items())
            exec_html += f"<div class='chips'>{chips}</div>"
    plots = "".join(f"<img alt='distribution of {html.escape(n)}' src='{_plot(records, n)}'>" for n in rewards)

    def key(rec: dict[str, Any]) -> float:
        v = rec["scores"].get(primary) if primary else None
        return -math.inf if v is None else float(v)

    ordered = sorted(enumerate(records), key=lambda t: key(t[1]))[:max_gallery]
    cards = []
    for idx, rec in ordered:
        rid = str(rec["id"])
        pair = images.get(rid, {})
        ref, gen = pair.get("reference"), pair.get("generated")
        figs = []
        figs.append(_figure(ref, "reference", rec.get("reference_png")))
        if gen is not None:
            figs.append(_figure(gen, "generated", rec.get("generated_png")))
        else:
            err = rec.get("render") or {}
            msg = f"{err.get('error_kind', 'no image')}: {err.get('error', '')}"
            figs.append(f"<figure><div class='fail'>{html.escape(msg[:600])}</div><figcaption>generated"
                        f"</figcaption></figure>")
        figs.append(_figure(difference_image(gen, ref) if gen is not None and ref is not None else None,
                            "difference"))
        scores = " · ".join(f"{html.escape(k)} {'—' if v is None else f'{v:.4f}'}" for k, v in rec["scores"].items())
        data = " ".join(f"data-{_attr(k)}='{'' if v is None else v}'" for k, v in rec["scores"].items())
        cards.append(f"<div class='row' data-idx='{idx}' data-id='{html.escape(rid)}' {data}><header>"
                     f"<b>{html.escape(rid)}</b><span class='scores'>{scores}</span></header>"
                     f"<div class='triple'>{''.join(figs)}</div>{code_block(rec)}</div>")
    buttons = "".join(
        f"<button data-key='{_attr(n)}' data-dir='{d}' onclick=\"sortRows('{_js_key(n)}',{d})\""
        f"{' class=active' if n == primary and d == 1 else ''}>{html.escape(n)} {'↑' if d == 1 else '↓'}</button>"
        for n in rewards for d in (1, -1))
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style><script>{_JS}</script></head><body>"
            f"<h1>{html.escape(title)}</h1><div class='sub'>{summary['rows']} samples · rewards: "
            f"{html.escape(', '.join(rewards))}</div>"
            f"<h2>Metrics</h2><table class='metrics'><thead><tr><th>reward</th><th>mean</th><th>95% CI (bootstrap)"
            f"</th><th>n</th><th>n/a</th></tr></thead><tbody>{''.join(rows_html)}</tbody></table>{exec_html}"
            f"<h2>Distributions</h2><div class='plots'>{plots}</div>"
            f"<h2>Gallery</h2><div class='sub'>worst first by {html.escape(str(primary))}; "
            f"{len(ordered)} of {len(records)} shown</div><div class='controls'>sort by: {buttons}</div>"
            f"<div id='gallery'>{''.join(cards)}</div>"
            f"<script type='application/json' id='summary'>{html.escape(json.dumps(summary, default=str))}</script>"
            f"</body></html>")
    path = out_dir / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _figure(img: Image.Image | None, caption: str, full: str | None = None) -> str:
    """A thumbnail; with ``full`` (the image file, relative to the report) a click opens it at full size."""
    if img is None:
        return f"<figure><div class='fail'>—</div><figcaption>{caption}</figcaption></figure>"
    thumb = f"<img alt='{caption}' src='{_png_data_uri(img)}'>"
    if full:
        thumb = f"<a href='{html.escape(full, quote=True)}' target='_blank' title='open at full size'>{thumb}</a>"
    return f"<figure>{thumb}<figcaption>{caption}</figcaption></figure>"


def code_diff(generated: str, reference: str, context: int = 2) -> str:
    """A unified diff from the reference code to the generated code (empty when equal).

    Example:
        >>> print(code_diff("plt.bar([1, 2])\\n", "plt.bar([1, 3])\\n"))
        --- reference
        +++ generated
        @@ -1 +1 @@
        -plt.bar([1, 3])
        +plt.bar([1, 2])
    """
    lines = difflib.unified_diff(reference.splitlines(), generated.splitlines(), "reference", "generated",
                                 n=context, lineterm="")
    return "\n".join(lines)


def code_block(rec: dict[str, Any]) -> str:
    """The sample's code and its diff to the reference code, folded under the images."""
    code, ref = rec.get("code"), rec.get("reference_code")
    if not code and not rec.get("completion"):
        return ""
    parts = []
    if code:
        parts.append(f"<div><b>generated code</b><pre>{html.escape(code)}</pre></div>")
    else:  # no code found: show what the model wrote
        parts.append(f"<div><b>completion (no code found)</b><pre>{html.escape(str(rec.get('completion')))}</pre></div>")
    if code and ref:
        diff = code_diff(code, ref)
        parts.append("<div><b>diff to the reference code</b>"
                     + (f"<pre class='diff'>{_diff_html(diff)}</pre>" if diff else "<pre>identical</pre>") + "</div>")
    return f"<details class='code'><summary>code</summary><div class='codes'>{''.join(parts)}</div></details>"


def _diff_html(diff: str) -> str:
    out = []
    for line in diff.splitlines():
        cls = "add" if line.startswith("+") and not line.startswith("+++") else (
            "del" if line.startswith("-") and not line.startswith("---") else "")
        out.append(f"<span class='{cls}'>{html.escape(line)}</span>" if cls else html.escape(line))
    return "\n".join(out)


def _attr(name: str) -> str:
    """A reward name as an HTML data attribute (``data-foo-bar``)."""
    return "".join(c if c.isalnum() else "-" for c in name.lower())


def _js_key(name: str) -> str:
    """The dataset key the browser derives from :func:`_attr` (dashes to camelCase)."""
    parts = _attr(name).split("-")
    return parts[0] + "".join(p[:1].upper() + p[1:] for p in parts[1:])
