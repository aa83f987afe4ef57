"""Seeded synthetic chart-to-code data: short, regular matplotlib programs and their renders.

The programs are what a tiny VLM can learn from scratch on a CPU (FIELD_NOTES: a 1.6 M-parameter
Qwen2-VL learns syntax, EOS and chart type within minutes when the code is ~20-30 tokens): one
``import`` line, one plotting call with small integer values and a colour from a fixed palette, and
optional title / axis labels / legend drawn from small word lists. The figure size and resolution are
not in the code: the renderer imposes them (:data:`CHART_RENDER_OPTIONS`), and the rewards must
render generated code with exactly the same options so a perfect program scores SSIM 1.0.

Kinds: ``bar``, ``line`` (the default set, what FIELD_NOTES' tiny model learns in minutes),
``scatter``, ``pie`` and ``multi`` (two panels side by side).

Example:
    >>> print(random_chart_code(random.Random(0), "bar"))
    import matplotlib.pyplot as plt
    plt.bar(range(6), [1, 5, 9, 8, 7, 5], color='cyan')
    >>> codes = chart_corpus(50, seed=0)
    >>> len(codes), len(set(codes)), all(c.startswith("import matplotlib.pyplot as plt") for c in codes)
    (50, 50, True)
"""

from __future__ import annotations

import random
from collections.abc import Collection, Sequence
from typing import Any

from ..languages import DEFAULT_INSTRUCTIONS
from ._synthetic import render_codes, rendered_rows, unique_codes

__all__ = [
    "CHART_KINDS",
    "CHART_RENDER_OPTIONS",
    "COLOURS",
    "DEFAULT_CHART_KINDS",
    "HEADER",
    "LABEL_WORDS",
    "TITLE_WORDS",
    "chart_corpus",
    "chart_dataset",
    "chart_whole_words",
    "plot_call",
    "random_chart_code",
    "render_charts",
]

#: Renderer options for the references and for the rewards: 1.5 in x 1.5 in at 64 dpi = 96 x 96 px,
#: which the tiny VLM's processor takes as 36 image tokens (patch 8, merge 2).
CHART_RENDER_OPTIONS: dict[str, Any] = {"dpi": 64, "figsize": (1.5, 1.5)}

#: Every program starts with this line (``extract_code`` finds bare code by its ``import``).
HEADER = "import matplotlib.pyplot as plt"

CHART_KINDS: tuple[str, ...] = ("bar", "line", "scatter", "pie", "multi")
#: What a ~1.6 M-parameter model learns in a few CPU minutes (FIELD_NOTES used bar / line).
DEFAULT_CHART_KINDS: tuple[str, ...] = ("bar", "line")

#: Named colours that are far apart at 96 x 96 pixels.
COLOURS: tuple[str, ...] = ("red", "blue", "green", "orange", "purple", "black", "gray", "cyan")
TITLE_WORDS: tuple[str, ...] = ("Sales", "Cost", "Users", "Score", "Growth", "Revenue")
LABEL_WORDS: tuple[str, ...] = ("Year", "Month", "Day", "Value", "Count", "Price")
#: Values are integers in this range (one digit: one token).
VALUE_RANGE: tuple[int, int] = (1, 9)
#: Number of bars / points / slices.
LENGTH_RANGE: tuple[int, int] = (3, 7)


def _values(rng: random.Random, n: int | None = None) -> list[int]:
    n = n if n is not None else rng.randint(*LENGTH_RANGE)
    return [rng.randint(*VALUE_RANGE) for _ in range(n)]


def plot_call(kind: str, values: Sequence[int], colour: str | None = None, target: str = "plt",
              label: str | None = None) -> str:
    """The generator's plotting call of ``kind`` (bar, line, scatter, pie) on ``target`` (``plt`` or an axes
    name); a pie takes no colour (matplotlib's colour cycle: per-slice colours would double the code).

    Example:
        >>> plot_call("bar", [3, 1, 2], "red")
        "plt.bar(range(3), [3, 1, 2], color='red')"
    """
    values = list(values)
    extra = f", label={label!r}" if label is not None else ""
    if kind == "bar":
        return f"{target}.bar(range({len(values)}), {values}, color={colour!r}{extra})"
    if kind == "line":
        return f"{target}.plot({values}, color={colour!r}{extra})"
    if kind == "scatter":
        return f"{target}.scatter(range({len(values)}), {values}, color={colour!r}{extra})"
    if kind == "pie":
        return f"{target}.pie({values})"
    raise ValueError(f"unknown chart kind {kind!r}; choose from {CHART_KINDS}")


def _call(rng: random.Random, kind: str, target: str, legend: bool) -> str:
    """One random plotting call on ``target`` (the draws in the generator's fixed order: values, label, colour)."""
    values = _values(rng)
    label = rng.choice(TITLE_WORDS) if legend else None
    colour = rng.choice(COLOURS) if kind != "pie" else None  # plot_call refuses an unknown kind
    return plot_call(kind, values, colour, target, label)


def random_chart_code(rng: random.Random, kind: str, *, title_prob: float = 0.0, label_prob: float = 0.0,
                      legend_prob: float = 0.0) -> str:
    """One chart program of ``kind`` drawn from ``rng``.

    ``title_prob``, ``label_prob`` (both axis labels) and ``legend_prob`` (a ``label=`` and
    ``plt.legend()``; not for pie) are the chances of each optional element. The code ends without a
    newline, as the policy writes it before EOS.

    Example:
        >>> print(random_chart_code(random.Random(3), "multi", title_prob=1.0))
        import matplotlib.pyplot as plt
        fig, (a, b) = plt.subplots(1, 2)
        a.bar(range(7), [9, 3, 6, 8, 2, 1, 8], color='purple')
        b.scatter(range(4), [4, 8, 9, 9], color='cyan')
        fig.suptitle('Cost')
    """
    if kind not in CHART_KINDS:
        raise ValueError(f"unknown chart kind {kind!r}; choose from {CHART_KINDS}")
    lines = [HEADER]
    if kind == "multi":
        lines.append("fig, (a, b) = plt.subplots(1, 2)")
        for axis in ("a", "b"):
            lines.append(_call(rng, rng.choice(("bar", "line", "scatter")), axis, legend=False))
        if rng.random() < title_prob:
            lines.append(f"fig.suptitle({rng.choice(TITLE_WORDS)!r})")
        return "\n".join(lines)
    legend = kind != "pie" and rng.random() < legend_prob
    lines.append(_call(rng, kind, "plt", legend))
    if rng.random() < title_prob:
        lines.append(f"plt.title({rng.choice(TITLE_WORDS)!r})")
    if kind != "pie" and rng.random() < label_prob:
        x, y = rng.sample(LABEL_WORDS, 2)
        lines += [f"plt.xlabel({x!r})", f"plt.ylabel({y!r})"]
    if legend:
        lines.append("plt.legend()")
    return "\n".join(lines)


def _unique_codes(n: int, seed: int, kinds: Sequence[str], exclude: Collection[str], options: dict[str, float],
                  ) -> list[tuple[str, str]]:
    if not kinds:
        raise ValueError("kinds is empty")
    for kind in kinds:
        if kind not in CHART_KINDS:
            raise ValueError(f"unknown chart kind {kind!r}; choose from {CHART_KINDS}")
    codes = unique_codes(n, seed, exclude, lambda rng, i: random_chart_code(rng, kinds[i % len(kinds)], **options),
                         f"charts of kinds {tuple(kinds)}")
    return [(kinds[i % len(kinds)], code) for i, code in enumerate(codes)]  # balanced kinds


def chart_corpus(n: int, seed: int = 0, kinds: Sequence[str] = CHART_KINDS, *, title_prob: float = 0.3,
                 label_prob: float = 0.2, legend_prob: float = 0.2) -> list[str]:
    """``n`` distinct chart programs (no rendering), e.g. to train a tokenizer on.

    Example:
        >>> chart_corpus(2, seed=1, kinds=("line",))[0].splitlines()[1]
        "plt.plot([5, 2, 8], color='cyan', label='Score')"
    """
    opts = {"title_prob": title_prob, "label_prob": label_prob, "legend_prob": legend_prob}
    return [code for _, code in _unique_codes(n, seed, kinds, (), opts)]


def chart_whole_words() -> list[str]:
    """Strings a chart tokenizer should keep as single tokens: the header line, the plotting calls,
    quoted colours and words, and ``", 5"``-style list items. With them a bar or line chart is ~15
    tokens, a two-panel one ~30.

    Example:
        >>> "'red'" in chart_whole_words() and HEADER in chart_whole_words()
        True
    """
    words = [HEADER, "plt.bar(range(", "plt.plot([", "plt.scatter(range(", "plt.pie([",
             "fig, (a, b) = plt.subplots(1, 2)", "a.bar(range(", "a.plot([", "a.scatter(range(",
             "b.bar(range(", "b.plot([", "b.scatter(range(", "fig.suptitle(", "plt.title(", "plt.xlabel(",
             "plt.ylabel(", "plt.legend()", ", color=", ", label=", "), ["]
    words += [repr(w) for w in (*COLOURS, *TITLE_WORDS, *LABEL_WORDS)]
    words += [f", {v}" for v in range(VALUE_RANGE[0], VALUE_RANGE[1] + 1)]  # a list item is one token
    return words


def render_charts(codes: Sequence[str], *, workers: int = 2, timeout: float = 20.0,
                  render_options: dict[str, Any] | None = None) -> list[Any]:
    """Render ``codes`` in the sandboxed matplotlib renderer with :data:`CHART_RENDER_OPTIONS`;
    returns the ``RenderResult`` of each program."""
    return render_codes("matplotlib", codes, CHART_RENDER_OPTIONS, render_options, workers, timeout)


def _row(code: str, image: Any, chart_type: str, prompt: str) -> dict[str, Any]:
    return {"code": code, "image": image, "kind": "matplotlib", "prompt": prompt, "chart_type": chart_type}


def chart_dataset(n: int, seed: int = 0, kinds: Sequence[str] = DEFAULT_CHART_KINDS, *, render: bool = True,
                  workers: int = 2, exclude: Collection[str] = (), title_prob: float = 0.3,
                  label_prob: float = 0.0, legend_prob: float = 0.0, timeout: float = 20.0,
                  ) -> list[dict[str, Any]]:
    """``n`` distinct synthetic charts: ``dict(code, image, kind, prompt, chart_type)``.

    ``kind`` is the renderer kind (``"matplotlib"``, as in every data row and reward sample);
    ``chart_type`` is the kind of chart drawn (one of ``kinds``).

    With ``render=True`` the programs are rendered in one batch by the sandboxed renderer with
    :data:`CHART_RENDER_OPTIONS` (96 x 96 RGB images); a program that fails to render is replaced by a
    new draw. With ``render=False`` ``image`` is None. Codes in ``exclude`` (e.g. a training set) are
    never drawn, so a held-out set made with another seed and ``exclude=train_codes`` is disjoint.

    Example:
        >>> rows = chart_dataset(2, seed=0, workers=1)
        >>> [r["chart_type"] for r in rows], rows[0]["kind"], rows[0]["image"].size
        (['bar', 'line'], 'matplotlib', (96, 96))
    """
    opts = {"title_prob": title_prob, "label_prob": label_prob, "legend_prob": legend_prob}
    prompt = DEFAULT_INSTRUCTIONS["matplotlib"]
    drawn = _unique_codes(n, seed, kinds, exclude, opts)
    if not render:
        return [_row(code, None, kind, prompt) for kind, code in drawn]
    return rendered_rows(n, seed, exclude, drawn, lambda k, sd, seen: _unique_codes(k, sd, kinds, seen, opts),
                         lambda d: d[1], lambda codes: render_charts(codes, workers=workers, timeout=timeout),
                         lambda d, image: _row(d[1], image, d[0], prompt), "charts", "matplotlib")
