"""Code in completions: extract it, check its format, check that it runs.

A policy writes a completion (reasoning, prose, one or more fenced code blocks); the renderers want
one program. :func:`extract_code` decides which program, with these conventions:

1. Reasoning is removed first (:func:`~visalign.rewards.reasoning.strip_think`): the answer follows
   the last ``</think>`` (or ``</thinking>``), and an unclosed ``<think>`` (reasoning cut off by the
   length limit) loses everything after it, so code drafted while thinking never counts as the answer.
2. Fenced blocks: a run of three or more backticks with an optional label opens a block, the same
   run closes it. An opening fence with no closing one (a truncated generation) is a block that runs
   to the end of the text (``how="unclosed_fence"``).
3. With a ``language``, blocks labelled for it win: ``python``/``py``/``python3`` for
   ``matplotlib``, ``latex``/``tex`` for ``latex``, ``svg``/``xml`` for ``svg``, ``html``/``htm``
   for ``html``. Otherwise an unlabelled block (or one labelled ``text``/``code``/``plaintext``)
   whose content looks like that language (:func:`looks_like`). Blocks labelled for another
   language never count. Empty blocks never count.
4. **The last matching block wins** (``block="last"``, the default): reasoning models draft and then
   correct, and the answer comes after the explanation; ``block="first"`` is there for prompts that
   ask for the code first. Several blocks are never concatenated.
5. Only when the completion has no fence at all, bare code is accepted when it looks like code: it
   starts at the first line that opens a program (``import``/``from`` for Python; ``\\documentclass``,
   ``\\usepackage`` or ``\\begin{`` for LaTeX; ``<?xml``/``<svg`` for SVG; ``<!DOCTYPE html>``,
   ``<html>`` or a body tag for HTML) and ends after the last closing ``\\end{...}``, ``</svg>`` or
   ``</html>`` (Python runs to the end: prose after bare Python makes it a syntax error, which is
   the honest outcome).

Example:
    >>> completion = "<think>draft: ```python\\nplt.plot()\\n```</think>Here:\\n```python\\nimport matplotlib\\n```"
    >>> extract_code(completion, "matplotlib")
    'import matplotlib'
    >>> extract_code("```latex\\n\\\\begin{tabular}{c}a\\\\end{tabular}\\n```", "matplotlib") is None
    True
"""

from __future__ import annotations

import re
import textwrap
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from ..languages import FENCE_LABELS
from ..languages import LANGUAGES as _LANGUAGE_TABLE
from .base import Reward, RewardOutput, Sample
from .reasoning import strip_think
from .render import RenderService

__all__ = [
    "LANGUAGES",
    "CodeMatch",
    "ExecutionReward",
    "FencedBlock",
    "FormatReward",
    "RenderingReward",
    "extract_code",
    "fenced_blocks",
    "fill_code",
    "find_code",
    "looks_like",
    "normalize_language",
    "strip_think",
]

LANGUAGES: tuple[str, ...] = tuple(_LANGUAGE_TABLE)

# fence label (lower case) -> language (a renderer kind)
_LABELS: dict[str, str] = FENCE_LABELS
# labels that say nothing about the language: treated as unlabelled
_GENERIC_LABELS = frozenset(("", "text", "txt", "plaintext", "plain", "code"))

_FENCE_OPEN = re.compile(r"(`{3,})[ \t]*([^\s`]*)[^\n`]*(?:\n|$)")

# "looks like" tests, searched anywhere in a block
_LOOKS: dict[str, re.Pattern[str]] = {
    "matplotlib": re.compile(
        r"^[ \t]*(?:import[ \t]+\w|from[ \t]+[\w.]+[ \t]+import\b)|\bplt\.\w|\bmatplotlib\b|\bax\w*\.\w+\(", re.M
    ),
    "latex": re.compile(r"\\(?:documentclass|begin\{|usepackage\b|hline\b|toprule\b)"),
    "svg": re.compile(r"<svg\b", re.I),
    "html": re.compile(r"<(?:!doctype[ \t]+html|html|head|body|div|table|style|main|section)\b", re.I),
}
# where bare code starts ...
_STARTS: dict[str, re.Pattern[str]] = {
    "matplotlib": re.compile(r"^[ \t]*(?:import[ \t]+\w|from[ \t]+[\w.]+[ \t]+import\b)", re.M),
    "latex": re.compile(r"\\(?:documentclass|usepackage|begin\{)"),
    "svg": re.compile(r"<\?xml\b(?=.*?<svg\b)|<svg\b", re.I | re.S),
    "html": re.compile(
        r"<(?:!doctype[ \t]+html|html|head|body|div|table|style|main|section|header|h[1-6]|p)\b", re.I
    ),
}
# ... and where it ends (after the last match; no match: the end of the text)
_ENDS: dict[str, re.Pattern[str] | None] = {
    "matplotlib": None,
    "latex": re.compile(r"\\end\{[^}]*\}"),
    "svg": re.compile(r"</svg\s*>", re.I),
    "html": re.compile(r"</html\s*>", re.I),
}

How = Literal["fence", "unlabelled_fence", "unclosed_fence", "bare"]


def normalize_language(language: str | None) -> str | None:
    """The renderer kind for a language name or fence label (``"python"`` -> ``"matplotlib"``).

    Raises ``ValueError`` for names that map to no renderer.

    Example:
        >>> normalize_language("tex"), normalize_language("Python"), normalize_language(None)
        ('latex', 'matplotlib', None)
    """
    if language is None:
        return None
    try:
        return _LABELS[language.strip().lower()]
    except KeyError:
        raise ValueError(f"unknown code language {language!r}; choose one of {LANGUAGES} "
                         f"or a fence label among {sorted(_LABELS)}") from None


@dataclass(frozen=True)
class FencedBlock:
    """One fenced block: its label as written (lower case), its content and whether it was closed."""

    label: str
    content: str
    closed: bool

    @property
    def language(self) -> str | None:
        """The renderer kind the label names, or None (unlabelled, generic or unknown label)."""
        return _LABELS.get(self.label)


def fenced_blocks(text: str) -> list[FencedBlock]:
    """Every fenced block of ``text`` in order; an unclosed last fence runs to the end.

    Example:
        >>> [(b.label, b.content, b.closed) for b in fenced_blocks("a\\n```py\\nx = 1\\n```\\n```\\ny")]
        [('py', 'x = 1\\n', True), ('', 'y', False)]
    """
    text = text.replace("\r\n", "\n")
    blocks: list[FencedBlock] = []
    pos = 0
    while True:
        m = _FENCE_OPEN.search(text, pos)
        if m is None:
            return blocks
        fence, label = m.group(1), m.group(2).lower().strip("{}.")
        end = text.find(fence, m.end())
        if end == -1:
            blocks.append(FencedBlock(label, text[m.end():], closed=False))
            return blocks
        blocks.append(FencedBlock(label, text[m.end():end], closed=True))
        pos = end + len(fence)


def looks_like(code: str, language: str) -> bool:
    """Whether ``code`` looks like a program in ``language`` (a lenient test for unlabelled blocks).

    Example:
        >>> looks_like("fig, ax = plt.subplots()", "matplotlib"), looks_like("Hello.", "matplotlib")
        (True, False)
    """
    kind = normalize_language(language)
    assert kind is not None
    return _LOOKS[kind].search(code) is not None


@dataclass(frozen=True)
class CodeMatch:
    """The code found in a completion.

    Attributes:
        code: the program, dedented, without surrounding blank lines.
        language: the renderer kind it was matched as (None when searched without a language and
            the block said nothing).
        how: ``"fence"`` (a closed block labelled for the language), ``"unlabelled_fence"`` (a
            closed unlabelled block that looks like it), ``"unclosed_fence"`` (a block never
            closed) or ``"bare"`` (no fences: the code was recognised in plain text).
        label: the fence label as written, ``""`` for unlabelled or bare code.
    """

    code: str
    language: str | None
    how: How
    label: str = ""


def _clean(code: str) -> str:
    return textwrap.dedent(code.replace("\r\n", "\n")).strip("\n").rstrip()


def _bare(text: str, kind: str) -> tuple[int, str] | None:
    """(start, code) of bare code of ``kind`` in ``text``, or None."""
    start = _STARTS[kind].search(text)
    if start is None:
        return None
    # Python from the start of the line that opens the program (its indentation is dedented)
    begin = text.rfind("\n", 0, start.start()) + 1 if kind == "matplotlib" else start.start()
    end = len(text)
    end_pattern = _ENDS[kind]
    if end_pattern is not None:
        ends = [m.end() for m in end_pattern.finditer(text, begin)]
        if ends:
            end = ends[-1]
    code = _clean(text[begin:end])
    return (begin, code) if code else None


def find_code(completion: str | None, language: str | None = None, *,
              block: Literal["last", "first"] = "last") -> CodeMatch | None:
    """The code of ``completion`` in ``language`` with how it was found, or None (see the module docstring).

    Args:
        completion: the model output.
        language: a renderer kind (``matplotlib``, ``latex``, ``svg``, ``html``) or a fence label
            (``python``, ``tex``, ...); None accepts any block.
        block: which matching block wins when there are several: ``"last"`` (default) or ``"first"``.

    Example:
        >>> find_code("Sure.\\n```svg\\n<svg/>\\n```", "svg")
        CodeMatch(code='<svg/>', language='svg', how='fence', label='svg')
        >>> find_code("```python\\nimport matplotlib", "matplotlib").how
        'unclosed_fence'
    """
    if block not in ("last", "first"):
        raise ValueError(f"block must be 'last' or 'first', got {block!r}")
    kind = normalize_language(language)
    if not completion:
        return None
    text = strip_think(completion.replace("\r\n", "\n"))
    all_blocks = fenced_blocks(text)
    blocks = [b for b in all_blocks if b.content.strip()]
    if all_blocks:
        labelled = [b for b in blocks if kind is None or b.language == kind]
        if kind is not None and not labelled:
            labelled = [b for b in blocks if b.label in _GENERIC_LABELS and looks_like(b.content, kind)]
        if not labelled:
            return None
        chosen = labelled[-1] if block == "last" else labelled[0]
        how: How
        if not chosen.closed:
            how = "unclosed_fence"
        elif chosen.language is not None and (kind is None or chosen.language == kind):
            how = "fence"
        else:
            how = "unlabelled_fence"
        code = _clean(chosen.content)
        return CodeMatch(code, kind or chosen.language, how, chosen.label) if code else None
    found = [(hit[0], k, hit[1]) for k in ([kind] if kind else LANGUAGES) if (hit := _bare(text, k))]
    if not found:
        return None
    _, k, code = min(found, key=lambda t: t[0])  # no language: the program that starts first
    return CodeMatch(code, k, "bare")


def extract_code(completion: str | None, language: str | None = None, *,
                 block: Literal["last", "first"] = "last") -> str | None:
    """The program in ``completion`` (``language`` as in :func:`find_code`), or None when there is none.

    Conventions (think blocks, fences, last block wins, bare code) are in the module docstring.

    Example:
        >>> extract_code("```python\\nimport matplotlib.pyplot as plt\\n```\\nThen:\\n```python\\nplt.show()\\n```")
        'plt.show()'
        >>> extract_code("```python\\na = 1\\n```\\n```python\\nb = 2\\n```", block="first")
        'a = 1'
        >>> extract_code("Here you go:\\nimport matplotlib.pyplot as plt\\nplt.plot([1, 2])", "python")
        'import matplotlib.pyplot as plt\\nplt.plot([1, 2])'
        >>> extract_code("I cannot draw that.", "svg") is None
        True
    """
    match = find_code(completion, language, block=block)
    return match.code if match is not None else None


def fill_code(samples: Sequence[Sample]) -> None:
    """Set ``code`` of every sample that has a completion but no code, by :func:`extract_code`.

    The expected language is the sample's ``kind`` (any language when the kind is None or not a
    code language). Rewards that render call this before rendering, so every reward of a batch
    renders the same program.
    """
    for s in samples:
        if s.code is None and s.completion is not None:
            kind = s.kind if s.kind in _LABELS else None
            s.code = extract_code(s.completion, kind)


class RenderingReward(Reward):
    """Base of rewards that read renders: they share one :class:`RenderService`.

    A rendering reward uses the service given to it, else creates (and owns) a default one on first
    use. :meth:`bind` hands it a shared service: :class:`~visalign.rewards.composite.CompositeReward`
    binds all its children to one service so that a batch renders once. A reward that needs a
    renderer option (e.g. an instrumented matplotlib trace) asks for it in :meth:`bind`.

    Any reward, not only subclasses, can take part: the composite calls ``bind(service)`` on every
    child that has such a method.
    """

    needs_render = True

    def __init__(self, service: RenderService | None = None) -> None:
        self.service = service
        self._owns_service = False

    def bind(self, service: RenderService) -> RenderingReward:
        """Use ``service`` from now on (a service this reward created itself is closed); returns self."""
        if self.service is not service:
            if self._owns_service and self.service is not None:
                self.service.close()
            self.service = service
            self._owns_service = False
        return self

    def render_service(self) -> RenderService:
        """The service in use, created on first use when none was given."""
        if self.service is None:
            self.service = RenderService()
            self._owns_service = True
        return self.service

    def render(self, samples: Sequence[Sample]) -> None:
        """Extract code where needed and render every distinct program not rendered yet, once."""
        fill_code(samples)
        self.render_service().render(samples)

    def close(self) -> None:
        if self._owns_service and self.service is not None:
            self.service.close()
            self.service = None
            self._owns_service = False


class FormatReward(Reward):
    """``format``: 1.0 when the completion holds a code block of the expected language, else 0.0.

    The expected language is ``language`` when given, else the sample's ``kind``; with neither any
    block counts. Samples without a completion (code given directly, generated images) score None.
    Details: ``how`` the code was found (see :class:`CodeMatch`) or ``reason`` it was not:
    ``"empty completion"``, ``"no code block"``, ``"only blocks in other languages: ..."``,
    ``"empty code block"``, ``"unclosed fence"``, ``"bare code without a fence"``, ``"unknown kind"``.

    Args:
        language: the expected language (a renderer kind or fence label); default: ``Sample.kind``.
        allow_unclosed: count a block whose closing fence is missing (truncated output). Default False.
        allow_bare: count code written without any fence. Default False: the format asks for a block.
        block: ``"last"`` or ``"first"``, as in :func:`find_code` (only changes the details).

    Example:
        >>> r = FormatReward()
        >>> out = r([Sample(completion="```python\\nimport matplotlib\\n```", kind="matplotlib"),
        ...          Sample(completion="```latex\\n\\\\begin{tabular}{c}a\\\\end{tabular}\\n```", kind="matplotlib"),
        ...          Sample(code="print(1)", kind="matplotlib")])
        >>> out.scores, out.details[1]["reason"]
        ([1.0, 0.0, None], 'only blocks in other languages: latex')
    """

    name = "format"

    def __init__(self, language: str | None = None, *, allow_unclosed: bool = False, allow_bare: bool = False,
                 block: Literal["last", "first"] = "last") -> None:
        self.language = normalize_language(language)
        self.allow_unclosed = allow_unclosed
        self.allow_bare = allow_bare
        self.block = block

    def _one(self, sample: Sample) -> tuple[float | None, dict[str, Any]]:
        if sample.completion is None:
            return None, {"reason": "no completion"}
        kind = self.language or sample.kind
        if kind is not None and kind not in _LABELS:
            return None, {"reason": "unknown kind", "kind": kind}
        kind = normalize_language(kind)
        details: dict[str, Any] = {"language": kind}
        if not sample.completion.strip():
            return 0.0, {**details, "reason": "empty completion"}
        match = find_code(sample.completion, kind, block=self.block)
        if match is None:
            blocks = fenced_blocks(strip_think(sample.completion))
            others = sorted({b.language or b.label for b in blocks if b.content.strip()} - {kind, ""})
            if others:
                reason = f"only blocks in other languages: {', '.join(others)}"
            elif blocks:
                reason = "empty code block" if not any(b.content.strip() for b in blocks) else "no code block"
            else:
                reason = "no code block"
            return 0.0, {**details, "reason": reason}
        details.update(how=match.how, label=match.label)
        if match.how == "unclosed_fence" and not self.allow_unclosed:
            return 0.0, {**details, "reason": "unclosed fence"}
        if match.how == "bare" and not self.allow_bare:
            return 0.0, {**details, "reason": "bare code without a fence"}
        return 1.0, details

    def score(self, samples: list[Sample]) -> RewardOutput:
        pairs = [self._one(s) for s in samples]
        reasons = Counter(d.get("reason") for sc, d in pairs if sc == 0.0)
        metrics = {f"fail/{k}": float(v) for k, v in reasons.items() if k}
        return RewardOutput([p[0] for p in pairs], [p[1] for p in pairs], metrics)


class ExecutionReward(RenderingReward):
    """``execution``: 1.0 when the code rendered, else 0.0 with the failure in the details.

    The code is ``Sample.code``, else the code extracted from ``Sample.completion`` (:func:`fill_code`);
    it is rendered through the shared :class:`RenderService` with the sample's ``kind``. Details:
    ``error_kind`` (a renderer error kind, or ``"no_code"`` when the completion holds no code of the
    kind) and ``error``; ``seconds`` of the render. Samples with neither code nor completion (e.g.
    text-to-image samples), or with no ``kind``, score None. Metrics count failures by kind
    (``fail/<error_kind>``): an ``internal`` count means visalign or a system dependency is broken,
    not the policy.

    Args:
        service: the shared render service (default: one created on first use).
        blank_ok: count a render of one flat colour (``blank``) as a success. Default False: a
            program that draws nothing did not do the task (Visual-ERM and Design2Code treat blank
            renders as failures).

    Example:
        >>> from visalign.rewards import RenderService
        >>> with RenderService(timeout=10, workers=1) as service:
        ...     r = ExecutionReward(service=service)
        ...     out = r([Sample(completion="```svg\\n<svg xmlns='http://www.w3.org/2000/svg' width='9' height='9'>"
        ...                                "<rect width='4' height='9'/></svg>\\n```", kind="svg"),
        ...              Sample(completion="```svg\\n<svg xmlns='http://www.w3.org/2000/svg'\\n```", kind="svg"),
        ...              Sample(completion="No idea.", kind="svg")])
        >>> out.scores, out.details[1]["error_kind"], out.details[2]["error_kind"]
        ([1.0, 0.0, 0.0], 'syntax', 'no_code')
    """

    name = "execution"

    def __init__(self, service: RenderService | None = None, *, blank_ok: bool = False) -> None:
        super().__init__(service)
        self.blank_ok = blank_ok

    def score(self, samples: list[Sample]) -> RewardOutput:
        todo = [s for s in samples if s.kind is not None]
        self.render(todo)
        scores: list[float | None] = []
        details: list[dict[str, Any]] = []
        fails: Counter[str] = Counter()
        for s in samples:
            if s.kind is None or (s.code is None and s.completion is None):
                scores.append(None)
                details.append({"reason": "no renderer kind" if s.kind is None else "no code or completion"})
                continue
            res = s.rendered
            if s.code is None or res is None:
                scores.append(0.0)
                details.append({"error_kind": "no_code", "error": f"no {s.kind} code in the completion"})
                fails["no_code"] += 1
                continue
            d: dict[str, Any] = {"error_kind": res.error_kind, "error": res.error, "seconds": res.seconds}
            ok = res.ok or (self.blank_ok and res.error_kind == "blank")
            if not ok:
                fails[str(res.error_kind)] += 1
            scores.append(1.0 if ok else 0.0)
            details.append(d)
        metrics = {f"fail/{k}": float(v) for k, v in fails.items()}
        return RewardOutput(scores, details, metrics)
