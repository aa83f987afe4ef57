"""The output languages a policy writes, described once: renderer kind, eval task, file extensions,
default instruction, default eval rewards and the code-fence labels that name it.

Every other module reads these tables instead of keeping its own map (the eval's task -> kind map was
the inverse of the GRPO trainer's kind -> task map; the data generators took their instructions from
the trainers). This module imports nothing of visalign: any floor may use it.

Example:
    >>> language("chart").kind, language("latex").task, EXTENSIONS[".svg"], FENCE_LABELS["python"]
    ('matplotlib', 'table', 'svg', 'matplotlib')
    >>> DEFAULT_INSTRUCTIONS["svg"]
    'Write SVG code that reproduces this image.'
    >>> TASKS["t2i"] is None  # text-to-image: scored images, nothing rendered
    True
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["DEFAULT_INSTRUCTIONS", "DEFAULT_REWARDS", "EXTENSIONS", "FENCE_LABELS", "KIND_TO_TASK", "LANGUAGES",
           "TASKS", "Language", "language"]


@dataclass(frozen=True)
class Language:
    """One output language.

    Attributes:
        kind: the renderer that draws it (``visalign.renderers.RENDERERS``).
        task: its name as an eval / data task (``visalign eval --task``).
        extensions: file extensions ``visalign render auto`` and ``score`` map to it.
        instruction: the default instruction a prompt without one gets.
        default_rewards: what ``visalign eval`` scores when no reward is named.
        fence_labels: the (lower-case) labels of a code fence that name it.
    """

    kind: str
    task: str
    extensions: tuple[str, ...]
    instruction: str
    default_rewards: tuple[str, ...]
    fence_labels: tuple[str, ...]


LANGUAGES: dict[str, Language] = {lang.kind: lang for lang in (
    Language("matplotlib", "chart", (".py",), "Write matplotlib code that reproduces this chart.",
             ("execution", "render_similarity"), ("matplotlib", "python", "py", "python3", "py3", "ipython")),
    Language("latex", "table", (".tex",), "Write the LaTeX code of this table.",
             ("execution", "teds", "render_similarity"), ("latex", "tex")),
    Language("svg", "svg", (".svg",), "Write SVG code that reproduces this image.",
             ("execution", "render_similarity"), ("svg", "xml")),
    Language("html", "html", (".html", ".htm"), "Write the HTML code of this web page.",
             ("execution", "render_similarity"), ("html", "htm", "xhtml", "html5")),
)}

#: eval task -> renderer kind; ``t2i`` (generated images, nothing to render) maps to None
TASKS: dict[str, str | None] = {**{lang.task: lang.kind for lang in LANGUAGES.values()}, "t2i": None}
#: renderer kind -> eval task
KIND_TO_TASK: dict[str, str] = {lang.kind: lang.task for lang in LANGUAGES.values()}
#: eval task -> the rewards scored when none is named (clip / identity need a model or a face: name them)
DEFAULT_REWARDS: dict[str, list[str]] = {**{lang.task: list(lang.default_rewards) for lang in LANGUAGES.values()},
                                         "t2i": ["ocr"]}
#: renderer kind -> default instruction
DEFAULT_INSTRUCTIONS: dict[str, str] = {lang.kind: lang.instruction for lang in LANGUAGES.values()}
#: file extension (lower case, with the dot) -> renderer kind
EXTENSIONS: dict[str, str] = {ext: lang.kind for lang in LANGUAGES.values() for ext in lang.extensions}
#: code-fence label (lower case) -> renderer kind
FENCE_LABELS: dict[str, str] = {label: lang.kind for lang in LANGUAGES.values() for label in lang.fence_labels}


def language(name: str) -> Language:
    """The language of a renderer kind or an eval task name.

    Example:
        >>> language("table").kind
        'latex'
    """
    if name in LANGUAGES:
        return LANGUAGES[name]
    for lang in LANGUAGES.values():
        if lang.task == name:
            return lang
    raise ValueError(f"unknown language {name!r}: a renderer kind ({', '.join(LANGUAGES)}) or a task "
                     f"({', '.join(KIND_TO_TASK.values())})")
