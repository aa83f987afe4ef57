"""Preference pairs from renders, and a loader for preference data in the usual formats.

Two families of seeded, offline pairs:

* **reference vs graded perturbations** (``chart``, ``table``, ``svg``): a synthetic program (the same
  grammar as :mod:`visalign.data.charts` / :mod:`~visalign.data.tables` / :mod:`~visalign.data.svgs`),
  and perturbed copies of it at severities 1, 2 and 3 of one perturbation kind (``values``,
  ``colour``, ``layout``, ``missing``; see :data:`PERTURBATIONS`). Severity 0 is the reference itself.
  A pair holds two rungs of one ladder (same reference, same kind): the lower severity is ``chosen``.
  The reward model sees the reference render too (``reference``): these pairs teach "closer to the
  target is better", which is what a chart-to-code reward needs.
* **DocReward-style documents** (``html``): one HTML document with identical text, written once with
  a professional structure and style and once carelessly (``headings``, ``spacing``, ``alignment``,
  ``fonts``, ``tables`` at severities 1-3), rendered by the sandboxed ``html`` renderer. No reference:
  the model judges the page alone.

The label is ``chosen`` / ``rejected`` plus ``margin`` = (severity of rejected - severity of chosen) / 3,
in (0, 1]: how much better the chosen image is. Rows written by :func:`write_pairs` (and
``visalign data pairs KIND N OUT.jsonl``) look like::

    {"id": "chart-00003-values-0-2", "task": "chart", "kind": "matplotlib", "prompt": "...",
     "chosen": "OUT_images/....png", "rejected": "OUT_images/....png", "reference": "OUT_images/....png",
     "margin": 0.667, "perturbation": "values", "chosen_severity": 0, "rejected_severity": 2,
     "group": 3, "chosen_code": "...", "rejected_code": "..."}

Image paths are relative to the JSONL file. :func:`load_pairs` reads them back, and also reads
users' preference data: ``chosen`` / ``rejected`` columns, Pick-a-Pic's ``image_0`` / ``image_1`` with
``label_0``, or HPDv2's ``image_path`` list with ``human_preference`` or ``rank``; from JSONL, parquet,
a ``datasets`` object or ``save_to_disk`` directory, or a Python list. Errors name the file, the line
(row) and the field.

Example:
    >>> pairs = chart_pair_specs(2, seed=0, pairs_per_reference=2)
    >>> [(p["perturbation"], p["chosen_severity"], p["rejected_severity"]) for p in pairs]
    [('layout', 0, 1), ('values', 1, 3), ('values', 1, 2), ('missing', 1, 3)]
    >>> all(p["chosen_severity"] < p["rejected_severity"] for p in pairs)
    True
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image

from .charts import CHART_RENDER_OPTIONS, COLOURS, HEADER, TITLE_WORDS
from .loaders import DataError, read_source, to_image
from .svgs import SVG_RENDER_OPTIONS, random_svg_code
from .tables import TABLE_RENDER_OPTIONS, random_table_code

__all__ = [
    "DOC_RENDER_OPTIONS",
    "MAX_SEVERITY",
    "PAIR_KINDS",
    "PERTURBATIONS",
    "chart_pair_specs",
    "doc_html",
    "html_pair_specs",
    "ladders_from_pairs",
    "load_pairs",
    "pair_dataset",
    "perturb_chart",
    "perturb_svg",
    "perturb_table",
    "perturbation_ladders",
    "svg_pair_specs",
    "table_pair_specs",
    "write_pairs",
]

#: Severities run 0 (the reference / the professional document) .. MAX_SEVERITY.
MAX_SEVERITY = 3

#: Perturbation kinds of each pair kind.
PERTURBATIONS: dict[str, tuple[str, ...]] = {
    "chart": ("values", "colour", "layout", "missing"),
    "table": ("values", "layout", "missing"),
    "svg": ("values", "colour", "missing"),
    "html": ("headings", "spacing", "alignment", "fonts", "tables"),
}
#: Pair kind -> renderer kind.
PAIR_KINDS: dict[str, str] = {"chart": "matplotlib", "table": "latex", "svg": "svg", "html": "html"}
#: Renderer options of the documents: a 480 x 640 CSS-px window captured at half scale (240 x 320 px).
DOC_RENDER_OPTIONS: dict[str, Any] = {"viewport": (480, 640), "full_page": False, "device_scale_factor": 0.5}
_RENDER_OPTIONS = {"chart": CHART_RENDER_OPTIONS, "table": TABLE_RENDER_OPTIONS, "svg": SVG_RENDER_OPTIONS,
                   "html": DOC_RENDER_OPTIONS}
PROMPTS = {
    "chart": "Score how well this chart reproduces the reference chart.",
    "table": "Score how well this table reproduces the reference table.",
    "svg": "Score how well this drawing reproduces the reference drawing.",
    "html": "Score the professional structure and style of this document.",
}


# ----------------------------------------------------------------------------------------- charts

def _chart_spec(rng: random.Random) -> dict[str, Any]:
    n = rng.randint(4, 7)
    return {"type": rng.choice(("bar", "line")), "values": [rng.randint(1, 9) for _ in range(n)],
            "colour": rng.choice(COLOURS), "title": rng.choice(TITLE_WORDS) if rng.random() < 0.7 else None}


def _chart_code(spec: Mapping[str, Any]) -> str:
    values, colour = spec["values"], spec["colour"]
    style = f"color={colour!r}" + (f", alpha={spec['alpha']}" if spec.get("alpha") else "")
    kind = spec["type"]
    if not values:
        call = "plt.plot([])"
    elif kind == "bar":
        call = f"plt.bar(range({len(values)}), {values}, {style})"
    elif kind == "barh":
        call = f"plt.barh(range({len(values)}), {values}, {style})"
    elif kind == "steps":
        call = f"plt.plot({values}, {style}, drawstyle='steps-mid')"
    else:
        call = f"plt.plot({values}, {style})"
    lines = [HEADER, call]
    if spec.get("ylim"):
        lines.append(f"plt.ylim(0, {spec['ylim']})")
    if spec.get("title"):
        lines.append(f"plt.title({spec['title']!r})")
    return "\n".join(lines)


def _shift(rng: random.Random, v: int, by: int, lo: int = 1, hi: int = 9) -> int:
    """``v`` moved by ``by`` up or down, staying in [lo, hi] (the direction that fits)."""
    up, down = v + by, v - by
    if up <= hi and (down < lo or rng.random() < 0.5):
        return up
    return down if down >= lo else max(lo, min(hi, up))


def perturb_chart(spec: Mapping[str, Any], kind: str, severity: int, rng: random.Random) -> dict[str, Any]:
    """The chart ``spec`` perturbed by ``kind`` at ``severity`` (1-3); 0 returns it unchanged.

    values: one value moved by 2 / half of them by 3 / all by 4. colour: faded (alpha 0.55) / another
    colour / another colour faded (alpha 0.35). layout: y axis stretched to 15 / bars turned
    horizontal or the line drawn as steps / bar and line swapped. missing: title dropped (else the
    last value) / the second half of the values dropped / nothing plotted.

    Example:
        >>> spec = {"type": "bar", "values": [2, 4, 6, 8], "colour": "red", "title": "Cost"}
        >>> perturb_chart(spec, "missing", 2, random.Random(0))["values"]
        [2, 4]
    """
    _check_severity(severity)
    out = dict(spec, values=list(spec["values"]))
    if severity == 0:
        return out
    values = out["values"]
    if kind == "values":
        count = {1: 1, 2: max(1, (len(values) + 1) // 2), 3: len(values)}[severity]
        by = severity + 1
        for i in sorted(rng.sample(range(len(values)), count)):
            values[i] = _shift(rng, values[i], by)
    elif kind == "colour":
        if severity == 1:
            out["alpha"] = 0.55
        else:
            out["colour"] = rng.choice([c for c in COLOURS if c != spec["colour"]])
            if severity == 3:
                out["alpha"] = 0.35
    elif kind == "layout":
        if severity == 1:
            out["ylim"] = 15
        elif severity == 2:
            out["type"] = "barh" if spec["type"] == "bar" else "steps"
        else:
            out["type"] = "line" if spec["type"] == "bar" else "bar"
    elif kind == "missing":
        if severity == 1:
            if out.get("title"):
                out["title"] = None
            else:
                values.pop()
        elif severity == 2:
            del values[(len(values) + 1) // 2:]
        else:
            values.clear()
    else:
        raise ValueError(f"unknown chart perturbation {kind!r}; choose from {PERTURBATIONS['chart']}")
    return out


def _check_severity(severity: int) -> None:
    if not 0 <= severity <= MAX_SEVERITY:
        raise ValueError(f"severity must be in [0, {MAX_SEVERITY}], got {severity}")


# ----------------------------------------------------------------------------------------- tables

_NUMBER = re.compile(r"(?<![\w{])(\d+)(?![\w}])")
_RULE_LINES = ("\\hline", "\\toprule", "\\midrule", "\\bottomrule")


def _table_reference(rng: random.Random) -> str:
    return random_table_code(rng, rows=rng.randint(3, 4), cols=rng.randint(3, 4), multicolumn_prob=0.0,
                             label_prob=0.3)


def _table_parts(code: str) -> tuple[str, list[str]]:
    lines = code.split("\n")
    return lines[0], lines[1:-1]


def perturb_table(code: str, kind: str, severity: int, rng: random.Random) -> str:
    """A ``tabular`` source (from :func:`random_table_code`, no multicolumn) perturbed by ``kind`` at
    ``severity`` (1-3); 0 returns it unchanged.

    values: one number changed / half of them / all of them. layout: column alignments changed / and
    the rules changed (none <-> grid) / and the columns in reverse order. missing: the last row
    dropped / and the last column / only the first row left.

    Example:
        >>> code = "\\\\begin{tabular}{lc}\\nab & 12 \\\\\\\\\\ncd & 34 \\\\\\\\\\n\\\\end{tabular}"
        >>> print(perturb_table(code, "missing", 1, random.Random(0)))
        \\begin{tabular}{lc}
        ab & 12 \\\\
        \\end{tabular}
    """
    _check_severity(severity)
    if severity == 0:
        return code
    first, body = _table_parts(code)
    spec = first[len("\\begin{tabular}{"):-1]
    aligns = [c for c in spec if c in "lcr"]
    grid = "|" in spec
    row_idx = [i for i, ln in enumerate(body) if ln.endswith(" \\\\")]
    if kind == "values":
        cells = [(i, m) for i in row_idx for m in _NUMBER.finditer(body[i])]
        count = {1: 1, 2: max(1, (len(cells) + 1) // 2), 3: len(cells)}[severity]
        chosen = sorted(rng.sample(range(len(cells)), min(count, len(cells))), reverse=True)
        for k in chosen:  # right to left within a line, so earlier spans stay valid
            i, m = cells[k]
            old = int(m.group(1))
            new = (old + rng.randint(11, 88)) % 100
            body[i] = body[i][:m.start(1)] + str(new) + body[i][m.end(1):]
    elif kind == "layout":
        aligns = [{"l": "r", "c": "l", "r": "c"}[a] for a in aligns]
        if severity >= 2:
            if grid:
                grid = False
                body = [ln for ln in body if ln not in _RULE_LINES]
            else:
                grid = True
                body = [ln for ln in body if ln not in _RULE_LINES]
                body = ["\\hline"] + [x for ln in body for x in (ln, "\\hline")]
        if severity == 3:
            aligns = aligns[::-1]
            body = [" & ".join(ln[:-3].split(" & ")[::-1]) + " \\\\" if ln.endswith(" \\\\") else ln for ln in body]
    elif kind == "missing":
        rows = [i for i, ln in enumerate(body) if ln.endswith(" \\\\")]
        keep_rows = {1: len(rows) - 1, 2: len(rows) - 1, 3: 1}[severity]
        drop = set(rows[keep_rows:])
        body = [ln for i, ln in enumerate(body) if i not in drop]
        # a rule left twice in a row (after a dropped row) would draw a double line: keep one
        body = [ln for i, ln in enumerate(body) if not (ln in _RULE_LINES and i and body[i - 1] == ln)]
        if severity >= 2:
            aligns = aligns[:-1]
            body = [" & ".join(ln[:-3].split(" & ")[:-1]) + " \\\\" if ln.endswith(" \\\\") else ln for ln in body]
    else:
        raise ValueError(f"unknown table perturbation {kind!r}; choose from {PERTURBATIONS['table']}")
    new_spec = ("|" + "|".join(aligns) + "|") if grid else "".join(aligns)
    return "\n".join([f"\\begin{{tabular}}{{{new_spec}}}", *body, "\\end{tabular}"])


# ----------------------------------------------------------------------------------------- SVG

_SHAPE_LINE = re.compile(r"^<(rect|circle|ellipse|line|polygon) ")
_FILL = re.compile(r'(fill|stroke)="([a-z]+)"')
_XY = re.compile(r'\b(x|y|cx|cy|x1|y1|x2|y2)="(-?\d+)"')
_POINTS = re.compile(r'points="([^"]+)"')


def _svg_reference(rng: random.Random) -> str:
    return random_svg_code(rng, n_shapes=rng.randint(3, 4))


def _move(element: str, dx: int, dy: int) -> str:
    def xy(m: re.Match[str]) -> str:
        d = dx if m.group(1).startswith(("x", "cx")) else dy
        return f'{m.group(1)}="{int(m.group(2)) + d}"'

    def pts(m: re.Match[str]) -> str:
        moved = []
        for p in m.group(1).split():
            x, y = p.split(",")
            moved.append(f"{int(x) + dx},{int(y) + dy}")
        return f'points="{" ".join(moved)}"'

    return _POINTS.sub(pts, _XY.sub(xy, element))


def perturb_svg(code: str, kind: str, severity: int, rng: random.Random) -> str:
    """An SVG document (from :func:`random_svg_code`) perturbed by ``kind`` at ``severity`` (1-3); 0
    returns it unchanged.

    values: one shape moved by 8 px / every shape by 12 px / every shape by 24 px. colour: one shape
    recoloured / half of them / all of them. missing: the last shape dropped / only the first left /
    none left.

    Example:
        >>> code = random_svg_code(random.Random(2), n_shapes=2)
        >>> perturb_svg(code, "missing", 3, random.Random(0)).count("\\n")
        1
    """
    _check_severity(severity)
    if severity == 0:
        return code
    lines = code.split("\n")
    header, shapes, footer = lines[0], lines[1:-1], lines[-1]
    if kind == "values":
        count = 1 if severity == 1 else len(shapes)
        by = {1: 8, 2: 12, 3: 24}[severity]
        for i in rng.sample(range(len(shapes)), count):
            dx, dy = rng.choice((-by, by)), rng.choice((-by, by))
            shapes[i] = _move(shapes[i], dx, dy)
    elif kind == "colour":
        count = {1: 1, 2: max(1, (len(shapes) + 1) // 2), 3: len(shapes)}[severity]
        for i in rng.sample(range(len(shapes)), count):
            old = _FILL.search(shapes[i])
            assert old is not None
            new = rng.choice([c for c in COLOURS if c != old.group(2)])
            shapes[i] = shapes[i][:old.start(2)] + new + shapes[i][old.end(2):]
    elif kind == "missing":
        shapes = {1: shapes[:-1], 2: shapes[:1], 3: []}[severity]
    else:
        raise ValueError(f"unknown SVG perturbation {kind!r}; choose from {PERTURBATIONS['svg']}")
    return "\n".join([header, *shapes, footer])


# ----------------------------------------------------------------------------------------- HTML documents

_WORDS = ("report", "quarter", "growth", "team", "market", "revenue", "plan", "customer", "product", "service",
          "review", "target", "budget", "project", "result", "region", "policy", "quality", "support", "launch",
          "strong", "steady", "new", "key", "annual", "early", "clear", "shared", "local", "global")
_TITLES = ("Annual Review", "Quarterly Report", "Project Proposal", "Team Handbook", "Market Summary",
           "Policy Update", "Launch Plan", "Budget Overview")
_SECTIONS = ("Summary", "Background", "Results", "Next Steps", "Risks", "Timeline", "Method", "Outlook")
_FONTS_CARELESS = ("'DejaVu Sans Mono', monospace", "'DejaVu Serif', serif", "'DejaVu Sans', sans-serif",
                   "cursive", "fantasy")


def _sentence(rng: random.Random) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(6, 11))]
    return " ".join(words).capitalize() + "."


def _doc_content(rng: random.Random) -> dict[str, Any]:
    sections = []
    for name in rng.sample(_SECTIONS, rng.randint(2, 3)):
        sections.append({"heading": name, "paragraph": " ".join(_sentence(rng) for _ in range(rng.randint(2, 3)))})
    cols = rng.sample(("Region", "Q1", "Q2", "Q3", "Total", "Share"), 3)
    table = [cols] + [[rng.choice(("North", "South", "East", "West"))] + [str(rng.randint(10, 99))
                                                                         for _ in cols[1:]] for _ in range(3)]
    return {"title": rng.choice(_TITLES), "sections": sections, "table": table,
            "items": [_sentence(rng)[:-1] for _ in range(3)], "table_after": rng.randrange(len(sections))}


def doc_html(content: Mapping[str, Any], careless: str | None = None, severity: int = 0,
             rng: random.Random | None = None) -> str:
    """The document ``content`` as HTML: professional when ``severity`` is 0, else careless in one
    aspect (``headings``, ``spacing``, ``alignment``, ``fonts``, ``tables``) at ``severity`` 1-3. The
    text is identical whatever the style.

    Example:
        >>> content = _doc_content(random.Random(0))
        >>> good, bad = doc_html(content), doc_html(content, "headings", 3, random.Random(0))
        >>> _visible_text(good) == _visible_text(bad), good == bad
        (True, False)
    """
    _check_severity(severity)
    rng = rng or random.Random(0)
    if severity and careless not in PERTURBATIONS["html"]:
        raise ValueError(f"unknown document perturbation {careless!r}; choose from {PERTURBATIONS['html']}")
    s = severity if careless else 0
    body_font = "'DejaVu Sans', sans-serif"
    css = {
        "body": f"margin:0;padding:28px 36px;font-family:{body_font};font-size:14px;line-height:1.5;color:#222;"
                "background:#fff",
        "h1": "font-size:26px;margin:0 0 14px;border-bottom:2px solid #2b4c7e;padding-bottom:6px;color:#2b4c7e",
        "h2": "font-size:18px;margin:18px 0 6px;color:#2b4c7e",
        "p": "margin:0 0 10px;text-align:left",
        "ul": "margin:0 0 10px 18px;padding:0",
        "table": "border-collapse:collapse;margin:8px 0 12px;font-size:13px",
        "th": "border-bottom:2px solid #2b4c7e;padding:4px 12px;text-align:left;background:#eef2f8",
        "td": "border-bottom:1px solid #ccc;padding:4px 12px;text-align:right",
    }
    block_style: Callable[[int], str] = lambda i: ""  # noqa: E731  per-block inline style (careless)
    heading_tag: Callable[[int], str] = lambda i: "h2"  # noqa: E731
    table_mode = "table"
    if careless == "headings" and s:
        if s == 1:
            sizes = [rng.choice(("h2", "h4", "h5")) for _ in range(8)]
            heading_tag = lambda i: sizes[i % 8]  # noqa: E731
        else:
            heading_tag = lambda i: "p"  # noqa: E731
            css["h1"] = "font-size:14px;margin:0;font-weight:normal" if s == 3 else "font-size:16px;margin:0"
            if s == 2:
                css["p.h"] = "font-weight:bold;margin:0"
    elif careless == "spacing" and s:
        css["body"] = css["body"].replace("padding:28px 36px", "padding:2px").replace("line-height:1.5",
                                                                                     "line-height:1.0")
        if s >= 2:
            for k in ("h1", "h2", "p", "ul", "table"):
                css[k] = re.sub(r"margin:[^;]+", "margin:0", css[k])
        if s == 3:
            gaps = [rng.choice((0, 0, 40, 70)) for _ in range(16)]
            block_style = lambda i: f"margin-top:{gaps[i % 16]}px;"  # noqa: E731
    elif careless == "alignment" and s:
        if s == 1:
            css["p"] = css["p"].replace("text-align:left", "text-align:center")
        else:
            aligns = [rng.choice(("left", "center", "right")) for _ in range(16)]
            indents = [rng.choice((0, 30, 70)) if s == 3 else 0 for _ in range(16)]
            block_style = lambda i: f"text-align:{aligns[i % 16]};margin-left:{indents[i % 16]}px;"  # noqa: E731
            css["h1"] += ";text-align:right"
    elif careless == "fonts" and s:
        if s == 1:
            css["body"] = css["body"].replace(body_font, "'DejaVu Sans Mono', monospace")
        else:
            fonts = [rng.choice(_FONTS_CARELESS) for _ in range(16)]
            sizes = [rng.choice((10, 13, 17, 22)) if s == 3 else 14 for _ in range(16)]
            block_style = lambda i: f"font-family:{fonts[i % 16]};font-size:{sizes[i % 16]}px;"  # noqa: E731
    elif careless == "tables" and s:
        css["th"] = "padding:1px;text-align:center"
        css["td"] = "padding:1px;text-align:" + ("left" if s == 1 else "center")
        css["table"] = "margin:0;font-size:13px"
        if s >= 2:
            aligns = [rng.choice(("left", "center", "right")) for _ in range(16)]
            css["td"] = "padding:1px"
            table_mode = "ragged"
        if s == 3:
            table_mode = "text"
    style = "".join(f"{k}{{{v}}}" for k, v in css.items())
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><style>{style}</style></head><body>",
             f"<h1>{content['title']}</h1>"]
    block = 0

    def styled(tag: str, inner: str, cls: str = "") -> str:
        nonlocal block
        extra = block_style(block)
        block += 1
        attrs = (f" class='{cls}'" if cls else "") + (f" style='{extra}'" if extra else "")
        return f"<{tag}{attrs}>{inner}</{tag}>"

    def table_html() -> str:
        rows = content["table"]
        if table_mode == "text":
            return styled("p", " ".join(" | ".join(r) for r in rows))
        head = "".join(f"<th>{c}</th>" for c in rows[0])
        body = ""
        for r, row in enumerate(rows[1:]):
            cells = ""
            for c, cell in enumerate(row):
                align = f" style='text-align:{aligns[(3 * r + c) % 16]}'" if table_mode == "ragged" else ""
                cells += f"<td{align}>{cell}</td>"
            body += f"<tr>{cells}</tr>"
        return styled("table", f"<tr>{head}</tr>{body}")

    for i, sec in enumerate(content["sections"]):
        tag = heading_tag(i)
        parts.append(styled(tag, sec["heading"], "h" if tag == "p" else ""))
        parts.append(styled("p", sec["paragraph"]))
        if i == 0:
            parts.append(styled("ul", "".join(f"<li>{t}</li>" for t in content["items"])))
        if i == content["table_after"]:
            parts.append(table_html())
    parts.append("</body></html>")
    return "".join(parts)


def _visible_text(html: str) -> str:
    """The words of a page (tags and the style sheet removed), to check that both sides say the same."""
    html = re.sub(r"<style>.*?</style>", "", html)
    return " ".join(re.sub(r"<[^>]+>|\|", " ", html).split())


# ----------------------------------------------------------------------------------------- pair specs

def _ladder_pairs(rng: random.Random, kinds: Sequence[str], per_reference: int) -> list[tuple[str, int, int]]:
    """``per_reference`` distinct ``(kind, chosen severity, rejected severity)`` pairs, kinds balanced."""
    options = [(k, a, b) for k in kinds for a in range(MAX_SEVERITY + 1) for b in range(a + 1, MAX_SEVERITY + 1)]
    by_kind = {k: [o for o in options if o[0] == k] for k in kinds}
    out: list[tuple[str, int, int]] = []
    order = list(kinds)
    rng.shuffle(order)
    while len(out) < min(per_reference, len(options)):
        for k in order:
            left = [o for o in by_kind[k] if o not in out]
            if left and len(out) < per_reference:
                out.append(rng.choice(left))
    return out


def _specs(task: str, n_refs: int, seed: int, per_reference: int | None,
           reference: Callable[[random.Random], Any], perturb: Callable[[Any, str, int, random.Random], Any],
           code: Callable[[Any], str]) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    kinds = PERTURBATIONS[task]
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for group in range(n_refs):
        while True:
            ref = reference(rng)
            if code(ref) not in seen:
                seen.add(code(ref))
                break
        # one perturbed copy per (kind, severity): every pair of a reference reads the same ladder
        ladder: dict[tuple[str, int], str] = {}
        for kind in kinds:
            for sev in range(MAX_SEVERITY + 1):
                ladder[kind, sev] = code(perturb(ref, kind, sev, random.Random(f"{seed}-{group}-{kind}-{sev}")))
        if per_reference is None:
            chosen = [(k, a, b) for k in kinds for a in range(MAX_SEVERITY + 1) for b in range(a + 1, MAX_SEVERITY + 1)]
        else:
            chosen = _ladder_pairs(rng, kinds, per_reference)
        for kind, a, b in chosen:
            out.append({"id": f"{task}-{group:05d}-{kind}-{a}-{b}", "task": task, "kind": PAIR_KINDS[task],
                        "prompt": PROMPTS[task], "group": group, "perturbation": kind, "chosen_severity": a,
                        "rejected_severity": b, "margin": round((b - a) / MAX_SEVERITY, 4),
                        "chosen_code": ladder[kind, a], "rejected_code": ladder[kind, b],
                        "reference_code": ladder[kind, 0] if task != "html" else None})
    return out


def chart_pair_specs(n_refs: int, seed: int = 0, pairs_per_reference: int | None = 4) -> list[dict[str, Any]]:
    """Pair specs (codes, no images) from ``n_refs`` reference charts, ``pairs_per_reference`` each
    (None: every pair of every ladder, 6 per perturbation kind)."""
    return _specs("chart", n_refs, seed, pairs_per_reference, _chart_spec, perturb_chart, _chart_code)


def table_pair_specs(n_refs: int, seed: int = 0, pairs_per_reference: int | None = 4) -> list[dict[str, Any]]:
    """Pair specs from ``n_refs`` reference tables (see :func:`chart_pair_specs`)."""
    return _specs("table", n_refs, seed, pairs_per_reference, _table_reference, perturb_table, lambda c: c)


def svg_pair_specs(n_refs: int, seed: int = 0, pairs_per_reference: int | None = 4) -> list[dict[str, Any]]:
    """Pair specs from ``n_refs`` reference drawings (see :func:`chart_pair_specs`)."""
    return _specs("svg", n_refs, seed, pairs_per_reference, _svg_reference, perturb_svg, lambda c: c)


def html_pair_specs(n_refs: int, seed: int = 0, pairs_per_reference: int | None = 4) -> list[dict[str, Any]]:
    """Pair specs from ``n_refs`` documents: severity 0 is the professional page (see
    :func:`chart_pair_specs`)."""
    return _specs("html", n_refs, seed, pairs_per_reference, _doc_content,
                  lambda content, kind, sev, rng: (content, kind, sev, rng),
                  lambda t: doc_html(*t) if isinstance(t, tuple) else doc_html(t))


_SPECS = {"chart": chart_pair_specs, "table": table_pair_specs, "svg": svg_pair_specs, "html": html_pair_specs}


# ----------------------------------------------------------------------------------------- rendering

def _render(task: str, codes: Sequence[str], workers: int, timeout: float) -> dict[str, Image.Image | None]:
    from ._synthetic import render_codes

    unique = list(dict.fromkeys(codes))
    results = render_codes(PAIR_KINDS[task], unique, _RENDER_OPTIONS[task], None, workers, timeout)
    return {c: (r.image.convert("RGB") if r.ok and r.image is not None else None)
            for c, r in zip(unique, results, strict=True)}


def _attach_images(task: str, specs: list[dict[str, Any]], workers: int, timeout: float) -> list[dict[str, Any]]:
    codes = [c for s in specs for c in (s["chosen_code"], s["rejected_code"], s.get("reference_code")) if c]
    images = _render(task, codes, workers, timeout)
    out = []
    for s in specs:
        row = dict(s, chosen=images[s["chosen_code"]], rejected=images[s["rejected_code"]],
                   reference=images[s["reference_code"]] if s.get("reference_code") else None)
        if row["chosen"] is None or row["rejected"] is None or (s.get("reference_code") and row["reference"] is None):
            continue  # a render failed (an empty LaTeX table, a broken page): the pair is dropped
        out.append(row)
    return out


def pair_dataset(task: str, n: int, seed: int = 0, *, pairs_per_reference: int = 4, workers: int = 2,
                 timeout: float = 20.0) -> list[dict[str, Any]]:
    """``n`` rendered preference pairs of ``task`` (``chart``, ``table``, ``svg``, ``html``): rows with
    PIL images under ``chosen``, ``rejected`` and ``reference`` (None for ``html``) and the spec's
    fields (see the module doc). Seeded: the same ``(task, n, seed, pairs_per_reference)`` gives the
    same rows. Pairs whose render failed are replaced from more references."""
    if task not in _SPECS:
        raise ValueError(f"unknown pair kind {task!r}; choose from {sorted(_SPECS)}")
    if n < 1 or pairs_per_reference < 1:
        raise ValueError("n and pairs_per_reference must be >= 1")
    n_refs = -(-n // pairs_per_reference)
    for extra in (0, max(2, n_refs // 4), max(4, n_refs)):
        specs = _SPECS[task](n_refs + extra, seed, pairs_per_reference)
        rows = _attach_images(task, specs, workers, timeout)
        if len(rows) >= n:
            return rows[:n]
    raise RuntimeError(f"only {len(rows)} of {n} {task} pairs rendered; is the {PAIR_KINDS[task]} renderer "
                       "working? (try `visalign doctor`)")


def perturbation_ladders(task: str, n_refs: int, seed: int = 0, *, workers: int = 2,
                         timeout: float = 20.0) -> list[dict[str, Any]]:
    """Every rung of every ladder: one row per ``(reference, perturbation kind)`` with ``images`` (the
    renders at severities 0..3, in order), ``reference`` and ``perturbation``; for checking that a
    reward ranks graded perturbations in order."""
    specs = _SPECS[task](n_refs, seed, None)
    codes = [c for s in specs for c in (s["chosen_code"], s["rejected_code"], s.get("reference_code")) if c]
    images = _render(task, codes, workers, timeout)
    ladders: dict[tuple[int, str], dict[int, str]] = {}
    refs: dict[int, str | None] = {}
    for s in specs:
        rung = ladders.setdefault((s["group"], s["perturbation"]), {})
        rung[s["chosen_severity"]] = s["chosen_code"]
        rung[s["rejected_severity"]] = s["rejected_code"]
        refs[s["group"]] = s.get("reference_code")
    out = []
    for (group, kind), rung in sorted(ladders.items()):
        ims = [images[rung[sev]] for sev in range(MAX_SEVERITY + 1)]
        ref = images[refs[group]] if refs[group] else None
        if any(im is None for im in ims) or (refs[group] and ref is None):
            continue
        out.append({"group": group, "perturbation": kind, "images": ims, "reference": ref, "task": task,
                    "prompt": PROMPTS[task]})
    return out


def ladders_from_pairs(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The ladders (as :func:`perturbation_ladders` returns them) that pair rows cover completely: rows
    of one ``(group, perturbation)`` whose severities span 0..MAX_SEVERITY, e.g. pairs made with
    ``pairs_per_reference`` >= 6 per kind."""
    rungs: dict[tuple[Any, str], dict[int, Any]] = {}
    first: dict[tuple[Any, str], Mapping[str, Any]] = {}
    for r in rows:
        key = (r.get("group"), str(r.get("perturbation")))
        if key[0] is None or r.get("chosen_severity") is None:
            continue
        rung = rungs.setdefault(key, {})
        rung[int(r["chosen_severity"])] = r["chosen"]
        rung[int(r["rejected_severity"])] = r["rejected"]
        first.setdefault(key, r)
    out = []
    for key, rung in sorted(rungs.items(), key=lambda kv: (str(kv[0][0]), kv[0][1])):
        if all(s in rung for s in range(MAX_SEVERITY + 1)):
            r = first[key]
            out.append({"group": key[0], "perturbation": key[1], "images": [rung[s] for s in range(MAX_SEVERITY + 1)],
                        "reference": r.get("reference"), "task": r.get("task"), "prompt": r.get("prompt")})
    return out


# ----------------------------------------------------------------------------------------- files

IMAGE_FIELDS = ("chosen", "rejected", "reference")


def write_pairs(rows: Iterable[Mapping[str, Any]], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """Write pair rows as JSONL, each image as a PNG in ``image_dir`` (default ``<stem>_images`` beside
    the file) under a path relative to the JSONL; identical images (a reference shared by several
    pairs) are written once."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    images = Path(image_dir) if image_dir is not None else path.parent / f"{path.stem}_images"
    images.mkdir(parents=True, exist_ok=True)
    written: dict[bytes, str] = {}
    with path.open("w", encoding="utf-8") as f:
        for i, row in enumerate(rows):
            record: dict[str, Any] = {}
            for key, value in row.items():
                if key in IMAGE_FIELDS:
                    image = to_image(value, None, f"row {i} field {key!r}")
                    if image is None:
                        record[key] = None
                        continue
                    digest = hashlib.sha256(image.tobytes() + repr(image.size).encode()).digest()
                    if digest not in written:
                        file = images / f"{len(written):06d}.png"
                        image.save(file)
                        try:
                            written[digest] = str(file.resolve().relative_to(path.parent.resolve()))
                        except ValueError:
                            written[digest] = str(file.resolve())
                    record[key] = written[digest]
                elif value is None or isinstance(value, (str, int, float, bool)):
                    record[key] = value
            f.write(json.dumps(record) + "\n")
    return path


def _pick_a_pic(raw: Mapping[str, Any], where: str) -> tuple[Any, Any, float | None]:
    """Pick-a-Pic's layout: ``image_0`` / ``image_1`` (or ``jpg_0`` / ``jpg_1``) and ``label_0`` (1: the
    first is preferred, 0: the second, 0.5: a tie)."""
    a = raw.get("image_0", raw.get("jpg_0"))
    b = raw.get("image_1", raw.get("jpg_1"))
    label = raw.get("label_0")
    if label is None and raw.get("preference") is not None:
        label = 1.0 if int(raw["preference"]) == 0 else 0.0
    if label is None:
        raise DataError(f"{where}: field 'label_0' (or 'preference') is missing: which image is preferred?")
    try:
        label = float(label)
    except (TypeError, ValueError):
        raise DataError(f"{where}: field 'label_0' must be a number in [0, 1], got {label!r}") from None
    if label == 0.5:
        return a, b, None  # a tie: no preference
    return (a, b, label) if label > 0.5 else (b, a, 1.0 - label)


def load_pairs(source: Any, *, chosen_column: str = "chosen", rejected_column: str = "rejected",
               prompt_column: str = "prompt", reference_column: str = "reference", margin_column: str = "margin",
               perturbation_column: str = "perturbation", split: str = "train", limit: int | None = None,
               keep_ties: bool = False) -> list[dict[str, Any]]:
    """Read preference pairs: rows ``dict(id, chosen, rejected, reference, prompt, margin, perturbation)``
    with PIL images (``reference`` None when absent, ``margin`` 0.0 when absent, ``perturbation``
    ``"unknown"``); other columns pass through.

    ``source``: a ``.jsonl`` (image paths relative to the file, base64 or ``data:`` URLs), a
    ``.parquet`` (image bytes or ``{"bytes", "path"}``), a ``datasets`` object or ``save_to_disk``
    directory, or a list of dicts. Columns ``chosen`` / ``rejected``; or Pick-a-Pic's ``image_0`` /
    ``image_1`` + ``label_0`` (ties, ``label_0`` 0.5, are skipped unless ``keep_ties``); or HPDv2's
    ``image_path`` list + ``human_preference`` (one pair per other image) or ``rank`` (every pair of
    different ranks). Errors name the file, the line (JSONL) or row, and the field.

    Example:
        >>> from PIL import Image
        >>> a, b = Image.new("RGB", (4, 4), "white"), Image.new("RGB", (4, 4), "black")
        >>> rows = load_pairs([{"image_0": a, "image_1": b, "label_0": 0, "caption": "night"}])
        >>> rows[0]["chosen"].getpixel((0, 0)), rows[0]["prompt"], rows[0]["caption"]
        ((0, 0, 0), 'night', 'night')
        >>> load_pairs([{"chosen": a}])
        Traceback (most recent call last):
        ...
        visalign.data.loaders.DataError: rows row 0 (id 0): field 'rejected' is missing; fields present: ['chosen']
    """
    raw, name, base_dir, lines = read_source(source, split)
    out = []
    for i, row in enumerate(raw):
        if limit is not None and len(out) >= limit:
            break
        where = f"{name}:{lines[i]}" if lines is not None else None
        if not isinstance(row, Mapping):
            raise DataError(f"{where or f'{name} row {i}'}: expected a mapping of fields, got {type(row).__name__}")
        row_id = row.get("id", i)
        where = where or f"{name} row {i} (id {row_id!r})"
        margin: float | None = None
        if chosen_column in row or rejected_column in row:
            for col in (chosen_column, rejected_column):
                if row.get(col) is None:
                    raise DataError(f"{where}: field {col!r} is missing; fields present: {sorted(row)}")
            sides = [(row[chosen_column], row[rejected_column], chosen_column, rejected_column)]
        elif any(k in row for k in ("image_0", "image_1", "jpg_0", "jpg_1")):
            chosen_raw, rejected_raw, strength = _pick_a_pic(row, where)
            if strength is None and not keep_ties:
                continue
            if chosen_raw is None or rejected_raw is None:
                raise DataError(f"{where}: fields 'image_0' and 'image_1' are both needed; fields present: "
                                f"{sorted(row)}")
            sides = [(chosen_raw, rejected_raw, "image_0/1", "image_0/1")]
        elif "image_path" in row or "images" in row:
            sides = _hpd(row, where)
        else:
            raise DataError(f"{where}: field {rejected_column!r} is missing; fields present: {sorted(row)}"
                            if chosen_column in row else
                            f"{where}: no pair found: expected fields {chosen_column!r} / {rejected_column!r} "
                            f"(or image_0 / image_1 / label_0, or image_path + human_preference / rank); "
                            f"fields present: {sorted(row)}")
        reference = to_image(row.get(reference_column), base_dir, f"{where} field {reference_column!r}")
        if row.get(margin_column) is not None:
            try:
                margin = float(row[margin_column])
            except (TypeError, ValueError):
                raise DataError(f"{where}: field {margin_column!r} must be a number, got "
                                f"{row[margin_column]!r}") from None
            if margin < 0:
                raise DataError(f"{where}: field {margin_column!r} must be >= 0 (chosen is the better one), "
                                f"got {margin}")
        prompt = row.get(prompt_column) or row.get("caption") or ""
        extra = {k: v for k, v in row.items() if k not in (chosen_column, rejected_column, reference_column,
                                                           "image_0", "image_1", "jpg_0", "jpg_1", "image_path",
                                                           "images")}
        for chosen_raw, rejected_raw, c_field, r_field in sides:
            chosen = to_image(chosen_raw, base_dir, f"{where} field {c_field!r}")
            rejected = to_image(rejected_raw, base_dir, f"{where} field {r_field!r}")
            out.append({**extra, "id": row_id if len(sides) == 1 else f"{row_id}-{c_field}-{r_field}",
                        "chosen": chosen, "rejected": rejected, "reference": reference, "prompt": str(prompt),
                        "margin": margin if margin is not None else 0.0,
                        "perturbation": str(row.get(perturbation_column) or "unknown")})
    return out[:limit] if limit is not None else out


def _hpd(row: Mapping[str, Any], where: str) -> list[tuple[Any, Any, str, str]]:
    """HPDv2's layout: ``image_path`` (or ``images``), a list of images of one prompt, and either
    ``human_preference`` (the training set: 1 marks the preferred image of two) or ``rank`` (the test set:
    1 is the best; every pair of different ranks becomes a pair)."""
    key = "image_path" if "image_path" in row else "images"
    images = row[key]
    if not isinstance(images, (list, tuple)) or len(images) < 2:
        raise DataError(f"{where}: field {key!r} must be a list of at least two images")
    if row.get("human_preference") is not None:
        pref = list(row["human_preference"])
        if len(pref) != len(images) or sorted(pref) != [0] * (len(pref) - 1) + [1]:
            raise DataError(f"{where}: field 'human_preference' must mark one of the {len(images)} images with 1, "
                            f"got {pref!r}")
        best = pref.index(1)
        return [(images[best], images[j], f"{key}[{best}]", f"{key}[{j}]") for j in range(len(images)) if j != best]
    if row.get("rank") is not None:
        rank = list(row["rank"])
        if len(rank) != len(images):
            raise DataError(f"{where}: field 'rank' has {len(rank)} entries for {len(images)} images")
        return [(images[a], images[b], f"{key}[{a}]", f"{key}[{b}]") for a in range(len(images))
                for b in range(len(images)) if rank[a] < rank[b]]
    raise DataError(f"{where}: field 'human_preference' (or 'rank') is missing: which image is preferred?")


# ----------------------------------------------------------------------------------------- command line

def add_pairs_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``visalign data pairs KIND N OUT.jsonl`` on ``subparsers`` (the ``data`` command's)."""
    p = subparsers.add_parser("pairs", help="write seeded preference pairs (chosen / rejected renders) as JSONL",
                              description="Reference vs graded perturbations (chart, table, svg) or "
                                          "professional vs careless documents (html), rendered in the sandbox.")
    p.add_argument("task", choices=sorted(_SPECS), metavar="KIND", help="chart | table | svg | html")
    p.add_argument("n", type=int, help="number of pairs")
    p.add_argument("out", help="JSONL path; images go to <stem>_images/ beside it")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pairs-per-reference", type=int, default=4,
                   help="pairs drawn from each reference's ladders (default 4)")
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=pairs_command)
    return p


def pairs_command(args: argparse.Namespace) -> int:
    """``visalign data pairs``: generate, render and write the pairs."""
    import sys

    if args.n < 1:
        print("visalign data pairs: N must be >= 1", file=sys.stderr)
        return 2
    rows = pair_dataset(args.task, args.n, seed=args.seed, pairs_per_reference=args.pairs_per_reference,
                        workers=args.workers)
    path = write_pairs(rows, args.out)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["perturbation"]] = kinds.get(r["perturbation"], 0) + 1
    print(f"{len(rows)} {args.task} pairs -> {path} ({', '.join(f'{k} {v}' for k, v in sorted(kinds.items()))})")
    return 0
