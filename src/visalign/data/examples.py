"""Small synthetic eval sets: references with code, and predictions of graded quality.

Each set pairs reference programs with "predictions" made by perturbing them the way models go
wrong: exact, values changed, colours changed, chart type changed, title missing, broken code. They
let ``visalign eval`` run offline on a CPU and show what each reward sees.

Example:
    >>> rows = chart2code_rows(n_refs=1, seed=0)
    >>> sorted({r["perturbation"] for r in rows})
    ['broken', 'colour', 'exact', 'no_title', 'type', 'values']
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

PALETTE = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860"]
TOPICS = [("Quarterly revenue", "Quarter", "Revenue (M$)", ["Q1", "Q2", "Q3", "Q4"]),
          ("Monthly visitors", "Month", "Visitors (k)", ["Jan", "Feb", "Mar", "Apr", "May"]),
          ("Model accuracy", "Model", "Accuracy (%)", ["A", "B", "C", "D", "E", "F"]),
          ("Energy mix", "Source", "Share (%)", ["Solar", "Wind", "Hydro", "Gas"])]


def _chart(kind: str, title: str | None, xlabel: str, ylabel: str, labels: list[str], values: list[int],
           colour: str) -> str:
    draw = {"bar": f"ax.bar(labels, values, color={colour!r})",
            "line": f"ax.plot(labels, values, marker='o', color={colour!r}, linewidth=2)",
            "scatter": f"ax.scatter(labels, values, s=80, color={colour!r})"}[kind]
    lines = ["import matplotlib.pyplot as plt", "", f"labels = {labels!r}", f"values = {values!r}",
             "fig, ax = plt.subplots(figsize=(5, 3.5))", draw, f"ax.set_xlabel({xlabel!r})",
             f"ax.set_ylabel({ylabel!r})"]
    if title:
        lines.append(f"ax.set_title({title!r})")
    lines += ["plt.tight_layout()", "plt.savefig('chart.png')"]
    return "\n".join(lines) + "\n"


def chart2code_rows(n_refs: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Chart-to-code rows: each reference with six graded predictions (as markdown completions)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n_refs):
        title, xlabel, ylabel, labels = TOPICS[i % len(TOPICS)]
        values = [rng.randint(10, 90) for _ in labels]
        kind = ["bar", "line", "scatter"][i % 3]
        colour = PALETTE[i % len(PALETTE)]
        ref = _chart(kind, title, xlabel, ylabel, labels, values, colour)
        other_kind = {"bar": "line", "line": "bar", "scatter": "bar"}[kind]
        preds = {
            "exact": ref,
            "values": _chart(kind, title, xlabel, ylabel, labels, [max(1, v + rng.randint(-25, 25)) for v in values],
                             colour),
            "colour": _chart(kind, title, xlabel, ylabel, labels, values, PALETTE[(i + 3) % len(PALETTE)]),
            "type": _chart(other_kind, title, xlabel, ylabel, labels, values, colour),
            "no_title": _chart(kind, None, xlabel, ylabel, labels, values, colour),
            "broken": ref.replace("fig, ax = plt.subplots(", "fig, ax = plt.subplots((", 1),
        }
        for name, code in preds.items():
            rows.append({"id": f"chart{i}-{name}", "perturbation": name, "reference_code": ref,
                         "completion": f"Here is the code:\n```python\n{code}```"})
    return rows


def _table(rows: list[list[str]], header: list[str], caption_col: bool = True) -> str:
    cols = "l" + "c" * (len(header) - 1)
    lines = [rf"\begin{{tabular}}{{{cols}}}", r"\toprule"]
    if caption_col and len(header) >= 3:
        lines.append(rf" & \multicolumn{{{len(header) - 1}}}{{c}}{{Scores}} \\")
        lines.append(rf"\cmidrule(lr){{2-{len(header)}}}")
    lines.append(" & ".join(header) + r" \\")
    lines.append(r"\midrule")
    lines += [" & ".join(r) + r" \\" for r in rows]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def table2latex_rows(n_refs: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Table-to-LaTeX rows: booktabs tables with multicolumn headers, and graded predictions."""
    rng = random.Random(seed)
    out = []
    for i in range(n_refs):
        header = ["Model", "ChartQA", "DocVQA", "TextVQA"][: 3 + i % 2]
        body = [[f"Model-{chr(65 + r)}"] + [f"{rng.uniform(50, 95):.1f}" for _ in header[1:]] for r in range(3 + i)]
        ref = _table(body, header)
        changed = [row[:] for row in body]
        changed[0][1] = f"{float(changed[0][1]) + 7.3:.1f}"
        preds = {"exact": ref, "cell": _table(changed, header), "row_missing": _table(body[:-1], header),
                 "no_multicolumn": _table(body, header, caption_col=False),
                 "broken": ref.replace(r"\midrule", r"\midrul", 1)}
        for name, code in preds.items():
            out.append({"id": f"table{i}-{name}", "perturbation": name, "reference_code": ref,
                        "completion": f"```latex\n{code}```"})
    return out


def _svg(shapes: list[tuple[str, str]], size: int = 128) -> str:
    body = "".join(f"  {s.format(fill=c)}\n" for s, c in shapes)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{size}" height="{size}" viewBox="0 0 {size} {size}">\n'
            f'  <rect width="{size}" height="{size}" fill="#f7f3e9"/>\n{body}</svg>\n')


def svg_rows(n_refs: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """SVG rows: shape compositions and graded predictions."""
    rng = random.Random(seed)
    out = []
    for i in range(n_refs):
        shapes = [(f'<circle cx="{rng.randint(30, 98)}" cy="{rng.randint(30, 98)}" r="{rng.randint(12, 28)}" '
                   'fill="{fill}"/>', PALETTE[i % 6]),
                  (f'<rect x="{rng.randint(5, 60)}" y="{rng.randint(5, 60)}" width="{rng.randint(20, 50)}" '
                   f'height="{rng.randint(20, 50)}" fill="{{fill}}"/>', PALETTE[(i + 1) % 6]),
                  (f'<polygon points="{rng.randint(10, 40)},110 64,{rng.randint(50, 80)} {rng.randint(88, 118)},110" '
                   'fill="{fill}"/>', PALETTE[(i + 2) % 6])]
        ref = _svg(shapes)
        moved = [(s.replace('cx="', 'cx="1', 1), c) for s, c in shapes]
        preds = {"exact": ref, "colour": _svg([(s, PALETTE[(j + 4) % 6]) for j, (s, _) in enumerate(shapes)]),
                 "moved": _svg(moved), "missing_shape": _svg(shapes[:-1]), "broken": ref.replace("</svg>", "")[:-40]}
        for name, code in preds.items():
            out.append({"id": f"svg{i}-{name}", "perturbation": name, "reference_code": ref,
                        "completion": f"```svg\n{code}```"})
    return out


def _page(title: str, accent: str, items: list[str]) -> str:
    lis = "".join(f"<li>{t}</li>" for t in items)
    return (f"<!doctype html><html><body style='margin:0;font-family:DejaVu Sans,sans-serif;background:#f4f6fb'>"
            f"<div style='margin:40px auto;width:420px;background:#fff;border-radius:12px;padding:24px;"
            f"box-shadow:0 2px 8px rgba(0,0,0,.15)'><h1 style='color:{accent};margin:0 0 12px'>{title}</h1>"
            f"<ul style='line-height:1.8'>{lis}</ul><button style='background:{accent};color:#fff;border:0;"
            f"padding:10px 18px;border-radius:6px'>Get started</button></div></body></html>\n")


def html_rows(n_refs: int = 2, seed: int = 0) -> list[dict[str, Any]]:
    """HTML rows: small landing cards and graded predictions."""
    rng = random.Random(seed)
    names = ["Nimbus Notes", "Orbit Tasks", "Quill Mail"]
    out = []
    for i in range(n_refs):
        items = rng.sample(["Fast sync", "Offline mode", "Shared folders", "Dark theme", "Markdown", "Search"], 3)
        ref = _page(names[i % 3], PALETTE[i % 6], items)
        preds = {"exact": ref, "colour": _page(names[i % 3], PALETTE[(i + 3) % 6], items),
                 "text": _page(names[(i + 1) % 3], PALETTE[i % 6], items), "missing_item": _page(names[i % 3],
                 PALETTE[i % 6], items[:-1]), "empty": "<html><body></body></html>"}
        for name, code in preds.items():
            out.append({"id": f"html{i}-{name}", "perturbation": name, "reference_code": ref,
                        "completion": f"```html\n{code}```"})
    return out


SETS = {"chart2code": ("chart", chart2code_rows), "table2latex": ("table", table2latex_rows),
        "svg": ("svg", svg_rows), "html": ("html", html_rows)}


def write_example_sets(directory: str | Path) -> list[Path]:
    """Write ``<set>.jsonl`` for every set into ``directory``; returns the paths."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (_, make) in SETS.items():
        path = directory / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in make()), encoding="utf-8")
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_example_sets(Path(__file__).resolve().parents[3] / "examples" / "eval"):
        print(p)
