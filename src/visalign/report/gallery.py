"""A self-contained HTML gallery of renders: one card per input, failures shown with their kind.

Example:
    >>> from pathlib import Path
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> page = write_gallery([{"input": "a.py", "ok": False, "output": None, "error_kind": "syntax",
    ...                        "error": "SyntaxError", "seconds": 0.01, "renderer": "matplotlib"}], d)
    >>> page.name
    'index.html'
"""

from __future__ import annotations

import html
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CSS = """
body{font-family:system-ui,-apple-system,"DejaVu Sans",sans-serif;margin:24px;background:#f6f7f9;color:#1d2330}
h1{font-size:22px;margin:0 0 4px} .sub{color:#5b6475;margin-bottom:16px}
.summary span{display:inline-block;margin:0 8px 8px 0;padding:3px 9px;border-radius:12px;background:#e6e9ef;
font-size:13px} .summary .ok{background:#d7f2df} .summary .bad{background:#f8dcdc}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:16px}
.card{background:#fff;border-radius:10px;box-shadow:0 1px 3px rgba(0,0,0,.12);overflow:hidden;display:flex;
flex-direction:column} .card header{padding:8px 12px;display:flex;justify-content:space-between;gap:8px;
font-size:14px;border-bottom:1px solid #eceef2} .card header b{word-break:break-all}
.badge{font-size:12px;padding:1px 7px;border-radius:9px;white-space:nowrap}
.badge.ok{background:#d7f2df;color:#17622f} .badge.fail{background:#f8dcdc;color:#8a1c1c}
.img{display:flex;align-items:center;justify-content:center;min-height:200px;background:
repeating-conic-gradient(#f0f1f4 0 25%,#fff 0 50%) 50%/16px 16px}
.img img{max-width:100%;max-height:320px} .err{padding:12px;color:#8a1c1c;font-family:monospace;font-size:12px;
white-space:pre-wrap;word-break:break-word} details{border-top:1px solid #eceef2;font-size:12px}
details summary{padding:6px 12px;cursor:pointer;color:#5b6475} pre{margin:0;padding:8px 12px;max-height:240px;
overflow:auto;background:#fafbfc;font-size:11px} .meta{padding:6px 12px;color:#5b6475;font-size:12px}
"""


def write_gallery(records: Sequence[dict[str, Any]], outdir: str | os.PathLike[str], title: str = "visalign renders",
                  sources: Sequence[str] | None = None) -> Path:
    """Write ``outdir/index.html`` showing each record of ``visalign render --json``.

    ``records`` carry ``input``, ``ok``, ``output`` (a PNG path or None), ``error_kind``, ``error``,
    ``seconds`` and optionally ``renderer``; ``sources`` (same order) are shown under each card.
    Images are linked relative to ``outdir``, so the folder can be moved or zipped as a whole.
    """
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    n_ok = sum(bool(r["ok"]) for r in records)
    kinds = Counter(r["error_kind"] for r in records if not r["ok"])
    chips = [f'<span class="ok">{n_ok} rendered</span>']
    chips += [f'<span class="bad">{c} {html.escape(str(k))}</span>' for k, c in kinds.most_common()]
    cards = []
    for i, rec in enumerate(records):
        name = html.escape(Path(rec["input"]).name)
        renderer = html.escape(str(rec.get("renderer") or ""))
        if rec["ok"] and rec.get("output"):
            rel = html.escape(os.path.relpath(rec["output"], outdir))
            body = f'<div class="img"><a href="{rel}"><img src="{rel}" alt="{name}" loading="lazy"></a></div>'
            badge = '<span class="badge ok">ok</span>'
        else:
            body = f'<div class="err">{html.escape(str(rec.get("error") or ""))[:1200]}</div>'
            badge = f'<span class="badge fail">{html.escape(str(rec.get("error_kind")))}</span>'
        src = ""
        if sources is not None and i < len(sources):
            src = f"<details><summary>source</summary><pre>{html.escape(sources[i][:20000])}</pre></details>"
        cards.append(f'<div class="card" data-ok="{int(bool(rec["ok"]))}"><header><b>{name}</b>{badge}</header>'
                     f'{body}<div class="meta">{renderer} · {float(rec.get("seconds") or 0):.3f} s</div>{src}</div>')
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class='sub'>{len(records)} inputs rendered in the visalign sandbox</div>"
            f"<div class='summary'>{''.join(chips)}</div><div class='grid'>{''.join(cards)}</div></body></html>")
    path = outdir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
