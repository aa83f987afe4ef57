"""Judge answers as text: remove the reasoning, find the JSON, read the score or the verdict (pure functions).

:func:`strip_reasoning` and :func:`first_json_object` are general; the Visual-ERM error-list parser and
the ``Score: N/M`` reader turn an answer into a :class:`Judgement` for the presets
(:mod:`visalign.rewards.judge.presets`); :func:`parse_verdict` reads R1-Reward's
``<think>...</think><answer>VERDICT</answer>`` for the ``trained_judge`` preset and for the ``verdict`` /
``verdict_format`` rewards (:mod:`visalign.rewards.verdict`), one parser for both.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..reasoning import strip_think

__all__ = ["NO_VERDICT_REASONS", "Judgement", "Verdict", "first_json_object", "format_ok", "normalise_verdict",
           "parse_out_of", "parse_verdict", "parse_visual_erm", "strip_reasoning", "visual_erm_score"]

# a fence with its info string (```json, ```python); the content between fences is kept
_FENCE = re.compile(r"```[A-Za-z0-9_+.-]*")


def strip_reasoning(text: str) -> str:
    """Remove reasoning blocks and code fences from a judge's answer, keeping the answer.

    * reasoning goes first, with the rule of :func:`~visalign.rewards.reasoning.strip_think`: the
      answer follows the last ``</think>`` (or ``</thinking>``, any case; chat templates that open the
      block in the prompt generate only the closing tag), and a ``<think>`` that is never closed (a
      truncated answer) removes everything after it;
    * code fences (```` ``` ```` with an optional info string such as ``json``) are removed, their
      contents kept.

    Example:
        >>> strip_reasoning('<think>the bars differ</think>```json\\n{"errors": []}\\n```')
        '{"errors": []}'
        >>> strip_reasoning('reasoning without an opening tag</think>Score: 7/10')
        'Score: 7/10'
        >>> strip_reasoning('<think>cut off before the answer')
        ''
    """
    return _FENCE.sub("", strip_think(text)).strip()


_CLOSER = {"{": "}", "[": "]"}


def _scan_balanced(text: str, start: int, memo: dict[int, int | None]) -> None:
    """Match brackets from ``text[start]`` (outside JSON strings) and record, for every opening
    bracket met outside a string, the index of its closing bracket (None when unmatched)."""
    stack: list[int] = []
    in_string = escaped = False
    for i in range(start, len(text)):
        c = text[i]
        if in_string:
            if escaped:
                escaped = False
            elif c == "\\":
                escaped = True
            elif c == '"':
                in_string = False
        elif c == '"':
            in_string = True
        elif c in _CLOSER:
            stack.append(i)
        elif c in "}]":
            if _CLOSER[text[stack[-1]]] != c:  # a mismatched closer: nothing open here is valid JSON
                break
            memo[stack.pop()] = i
            if not stack:
                return
    for j in stack:
        memo[j] = None


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


_STRICT_JSON = json.JSONDecoder(parse_constant=_reject_constant)


def first_json_object(text: str, *, arrays: bool = False) -> dict[str, Any] | list[Any] | None:
    """The first balanced ``{...}`` (or ``[...]`` when ``arrays``) in ``text`` that is valid JSON.

    Brackets are matched outside JSON strings (escapes respected), so braces inside string values do
    not count. A balanced candidate that is not valid JSON is skipped and the search goes on from the
    next bracket (a candidate nested too deep for Python's decoder is skipped with all it contains).
    Strict JSON only: nothing is ``eval``-ed, ``NaN`` / ``Infinity`` are rejected.

    Args:
        text: the answer (usually after :func:`strip_reasoning`).
        arrays: also accept a top-level ``[...]``.

    Returns:
        the decoded dict (or list), or None when there is none.

    Example:
        >>> first_json_object('The answer is {"errors": [{"note": "a } in a string"}]} and {"x": 1}')
        {'errors': [{'note': 'a } in a string'}]}
        >>> first_json_object('{not json} then {"ok": true}')
        {'ok': True}
        >>> first_json_object('[1, 2]') is None, first_json_object('[1, 2]', arrays=True)
        (True, [1, 2])
    """
    openers = "{[" if arrays else "{"
    memo: dict[int, int | None] = {}
    skip_until = -1
    for start, c in enumerate(text):
        if c not in openers or start <= skip_until:
            continue
        if start not in memo:
            _scan_balanced(text, start, memo)
        end = memo.get(start)
        if end is None:
            continue
        try:  # decode in place (no copy of the candidate); strings were matched the same way
            value, stop = _STRICT_JSON.raw_decode(text, start)
        except RecursionError:  # nested too deep to decode: skip it with everything inside
            skip_until = end
            continue
        except ValueError:
            continue
        if stop != end + 1:
            continue
        if isinstance(value, dict) or (arrays and isinstance(value, list)):
            return value
    return None


@dataclass
class Judgement:
    """A parsed judge answer.

    Attributes:
        score: the reward (the preset's ``parse_failure_score`` when parsing failed).
        parse_failed: True when the answer did not follow the preset's format.
        parsed: what was read, for details (e.g. ``errors`` and ``severity_sum``, or ``raw_score``).
        error: why parsing failed, else None.
        reason: why parsing failed as a short code for counting (a verdict's
            :data:`NO_VERDICT_REASONS`), else None.
    """

    score: float
    parse_failed: bool = False
    parsed: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    reason: str | None = None


def _clip(x: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, x))


def _number(value: Any) -> float | None:
    """A finite number from a JSON value (numbers and numeric strings), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def _short(value: Any, limit: int = 300) -> Any:
    if isinstance(value, str) and len(value) > limit:
        return value[:limit] + "…"
    return value


# Visual-ERM: reward = 1 + clip(1 - Σseverity / 50, 0, 1); a parse failure weighs severity 25.
_ERM_SEVERITY_SCALE = 50.0
_ERM_PARSE_FAILURE_SEVERITY = 25.0
_ERM_MAX_ERRORS_IN_DETAILS = 50


def visual_erm_score(severity_sum: float) -> float:
    return 1.0 + _clip(1.0 - severity_sum / _ERM_SEVERITY_SCALE, 0.0, 1.0)


def parse_visual_erm(text: str) -> Judgement:
    failure = visual_erm_score(_ERM_PARSE_FAILURE_SEVERITY)
    answer = strip_reasoning(text)
    value = first_json_object(answer)  # Visual-ERM's rule: the first balanced {...}
    if not (isinstance(value, dict) and "errors" in value):
        first = first_json_object(answer, arrays=True)
        if isinstance(first, list):  # a bare list of errors (whose items are the objects found)
            value = first
    if isinstance(value, dict):
        if "errors" not in value:
            return Judgement(failure, True, error='the JSON object has no "errors" key')
        errors = value["errors"]
    elif isinstance(value, list):  # a bare list of errors: accepted
        errors = value
    else:
        return Judgement(failure, True, error="no JSON object in the answer")
    if not isinstance(errors, list):
        return Judgement(failure, True, error='"errors" is not a list')
    kept: list[dict[str, Any]] = []
    total = 0.0
    for k, err in enumerate(errors):
        if not isinstance(err, dict):
            return Judgement(failure, True, error=f"error {k} is not an object")
        severity = _number(err.get("severity"))
        if severity is None:
            return Judgement(failure, True, error=f"error {k} has no numeric severity")
        severity = _clip(severity, 1.0, 3.0)
        total += severity
        if len(kept) < _ERM_MAX_ERRORS_IN_DETAILS:
            kept.append({"category": _short(err.get("category")), "severity": severity,
                         "location": _short(err.get("location")), "description": _short(err.get("description"))})
    return Judgement(visual_erm_score(total), parsed={"errors": kept, "n_errors": len(errors),
                                                      "severity_sum": total})


# "Score: 87/100", "**Score:** 87 / 100", "Final score: 87.5/100"; the last one counts
_SCORE_OUT_OF = re.compile(r"score\s*\**\s*[:：=]\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*/\s*(\d+(?:\.\d+)?)", re.I)
# the same with "/M" optional (pointwise judges often write just "Score: 4")
_SCORE_OPTIONAL_SCALE = re.compile(
    r"score\s*\**\s*[:：=]\s*\**\s*(-?\d+(?:\.\d+)?)(?:\s*\**\s*/\s*(\d+(?:\.\d+)?))?", re.I)


def parse_out_of(text: str, low: float, high: float, default_scale: float | None,
                  failure: float) -> Judgement:
    """Read the last ``Score: N/M`` (``/M`` optional when ``default_scale`` is given)."""
    answer = strip_reasoning(text)
    pattern = _SCORE_OUT_OF if default_scale is None else _SCORE_OPTIONAL_SCALE
    matches = list(pattern.finditer(answer))
    if not matches:
        return Judgement(failure, True, error=f"no 'Score: N/{high:g}' in the answer")
    m = matches[-1]
    n = float(m.group(1))
    scale = float(m.group(2)) if m.group(2) is not None else default_scale
    if scale != high:
        return Judgement(failure, True, parsed={"raw_score": n}, error=f"score out of {scale:g}, expected {high:g}")
    if not low <= n <= high:
        return Judgement(failure, True, parsed={"raw_score": n}, error=f"score {n:g} outside {low:g}..{high:g}")
    return Judgement(n / high, parsed={"raw_score": n})


# ------------------------------------------------------------------------------------------- verdicts
# R1-Reward's format: ``<think>reasoning</think><answer>VERDICT</answer>``, what a judge trained by
# ``visalign train reward --mode judge`` writes; the verdict / verdict_format rewards and the trained_judge
# preset of vlm_judge read it with this one parser.

#: R1-Reward's format: the whole answer is one think block then one answer block, nothing around them.
_FORMAT = re.compile(r"^<think>.*?</think><answer>.*?</answer>$", re.S)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.S)
_THINK = re.compile(r"<think>(.*?)</think>", re.S)
_TAGS = ("<think>", "</think>", "<answer>", "</answer>")

#: Why a verdict is missing (:attr:`Verdict.reason`), one code per way an answer fails.
NO_VERDICT_REASONS = ("no_answer", "no_answer_block", "empty_answer", "not_a_choice", "several_choices")


def format_ok(text: str) -> bool:
    """R1-Reward's ``verify_format``: ``<think>...</think><answer>...</answer>`` and nothing else (the
    answer stripped of surrounding whitespace), each of the four tags exactly once. Counting the opening
    tags only passed ``<think>a</answer>b</think></think><answer>1</answer>``, a broken answer a tiny judge
    learned to write while the format reward still paid for it.

    Example:
        >>> format_ok("<think>a</think><answer>1</answer>"), format_ok("<think>a</think> <answer>1</answer>")
        (True, False)
        >>> format_ok("<think>a</answer>b</think></think><answer>1</answer>")
        False
    """
    text = text.strip()
    return bool(_FORMAT.match(text)) and all(text.count(tag) == 1 for tag in _TAGS)


@dataclass(frozen=True)
class Verdict:
    """A parsed judge answer.

    Attributes:
        answer: the verdict, normalised (lower case, one of ``choices`` when they were given; a number's
            text for numeric verdicts), or None when there is none.
        reasoning: the text of the first ``<think>`` block ('' without one).
        format_ok: :func:`format_ok` of the answer.
        error: why ``answer`` is None, in words, else None.
        reason: why ``answer`` is None, as one of :data:`NO_VERDICT_REASONS` (for counting), else None.
    """

    answer: str | None
    reasoning: str
    format_ok: bool
    error: str | None = None
    reason: str | None = None


def normalise_verdict(text: str) -> str:
    """A verdict as compared: spaces collapsed, surrounding quotes / ``*`` / end punctuation dropped,
    lower case.

    Example:
        >>> normalise_verdict(' **Image  2**. ')
        'image 2'
    """
    return re.sub(r"\s+", " ", text.strip().strip("*\"'`.:;!").strip()).lower()


def parse_verdict(text: str | None, choices: Sequence[str] | None = None) -> Verdict:
    """Read the verdict of a judge's answer: the content of the first ``<answer>...</answer>``.

    With ``choices``, the verdict is the choice the content equals (case, spaces, quotes, ``*`` and end
    punctuation ignored), or the one choice it names as a whole word ("Image 1" -> ``1``); content that
    names none or several is no verdict. Without ``choices`` the normalised content is the verdict.
    No ``<answer>`` block is no verdict: nothing is guessed from the reasoning (R1-Reward's inference
    script falls back to the last 1 / 2 in the text; a reward must not pay for that).

    Example:
        >>> parse_verdict("<think>x</think><answer> **Good**. </answer>", ["good", "bad"]).answer
        'good'
        >>> parse_verdict("<think>x</think><answer>Image 2</answer>", ["1", "2"]).answer
        '2'
        >>> v = parse_verdict("image 1 is better", ["1", "2"]); v.error, v.reason
        ('no <answer>...</answer> block', 'no_answer_block')
    """
    if text is None:
        return Verdict(None, "", False, "no answer", "no_answer")
    think = _THINK.search(text)
    reasoning = think.group(1).strip() if think else ""
    ok = format_ok(text)
    m = _ANSWER.search(text)
    if m is None:
        return Verdict(None, reasoning, ok, "no <answer>...</answer> block", "no_answer_block")
    content = normalise_verdict(m.group(1))
    if not content:
        return Verdict(None, reasoning, ok, "empty <answer> block", "empty_answer")
    if choices is None:
        return Verdict(content, reasoning, ok)
    allowed = [normalise_verdict(c) for c in choices]
    if content in allowed:
        return Verdict(content, reasoning, ok)
    named = [c for c in allowed if re.search(rf"(?<![\w.]){re.escape(c)}(?![\w.])", content)]
    if len(named) == 1:
        return Verdict(named[0], reasoning, ok)
    if named:
        return Verdict(None, reasoning, ok, f"answer {content[:60]!r} names several choices {allowed}",
                       "several_choices")
    return Verdict(None, reasoning, ok, f"answer {content[:60]!r} is not one of {allowed}", "not_a_choice")
