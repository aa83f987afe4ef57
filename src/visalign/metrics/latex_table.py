"""LaTeX tables to the HTML tables that :func:`visalign.metrics.teds.teds` compares.

Table2LaTeX-style tasks score a predicted LaTeX table against a reference one with TEDS, which is
defined on HTML; :func:`latex_table_to_html` converts both sides the same way. The conventions, chosen
so that two LaTeX sources that render alike convert alike:

* **Which table.** The first ``tabular``, ``tabular*``, ``tabularx``, ``tabulary``, ``longtable``,
  ``xltabular`` or ``array`` environment, wherever it sits (a ``table`` float, a whole document, or
  bare). An unterminated environment (a truncated generation) is read to the end of the string.
  No such environment: ``""`` (which TEDS scores 0).
* **Rows and cells.** ``\\\\`` (with its optional ``*`` and ``[length]``), ``\\tabularnewline`` and
  ``\\cr`` end rows; an unescaped ``&`` ends a cell; neither counts inside braces or a nested
  environment. A row that is nothing but rules (the part after the last ``\\\\``, a ``\\caption`` row
  of a ``longtable``) is dropped: a row needs an ``&`` or some content to count. ``longtable`` keeps the
  first head (``\\endfirsthead``, else ``\\endhead``), the body and the last foot (``\\endlastfoot``,
  else ``\\endfoot``), the page a single-page render shows.
* **Spans.** ``\\multicolumn{n}{spec}{x}`` becomes ``colspan="n"``; ``\\multirow{n}{width}{x}`` (with
  any of its optional arguments, and ``\\multirowcell``) becomes ``rowspan="n"``, both can nest; the
  empty cells LaTeX needs under a multirow in the following rows are removed. A negative ``n`` (text
  at the bottom of the span) is moved to the span's first row.
* **One section.** Every row goes in one ``<tbody>``, no ``<thead>`` and only ``<td>`` cells (never
  ``<th>``, which the reference TEDS does not treat as a cell): LaTeX marks no header, and guessing one
  from rules would make TEDS depend on the guess.
* **Content.** Rules (``\\hline``, ``\\cline``, booktabs ``\\toprule``, ``\\midrule``, ``\\bottomrule``,
  ``\\cmidrule(lr){a-b}``, ...), colours, spacing, sizes, labels and comments are dropped; boxes and
  other wrappers (``\\makecell``, ``\\textcolor``, ``\\mbox``, ``\\resizebox``, ...) are unwrapped, and
  a line break inside a cell (``\\makecell{a\\\\b}``, ``\\newline``) becomes a space: TEDS compares the
  text, and where a line wraps is layout. Unknown commands keep their braced arguments; an unknown
  command without arguments is kept verbatim (``\\checkmark`` stays ``\\checkmark``), so two different
  symbols stay different.
* **Formatting.** Bold, italic, superscript and subscript are visible, so they are kept as the tags
  PubTabNet cells use: ``\\textbf{x}``, ``{\\bfseries x}``, ``\\bf`` -> ``<b>x</b>``; ``\\textit``,
  ``\\emph``, ``\\itshape`` -> ``<i>``; ``\\textsuperscript`` -> ``<sup>``; ``\\textsubscript`` ->
  ``<sub>``. They are written in one canonical nesting with adjacent runs merged, so
  ``\\textbf{a}\\textbf{b}`` and ``\\textbf{ab}`` convert alike. Every other font switch is dropped.
* **Text.** Math is kept as its LaTeX source without the ``$`` (or ``\\(``, ``\\[``) delimiters and
  with spaces removed where TeX ignores them (``$\\pm 0.1$`` -> ``\\pm0.1``); escaped characters
  (``\\&``, ``\\%``, ``\\_``, ...), accents (``\\'e`` -> ``é``), ligatures (``--`` -> ``–``, ``---`` ->
  ``—``, quotes) and common text symbols become their Unicode characters; ``~`` is a space; runs of
  whitespace become one space and cells are stripped. Text is HTML-escaped.

The column specification (including ``>{\\bfseries}`` column formatting) is ignored. Malformed LaTeX
never raises: the result is the best table that can be read, or ``""``.
"""

from __future__ import annotations

import html
import re
import unicodedata
from dataclasses import dataclass

__all__ = ["latex_table_to_html"]

_Token = tuple[str, str]  # ("cs", name) | ("char", c) | ("space", " ")
_OPEN: _Token = ("char", "{")
_CLOSE: _Token = ("char", "}")

# Environments that hold the table, with their arguments before the body (see _read_args).
_TABLE_ENVIRONMENTS = {
    "tabular": "om",
    "tabular*": "mom",
    "tabularx": "mom",
    "tabulary": "mom",
    "xltabular": "mom",
    "longtable": "om",
    "longtable*": "om",
    "array": "om",
}
# Arguments of environments met inside a cell; the body is then read as cell content.
_OTHER_ENVIRONMENTS = {"minipage": "ooom", "tabularx": "mom", "adjustbox": "m", "threeparttable": "o"}
_ROW_ENDS = frozenset(("\\", "tabularnewline", "cr", "crcr"))
_LONGTABLE_MARKS = frozenset(("endfirsthead", "endhead", "endfoot", "endlastfoot"))

# Argument specifications: s = optional star, o = optional [..], p = optional (..), m = mandatory.
_DROP = {
    # rules
    "hline": "", "hdashline": "", "firsthline": "", "lasthline": "", "toprule": "o", "midrule": "o",
    "bottomrule": "o", "cmidrule": "opm", "cmidrulewidth": "", "morecmidrules": "", "cline": "m",
    "cdashline": "m", "hhline": "m", "Xhline": "m", "Xcline": "mm", "specialrule": "mmm",
    "addlinespace": "o", "noalign": "m", "tabucline": "om",
    # colour
    "rowcolor": "om", "rowcolors": "ommm", "cellcolor": "om", "color": "om", "arrayrulecolor": "om",
    "doublerulesepcolor": "om", "columncolor": "om",
    # spacing, sizes, layout
    "vspace": "sm", "hspace": "sm", "rule": "omm", "phantom": "m", "hphantom": "m", "vphantom": "m",
    "centering": "", "raggedright": "", "raggedleft": "", "arraybackslash": "", "tiny": "",
    "scriptsize": "", "footnotesize": "", "small": "", "normalsize": "", "large": "", "Large": "",
    "LARGE": "", "huge": "", "Huge": "", "fontsize": "mm", "selectfont": "", "linespread": "m",
    "setlength": "mm", "addtolength": "mm", "renewcommand": "smoom", "newcommand": "smoom",
    "strut": "", "bigstrut": "o", "noindent": "", "relax": "", "null": "", "protect": "",
    "nobreak": "", "linebreak": "o", "pagebreak": "o", "nopagebreak": "o", "smallskip": "",
    "medskip": "", "bigskip": "", "hfill": "", "hfil": "", "vfill": "", "ignorespaces": "",
    "unskip": "", "leavevmode": "", "sffamily": "", "ttfamily": "", "rmfamily": "", "scshape": "",
    "normalcolor": "", "SetCell": "om", "SetRow": "om", "SetHline": "omm",
    # references, notes, floats
    "label": "m", "caption": "som", "captionsetup": "om", "ref": "m", "eqref": "m", "autoref": "m",
    "cref": "m", "Cref": "m", "pageref": "m", "cite": "oom", "citep": "oom", "citet": "oom",
    "footnote": "om", "footnotemark": "o", "footnotetext": "om", "tablefootnote": "om",
    "includegraphics": "som",
}  # fmt: skip
# Wrappers: only their last mandatory argument is content.
_UNWRAP_LAST = {
    "textcolor": "omm", "colorbox": "omm", "fcolorbox": "ommm", "href": "mm", "url": "m",
    "resizebox": "smmm", "scalebox": "mom", "raisebox": "moom", "parbox": "ooomm", "makebox": "oom",
    "framebox": "oom", "fbox": "m", "mbox": "m", "hbox": "m", "text": "m", "textrm": "m",
    "textsf": "m", "texttt": "m", "textsc": "m", "textup": "m", "textmd": "m", "textnormal": "m",
    "underline": "m", "uline": "m", "uuline": "m", "uwave": "m", "sout": "m", "xout": "m", "st": "m",
    "hl": "m", "ul": "m", "makecell": "om", "thead": "om", "shortstack": "om", "adjustbox": "mm",
    "rotatebox": "omm", "turnbox": "mm", "centerline": "m", "multicolumn": "mmm",
    "multirow": "omomom", "multirowcell": "moom", "multirowthead": "moom", "hyperlink": "mm",
    "hypertarget": "mm", "num": "om", "tablenum": "om", "ang": "om", "si": "om", "unit": "om",
}  # fmt: skip
# Every mandatory argument is content, separated by a space (siunitx quantities).
_UNWRAP_ALL = {"SI": "omom", "qty": "omm"}
_STYLE_ARGUMENT = {
    "textbf": "b", "textit": "i", "emph": "i", "textsl": "i", "textsuperscript": "sup",
    "tnote": "sup", "textsubscript": "sub",
}  # fmt: skip
_STYLE_ON = {"bfseries": "b", "bf": "b", "itshape": "i", "it": "i", "em": "i", "slshape": "i", "sl": "i"}
_STYLE_OFF = {"normalfont": ("b", "i"), "rm": ("b", "i"), "upshape": ("i",), "mdseries": ("b",)}
_STYLE_ORDER = ("b", "i", "sup", "sub")  # one canonical nesting
_SYMBOLS = {
    "&": "&", "%": "%", "$": "$", "#": "#", "_": "_", "{": "{", "}": "}", " ": " ", ",": " ",
    ";": " ", ":": " ", ">": " ", "!": "", "/": "", "-": "", "@": "", "\\": " ", "newline": " ",
    "par": " ", "quad": " ", "qquad": " ", "enspace": " ", "enskip": " ", "thinspace": " ",
    "negthinspace": "", "item": " ", "textbackslash": "\\", "textasciitilde": "~",
    "textasciicircum": "^", "textbar": "|", "textless": "<", "textgreater": ">", "textbullet": "•",
    "textperiodcentered": "·", "textendash": "–", "textemdash": "—", "ldots": "…", "dots": "…",
    "textellipsis": "…", "S": "§", "P": "¶", "dag": "†", "textdagger": "†", "ddag": "‡",
    "textdaggerdbl": "‡", "copyright": "©", "textcopyright": "©", "textregistered": "®",
    "texttrademark": "™", "pounds": "£", "textsterling": "£", "euro": "€", "texteuro": "€",
    "textdegree": "°", "degree": "°", "textpm": "±", "texttimes": "×", "textmu": "µ",
    "checkmark": "✓", "ss": "ß", "o": "ø", "O": "Ø", "ae": "æ", "AE": "Æ", "oe": "œ", "OE": "Œ",
    "aa": "å", "AA": "Å", "l": "ł", "L": "Ł", "i": "ı", "j": "ȷ", "textquoteleft": "‘",
    "textquoteright": "’", "textquotedblleft": "“", "textquotedblright": "”", "LaTeX": "LaTeX",
    "TeX": "TeX", "textunderscore": "_", "textpercent": "%", "textdollar": "$", "tabularnewline": " ",
    "cr": " ", "crcr": " ", "endhead": "", "endfirsthead": "", "endfoot": "", "endlastfoot": "",
}  # fmt: skip
_ACCENTS = {
    "'": "\u0301", "`": "\u0300", "^": "\u0302", '"': "\u0308", "~": "\u0303", "=": "\u0304",
    ".": "\u0307", "u": "\u0306", "v": "\u030c", "H": "\u030b", "c": "\u0327", "k": "\u0328",
    "d": "\u0323", "b": "\u0331", "r": "\u030a", "t": "\u0361",
}  # fmt: skip
_MATH_ENVIRONMENTS = frozenset(("math", "displaymath", "equation", "equation*"))


# --------------------------------------------------------------------------------------------------
# Tokens


def _tokenize(latex: str) -> list[_Token]:
    """Splits LaTeX into control sequences, characters and spaces; comments are removed here."""
    tokens: list[_Token] = []
    i, n = 0, len(latex)
    while i < n:
        c = latex[i]
        if c == "\\":
            j = i + 1
            if j < n and latex[j].isascii() and latex[j].isalpha():
                while j < n and latex[j].isascii() and latex[j].isalpha():
                    j += 1
                tokens.append(("cs", latex[i + 1 : j]))
                while j < n and latex[j] in " \t":  # TeX skips the spaces after a control word
                    j += 1
                if j < n and latex[j] == "\n":
                    j += 1
                    while j < n and latex[j] in " \t":
                        j += 1
            elif j < n:
                tokens.append(("cs", latex[j]))
                j += 1
            i = j
        elif c == "%":
            end = latex.find("\n", i)
            if end < 0:
                break
            i = end + 1
            while i < n and latex[i] in " \t":
                i += 1
        elif c.isspace():
            while i < n and latex[i].isspace():
                i += 1
            tokens.append(("space", " "))
        else:
            tokens.append(("char", c))
            i += 1
    return tokens


def _skip_spaces(tokens: list[_Token], i: int) -> int:
    while i < len(tokens) and tokens[i][0] == "space":
        i += 1
    return i


def _group_end(tokens: list[_Token], i: int) -> int:
    """Index just after the group opened at ``tokens[i]`` (the end of input when unbalanced)."""
    depth = 0
    for k in range(i, len(tokens)):
        if tokens[k] == _OPEN:
            depth += 1
        elif tokens[k] == _CLOSE:
            depth -= 1
            if depth == 0:
                return k + 1
    return len(tokens)


def _read_mandatory(tokens: list[_Token], i: int) -> tuple[list[_Token], int]:
    """A braced group's content, or else the single next token (TeX's undelimited argument)."""
    i = _skip_spaces(tokens, i)
    if i >= len(tokens) or tokens[i] == _CLOSE:
        return [], i
    if tokens[i] == _OPEN:
        end = _group_end(tokens, i)
        inner_end = end - 1 if tokens[end - 1] == _CLOSE and end - 1 > i else end
        return tokens[i + 1 : inner_end], end
    return [tokens[i]], i + 1


def _read_optional(tokens: list[_Token], i: int, opening: str, closing: str) -> tuple[list[_Token] | None, int]:
    j = _skip_spaces(tokens, i)
    if j >= len(tokens) or tokens[j] != ("char", opening):
        return None, i
    depth = 0
    for k in range(j + 1, len(tokens)):
        if tokens[k] == _OPEN:
            depth += 1
        elif tokens[k] == _CLOSE:
            depth -= 1
        elif tokens[k] == ("char", closing) and depth <= 0:
            return tokens[j + 1 : k], k + 1
    return tokens[j + 1 :], len(tokens)


def _read_args(tokens: list[_Token], i: int, spec: str) -> tuple[list[list[_Token]], int]:
    """Reads arguments after a command: ``spec`` letters s (star), o ([...]), p ((...)), m (mandatory).

    Returns the mandatory arguments only.
    """
    mandatory: list[list[_Token]] = []
    for kind in spec:
        if kind == "s":
            j = _skip_spaces(tokens, i)
            if j < len(tokens) and tokens[j] == ("char", "*"):
                i = j + 1
        elif kind == "o":
            _, i = _read_optional(tokens, i, "[", "]")
        elif kind == "p":
            _, i = _read_optional(tokens, i, "(", ")")
        else:
            argument, i = _read_mandatory(tokens, i)
            mandatory.append(argument)
    return mandatory, i


def _plain(tokens: list[_Token]) -> str:
    return "".join(value for kind, value in tokens if kind != "cs")


def _environment_name(tokens: list[_Token], i: int) -> tuple[str, int]:
    """The name after ``\\begin`` / ``\\end`` at ``tokens[i]``."""
    argument, i = _read_mandatory(tokens, i)
    return _plain(argument).strip(), i


# --------------------------------------------------------------------------------------------------
# The table body: rows and cells


def _find_table(tokens: list[_Token]) -> list[_Token] | None:
    """The body of the first table environment, up to its matching ``\\end`` (or the end of input)."""
    for i, token in enumerate(tokens):
        if token != ("cs", "begin"):
            continue
        name, start = _environment_name(tokens, i + 1)
        if name not in _TABLE_ENVIRONMENTS:
            continue
        _, start = _read_args(tokens, start, _TABLE_ENVIRONMENTS[name])
        depth, k = 1, start
        while k < len(tokens):
            if tokens[k] in (("cs", "begin"), ("cs", "end")):
                inner, after = _environment_name(tokens, k + 1)
                if inner == name:
                    depth += 1 if tokens[k] == ("cs", "begin") else -1
                    if depth == 0:
                        return tokens[start:k]
                k = after
                continue
            k += 1
        return tokens[start:]
    return None


def _split_rows(body: list[_Token]) -> list[list[list[_Token]]]:
    """Rows of cells (token lists), with ``longtable`` heads and feet resolved."""
    sections: dict[str, list[list[list[_Token]]]] = {}
    rows: list[list[list[_Token]]] = []
    row: list[list[_Token]] = []
    cell: list[_Token] = []
    depth = 0  # braces and environments
    i = 0
    while i < len(body):
        token = body[i]
        if token == _OPEN:
            depth += 1
        elif token == _CLOSE:
            depth = max(0, depth - 1)
        elif token == ("cs", "begin"):
            depth += 1
        elif token == ("cs", "end"):
            depth = max(0, depth - 1)
        elif depth == 0 and token == ("char", "&"):
            row.append(cell)
            cell = []
            i += 1
            continue
        elif depth == 0 and token[0] == "cs" and token[1] in _ROW_ENDS:
            if token[1] == "\\":
                _, i = _read_args(body, i + 1, "so")
            else:
                i += 1
            row.append(cell)
            rows.append(row)
            row, cell = [], []
            continue
        elif depth == 0 and token[0] == "cs" and token[1] in _LONGTABLE_MARKS:
            row.append(cell)
            rows.append(row)
            sections.setdefault(token[1], []).extend(rows)
            rows, row, cell = [], [], []
            i += 1
            continue
        cell.append(token)
        i += 1
    row.append(cell)
    rows.append(row)
    head = sections.get("endfirsthead", sections.get("endhead", []))
    foot = sections.get("endlastfoot", sections.get("endfoot", []))
    return head + rows + foot


@dataclass
class _Cell:
    colspan: int
    rowspan: int
    html: str
    start: int = 0  # first column it covers


_SPAN_COMMANDS = {"multicolumn": "mmm", "multirow": "omomom", "multirowcell": "moom", "multirowthead": "moom"}
_COUNT = re.compile(r"^\s*([+-]?\d+)")


def _count(tokens: list[_Token]) -> int | None:
    match = _COUNT.match(_plain(tokens))
    return int(match.group(1)) if match else None


def _leading_span(tokens: list[_Token]) -> tuple[str, list[list[_Token]], list[_Token]] | None:
    """A span command at the start of a cell (after rules, colours and spaces), with its arguments
    and the tokens that follow it."""
    i = 0
    while i < len(tokens):
        kind, value = tokens[i]
        if kind == "space":
            i += 1
        elif kind == "cs" and value in _DROP:
            _, i = _read_args(tokens, i + 1, _DROP[value])
        elif kind == "cs" and value in _SPAN_COMMANDS:
            arguments, end = _read_args(tokens, i + 1, _SPAN_COMMANDS[value])
            return value, arguments, tokens[end:]
        else:
            return None
    return None


def _parse_cell(tokens: list[_Token]) -> _Cell:
    colspan = rowspan = 1
    for _ in range(2):  # \multicolumn{..}{..}{\multirow{..}{..}{..}} and the reverse
        span = _leading_span(tokens)
        if span is None:
            break
        command, arguments, rest = span
        count = _count(arguments[0])
        if command == "multicolumn":
            colspan = count if count is not None and count > 0 else 1
        else:
            rowspan = count if count else 1
        tokens = arguments[-1] + [("space", " ")] + rest
    return _Cell(colspan, rowspan, _cell_html(tokens))


def _layout(rows: list[list[_Cell]]) -> list[list[_Cell]]:
    """Moves negative multirows to their first row and removes the empty cells under multirows."""
    for row in rows:
        column = 0
        for cell in row:
            cell.start = column
            column += cell.colspan
    for r, row in enumerate(rows):
        for k, cell in enumerate(row):
            if cell.rowspan >= -1:
                continue
            top = max(0, r + cell.rowspan + 1)
            moved = _Cell(cell.colspan, r - top + 1, cell.html, cell.start)
            target = rows[top]
            same = [c for c in target if c.start == cell.start]
            if same and not same[0].html and same[0].rowspan == 1:
                target[target.index(same[0])] = moved
            elif not same:
                position = sum(c.start < cell.start for c in target)
                target.insert(position, moved)
            else:  # the first row's cell is taken: leave the text where LaTeX wrote it
                row[k] = _Cell(cell.colspan, 1, cell.html, cell.start)
                continue
            row[k] = _Cell(cell.colspan, 1, "", cell.start)
    covered: dict[int, set[int]] = {}
    for r, row in enumerate(rows):
        for cell in row:
            cell.rowspan = max(cell.rowspan, 1)
            for below in range(r + 1, r + cell.rowspan):
                covered.setdefault(below, set()).update(range(cell.start, cell.start + cell.colspan))
    return [
        [c for c in row if c.html or c.rowspan > 1 or c.start not in covered.get(r, ())]
        for r, row in enumerate(rows)
    ]


# --------------------------------------------------------------------------------------------------
# Cell content


class _Renderer:
    """Turns cell tokens into runs of (text, styles)."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, frozenset[str]]] = []

    def emit(self, text: str, styles: frozenset[str]) -> None:
        if text:
            self.runs.append((text, styles))

    def render(self, tokens: list[_Token], styles: frozenset[str] = frozenset()) -> None:
        # Groups are walked in place, not by recursion (braces may nest thousands deep): ``outer``
        # holds the styles to restore at each open group's closing brace.
        outer: list[frozenset[str]] = []
        i, n = 0, len(tokens)
        while i < n:
            kind = tokens[i][0]
            if kind == "space":
                self.emit(" ", styles)
                i += 1
            elif kind == "char":
                i, styles = self._character(tokens, i, styles, outer)
            else:
                i, styles = self._command(tokens, i, styles, outer)

    def _enter(
        self, tokens: list[_Token], i: int, styles: frozenset[str], inner: frozenset[str], outer: list[frozenset[str]]
    ) -> tuple[int, frozenset[str]]:
        """Reads a command's argument at ``i`` with ``inner`` styles: a group is entered in place."""
        j = _skip_spaces(tokens, i)
        if j < len(tokens) and tokens[j] == _OPEN:
            outer.append(styles)
            return j + 1, inner
        if j < len(tokens) and tokens[j] != _CLOSE:
            self.render([tokens[j]], inner)
            return j + 1, styles
        return j, styles

    def _character(
        self, tokens: list[_Token], i: int, styles: frozenset[str], outer: list[frozenset[str]]
    ) -> tuple[int, frozenset[str]]:
        value = tokens[i][1]
        if value == "{":
            outer.append(styles)
            return i + 1, styles
        if value == "}":
            return i + 1, outer.pop() if outer else styles
        if value == "$":
            return self._math(tokens, i, styles), styles
        if value in "~&":
            self.emit(" ", styles)
            return i + 1, styles
        if value in "-`'":
            run = 1
            while i + run < len(tokens) and tokens[i + run] == ("char", value) and run < 3:
                run += 1
            if value == "-":
                text = {1: "-", 2: "–", 3: "—"}[run]
            elif value == "`":
                run = min(run, 2)
                text = "‘" if run == 1 else "“"
            else:
                run = min(run, 2)
                text = "’" if run == 1 else "”"
            self.emit(text, styles)
            return i + run, styles
        self.emit(value, styles)
        return i + 1, styles

    def _math(self, tokens: list[_Token], i: int, styles: frozenset[str]) -> int:
        display = i + 1 < len(tokens) and tokens[i + 1] == ("char", "$")
        start = i + (2 if display else 1)
        depth, k = 0, start
        while k < len(tokens):
            if tokens[k] == _OPEN:
                depth += 1
            elif tokens[k] == _CLOSE:
                depth -= 1
            elif tokens[k] == ("char", "$") and depth <= 0:
                break
            k += 1
        self.emit(_math_source(tokens[start:k]), styles)
        end = k + (2 if display else 1)
        return min(end, len(tokens))

    def _math_until(self, tokens: list[_Token], i: int, closing: _Token, styles: frozenset[str]) -> int:
        k = i
        while k < len(tokens) and tokens[k] != closing:
            k += 1
        self.emit(_math_source(tokens[i:k]), styles)
        return min(k + 1, len(tokens))

    def _command(
        self, tokens: list[_Token], i: int, styles: frozenset[str], outer: list[frozenset[str]]
    ) -> tuple[int, frozenset[str]]:
        name = tokens[i][1]
        i += 1
        if name in _SYMBOLS:
            self.emit(_SYMBOLS[name], styles)
            return i, styles
        if name in _ACCENTS:
            argument, i = _read_mandatory(tokens, i)
            inner = _Renderer()
            inner.render(argument)
            text = "".join(text for text, _ in inner.runs).replace("ı", "i").replace("ȷ", "j")
            if text:
                text = unicodedata.normalize("NFC", text[0] + _ACCENTS[name] + text[1:])
            self.emit(text, styles)
            return i, styles
        if name in _STYLE_ARGUMENT:
            return self._enter(tokens, i, styles, styles | {_STYLE_ARGUMENT[name]}, outer)
        if name in _STYLE_ON:
            return i, styles | {_STYLE_ON[name]}
        if name in _STYLE_OFF:
            return i, styles - set(_STYLE_OFF[name])
        if name in _DROP:
            _, i = _read_args(tokens, i, _DROP[name])
            return i, styles
        if name in _UNWRAP_LAST:  # every specification ends with the content argument
            _, i = _read_args(tokens, i, _UNWRAP_LAST[name][:-1])
            return self._enter(tokens, i, styles, styles, outer)
        if name in _UNWRAP_ALL:
            arguments, i = _read_args(tokens, i, _UNWRAP_ALL[name])
            for k, argument in enumerate(arguments):
                if k:
                    self.emit(" ", styles)
                self.render(argument, styles)
            return i, styles
        if name in ("(", "["):
            return self._math_until(tokens, i, ("cs", ")" if name == "(" else "]"), styles), styles
        if name == "ensuremath":
            argument, i = _read_mandatory(tokens, i)
            self.emit(_math_source(argument), styles)
            return i, styles
        if name == "begin":
            environment, i = _environment_name(tokens, i)
            if environment in _MATH_ENVIRONMENTS:
                k = i
                while k < len(tokens) and tokens[k] != ("cs", "end"):
                    k += 1
                self.emit(_math_source(tokens[i:k]), styles)
                _, i = _environment_name(tokens, k + 1) if k < len(tokens) else ("", k)
                return i, styles
            spec = _TABLE_ENVIRONMENTS.get(environment) or _OTHER_ENVIRONMENTS.get(environment, "")
            _, i = _read_args(tokens, i, spec)
            self.emit(" ", styles)
            return i, styles
        if name == "end":
            _, i = _environment_name(tokens, i)
            self.emit(" ", styles)
            return i, styles
        # An unknown command: its braced arguments are content (read as plain groups from here);
        # alone it stays as written.
        _, after_optional = _read_optional(tokens, i, "[", "]")
        j = _skip_spaces(tokens, after_optional)
        if j < len(tokens) and tokens[j] == _OPEN:
            return after_optional, styles
        self.emit("\\" + name, styles)
        return i, styles


def _math_source(tokens: list[_Token]) -> str:
    """Math as its source, without the spaces TeX ignores in math mode (one stays after a control
    word that a letter follows: ``\\alpha b``)."""
    out: list[str] = []
    after_word = False
    for kind, value in tokens:
        if kind == "space":
            continue
        if after_word and kind == "char" and value.isascii() and value.isalpha():
            out.append(" ")
        out.append("\\" + value if kind == "cs" else value)
        after_word = kind == "cs" and value.isalpha()
    return "".join(out)


def _runs_to_html(runs: list[tuple[str, frozenset[str]]]) -> str:
    """Collapses whitespace, strips, and writes the runs with canonically nested style tags."""
    characters: list[tuple[str, frozenset[str]]] = []
    for text, styles in runs:
        for character in text:
            if character.isspace():
                if characters and characters[-1][0] != " ":
                    characters.append((" ", styles))
            else:
                characters.append((character, styles))
    while characters and characters[-1][0] == " ":
        characters.pop()
    for k, (character, _) in enumerate(characters):
        if character == " ":  # a space is only as bold as the text on both sides of it
            characters[k] = (" ", characters[k - 1][1] & characters[k + 1][1])
    out: list[str] = []
    open_tags: list[str] = []
    for character, styles in characters:
        wanted = [tag for tag in _STYLE_ORDER if tag in styles]
        common = 0
        while common < min(len(open_tags), len(wanted)) and open_tags[common] == wanted[common]:
            common += 1
        out.extend(f"</{tag}>" for tag in reversed(open_tags[common:]))
        out.extend(f"<{tag}>" for tag in wanted[common:])
        open_tags = wanted
        out.append(html.escape(character, quote=False))
    out.extend(f"</{tag}>" for tag in reversed(open_tags))
    return "".join(out)


def _cell_html(tokens: list[_Token]) -> str:
    renderer = _Renderer()
    try:
        renderer.render(tokens)
    except RecursionError:  # hundreds of nested accents or \SI arguments: keep what was read
        pass
    return _runs_to_html(renderer.runs)


# --------------------------------------------------------------------------------------------------
# Public function


def latex_table_to_html(latex: str) -> str:
    """Converts the first LaTeX table in ``latex`` to the HTML table that TEDS compares.

    Both sides of a LaTeX-vs-LaTeX comparison go through the same conversion, so
    ``teds(latex_table_to_html(pred), latex_table_to_html(ref))`` is TEDS for LaTeX tables. The
    conventions (one ``<tbody>``, ``<td>`` cells only, spans, dropped rules, kept bold/italic, math as
    source text, line breaks in cells as spaces) are listed in the module docstring.

    Args:
        latex: LaTeX source holding a ``tabular`` (or ``tabular*``, ``tabularx``, ``tabulary``,
            ``longtable``, ``xltabular``, ``array``) environment, alone or inside a ``table`` float or
            a whole document.

    Returns:
        ``<table><tbody><tr><td>...</td></tr>...</tbody></table>``, or ``""`` when there is no table
        environment or it has no rows. Malformed LaTeX never raises: an unterminated table or group is
        read to the end of the string.

    Raises:
        TypeError: if ``latex`` is not a ``str``.

    Example:
        >>> from visalign.metrics.latex_table import latex_table_to_html
        >>> latex_table_to_html(r'''
        ... \\begin{tabular}{lcc}
        ... \\toprule
        ... \\multirow{2}{*}{Model} & \\multicolumn{2}{c}{Score} \\\\
        ... \\cmidrule(lr){2-3}
        ...  & \\textbf{BLEU} & F$_1$ \\\\
        ... \\midrule
        ... Ours & 31.2 & 0.9 \\\\
        ... \\bottomrule
        ... \\end{tabular}''')
        '<table><tbody><tr><td rowspan="2">Model</td><td colspan="2">Score</td></tr><tr><td><b>BLEU</b></td><td>F_1</td></tr><tr><td>Ours</td><td>31.2</td><td>0.9</td></tr></tbody></table>'
    """
    if not isinstance(latex, str):
        raise TypeError(f"latex_table_to_html: latex must be a str, got {type(latex).__name__}")
    body = _find_table(_tokenize(latex))
    if body is None:
        return ""
    rows = []
    for row_tokens in _split_rows(body):
        cells = [_parse_cell(tokens) for tokens in row_tokens]
        if len(cells) == 1 and not cells[0].html and cells[0].colspan == 1 and cells[0].rowspan == 1:
            continue  # no '&' and no content: rules, a caption, the end after the last \\
        rows.append(cells)
    if not rows:
        return ""
    parts = ["<table><tbody>"]
    for row in _layout(rows):
        parts.append("<tr>")
        for cell in row:
            colspan = f' colspan="{cell.colspan}"' if cell.colspan != 1 else ""
            rowspan = f' rowspan="{cell.rowspan}"' if cell.rowspan != 1 else ""
            parts.append(f"<td{colspan}{rowspan}>{cell.html}</td>")
        parts.append("</tr>")
    parts.append("</tbody></table>")
    return "".join(parts)
