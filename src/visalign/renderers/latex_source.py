"""LaTeX source handling for the ``latex`` renderer: what kind a source is, and the ``doc.tex`` that
compiles it (document assembly, the standalone preamble with the preloaded packages, ``\\usepackage``
lines hoisted to the preamble, display math for formulas). Pure text functions: nothing here runs TeX.

The rules are in :mod:`visalign.renderers.latex`'s docstring.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["BORDER_PT", "PRELOADED", "TEXT_WIDTH", "WIDE", "Prepared", "base_preamble", "classify_source",
           "prepare", "strip_comments"]

# Packages every wrapped source gets (all in texlive-latex-base/recommended/extra), with the
# options they are loaded with (a body's own \usepackage may repeat them with these options or none).
PRELOADED: dict[str, frozenset[str]] = {
    name: frozenset() for name in (
        "amsmath", "amssymb", "bm", "array", "booktabs", "multirow", "makecell", "tabularx",
        "longtable", "hhline", "threeparttable", "diagbox", "graphicx", "colortbl")}
PRELOADED["xcolor"] = frozenset({"table"})

WIDE = "40cm"        # varwidth limit for tables and formulas: the box shrinks to the content
TEXT_WIDTH = "6.5in"  # varwidth limit for text bodies: paragraphs wrap at a page column
BORDER_PT = 4.0       # standalone border and the padding kept around the cropped ink

_FLOATS = r"""\makeatletter
\def\visalign@float#1{\par\def\@captype{#1}\setlength\belowcaptionskip{0.5\abovecaptionskip}}
\renewenvironment{table}[1][]{\visalign@float{table}}{\par}
\renewenvironment{table*}[1][]{\visalign@float{table}}{\par}
\renewenvironment{figure}[1][]{\visalign@float{figure}}{\par}
\renewenvironment{figure*}[1][]{\visalign@float{figure}}{\par}
\makeatother"""

_COMMENT = re.compile(r"(?<!\\)%.*")
_DOCCLASS = re.compile(r"\\documentclass\b")
_BEGIN_DOC = re.compile(r"\\begin\s*\{document\}")
_BEGIN = re.compile(r"\\begin\s*\{([^}]*)\}")
_TABLE_ENVS = frozenset({"tabular", "tabular*", "tabularx", "tabulary", "longtable", "threeparttable",
                         "table", "table*"})
_DISPLAY_ENVS = frozenset(f"{e}{s}" for e in ("equation", "align", "gather", "multline", "flalign",
                                               "alignat", "eqnarray", "displaymath", "math")
                          for s in ("", "*"))
_MATH_ONLY_ENVS = frozenset({"matrix", "pmatrix", "bmatrix", "Bmatrix", "vmatrix", "Vmatrix", "smallmatrix",
                             "cases", "dcases", "aligned", "alignedat", "gathered", "split", "array",
                             "subarray", "substack"})
_DELIMS = {"$$": "$$", "$": "$", r"\[": r"\]", r"\(": r"\)"}
_USEPACKAGE = re.compile(r"^\s*\\(?:usepackage|RequirePackage)\s*(?:\[([^\]]*)\])?\s*\{([^}]*)\}\s*(?:%.*)?$")
_DECLARE = re.compile(r"^\s*\\DeclareMathOperator\b")


@dataclass(frozen=True)
class Prepared:
    """A source turned into the ``doc.tex`` that is compiled.

    Attributes:
        kind: ``document``, ``formula``, ``table`` or ``text`` (see the module docstring).
        tex: the full text of ``doc.tex``.
        offset: lines of wrapper before the source's first line (to report the source's line numbers).
        lines: number of lines in the source.
        formatted: True when ``tex`` expects the preamble format (it starts after ``\\endofdump``).
    """

    kind: str
    tex: str
    offset: int
    lines: int
    formatted: bool


def strip_comments(source: str) -> str:
    """``source`` with every ``%`` comment removed (for deciding its kind only).

    Example:
        >>> strip_comments("a % \\\\documentclass\\n50\\\\% b")
        'a \\n50\\\\% b'
    """
    return _COMMENT.sub("", source)


class _Delimited(NamedTuple):
    """A source that is one math-delimited span: its leading whitespace, the text inside, the closing."""

    lead: str
    inner: str
    closing: str


def _delimited(source: str) -> _Delimited | None:
    """The parts of ``source`` when it is one math-delimited span, else None."""
    body = source.strip()
    for left in ("$$", r"\[", r"\(", "$"):
        right = _DELIMS[left]
        if body.startswith(left) and body.endswith(right) and len(body) >= len(left) + len(right):
            inner = body[len(left): len(body) - len(right)]
            if "$" in inner or (left != "$$" and right in inner):
                return None
            lead = source[: len(source) - len(source.lstrip())]
            return _Delimited(lead, inner, right)
    return None


def classify_source(source: str) -> str:
    """The kind of ``source``: ``document``, ``formula``, ``table`` or ``text``.

    Example:
        >>> [classify_source(s) for s in ("\\\\frac{a}{b}", "$x$", "\\\\begin{tabular}{c}x\\\\end{tabular}",
        ...                               "Hello $x$.", "\\\\documentclass{article}")]
        ['formula', 'formula', 'table', 'text', 'document']
    """
    code = strip_comments(source)
    if _DOCCLASS.search(code) or _BEGIN_DOC.search(code):
        return "document"
    if _delimited(code) is not None:
        return "formula"
    envs = [e.strip() for e in _BEGIN.findall(code)]
    stripped = code.strip()
    m = re.fullmatch(r"\\begin\s*\{([^}]*)\}.*\\end\s*\{([^}]*)\}", stripped, re.S)
    if m and m.group(1).strip() in _DISPLAY_ENVS and m.group(1).strip() == m.group(2).strip():
        return "formula"
    if any(e in _TABLE_ENVS for e in envs):
        return "table"
    if (all(e in _MATH_ONLY_ENVS for e in envs) and "$" not in code and r"\[" not in code
            and r"\(" not in code and not re.search(r"\n\s*\n", stripped)):
        return "formula"
    return "text"


def _hoist(body: str) -> tuple[str, list[str]]:
    """Move preamble-only lines (``\\usepackage`` ...) out of ``body``, leaving ``%`` in their place."""
    kept, hoisted = [], []
    for line in body.split("\n"):
        if _USEPACKAGE.match(line) or _DECLARE.match(line):
            hoisted.append(line.strip())
            kept.append("%")
        else:
            kept.append(line)
    return "\n".join(kept), hoisted


def _fits_format(hoisted: list[str]) -> bool:
    """True when ``hoisted`` lines can follow the preloaded packages without an option clash."""
    for line in hoisted:
        m = _USEPACKAGE.match(line)
        if not m:
            continue
        opts = {o.strip() for o in (m.group(1) or "").split(",") if o.strip()}
        for name in (n.strip() for n in m.group(2).split(",")):
            if name in PRELOADED and not opts <= PRELOADED[name]:
                return False
    return True


def base_preamble(extra: Sequence[str] = (), width: str = WIDE, before: Sequence[str] = ()) -> str:
    """The standalone preamble of the wrapped kinds (without ``\\begin{document}``).

    ``before`` lines come right after the class (a body's own packages, so that their options win);
    ``extra`` lines (the renderer's ``preamble`` option) come last.
    """
    opts = {n: o for n, o in PRELOADED.items() if o}
    lines = [rf"\PassOptionsToPackage{{{','.join(sorted(o))}}}{{{n}}}" for n, o in sorted(opts.items())]
    lines.append(rf"\documentclass[border={BORDER_PT:g}pt,varwidth={width}]{{standalone}}")
    lines += list(before)
    lines.append(r"\usepackage{" + ",".join(n for n in PRELOADED if n != "colortbl") + "}")
    lines.append(_FLOATS)
    lines += list(extra)
    return "\n".join(lines)


def _formula_body(source: str) -> str:
    """Display-math body for a ``formula`` source without comments (its line count is preserved)."""
    delim = _delimited(source)
    if delim is None:
        m = re.fullmatch(r"\s*\\begin\s*\{([^}]*)\}.*", source, re.S)
        if m and m.group(1).strip() in _DISPLAY_ENVS:
            return source  # already a display environment
        lead, inner = source[: len(source) - len(source.lstrip())], source.lstrip()
    else:
        lead, inner = delim.lead, delim.inner
    # Blank lines would end the display: they become "%" lines, which also keeps the line numbers.
    inner = "\n".join(line if line.strip() else "%" for line in ("\n" * lead.count("\n") + inner.rstrip()).split("\n"))
    env = None
    if r"\\" in inner and not _BEGIN.search(inner):
        env = "aligned" if "&" in inner else "gathered"
    open_, close = (rf"\[\begin{{{env}}}", rf"\end{{{env}}}\]") if env else (r"\[", r"\]")
    # The opening goes at the end of the line before the source so that line numbers are kept.
    return f"{open_}%\n{inner}\n{close}"


def prepare(source: str, preamble: Sequence[str] = (), formatted: bool = False) -> Prepared:
    """Wrap ``source`` into a compilable ``doc.tex`` (see the module docstring for the rules).

    ``formatted`` asks for a file that uses the preamble format; it is honoured only for the wrapped
    kinds whose own ``\\usepackage`` lines do not clash with the preloaded packages.

    Example:
        >>> p = prepare("x^2")
        >>> p.kind, p.tex.splitlines()[p.offset - 1:]
        ('formula', ['\\\\[%', 'x^2', '\\\\]', '\\\\end{document}'])
    """
    nlines = source.count("\n") + 1
    kind = classify_source(source)
    if kind == "document":
        if _DOCCLASS.search(strip_comments(source)):
            return Prepared(kind, source, 0, nlines, False)
        return Prepared(kind, "\\documentclass{article}\n" + source, 1, nlines, False)
    body, hoisted = _hoist(source)
    width = TEXT_WIDTH if kind == "text" else WIDE
    if kind == "formula":
        body = _formula_body(strip_comments(body))  # comments out: a trailing one would eat the \\]
    if formatted and _fits_format(hoisted):
        head = [r"\endofdump"]
        if width != WIDE:
            head.append(rf"\standaloneconfig{{varwidth={width}}}")
        head += hoisted
    else:
        formatted = False
        head = base_preamble(preamble, width, hoisted).split("\n")
    head.append(r"\begin{document}")
    if kind == "formula" and body.startswith((r"\[", r"\[\begin")):
        first, rest = body.split("\n", 1)
        head.append(first)
        body = rest
    tex = "\n".join([*head, body, r"\end{document}", ""])
    return Prepared(kind, tex, len(head), nlines, formatted)
