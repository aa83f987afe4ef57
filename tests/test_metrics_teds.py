"""TEDS against the PubTabNet reference, and the LaTeX-to-HTML conversion that feeds it.

The reference is IBM PubTabNet ``src/metric.py`` (class ``TEDS``). ``ReferenceTEDS`` below transcribes
it line by line: lxml when it is installed (as the reference), else a minimal ``html.parser`` tree
builder for the well-formed HTML these tests use; ``apted`` (the reference's tree edit distance, a
test dependency) and a textbook Levenshtein (the reference's ``distance.levenshtein``).
"""

from __future__ import annotations

import importlib
import random
import time
from collections import deque
from html.parser import HTMLParser

import numpy as np
import pytest
from apted import APTED, Config
from apted.helpers import Tree

from visalign.metrics.latex_table import latex_table_to_html
from visalign.metrics.teds import teds

teds_module = importlib.import_module("visalign.metrics.teds")  # the module: the package exports the function
html_table = importlib.import_module("visalign.metrics.html_table")
tree_edit = importlib.import_module("visalign.metrics.tree_edit")

try:
    from lxml import html as lxml_html
except ImportError:  # the reference parser is optional here
    lxml_html = None


# --------------------------------------------------------------------------------------------------
# The reference, transcribed


def levenshtein_by_definition(a, b) -> int:
    """Edit distance with unit costs: the full (len(a)+1) x (len(b)+1) table."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a) + 1):
        table[i][0] = i
    for j in range(len(b) + 1):
        table[0][j] = j
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            table[i][j] = min(
                table[i - 1][j] + 1, table[i][j - 1] + 1, table[i - 1][j - 1] + (a[i - 1] != b[j - 1])
            )
    return table[len(a)][len(b)]


class _MiniElement:
    """The slice of lxml's element API the reference reads, for well-formed HTML."""

    def __init__(self, tag, attrib):
        self.tag, self.attrib, self.text, self.tail, self.children = tag, attrib, None, None, []

    def getchildren(self):
        return list(self.children)

    def iter_descendants(self):
        for child in self.children:
            yield child
            yield from child.iter_descendants()

    def xpath(self, path):
        if path == "body/table":
            return [t for b in self.children if b.tag == "body" for t in b.children if t.tag == "table"]
        if path == ".//*":
            return list(self.iter_descendants())
        raise NotImplementedError(path)


class _MiniParser(HTMLParser):
    VOID = frozenset(("br", "img", "hr", "col", "input", "meta", "link"))

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.root = _MiniElement("#document", {})
        self.stack = [self.root]

    def handle_starttag(self, tag, attrs):
        element = _MiniElement(tag, {k: v or "" for k, v in attrs})
        self.stack[-1].children.append(element)
        if tag not in self.VOID:
            self.stack.append(element)

    def handle_startendtag(self, tag, attrs):
        self.stack[-1].children.append(_MiniElement(tag, {k: v or "" for k, v in attrs}))

    def handle_endtag(self, tag):
        if any(e.tag == tag for e in self.stack[1:]):
            while self.stack.pop().tag != tag:
                pass

    def handle_data(self, data):
        parent = self.stack[-1]
        if parent.children:
            parent.children[-1].tail = (parent.children[-1].tail or "") + data
        else:
            parent.text = (parent.text or "") + data


def reference_fromstring(document: str):
    if lxml_html is not None:
        parser = lxml_html.HTMLParser(remove_comments=True, encoding="utf-8")
        return lxml_html.fromstring(document, parser=parser)
    parser = _MiniParser()
    parser.feed(document)
    parser.close()
    return parser.root.children[0]  # <html>


class TableTree(Tree):
    def __init__(self, tag, colspan=None, rowspan=None, content=None, *children):
        self.tag = tag
        self.colspan = colspan
        self.rowspan = rowspan
        self.content = content
        self.children = list(children)


class CustomConfig(Config):
    @staticmethod
    def maximum(*sequences):
        return max(map(len, sequences))

    def normalized_distance(self, *sequences):
        return float(levenshtein_by_definition(*sequences)) / self.maximum(*sequences)

    def rename(self, node1, node2):
        if (node1.tag != node2.tag) or (node1.colspan != node2.colspan) or (node1.rowspan != node2.rowspan):
            return 1.0
        if node1.tag == "td":  # noqa: SIM102 - kept as the reference writes it
            if node1.content or node2.content:
                return self.normalized_distance(node1.content, node2.content)
        return 0.0


class ReferenceTEDS:
    def __init__(self, structure_only=False):
        self.structure_only = structure_only
        self.__tokens__ = []

    def tokenize(self, node):
        self.__tokens__.append("<%s>" % node.tag)  # noqa: UP031
        if node.text is not None:
            self.__tokens__ += list(node.text)
        for n in node.getchildren():
            self.tokenize(n)
        if node.tag != "unk":
            self.__tokens__.append("</%s>" % node.tag)  # noqa: UP031
        if node.tag != "td" and node.tail is not None:
            self.__tokens__ += list(node.tail)

    def load_html_tree(self, node, parent=None):
        if node.tag == "td":
            if self.structure_only:
                cell = []
            else:
                self.__tokens__ = []
                self.tokenize(node)
                cell = self.__tokens__[1:-1].copy()
            new_node = TableTree(
                node.tag,
                int(node.attrib.get("colspan", "1")),
                int(node.attrib.get("rowspan", "1")),
                cell,
                *deque(),
            )
        else:
            new_node = TableTree(node.tag, None, None, None, *deque())
        if parent is not None:
            parent.children.append(new_node)
        if node.tag != "td":
            for n in node.getchildren():
                self.load_html_tree(n, new_node)
        if parent is None:
            return new_node
        return None

    def evaluate(self, pred, true):
        if (not pred) or (not true):
            return 0.0
        pred = reference_fromstring(pred)
        true = reference_fromstring(true)
        if pred.xpath("body/table") and true.xpath("body/table"):
            pred = pred.xpath("body/table")[0]
            true = true.xpath("body/table")[0]
            n_nodes_pred = len(pred.xpath(".//*"))
            n_nodes_true = len(true.xpath(".//*"))
            n_nodes = max(n_nodes_pred, n_nodes_true)
            tree_pred = self.load_html_tree(pred)
            tree_true = self.load_html_tree(true)
            distance = APTED(tree_pred, tree_true, CustomConfig()).compute_edit_distance()
            return 1.0 - (float(distance) / n_nodes)
        return 0.0


def reference_teds(pred: str, ref: str, structure_only: bool = False) -> float:
    """The reference on a table fragment, wrapped the way PubTabNet's pipeline wraps it."""

    def wrap(table: str) -> str:
        return f"<html><body>{table}</body></html>" if table else ""

    return ReferenceTEDS(structure_only).evaluate(wrap(pred), wrap(ref))


# --------------------------------------------------------------------------------------------------
# Table pairs

REF = (
    "<table><thead><tr><td>Model</td><td>BLEU</td><td>F1</td></tr></thead>"
    "<tbody><tr><td>base</td><td>31.2</td><td>0.90</td></tr>"
    "<tr><td>ours</td><td>33.5</td><td>0.93</td></tr></tbody></table>"
)
PAIRS = {
    "identical": (REF, REF),
    "changed cell text": (REF.replace("33.5", "35.5"), REF),
    "missing row": (REF.replace("<tr><td>ours</td><td>33.5</td><td>0.93</td></tr>", ""), REF),
    "extra column": (
        REF.replace("<td>F1</td>", "<td>F1</td><td>R</td>")
        .replace("<td>0.90</td>", "<td>0.90</td><td>1</td>")
        .replace("<td>0.93</td>", "<td>0.93</td><td>2</td>"),
        REF,
    ),
    "colspan": (REF.replace("<td>BLEU</td><td>F1</td>", '<td colspan="2">BLEU F1</td>'), REF),
    "rowspan": (
        REF.replace("<td>base</td>", '<td rowspan="2">model</td>').replace("<td>ours</td>", ""),
        REF.replace("<td>base</td>", '<td rowspan="2">model</td>').replace("<td>ours</td>", "")
        .replace('rowspan="2"', 'rowspan="3"'),
    ),
    "thead vs no thead": (
        REF.replace("<thead>", "").replace("</thead>", "").replace("<tbody>", "").replace("</tbody>", ""),
        REF,
    ),
    "empty cells": (REF.replace("<td>31.2</td>", "<td></td>").replace("<td>base</td>", "<td></td>"), REF),
    "both empty cells": (REF.replace("<td>31.2</td>", "<td></td>"), REF.replace("<td>31.2</td>", "<td></td>")),
    "bold in a cell": (REF.replace("<td>33.5</td>", "<td><b>33.5</b></td>"), REF),
    "nested tags": (
        REF.replace("<td>F1</td>", "<td>F<sub>1</sub> <i>(%)</i></td>"),
        REF.replace("<td>F1</td>", "<td>F<sub>1</sub></td>"),
    ),
    "unicode": (REF.replace("ours", "nôtre 中文 ✓"), REF.replace("ours", "notre 中文")),
    "entities": (REF.replace("ours", "A &amp; B &lt;x&gt;"), REF.replace("ours", "A & B")),
    "th cells": (REF.replace("<td>Model</td>", "<th>Model</th>"), REF),
    "attributes other than spans": (
        REF.replace("<td>base</td>", '<td class="x" style="color:red" align="left">base</td>'),
        REF,
    ),
    "pretty printed": (REF.replace("<tr>", "\n  <tr>\n    ").replace("</td>", "</td>\n    "), REF),
    "nested table": (
        REF.replace("<td>base</td>", "<td><table><tr><td>in</td></tr></table></td>"),
        REF,
    ),
    "different shapes": (
        "<table><tr><td>a</td><td>b</td><td>c</td></tr></table>",
        "<table><tbody><tr><td>a</td></tr><tr><td>b</td></tr><tr><td>c</td></tr></tbody></table>",
    ),
}


@pytest.mark.parametrize("structure_only", [False, True])
@pytest.mark.parametrize("name", sorted(PAIRS))
def test_teds_matches_the_reference(name, structure_only):
    pred, ref = PAIRS[name]
    expected = reference_teds(pred, ref, structure_only)
    assert teds(pred, ref, structure_only=structure_only) == pytest.approx(expected, abs=1e-6)
    assert teds(ref, pred, structure_only=structure_only) == pytest.approx(
        reference_teds(ref, pred, structure_only), abs=1e-6
    )


def test_reference_pairs_cover_the_interesting_range():
    values = [reference_teds(*PAIRS[name]) for name in PAIRS]
    assert values.count(1.0) >= 2 and min(values) < 0.8 and any(0.9 < v < 1.0 for v in values)


def test_identical_and_empty():
    assert teds(REF, REF) == 1.0
    assert teds(REF, REF, structure_only=True) == 1.0
    assert teds("", REF) == 0.0 == reference_teds("", REF)
    assert teds(REF, "") == 0.0
    assert teds("", "") == 0.0  # no table on either side: nothing to call similar
    assert teds("<p>no table</p>", REF) == 0.0 == reference_teds("<p>no table</p>", REF)
    assert teds("<div><table><tr><td>a</td></tr></table></div>", REF) == 0.0  # only body/table counts
    assert teds("<table></table>", "<table></table>") == 1.0  # the reference divides by zero here
    assert teds("   ", REF) == 0.0


def test_full_documents_and_fragments_agree():
    document = f"<!DOCTYPE html><html><head><title>t</title></head><body>{REF}</body></html>"
    pred = REF.replace("33.5", "35.5")
    assert teds(pred, document) == teds(pred, REF)
    assert teds(f"Here is the table:\n{pred}", REF) == teds(pred, REF)


def test_input_validation():
    with pytest.raises(TypeError, match="pred_html must be a str"):
        teds(b"<table></table>", REF)
    with pytest.raises(TypeError, match="ref_html must be a str"):
        teds(REF, None)
    with pytest.raises(TypeError, match="structure_only must be a bool"):
        teds(REF, REF, structure_only=1)


def test_spans_that_are_not_integers_do_not_raise():
    # the reference raises ValueError on int("2a"); here the leading digits count, as in browsers
    odd = REF.replace("<td>BLEU</td>", '<td colspan="2a">BLEU</td>')
    assert teds(odd, REF.replace("<td>BLEU</td>", '<td colspan="2">BLEU</td>')) == 1.0
    assert teds(REF.replace("<td>BLEU</td>", '<td colspan="x">BLEU</td>'), REF) == 1.0


# --------------------------------------------------------------------------------------------------
# Hand computation from the definition


def _grid(rows: int, cols: int, cell=lambda r, c: f"v{r}{c}") -> str:
    body = "".join("<tr>" + "".join(f"<td>{cell(r, c)}</td>" for c in range(cols)) + "</tr>" for r in range(rows))
    return f"<table><tbody>{body}</tbody></table>"


def test_one_character_in_one_cell():
    rows, cols = 4, 3
    ref = _grid(rows, cols, lambda r, c: "abcde")
    pred = ref.replace("abcde", "abXde", 1)
    n_nodes = 1 + rows + rows * cols  # tbody, tr, td below the table
    assert teds(pred, ref) == pytest.approx(1 - (1 / 5) / n_nodes, abs=1e-12)
    assert teds(pred, ref, structure_only=True) == 1.0


def test_one_missing_row():
    rows, cols = 5, 4
    ref = _grid(rows, cols)
    pred = _grid(rows - 1, cols)
    n_nodes = 1 + rows + rows * cols
    assert teds(pred, ref) == pytest.approx(1 - (1 + cols) / n_nodes, abs=1e-12)  # delete a tr and its tds


def test_a_different_colspan_costs_one():
    ref = _grid(3, 3)
    pred = ref.replace("<td>v11</td>", '<td colspan="1">v11</td>').replace("<td>v22</td>", '<td colspan="2">v22</td>')
    assert teds(pred, ref) == pytest.approx(1 - 1 / (1 + 3 + 9), abs=1e-12)


def test_tags_inside_cells_are_tokens_and_nodes():
    # <b>ab</b> is 4 tokens against 2: distance 2/4; the <b> is also an element below the table
    pred = "<table><tr><td><b>ab</b></td></tr></table>"
    ref = "<table><tr><td>ab</td></tr></table>"
    assert teds(pred, ref) == pytest.approx(1 - 0.5 / 3, abs=1e-12)
    assert teds(pred, ref, structure_only=True) == 1.0


def test_pathological_trees_go_below_zero_like_the_reference():
    # a chain of nested <div> against a flat row: the reference does not clip
    pred = "<table>" + "<div>" * 6 + "</div>" * 6 + "</table>"
    ref = "<table>" + "<td>x</td>" * 6 + "</table>"
    value = teds(pred, ref)
    assert value < 0
    assert value == pytest.approx(reference_teds(pred, ref), abs=1e-6)


# --------------------------------------------------------------------------------------------------
# The parts: Levenshtein, tree edit distance, parser


def test_normalized_levenshtein_against_the_definition():
    rng = random.Random(0)
    alphabet = ["a", "b", "c", "<b>", "</b>", "中"]
    first = [tuple(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(25)]
    second = [tuple(rng.choice(alphabet) for _ in range(rng.randint(0, 40))) for _ in range(20)]
    vocabulary = {token: k for k, token in enumerate(alphabet)}
    code = [tuple(vocabulary[t] for t in s) for s in first], [tuple(vocabulary[t] for t in s) for s in second]
    matrix = teds_module._normalized_levenshtein_matrix(*code)
    for i, a in enumerate(first):
        for j, b in enumerate(second):
            longest = max(len(a), len(b))
            expected = levenshtein_by_definition(a, b) / longest if longest else 0.0
            assert matrix[i, j] == pytest.approx(expected, abs=1e-12)
    assert levenshtein_by_definition("kitten", "sitting") == 3


def test_normalized_levenshtein_in_small_batches(monkeypatch):
    monkeypatch.setattr(teds_module, "_BATCH_ELEMENTS", 7)  # forces many chunks
    sequences = [(1, 2, 3), (), (3, 2, 1, 1), (5,), (1, 2, 3, 4, 5, 6, 7, 8, 9)]
    matrix = teds_module._normalized_levenshtein_matrix(sequences, sequences)
    for i, a in enumerate(sequences):
        for j, b in enumerate(sequences):
            longest = max(len(a), len(b))
            assert matrix[i, j] == pytest.approx(levenshtein_by_definition(a, b) / longest if longest else 0.0)


def _random_table(rng: random.Random, rows: int, cols: int) -> str:
    texts = ["", "a", "ab", "12.5", "x y", "é中", "<b>b</b>", "1<sup>2</sup>", "longer cell text", "7"]
    out = []
    for _ in range(rows):
        cells = []
        for _ in range(cols):
            attrs = ""
            if rng.random() < 0.1:
                attrs += f' colspan="{rng.randint(2, 3)}"'
            if rng.random() < 0.1:
                attrs += f' rowspan="{rng.randint(2, 3)}"'
            tag = "th" if rng.random() < 0.05 else "td"
            cells.append(f"<{tag}{attrs}>{rng.choice(texts)}</{tag}>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    if rows > 1 and rng.random() < 0.5:
        return f"<table><thead>{out[0]}</thead><tbody>{''.join(out[1:])}</tbody></table>"
    return f"<table>{''.join(out)}</table>"


def _perturb(rng: random.Random, table: str) -> str:
    for _ in range(rng.randint(0, 4)):
        move = rng.random()
        if move < 0.4:
            at = table.find("<td>", rng.randint(0, len(table)))
            if at >= 0:
                table = table[: at + 4] + rng.choice(["z", "q1", "<i>i</i>"]) + table[at + 4 :]
        elif move < 0.6:
            table = table.replace("</tr><tr>", "</tr><tr><td>new</td></tr><tr>", 1)
        elif move < 0.8:
            start = table.find("<tr>", rng.randint(0, len(table)))
            end = table.find("</tr>", start)
            if start >= 0 and end >= 0:
                table = table[:start] + table[end + 5 :]
        else:
            table = table.replace("<td>", '<td colspan="2">', 1)
    return table


@pytest.mark.slow
@pytest.mark.parametrize("vector_min_size", [1, 24, 10**9])  # all numpy, the default mix, all Python
def test_random_tables_match_the_reference(monkeypatch, vector_min_size):
    monkeypatch.setattr(tree_edit, "_VECTOR_MIN_SIZE", vector_min_size)
    rng = random.Random(vector_min_size)
    for _ in range(12):
        rows, cols = rng.randint(1, 6), rng.randint(1, 5)
        ref = _random_table(rng, rows, cols)
        pred = _perturb(rng, ref) if rng.random() < 0.8 else _random_table(rng, rows, cols)
        for structure_only in (False, True):
            expected = reference_teds(pred, ref, structure_only)
            assert teds(pred, ref, structure_only) == pytest.approx(expected, abs=1e-6), (pred, ref)


def test_mirrored_trees_give_the_same_distance():
    rng = random.Random(3)
    for _ in range(10):
        ref = _random_table(rng, rng.randint(1, 6), rng.randint(1, 5))
        pred = _perturb(rng, ref)
        tables = [html_table.first_table(s) for s in (pred, ref)]
        contents: dict = {}
        roots = [teds_module._table_tree(t, False, contents) for t in tables]
        distances = []
        for mirrored in (False, True):
            trees = [tree_edit.PostOrderTree(root, mirrored=mirrored) for root in roots]
            costs = teds_module._rename_costs(*trees, list(contents))
            distances.append(tree_edit.tree_edit_distance(*trees, costs))
        assert distances[0] == pytest.approx(distances[1], abs=1e-9)


def _serialize(element) -> str:
    attrs = "".join(f' {k}="{v}"' for k, v in element.attrib.items())
    inner = (element.text or "") + "".join(_serialize(c) + (c.tail or "") for c in element.children)
    return f"<{element.tag}{attrs}>{inner}</{element.tag}>"


# What lxml 6.1 (libxml2 2.14) builds from these, recorded with lxml installed: the html.parser
# fallback must build the same trees without it.
LXML_TREES = [
    ("<table><tr><td>a<td>b<tr><td>c</table>",
     "<html><body><table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table></body></html>"),
    ("<table><tr><td>a</tr></td><td>q</td></table>",
     "<html><body><table><tr><td>a</td></tr><td>q</td></table></body></html>"),
    ("<table><tr><td>a<span>b<td>c</td></tr></table>",
     "<html><body><table><tr><td>a<span>b</span></td><td>c</td></tr></table></body></html>"),
    ("<table><tr><td>a<div>b</tr><td>c</td></tr></table>",
     "<html><body><table><tr><td>a<div>b</div></td></tr><td>c</td></table></body></html>"),
    ("<table><tr><td>a<thead><tr><td>b</td></tr></table>",
     "<html><body><table><tr><td>a<thead><tr><td>b</td></tr></thead></td></tr></table></body></html>"),
    ("<table><tr><td>a<td/>b</td></tr></table>",
     "<html><body><table><tr><td>a</td><td></td>b</tr></table></body></html>"),
    ("<table><tr><td>x<html/>y</td><td>z</td></tr></table>",
     "<html><body><table><tr><td>x</td>y<td>z</td></tr></table></body></html>"),
    ("<table><tr><td>a<!-- c --> b &amp; &#65; &amp c</td></tr></table>",
     "<html><body><table><tr><td>a b & A & c</td></tr></table></body></html>"),
    ("<table><tr><td>a<!-->b<!-- x --!>c<!-- y -- >d -->e</td></tr></table>",
     "<html><body><table><tr><td>abce</td></tr></table></body></html>"),
    ("<table><tr><td>a<title>x<b>y</title>z</td></tr></table>",
     "<html><body><table><tr><td>a<title>x<b>y</title>z</td></tr></table></body></html>"),
    ("<table><tr><td>a<script>x<td>y</script>z</td></tr></table>",
     "<html><body><table><tr><td>a<script>x<td>y</script>z</td></tr></table></body></html>"),
    ("<p>text <table><tr><TD COLSPAN=2 colspan=3>a</TD></tr></table>",
     '<html><body><p>text </p><table><tr><td colspan="2">a</td></tr></table></body></html>'),
    ("<table><tr><td>a<br>b<img src=x>c<wbr>d</td></tr></table>",
     '<html><body><table><tr><td>a<br></br>b<img src="x"></img>c<wbr>d</wbr></td></tr></table></body></html>'),
    ("<table><tr><td>a\r\nb</td></tr></table>",
     "<html><body><table><tr><td>a\nb</td></tr></table></body></html>"),
    ("<table><caption>cap</caption><colgroup><col><col></colgroup><tr><td>a</td></tr></table>",
     "<html><body><table><caption>cap</caption><colgroup><col></col><col></col></colgroup><tr><td>a</td></tr>"
     "</table></body></html>"),
    ("<table><tr><td>a<b",
     '<html><body><table><tr><td>a<b< body=""></b<></td></tr></table></body></html>'),
    ("<!DOCTYPE html><html><head><title>t</title></head><body><table><tr><td>a</td></tr></table></body></html>",
     "<html><head><title>t</title></head><body><table><tr><td>a</td></tr></table></body></html>"),
    ("<html>hello<table><tr><td>a</td></tr></table></html>",
     "<html><body>hello<table><tr><td>a</td></tr></table></body></html>"),
]  # fmt: skip


@pytest.mark.parametrize(("source", "tree"), LXML_TREES)
def test_stdlib_parser_builds_lxml_trees(source, tree):
    document = source if html_table._FULL_DOCUMENT.match(source) else f"<html><body>{source}</body></html>"
    assert _serialize(html_table._parse_stdlib(document)) == tree


def test_stdlib_parser_stops_at_libxml2_depth_limit():
    inner = "<b>" * 300 + "x" + "</b>" * 300
    document = f"<html><body><table><tr><th>{inner}</th><td>after</td></tr></table></body></html>"
    table = html_table._parse_stdlib(document).children[0].children[0]
    assert teds_module._count_descendants(table) == 253  # 256 open elements, then libxml2 stops
    assert "after" not in _serialize(table)


@pytest.mark.skipif(lxml_html is None, reason="lxml is not installed")
def test_stdlib_parser_matches_lxml_on_random_malformed_html():
    rng = random.Random(0)
    tags = ("table", "tr", "td", "th", "thead", "tbody", "tfoot", "b", "i", "br", "span", "div", "p", "sup")
    tags += ("caption", "col", "a", "html", "body", "head", "title")
    texts = ["a", "b c", " ", "\n", "&amp;", "&lt;", "x&nbsp;y", "é", "<!-- c -->", "<"]
    for _ in range(400):
        parts = []
        for _ in range(rng.randint(1, 30)):
            roll, tag = rng.random(), rng.choice(tags)
            if roll < 0.45:
                parts.append(f"<{tag}{rng.choice(['', ' colspan=2', ' rowspan=x'])}{'/' if rng.random() < 0.05 else ''}>")
            elif roll < 0.75:
                parts.append(f"</{tag}>")
            else:
                parts.append(rng.choice(texts))
        document = "<html><body><table>" + "".join(parts) + "</body></html>"
        assert _serialize(html_table._parse_stdlib(document)) == _serialize(html_table._parse_lxml(document))


def test_teds_speed():
    rng = np.random.default_rng(0)

    def table(rows: int, cols: int, noise: float) -> str:
        cells = [[f"{v:.2f}" for v in rng.uniform(0, 100, cols)] for _ in range(rows)]
        return _grid(rows, cols, lambda r, c: cells[r][c] if rng.random() > noise else "x")

    ref, pred = table(20, 10, 0.0), table(20, 10, 0.2)
    # CPU seconds of this process, not wall-clock: other processes on a loaded machine do not count
    start = time.process_time()
    value = teds(pred, ref)
    elapsed = time.process_time() - start
    assert 0.0 < value < 1.0
    assert elapsed < 3.0  # about 0.05 CPU s; the pure-Python apted takes over 1 s


# --------------------------------------------------------------------------------------------------
# LaTeX to HTML


def _html(*rows: str) -> str:
    return "<table><tbody>" + "".join(f"<tr>{row}</tr>" for row in rows) + "</tbody></table>"


BOOKTABS = r"""
\begin{table}[t]
\centering
\caption{Results.}\label{tab:results}
\begin{tabular}{lcc}
\toprule
\multirow{2}{*}{Model} & \multicolumn{2}{c}{Score} \\
\cmidrule(lr){2-3}
 & \textbf{BLEU} & F$_1$ \\
\midrule
Base  & 31.2 & 0.90 \\ % the baseline
\makecell{Ours\\(full)} & \textbf{33.5} & 0.93 \\
\bottomrule
\end{tabular}
\end{table}
"""


@pytest.mark.parametrize(
    ("latex", "expected"),
    [
        (r"\begin{tabular}{cc} a & b \\ c & d \\ \end{tabular}",
         _html("<td>a</td><td>b</td>", "<td>c</td><td>d</td>")),
        (BOOKTABS,
         _html('<td rowspan="2">Model</td><td colspan="2">Score</td>',
               "<td><b>BLEU</b></td><td>F_1</td>",
               "<td>Base</td><td>31.2</td><td>0.90</td>",
               "<td>Ours (full)</td><td><b>33.5</b></td><td>0.93</td>")),
        (r"\begin{tabular}{|c|c|}\hline a\&b & 50\% \\ \cline{1-2} $\alpha b$ & $\pm 0.1$ \\ \hline\end{tabular}",
         _html("<td>a&amp;b</td><td>50%</td>", r"<td>\alpha b</td><td>\pm0.1</td>")),
        (r"\begin{tabular}{cc} & b \\ \multirow{-2}{*}{A} & c \\ \end{tabular}",
         _html('<td rowspan="2">A</td><td>b</td>', "<td>c</td>")),
        (r"\begin{tabular}{ccc} \multicolumn{2}{c}{\multirow{2}{*}{Big}} & 1 \\ \multicolumn{2}{c}{} & 2 \\ x & y & z"
         r"\end{tabular}",
         _html('<td colspan="2" rowspan="2">Big</td><td>1</td>', "<td>2</td>", "<td>x</td><td>y</td><td>z</td>")),
        (r"\begin{tabular}{cc} \cellcolor{gray}\multirow{2}{*}{A} & 1 \\ & 2 \\ \end{tabular}",
         _html('<td rowspan="2">A</td><td>1</td>', "<td>2</td>")),
        (r"\begin{tabular}{cc} \textbf{x}\textbf{y} & {\bfseries bold} rest \\ \textit{\textbf{bi}} & "
         r"H\textsubscript{2}O x\textsuperscript{2} \\ \end{tabular}",
         _html("<td><b>xy</b></td><td><b>bold</b> rest</td>", "<td><b><i>bi</i></b></td><td>H<sub>2</sub>O x<sup>2</sup></td>")),
        (r"\begin{tabular}{c} \'e \"{o} \c{c} -- --- ``q'' \S\ \checkmark\ \unknown{arg} a~b \end{tabular}",
         _html("<td>é ö ç – — “q” § ✓ arg a b</td>")),
        (r"\begin{tabular}{cc} a & \begin{tabular}{c} x \\ y \end{tabular} \\ c & d \end{tabular}",
         _html("<td>a</td><td>x y</td>", "<td>c</td><td>d</td>")),
        (r"\begin{longtable}{cc}\caption{T}\\ \toprule H1 & H2 \\ \midrule \endfirsthead H1 & H2 (cont.) \\ \endhead"
         r" \midrule more \\ \endfoot \bottomrule \endlastfoot a & b \\ \end{longtable}",
         _html("<td>H1</td><td>H2</td>", "<td>a</td><td>b</td>")),
        (r"\begin{tabularx}{\textwidth}{X|X} \rowcolor{blue!10} \textcolor{red}{r} & \resizebox{2cm}{!}{s} \\ \end{tabularx}",
         _html("<td>r</td><td>s</td>")),
        (r"\begin{tabular}{cc} a & b \\ c & d",  # cut off mid-generation
         _html("<td>a</td><td>b</td>", "<td>c</td><td>d</td>")),
        (r"\begin{tabular}{cc} a & b % & hidden" "\n" r"\\[2pt] c & d \\* e & f \tabularnewline \end{tabular}",
         _html("<td>a</td><td>b</td>", "<td>c</td><td>d</td>", "<td>e</td><td>f</td>")),
    ],
)  # fmt: skip
def test_latex_table_to_html(latex, expected):
    assert latex_table_to_html(latex) == expected


def test_latex_document_wrapper():
    document = (
        "\\documentclass{article}\n\\usepackage{booktabs,multirow,makecell}\n\\begin{document}\n"
        + BOOKTABS
        + "\n\\end{document}\n"
    )
    assert latex_table_to_html(document) == latex_table_to_html(BOOKTABS)


def test_latex_without_a_table_and_bad_input():
    assert latex_table_to_html("") == ""
    assert latex_table_to_html("plain text & more \\\\") == ""
    assert latex_table_to_html(r"\begin{tabular}{cc} \hline \end{tabular}") == ""
    with pytest.raises(TypeError, match="latex must be a str"):
        latex_table_to_html(None)


def test_malformed_latex_never_raises():
    rng = random.Random(0)
    pieces = [
        r"\begin{tabular}{cc}", r"\end{tabular}", "&", r"\\", "{", "}", "$", "a", " ", "\n", "%",
        r"\multicolumn{2}{c}{", r"\multirow{2}{*}{", r"\multirow{-3}{*}{", r"\multirow", r"\hline",
        r"\cmidrule(lr){1-2}", r"\textbf{", r"\bfseries", r"\makecell{", "[", "]", r"\'", "--",
        r"\begin{longtable}{c}", r"\endhead", r"\endlastfoot", r"\(", r"\]", r"\begin", r"\end", "\\",
        r"\unknown", r"\SI{", "~", "<", "é", r"\rowcolor{x}", "-1",
    ]  # fmt: skip
    for _ in range(300):
        latex = r"\begin{tabular}{cc}" + "".join(rng.choice(pieces) for _ in range(rng.randint(0, 40)))
        html = latex_table_to_html(latex)
        if html:
            assert teds(html, html) == 1.0
    deep = r"\begin{tabular}{c}" + "{" * 5000 + "x" + "}" * 5000 + r"\end{tabular}"
    assert latex_table_to_html(deep) == _html("<td>x</td>")


def test_teds_on_latex_tables():
    ref = latex_table_to_html(BOOKTABS)
    assert teds(ref, ref) == 1.0
    changed_cell = latex_table_to_html(BOOKTABS.replace("31.2", "31.7"))
    assert 0.9 < teds(changed_cell, ref) < 1.0
    assert teds(changed_cell, ref, structure_only=True) == 1.0
    no_multicolumn = latex_table_to_html(BOOKTABS.replace(r"\multicolumn{2}{c}{Score}", "Score & "))
    assert teds(no_multicolumn, ref, structure_only=True) < 1.0
    extra_column = latex_table_to_html(
        BOOKTABS.replace(r"0.90 \\", r"0.90 & x \\").replace(r"0.93 \\", r"0.93 & y \\")
    )
    assert teds(extra_column, ref, structure_only=True) < 1.0
    # the same table written differently converts alike
    rewritten = BOOKTABS.replace(r"\textbf{33.5}", r"{\bfseries 33.5}").replace(r"\toprule", r"\hline")
    assert teds(latex_table_to_html(rewritten), ref) == 1.0
