"""Reasoning in completions: where a model's thinking ends and its answer begins.

One rule, used by code extraction (:func:`~visalign.rewards.code.extract_code`) and by judge answers
(:func:`~visalign.rewards.judge.strip_reasoning`):

1. **The answer follows the last closing tag** (``</think>`` or ``</thinking>``, any case); everything
   up to it is reasoning. This covers R1-style completions whose chat template opened the block in
   the prompt (only ``</think>`` is generated), reasoning that writes a tag while it thinks about the
   output format (a ``</think>`` or ``<think>`` inside the reasoning never ends it early), and a model
   that thinks again after a partial answer (its answer is what it wrote after it last stopped
   thinking).
2. **An opening tag that is never closed** (reasoning cut off by the length limit) drops everything
   from it on.

So text a model wrote while thinking never counts as its answer: in RL a policy keeps whatever scores,
and a draft that leaks out of the reasoning would be scored as if it were the answer.
"""

from __future__ import annotations

import re

__all__ = ["strip_think"]

_THINK_CLOSE = re.compile(r"</(?:think|thinking)>", re.I)
_THINK_OPEN = re.compile(r"<(?:think|thinking)>", re.I)


def strip_think(text: str) -> str:
    """``text`` without its reasoning: what follows the last ``</think>``, up to an unclosed ``<think>``.

    Example:
        >>> strip_think("<think>hmm</think>answer"), strip_think("hmm</think>answer"), strip_think("a<think>b")
        ('answer', 'answer', 'a')
        >>> strip_think("<think>end with </think> then</think>Score: 7/10")
        'Score: 7/10'
    """
    closes = list(_THINK_CLOSE.finditer(text))
    if closes:
        text = text[closes[-1].end():]
    opened = _THINK_OPEN.search(text)
    if opened:
        text = text[:opened.start()]
    return text
