"""HTML documents to the element tree of their first table, exactly as ``lxml.html`` reads them.

What :func:`~visalign.metrics.teds.teds` compares: :func:`first_table` is PubTabNet's
``lxml.html.fromstring(document, HTMLParser(remove_comments=True)).xpath('body/table')[0]`` (a string
that is not already a document is wrapped in ``<html><body>`` first), returned as :class:`Element`
nodes (the parts of lxml's element API the metric reads: ``tag``, ``attrib``, ``text``, ``tail``,
``children``).

Backends: when ``lxml`` is installed it is used exactly as PubTabNet's TEDS uses it. Otherwise
the standard library ``html.parser`` feeds a small tree builder that reproduces libxml2's HTML
recovery rules (implied ``html``/``body``, the start tags that close open elements, the end-tag
priorities, void elements, comments dropped, no ``tbody`` insertion), so that well-formed tables and
the usual slips (unclosed ``td``/``tr``, stray end tags) parse to the same tree as with lxml 6
(libxml2 2.14), down to its quirks (raw-text elements, the 256-element depth limit at which it stops
reading). Random malformed documents were checked to give identical trees under both backends.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

__all__ = ["Element", "first_table"]


# --------------------------------------------------------------------------------------------------
# The element tree both backends produce (the parts of lxml's element API the reference reads).


class Element:
    """One HTML element: ``tag``, ``attrib``, ``text``, ``tail`` and ``children``, as in lxml."""

    __slots__ = ("attrib", "children", "tag", "tail", "text")

    def __init__(self, tag: str, attrib: dict[str, str] | None = None) -> None:
        self.tag = tag
        self.attrib = attrib or {}
        self.text: str | None = None
        self.tail: str | None = None
        self.children: list[Element] = []

    def append_text(self, data: str) -> None:
        if self.children:
            last = self.children[-1]
            last.tail = data if last.tail is None else last.tail + data
        else:
            self.text = data if self.text is None else self.text + data


# --------------------------------------------------------------------------------------------------
# html.parser backend: libxml2's legacy HTML tree construction (HTMLparser.c, htmlAutoClose,
# htmlAutoCloseOnClose, htmlCheckImplied, htmlParseStartTag/EndTag), which lxml.html uses.

# htmlStartClose: an open element (key) is closed by a start tag in its set.
_START_CLOSE: dict[str, frozenset[str]] = {
    old: frozenset(new.split())
    for old, new in {
        "a": "a fieldset table td th",
        "address": "dd dl dt form li ul",
        "b": "center p td th",
        "big": "p",
        "caption": "col colgroup tbody tfoot thead tr",
        "col": "col colgroup tbody tfoot thead tr",
        "colgroup": "colgroup tbody tfoot thead tr",
        "dd": "dt",
        "dir": "dd dl dt form ul",
        "dl": "form li",
        "dt": "dd dl",
        "font": "center td th",
        "form": "form",
        **{f"h{k}": "fieldset form li p table" for k in range(1, 7)},
        "head": "a abbr acronym address b bdo big blockquote body br center cite code dd dfn dir div "
        "dl dt em fieldset font form frameset h1 h2 h3 h4 h5 h6 hr i iframe img kbd li listing map "
        "menu ol p pre q s samp small span strike strong sub sup table tt u ul var xmp",
        "hr": "form",
        "i": "center p td th",
        "legend": "fieldset",
        "li": "li",
        "link": "body frameset",
        "listing": "dd dl dt fieldset form li table ul",
        "menu": "dd dl dt form ul",
        "ol": "form",
        "option": "optgroup option",
        "p": "address blockquote body caption center col colgroup dd dir div dl dt fieldset form "
        "frameset h1 h2 h3 h4 h5 h6 head hr li listing menu ol p pre table tbody td tfoot th title tr "
        "ul xmp",
        "pre": "dd dl dt fieldset form li table ul",
        "s": "p",
        "script": "noscript",
        "small": "p",
        "span": "td th",
        "strike": "p",
        "style": "body frameset",
        "tbody": "tbody tfoot",
        "td": "tbody td tfoot th tr",
        "tfoot": "tbody",
        "th": "tbody td tfoot th tr",
        "thead": "tbody tfoot",
        "title": "body frameset",
        "tr": "tbody tfoot tr",
        "tt": "p",
        "u": "p td th",
        "ul": "address form menu pre",
        "xmp": "dd dl dt fieldset form li table ul",
    }.items()
}
# htmlEndPriority: a misplaced end tag only closes open elements of lower or equal priority.
_END_PRIORITY = {
    "div": 150, "td": 160, "th": 160, "tr": 170, "thead": 180, "tbody": 180, "tfoot": 180,
    "table": 190, "head": 200, "body": 200, "html": 220,
}  # fmt: skip
_DEFAULT_PRIORITY = 100
# Elements that libxml2's HTML 4 table marks empty: they never hold content.
_VOID = frozenset(
    ("area", "base", "basefont", "br", "col", "frame", "hr", "img", "input", "isindex", "link", "meta", "param")
)
_HEAD_ONLY = frozenset(("script", "style", "meta", "link", "title", "base"))
# Elements whose content libxml2 reads as raw text up to their end tag; RCDATA ones decode entities.
_RAW_TEXT = frozenset(("script", "style", "xmp", "iframe", "noembed", "noframes", "title", "textarea"))
_RCDATA = frozenset(("title", "textarea"))
_HTML_WHITESPACE = " \t\n\f\r"
_IN_HEAD, _IN_BODY = 1, 10  # libxml2's ctxt->html insertion states
_MAX_DEPTH = 256  # libxml2's element depth limit without XML_PARSE_HUGE


class _LibxmlTreeBuilder(HTMLParser):
    """Builds the tree libxml2's HTML parser would build, from ``html.parser`` events."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root: Element | None = None
        self._stack: list[Element] = []
        self._state = 0
        self._discarded = 0  # libxml2's ctxt->depth: misplaced html/head/body start tags ignored
        self._raw_text: str | None = None
        self._halted = False

    # tree operations ------------------------------------------------------------------------------
    def _push(self, tag: str, attrib: dict[str, str] | None = None) -> None:
        if len(self._stack) >= _MAX_DEPTH:  # "Excessive depth in document": libxml2 halts the parse
            self._halted = True
            return
        node = Element(tag, attrib)
        if self._stack:
            self._stack[-1].children.append(node)
        elif self.root is None:
            self.root = node
        # else: a second document-level element, which lxml's root never sees
        if tag == "head" and self._state < _IN_HEAD:
            self._state = _IN_HEAD
        if tag == "body" and self._state < _IN_BODY:
            self._state = _IN_BODY
        self._stack.append(node)

    def _auto_close(self, tag: str) -> None:
        while self._stack and tag in _START_CLOSE.get(self._stack[-1].tag, ()):
            self._stack.pop()

    def _check_implied(self, tag: str) -> None:
        if tag == "html":
            return
        if not self._stack:
            self._push("html")
        if tag in ("body", "head"):
            return
        if len(self._stack) <= 1 and tag in _HEAD_ONLY:
            if self._state >= _IN_HEAD:
                return
            self._push("head")
        elif tag not in ("noframes", "frame", "frameset"):
            if self._state >= _IN_BODY:
                return
            if any(node.tag in ("body", "head") for node in self._stack):
                return
            self._push("body")

    # html.parser callbacks ------------------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._halted:
            return
        self._start(tag, attrs, self_closing=False)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if self._halted:
            return
        self._start(tag, attrs, self_closing=True)

    def _start(self, tag: str, attrs: list[tuple[str, str | None]], self_closing: bool) -> None:
        self._auto_close(tag)
        self._check_implied(tag)
        if self._halted:
            return
        discard = 0
        if self._stack and tag == "html":
            discard += 1
        if len(self._stack) != 1 and tag == "head":
            discard += 1
        if tag == "body":
            discard += sum(node.tag == "body" for node in self._stack)
        if discard:
            self._discarded += discard
            if self_closing and self._stack:  # libxml2 then "closes" <x/> by popping the open element
                self._stack.pop()
            return
        attrib: dict[str, str] = {}
        for name, value in attrs:
            attrib.setdefault(name, "" if value is None else value)  # libxml2 keeps the first
        self._push(tag, attrib)
        if self._halted:
            return
        if self_closing or tag in _VOID:
            self._stack.pop()
        elif tag in _RAW_TEXT:
            self.set_cdata_mode(tag)
            self._raw_text = tag

    def handle_endtag(self, tag: str) -> None:
        if self._halted:
            return
        self._raw_text = None
        if self._discarded > 0 and tag in ("html", "body", "head"):
            self._discarded -= 1
            return
        if not any(node.tag == tag for node in self._stack):
            return
        priority = _END_PRIORITY.get(tag, _DEFAULT_PRIORITY)
        for node in reversed(self._stack):
            if node.tag == tag:
                break
            if _END_PRIORITY.get(node.tag, _DEFAULT_PRIORITY) > priority:
                return
        while self._stack[-1].tag != tag:
            self._stack.pop()
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        if self._halted:
            return
        if self._raw_text in _RCDATA and not _CDATA_MODE_DECODES_RCDATA:
            data = html.unescape(data)
        top = self._stack[-1].tag if self._stack else None
        if top in (None, "html", "head"):
            content = data.lstrip(_HTML_WHITESPACE)
            leading = data[: len(data) - len(content)]
            if leading and self._stack:
                self._stack[-1].append_text(leading)
            if not content:
                return
            data = content
            if top == "head":  # htmlStartCharData
                self._auto_close("p")
            self._check_implied("p")
            if self._halted:
                return
        self._stack[-1].append_text(data)

    # comments, declarations and processing instructions are dropped (remove_comments=True; libxml2
    # parses <? ... > and <! ... > as bogus comments)

    def parse_comment(self, i: int, report: int = 1) -> int:
        """Skips a comment where libxml2 ends it: ``<!-->`` and ``<!--->`` are empty, else the first
        ``-->`` or ``--!>`` (html.parser would also accept ``-- >``)."""
        for empty in ("<!-->", "<!--->"):
            if self.rawdata.startswith(empty, i):
                return i + len(empty)
        end = _COMMENT_END.search(self.rawdata, i + 4)
        return end.end() if end else -1

    @property
    def in_raw_text(self) -> bool:
        return self._raw_text is not None

    def truncated_start_tag(self, tag: str) -> None:
        """A start tag cut off by the end of input: libxml2 closes and implies, then drops it."""
        self._auto_close(tag)
        self._check_implied(tag)

    def close(self) -> None:
        super().close()
        if self._raw_text is not None and self.rawdata:  # unterminated raw text runs to the end
            self.handle_data(self.rawdata)
            self.rawdata = ""
        self._stack.clear()


def _cdata_mode_decodes_rcdata() -> bool:
    """Whether this Python's html.parser already decodes entities in title/textarea (3.14 does)."""

    class Probe(HTMLParser):
        data = ""

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            self.set_cdata_mode(tag)

        def handle_data(self, data: str) -> None:
            self.data += data

    probe = Probe(convert_charrefs=True)
    probe.feed("<title>&amp;</title>")
    probe.close()
    return probe.data == "&"


_CDATA_MODE_DECODES_RCDATA = _cdata_mode_decodes_rcdata()


_COMMENT_END = re.compile(r"--!?>")
_TAG_START = re.compile(r"<(/?)([A-Za-z][^\t\n\r\f />]*)")


def _unterminated_tail(document: str) -> tuple[int, str | None] | None:
    """Where a tag or comment that the end of input cuts off starts, and the start tag's name."""
    found: list[tuple[int, str | None]] = []
    tag = _TAG_START.search(document, document.rfind(">") + 1)
    if tag:
        found.append((tag.start(), None if tag.group(1) else tag.group(2).lower()))
    last_close = max(document.rfind("-->"), document.rfind("--!>") + 1)
    comment = document.find("<!--", last_close + 3 if last_close >= 0 else 0)
    if comment >= 0:
        found.append((comment, None))
    return min(found, key=lambda item: item[0]) if found else None


def _parse_stdlib(document: str) -> Element | None:
    document = document.replace("\r\n", "\n").replace("\r", "\n").replace("\0", "\ufffd")
    # libxml2 drops a tag or comment cut off by the end, after letting a start tag close and imply
    tail = _unterminated_tail(document)
    builder = _LibxmlTreeBuilder()
    builder.feed(document[: tail[0]] if tail else document)
    if tail and builder.in_raw_text:
        builder.feed(document[tail[0] :])  # inside <script>, <title>... it is text after all
    elif tail and tail[1]:
        builder.truncated_start_tag(tail[1])
    builder.close()
    return builder.root


def _parse_lxml(document: str) -> Element | None:
    from lxml import html as lxml_html

    parser = lxml_html.HTMLParser(remove_comments=True, encoding="utf-8")
    try:
        root = lxml_html.fromstring(document, parser=parser)
    except Exception:  # lxml raises ParserError / ValueError on documents it cannot read
        return None
    return _from_lxml(root)


def _from_lxml(root: object) -> Element:
    """Copies an lxml element tree into :class:`Element` nodes."""
    top = Element(root.tag, dict(root.attrib))  # type: ignore[attr-defined]
    top.text = root.text  # type: ignore[attr-defined]
    pending = [(root, top)]
    while pending:
        source, target = pending.pop()
        for child in source:  # type: ignore[attr-defined]
            if not isinstance(child.tag, str):  # a processing instruction or entity: keep its tail
                if child.tail:
                    target.append_text(child.tail)
                continue
            node = Element(child.tag, dict(child.attrib))
            node.text, node.tail = child.text, child.tail
            target.children.append(node)
            pending.append((child, node))
    return top


try:  # the reference parser, when available
    import lxml.html  # noqa: F401

    _parse = _parse_lxml
except ImportError:  # pragma: no cover - depends on the environment
    _parse = _parse_stdlib

_FULL_DOCUMENT = re.compile(r"^\s*<(?:html|!doctype)", re.IGNORECASE)  # lxml.html's own test


def first_table(html_string: str) -> Element | None:
    """The reference's ``fromstring(...).xpath('body/table')[0]``, after the pipeline's wrapping.

    Example:
        >>> table = first_table("<table><tr><td>a<td>b</table>")
        >>> [cell.text for cell in table.children[0].children]
        ['a', 'b']
        >>> first_table("no table") is None
        True
    """
    if not _FULL_DOCUMENT.match(html_string):
        html_string = f"<html><body>{html_string}</body></html>"
    root = _parse(html_string)
    if root is None:
        return None
    for body in root.children:
        if body.tag == "body":
            for child in body.children:
                if child.tag == "table":
                    return child
    return None
