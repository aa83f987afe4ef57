"""Seeded synthetic table-to-LaTeX data: short, regular ``tabular`` sources and their renders.

The counterpart of :mod:`visalign.data.charts` for the ``latex`` renderer: programs short enough for a
tiny VLM to learn from scratch (a few dozen tokens with :func:`table_whole_words`). Each
source is one ``tabular`` with 2-4 rows and 2-4 columns of small integers (0-99) or short words, and
optionally:

* a header row of capitalised words (``header_prob``);
* row labels: a first column of short lowercase words (``label_prob``);
* rules (``rule_style``): ``"none"``, ``"hline"`` (``\\hline`` above, below the header and at the
  bottom), ``"grid"`` (``|c|c|`` columns and an ``\\hline`` under every row) or ``"booktabs"``
  (``\\toprule`` / ``\\midrule`` / ``\\bottomrule``; the renderer preloads booktabs);
* one ``\\multicolumn`` (``multicolumn_prob``): the last row starts with a word spanning its first
  ``k`` columns, ``2 <= k <= cols`` (a "Total" row, or a full-width note).

Column alignments (``l`` / ``c`` / ``r``) are drawn too: they are visible. Every cell is plain text
(no ``$``, no escapes), so :func:`visalign.metrics.latex_table.latex_table_to_html` reads the source
exactly and TEDS of a source against itself is 1. The resolution is not in the source: the renderer
imposes it (:data:`TABLE_RENDER_OPTIONS`), and the rewards must render with the same options; the
image is cropped to the ink, so its size follows the table (about 90-250 x 45-115 px).

Example:
    >>> print(random_table_code(random.Random(0), rows=3, cols=3, header_prob=1.0, rule_style="hline"))
    \\begin{tabular}{crr}
    \\hline
    Score & Price & Count \\\\
    \\hline
    74 & 27 & 64 \\\\
    17 & 36 & 17 \\\\
    \\hline
    \\end{tabular}
    >>> codes = table_corpus(50, seed=0)
    >>> len(codes), len(set(codes)), all(c.startswith("\\\\begin{tabular}{") for c in codes)
    (50, 50, True)
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Any

from ..languages import DEFAULT_INSTRUCTIONS
from ._synthetic import render_codes, rendered_rows, unique_codes

__all__ = [
    "HEADER_WORDS",
    "ROW_WORDS",
    "RULE_STYLES",
    "TABLE_RENDER_OPTIONS",
    "random_table_code",
    "render_tables",
    "table_corpus",
    "table_dataset",
    "table_shape",
    "table_whole_words",
]

#: Renderer options for the references and for the rewards: ``pdflatex`` at 120 dpi, cropped to the
#: ink; a 3 x 3 table comes out about 130 x 85 px.
TABLE_RENDER_OPTIONS: dict[str, Any] = {"dpi": 120}

#: ``"none"``, ``"hline"``, ``"grid"`` or ``"booktabs"`` (see the module docstring).
RULE_STYLES: tuple[str, ...] = ("none", "hline", "grid", "booktabs")
#: Header cells (and the text of a ``\\multicolumn``).
HEADER_WORDS: tuple[str, ...] = ("Name", "Year", "Count", "Price", "Score", "Total", "Size", "Rank")
#: Row labels (first column when ``label_prob`` fires) and word cells.
ROW_WORDS: tuple[str, ...] = ("cat", "dog", "fox", "owl", "bee", "ant", "cow", "pig")
#: Total rows (header and multicolumn row included) and columns.
ROW_RANGE: tuple[int, int] = (2, 4)
COL_RANGE: tuple[int, int] = (2, 4)
#: Integer cells are drawn from this range (one or two digits).
VALUE_RANGE: tuple[int, int] = (0, 99)

BEGIN = "\\begin{tabular}{"
END = "\\end{tabular}"
ROW_END = " \\\\"
_RULES = {  # style -> (top, below the header, bottom)
    "none": (None, None, None),
    "hline": ("\\hline", "\\hline", "\\hline"),
    "grid": ("\\hline", "\\hline", "\\hline"),
    "booktabs": ("\\toprule", "\\midrule", "\\bottomrule"),
}


def _check(name: str, value: int | None, lo: int, hi: int) -> None:
    if value is not None and not lo <= value <= hi:
        raise ValueError(f"{name} must be in [{lo}, {hi}], got {value}")


def random_table_code(rng: random.Random, *, rows: int | None = None, cols: int | None = None,
                      header_prob: float = 0.5, rule_style: str | None = None, label_prob: float = 0.5,
                      multicolumn_prob: float = 0.1) -> str:
    """One LaTeX ``tabular`` drawn from ``rng``.

    ``rows`` (total, header and multicolumn row included, 2-4) and ``cols`` (2-4) are drawn from
    :data:`ROW_RANGE` / :data:`COL_RANGE` when None; ``rule_style`` (one of :data:`RULE_STYLES`) is
    drawn when None. ``header_prob``, ``label_prob`` (word row labels in the first column) and
    ``multicolumn_prob`` are the chances of each optional element. The source ends without a
    newline, as the policy writes it before EOS.

    Example:
        >>> print(random_table_code(random.Random(1), rows=2, cols=3, rule_style="grid",
        ...                         multicolumn_prob=1.0))
        \\begin{tabular}{|l|r|r|}
        \\hline
        Rank & Total & Price \\\\
        \\hline
        \\multicolumn{3}{|c|}{Name} \\\\
        \\hline
        \\end{tabular}
    """
    _check("rows", rows, *ROW_RANGE)
    _check("cols", cols, *COL_RANGE)
    if rule_style is not None and rule_style not in RULE_STYLES:
        raise ValueError(f"unknown rule_style {rule_style!r}; choose from {RULE_STYLES}")
    n_rows = rows if rows is not None else rng.randint(*ROW_RANGE)
    n_cols = cols if cols is not None else rng.randint(*COL_RANGE)
    style = rule_style if rule_style is not None else rng.choice(RULE_STYLES)
    grid = style == "grid"
    header = rng.random() < header_prob
    labels = rng.random() < label_prob
    span = rng.randint(2, n_cols) if rng.random() < multicolumn_prob else 0

    aligns = [rng.choice("lc")] + [rng.choice("cr") for _ in range(n_cols - 1)]
    spec = ("|" + "|".join(aligns) + "|") if grid else "".join(aligns)
    top, mid, bottom = _RULES[style]
    lines = [f"{BEGIN}{spec}}}"]
    if top:
        lines.append(top)
    for r in range(n_rows):
        if r == 0 and header:
            cells = rng.sample(HEADER_WORDS, n_cols)
        else:
            cells = [str(rng.randint(*VALUE_RANGE)) for _ in range(n_cols)]
            if labels:
                cells[0] = rng.choice(ROW_WORDS)
            if span and r == n_rows - 1:
                multi = f"\\multicolumn{{{span}}}{{{'|c|' if grid else 'c'}}}{{{rng.choice(HEADER_WORDS)}}}"
                cells = [multi, *cells[span:]]
        lines.append(" & ".join(cells) + ROW_END)
        if r == n_rows - 1:
            if bottom:
                lines.append(bottom)
        elif grid or (r == 0 and header and mid):
            lines.append(mid or "\\hline")
    lines.append(END)
    return "\n".join(lines)


def table_shape(code: str) -> str:
    """``"RxC"``: the rows and columns of a source from :func:`random_table_code` (a multicolumn row
    counts as one row; the columns are those of the column specification).

    Example:
        >>> table_shape(random_table_code(random.Random(0), rows=3, cols=4))
        '3x4'
    """
    first = code.split("\n", 1)[0]
    spec = first[len(BEGIN):first.rindex("}")]
    return f"{code.count(ROW_END)}x{sum(spec.count(a) for a in 'lcr')}"


def _unique_codes(n: int, seed: int, exclude: Collection[str], options: dict[str, Any]) -> list[str]:
    return unique_codes(n, seed, exclude, lambda rng, _: random_table_code(rng, **options), f"tables with {options}")


def table_corpus(n: int, seed: int = 0, *, rows: int | None = None, cols: int | None = None,
                 header_prob: float = 0.5, rule_style: str | None = None, label_prob: float = 0.5,
                 multicolumn_prob: float = 0.1) -> list[str]:
    """``n`` distinct table sources (no rendering), e.g. to train a tokenizer on.

    Example:
        >>> codes = table_corpus(20, seed=2, rows=2, cols=2, rule_style="none")
        >>> len(set(codes)), sorted({table_shape(c) for c in codes})
        (20, ['2x2'])
    """
    opts = {"rows": rows, "cols": cols, "header_prob": header_prob, "rule_style": rule_style,
            "label_prob": label_prob, "multicolumn_prob": multicolumn_prob}
    return _unique_codes(n, seed, (), opts)


def table_whole_words() -> list[str]:
    """Strings a table tokenizer should keep as single tokens: the environment lines, the rules,
    ``" & "``, the row end, column specifications, the words and the numbers.

    Example:
        >>> "\\\\hline" in table_whole_words() and " & " in table_whole_words()
        True
    """
    words = [BEGIN, END, ROW_END, " & ", "\\hline", "\\toprule", "\\midrule", "\\bottomrule",
             "\\multicolumn{", "}{c}{", "}{|c|}{", "|}", "}"]
    words += [*HEADER_WORDS, *ROW_WORDS]
    words += [str(v) for v in range(VALUE_RANGE[0], VALUE_RANGE[1] + 1)]
    return words


def render_tables(codes: Sequence[str], *, workers: int = 2, timeout: float = 20.0,
                  render_options: dict[str, Any] | None = None) -> list[Any]:
    """Render ``codes`` in the sandboxed ``latex`` renderer with :data:`TABLE_RENDER_OPTIONS`;
    returns the ``RenderResult`` of each source."""
    return render_codes("latex", codes, TABLE_RENDER_OPTIONS, render_options, workers, timeout)


def _row(code: str, image: Any, prompt: str) -> dict[str, Any]:
    return {"code": code, "image": image, "kind": "latex", "prompt": prompt, "table_shape": table_shape(code)}


def table_dataset(n: int, seed: int = 0, *, render: bool = True, workers: int = 2, exclude: Collection[str] = (),
                  timeout: float = 20.0, rows: int | None = None, cols: int | None = None,
                  header_prob: float = 0.5, rule_style: str | None = None, label_prob: float = 0.5,
                  multicolumn_prob: float = 0.1) -> list[dict[str, Any]]:
    """``n`` distinct synthetic tables: ``dict(code, image, kind="latex", prompt, table_shape)``.

    ``table_shape`` is ``"RxC"`` (:func:`table_shape`). With ``render=True`` the sources are rendered
    in one batch by the sandboxed ``latex`` renderer with :data:`TABLE_RENDER_OPTIONS` (RGB images
    cropped to the table); a source that fails to render is replaced by a new draw. With
    ``render=False`` ``image`` is None. Codes in ``exclude`` (e.g. a training set) are never drawn,
    so a held-out set made with another seed and ``exclude=train_codes`` is disjoint.

    Example:
        >>> rows = table_dataset(2, seed=0, render=False, rows=2, cols=3)
        >>> [r["table_shape"] for r in rows], rows[0]["kind"], rows[0]["image"]
        (['2x3', '2x3'], 'latex', None)
    """
    opts = {"rows": rows, "cols": cols, "header_prob": header_prob, "rule_style": rule_style,
            "label_prob": label_prob, "multicolumn_prob": multicolumn_prob}
    prompt = DEFAULT_INSTRUCTIONS["latex"]
    drawn = _unique_codes(n, seed, exclude, opts)
    if not render:
        return [_row(code, None, prompt) for code in drawn]
    return rendered_rows(n, seed, exclude, drawn, lambda k, sd, seen: _unique_codes(k, sd, seen, opts),
                         lambda code: code, lambda codes: render_tables(codes, workers=workers, timeout=timeout),
                         lambda code, image: _row(code, image, prompt), "tables", "latex")
