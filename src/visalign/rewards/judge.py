"""The ``vlm_judge`` reward: a vision-language model looks at images and judges them.

Three layers, each usable alone:

* **parsing** (pure functions): :func:`strip_reasoning`, :func:`first_json_object`, :func:`parse_score`;
* **presets** (:class:`JudgePreset`): the prompt, which images the judge sees in which order, and how
  its answer becomes a score: ``visual_erm`` (Visual-ERM error list), ``chartmimic`` (ChartMimic's
  100-point rubric) and ``pointwise`` (text-image alignment, UnifiedReward / Flow-GRPO style);
* **backends** (:class:`JudgeBackend`): :class:`OpenAIJudgeBackend` for any OpenAI-compatible
  ``/v1/chat/completions`` server (vLLM, SGLang, hosted APIs), :class:`TransformersJudgeBackend` for a
  local model, :class:`CallableJudgeBackend` for a Python function (replays, tests).

:class:`VlmJudgeReward` ties them together. Conventions (the same for every preset unless said):

* images reach the judge in the preset's order, each after a short text label; ``visual_erm`` and
  ``chartmimic`` send the **reference first, then the generated image** (ChartMimic measured 3-5 points
  of drift when the order is swapped), ``pointwise`` sends the generated image, then the prompt;
* a sample whose code is missing, failed to render, or (``visual_erm`` / ``chartmimic``) whose image
  is one flat colour gets the preset's ``no_output_score`` (0.0) **without a judge call**; its details
  say so (``judged: False`` and a ``reason``);
* a sample the preset cannot judge at all (no reference image, no prompt for ``pointwise``) scores
  None, "not applicable";
* an answer that does not parse gets the preset's ``parse_failure_score`` and is counted in
  ``metrics["parse_failures"]``;
* a request that still fails after every retry gets ``failure_score``, by default the preset's
  ``parse_failure_score``: the judge said nothing usable either way, and an infrastructure failure
  says nothing about the sample, so it should not push a rendered sample below a failed render;
  it is counted in ``metrics["request_failures"]`` and the batch goes on.
"""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import http.client
import io
import json
import logging
import math
import os
import random
import re
import socket
import ssl
import threading
import time
import urllib.parse
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..renderers.base import is_blank
from .base import RewardOutput, Sample
from .code import RenderingReward
from .render import RenderService

logger = logging.getLogger(__name__)

__all__ = [
    "PRESETS",
    "CallableJudgeBackend",
    "JudgeBackend",
    "JudgePreset",
    "JudgeRequest",
    "JudgeResponse",
    "Judgement",
    "OpenAIJudgeBackend",
    "Skip",
    "TransformersJudgeBackend",
    "VlmJudgeReward",
    "chartmimic_preset",
    "first_json_object",
    "get_preset",
    "parse_score",
    "pointwise_preset",
    "strip_reasoning",
    "trained_judge_preset",
    "visual_erm_preset",
]

# --------------------------------------------------------------------------------------------------
# Parsing
# --------------------------------------------------------------------------------------------------

_THINK_BLOCK = re.compile(r"<think>.*?</think>", re.S | re.I)
_THINK_OPEN = re.compile(r"<think>", re.I)
_THINK_CLOSE = re.compile(r"</think>", re.I)
# a fence with its info string (```json, ```python); the content between fences is kept
_FENCE = re.compile(r"```[A-Za-z0-9_+.-]*")


def strip_reasoning(text: str) -> str:
    """Remove reasoning blocks and code fences from a judge's answer, keeping the answer.

    * every complete ``<think>...</think>`` block (any case) is removed;
    * a ``</think>`` with no opening tag (chat templates that open the block in the prompt) removes
      everything before it;
    * a ``<think>`` that is never closed (a truncated answer) removes everything after it;
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
    closes = list(_THINK_CLOSE.finditer(text))
    first_open = _THINK_OPEN.search(text)
    if closes and (first_open is None or closes[0].start() < first_open.start()):
        text = text[closes[0].end():]
    text = _THINK_BLOCK.sub("", text)
    dangling = _THINK_OPEN.search(text)
    if dangling is not None:
        text = text[:dangling.start()]
    text = _THINK_CLOSE.sub("", text)
    return _FENCE.sub("", text).strip()


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
    """

    score: float
    parse_failed: bool = False
    parsed: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


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


def _visual_erm_score(severity_sum: float) -> float:
    return 1.0 + _clip(1.0 - severity_sum / _ERM_SEVERITY_SCALE, 0.0, 1.0)


def _parse_visual_erm(text: str) -> Judgement:
    failure = _visual_erm_score(_ERM_PARSE_FAILURE_SEVERITY)
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
    return Judgement(_visual_erm_score(total), parsed={"errors": kept, "n_errors": len(errors),
                                                      "severity_sum": total})


# "Score: 87/100", "**Score:** 87 / 100", "Final score: 87.5/100"; the last one counts
_SCORE_OUT_OF = re.compile(r"score\s*\**\s*[:：=]\s*\**\s*(-?\d+(?:\.\d+)?)\s*\**\s*/\s*(\d+(?:\.\d+)?)", re.I)
# the same with "/M" optional (pointwise judges often write just "Score: 4")
_SCORE_OPTIONAL_SCALE = re.compile(
    r"score\s*\**\s*[:：=]\s*\**\s*(-?\d+(?:\.\d+)?)(?:\s*\**\s*/\s*(\d+(?:\.\d+)?))?", re.I)


def _parse_out_of(text: str, low: float, high: float, default_scale: float | None,
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



# --------------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------------

ImageRole = str  # "reference" or "generated"
_LABELS = {"reference": "Reference image:", "generated": "Generated image:"}


@dataclass
class JudgeRequest:
    """One conversation for the judge: a system prompt and the user turn's parts, in order.

    ``parts`` mixes text (``str``) and images (``PIL.Image``); backends keep the order.

    Example:
        >>> r = JudgeRequest(parts=["Rate this image.", Image.new("RGB", (4, 4))])
        >>> r.images[0].size, r.text
        ((4, 4), 'Rate this image.')
    """

    parts: list[str | Image.Image]
    system: str | None = None

    @property
    def images(self) -> list[Image.Image]:
        return [p for p in self.parts if isinstance(p, Image.Image)]

    @property
    def text(self) -> str:
        return "\n".join(p for p in self.parts if isinstance(p, str))


@dataclass
class Skip:
    """A sample that is not sent to the judge: ``score`` (None = not applicable) and why."""

    score: float | None
    reason: str


@dataclass(frozen=True)
class JudgePreset:
    """How a judge is asked and how its answer is scored.

    Attributes:
        name: the preset's name (in details).
        instruction: the text after the images; ``{prompt}`` and ``{scale}`` are substituted.
        images: the images the judge sees, in order: ``("reference", "generated")`` or ``("generated",)``.
        parse: answer text → :class:`Judgement`.
        parse_failure_score: the score of an answer that does not parse.
        no_output_score: the score of a sample with no code, a failed render or (``skip_blank``) a
            one-colour image; it is given without calling the judge.
        skip_blank: treat a one-colour generated image like a failed render.
        needs_prompt: the instruction uses the sample's prompt (None without one).
        system: an optional system prompt.
        scale: the scale of the score the judge gives (pointwise), for ``{scale}``.
        labels: put a short text label before each image (False: the images alone, then the
            instruction, as the GRPO judge trainer prompts a judge).
    """

    name: str
    instruction: str
    images: tuple[ImageRole, ...]
    parse: Callable[[str], Judgement]
    parse_failure_score: float
    no_output_score: float = 0.0
    skip_blank: bool = True
    needs_prompt: bool = False
    system: str | None = None
    scale: float | None = None
    labels: bool = True

    def prepare(self, sample: Sample) -> JudgeRequest | Skip:
        """The request for ``sample``, or a :class:`Skip` with its score and reason.

        ``sample.rendered`` must already be filled for samples that carry code
        (:class:`VlmJudgeReward` does it).
        """
        reference = None
        if "reference" in self.images:
            reference = sample.target_image
            if reference is None:
                why = "no reference image"
                if sample.reference_rendered is not None and not sample.reference_rendered.ok:
                    why = f"the reference failed to render ({sample.reference_rendered.error_kind})"
                return Skip(None, why)
        if self.needs_prompt and not sample.prompt:
            return Skip(None, "no prompt")
        generated = sample.generated_image
        if generated is None:
            if sample.code is None or not sample.code.strip():
                return Skip(self.no_output_score, "no code and no image: not judged")
            if sample.rendered is None:
                why = "no renderer kind" if sample.kind is None else "not rendered"
                return Skip(self.no_output_score, f"the code was not rendered ({why}): not judged")
            return Skip(self.no_output_score, f"render failed ({sample.rendered.error_kind}): not judged")
        if self.skip_blank and is_blank(generated):
            return Skip(self.no_output_score, "blank image (one flat colour): not judged")
        parts: list[str | Image.Image] = []
        for role in self.images:
            if self.labels:
                parts.append(_LABELS[role])
            parts.append(reference if role == "reference" else generated)
        instruction = self.instruction.replace("{scale}", f"{self.scale:g}" if self.scale is not None else "")
        parts.append(instruction.replace("{prompt}", sample.prompt or ""))
        return JudgeRequest(parts=parts, system=self.system)


_VISUAL_ERM_INSTRUCTION = """\
You are a meticulous visual reviewer. The first image is the reference. The second image is a \
rendering of code that was written to reproduce the reference.

List every visual difference of the second image from the reference: chart or figure type, data \
(values, counts, order), text (titles, labels, ticks, legends, annotations), layout (subplots, \
positions, sizes, axes ranges), style (colours, markers, line styles, fonts) and any missing or extra \
element. Severity: 1 = minor, 2 = clearly visible, 3 = major (wrong data, wrong type, missing element).

Answer with strict JSON only, nothing else, in exactly this form:
{"errors": [{"category": "type|data|text|layout|style|other", "severity": 1, "location": "where in \
the image", "description": "what differs"}]}
If the images match, answer {"errors": []}."""


def visual_erm_preset() -> JudgePreset:
    """Visual-ERM: (reference, rendered) → a JSON list of errors → ``1 + clip(1 - Σseverity/50, 0, 1)``.

    Scores lie in [1, 2] for a judged sample and 0 for no code / failed render / blank image (not
    judged). Severities are clipped to 1-3; numeric strings are accepted; a missing or non-numeric
    severity, a missing ``errors`` key in the first JSON object, or no JSON at all is a parse failure,
    scored as severity 25 (1.5). A bare JSON list of errors (the first JSON value) is accepted.

    Example:
        >>> p = visual_erm_preset()
        >>> p.parse('{"errors": [{"category": "data", "severity": 3, "location": "bar 2", "description": "x"}]}').score
        1.94
        >>> p.parse("looks fine").score, p.parse("looks fine").parse_failed
        (1.5, True)
    """
    return JudgePreset(name="visual_erm", instruction=_VISUAL_ERM_INSTRUCTION,
                       images=("reference", "generated"), parse=_parse_visual_erm,
                       parse_failure_score=_visual_erm_score(_ERM_PARSE_FAILURE_SEVERITY))


_CHARTMIMIC_INSTRUCTION = """\
You are an expert judge of data-visualisation charts. The first image is the ground-truth chart. \
The second image was rendered from code written to reproduce it. Compare the second chart with the \
first and score their similarity out of 100 points with this rubric:

1. Chart types (20 points): are the chart types (bar, line, scatter, pie, ...) the same?
2. Layout (10 points): are the subplots arranged the same way?
3. Text content (20 points): do titles, axis labels, tick labels, legends and annotations match?
4. Data (20 points): do the data points, values and trends match?
5. Style (20 points): do colours, markers, line styles and fonts match?
6. Clarity (10 points): is the chart clear, without overlapping or cut-off elements?

Explain each part briefly, then end your reply with the total on its own line as: Score: N/100"""


def _parse_chartmimic(text: str) -> Judgement:
    return _parse_out_of(text, 0.0, 100.0, None, failure=0.0)


def chartmimic_preset() -> JudgePreset:
    """ChartMimic's GPT-4o rubric: (reference, generated) → ``Score: N/100`` → ``N / 100``.

    Rubric: type 20, layout 10, text 20, data 20, style 20, clarity 10. The last ``Score: N/100`` of
    the answer counts (reasoning blocks removed first); N must lie in 0..100, else, or without one,
    the answer is a parse failure scored 0.0.

    Example:
        >>> chartmimic_preset().parse("Types match.\\n**Score: 87/100**").score
        0.87
    """
    return JudgePreset(name="chartmimic", instruction=_CHARTMIMIC_INSTRUCTION,
                       images=("reference", "generated"), parse=_parse_chartmimic, parse_failure_score=0.0)


_POINTWISE_INSTRUCTION = """\
The image above was generated from this text prompt:
"{prompt}"

Rate how well the image matches the prompt (objects, counts, attributes, colours, spatial relations, \
text) on a scale from 1 to {scale}, where 1 means unrelated and {scale} means a perfect match. \
Explain briefly, then end your reply as: Score: N/{scale}"""


def pointwise_preset(scale: int = 10) -> JudgePreset:
    """Text-image alignment for text-to-image: (generated image, prompt) → ``Score: N`` → ``N / scale``.

    The last ``Score: N`` or ``Score: N/scale`` counts; N must lie in 1..scale (a different ``/M``
    is a parse failure). UnifiedReward as used by Flow-GRPO is ``scale=5``. A parse failure scores 0.0.
    Samples without a prompt are not applicable (None); one-colour images are judged, not skipped.

    Example:
        >>> p = pointwise_preset(scale=5)
        >>> p.parse("Good match. Score: 4").score, p.parse("Score: 4/10").parse_failed
        (0.8, True)
    """
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")

    def parse(text: str) -> Judgement:
        return _parse_out_of(text, 1.0, float(scale), float(scale), failure=0.0)

    return JudgePreset(name="pointwise", instruction=_POINTWISE_INSTRUCTION, images=("generated",),
                       parse=parse, parse_failure_score=0.0, skip_blank=False, needs_prompt=True,
                       scale=float(scale))


def trained_judge_preset(path: str | os.PathLike[str]) -> JudgePreset:
    """A judge trained by ``visalign train reward --mode judge``, asked exactly as it was trained.

    Reads ``judge.json`` from the model directory ``path`` (the trainer writes it into every saved
    model): the instruction, whether the reference image comes first, the verdicts and the system turn.
    The request is the images alone (reference, then the generated image) followed by the instruction,
    as the trainer's prompt; the answer ``<think>...</think><answer>good|bad</answer>`` scores 1.0 /
    0.0; an answer without a readable verdict is a parse failure scored 0.0. Only pointwise judges
    fit ``vlm_judge`` (one sample, one score); a pairwise judge raises ``ValueError``.

    Example:
        >>> preset = trained_judge_preset("out/judge/checkpoint-000100/model")  # doctest: +SKIP
    """
    from .verdict import parse_verdict

    file = os.path.join(os.fspath(path), "judge.json")
    try:
        with open(file, encoding="utf-8") as f:
            spec = json.load(f)
    except OSError as exc:
        raise ValueError(f"{file}: cannot read the judge's spec ({exc}); is {path} a model saved by "
                         "`visalign train reward --mode judge`?") from None
    if spec.get("judge_mode") != "pointwise":
        raise ValueError(f"{file}: a {spec.get('judge_mode')!r} judge compares two images; vlm_judge scores one "
                         "sample at a time: train with judge_mode: pointwise")
    choices = [str(c) for c in spec.get("choices") or ["good", "bad"]]
    good = choices[0]

    def parse(text: str) -> Judgement:
        v = parse_verdict(text, choices)
        if v.answer is None:
            return Judgement(0.0, True, parsed={"format_ok": v.format_ok}, error=v.error)
        return Judgement(1.0 if v.answer == good else 0.0, parsed={"verdict": v.answer, "format_ok": v.format_ok})

    reference = bool(spec.get("reference"))
    instruction = str(spec["instruction"])
    return JudgePreset(name="trained_judge", instruction=instruction,
                       images=("reference", "generated") if reference else ("generated",), parse=parse,
                       parse_failure_score=0.0, skip_blank=False, needs_prompt="{prompt}" in instruction,
                       system=spec.get("system"), labels=False)


PRESETS: dict[str, Callable[..., JudgePreset]] = {
    "visual_erm": visual_erm_preset,
    "chartmimic": chartmimic_preset,
    "pointwise": pointwise_preset,
    "trained_judge": trained_judge_preset,
}


def get_preset(preset: str | JudgePreset, **options: Any) -> JudgePreset:
    """A preset by name (with its options, e.g. ``scale`` for ``pointwise``), or ``preset`` itself.

    Example:
        >>> get_preset("pointwise", scale=5).scale
        5.0
    """
    if isinstance(preset, JudgePreset):
        if options:
            raise ValueError("options apply to a preset given by name")
        return preset
    if preset not in PRESETS:
        raise ValueError(f"unknown judge preset {preset!r}; choose from {sorted(PRESETS)}")
    return PRESETS[preset](**options)


def parse_score(text: str, preset: str | JudgePreset) -> Judgement:
    """Parse a judge's answer with a preset's rules.

    Example:
        >>> parse_score("<think>maybe 50</think>Score: 87/100", "chartmimic").score
        0.87
        >>> j = parse_score("no idea", "chartmimic"); j.score, j.parse_failed
        (0.0, True)
    """
    return get_preset(preset).parse(text)


# --------------------------------------------------------------------------------------------------
# Backends
# --------------------------------------------------------------------------------------------------


@dataclass
class JudgeResponse:
    """What a backend got for one request.

    Attributes:
        text: the answer, or None when the request failed.
        latency: seconds of the attempt that produced the outcome.
        attempts: how many times the request was sent.
        error: why the request failed (never contains the API key), else None.
        elapsed: seconds from the first attempt to the outcome (retries and back-off included).
        finish_reason: the server's finish reason when it gives one (``stop``, ``length``).
    """

    text: str | None
    latency: float = 0.0
    attempts: int = 1
    error: str | None = None
    elapsed: float = 0.0
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.text is not None


class JudgeBackend(ABC):
    """Answers a batch of :class:`JudgeRequest`; one :class:`JudgeResponse` per request, in order.

    A failed request comes back as a response with ``text=None`` and an ``error``, never as an
    exception, so one bad request does not sink the batch.
    """

    @abstractmethod
    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request."""

    def close(self) -> None:
        """Release models and connections."""


class CallableJudgeBackend(JudgeBackend):
    """A judge that is a Python function ``request -> answer text`` (replays, fakes, rule-based judges).

    An exception raised by the function fails that request only.

    Example:
        >>> backend = CallableJudgeBackend(lambda request: "Score: 9/10")
        >>> backend.generate([JudgeRequest(parts=["hi"])])[0].text
        'Score: 9/10'
    """

    def __init__(self, answer: Callable[[JudgeRequest], str]) -> None:
        self.answer = answer

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        out = []
        for request in requests:
            t0 = time.perf_counter()
            try:
                text: str | None = self.answer(request)
                error = None
            except Exception as e:
                text, error = None, f"{type(e).__name__}: {e}"
            dt = time.perf_counter() - t0
            out.append(JudgeResponse(text=text, latency=dt, elapsed=dt, error=error))
        return out


def image_data_url(image: Image.Image) -> str:
    """``image`` as a ``data:image/png;base64,...`` URL (RGB or RGBA kept, other modes → RGB).

    Example:
        >>> image_data_url(Image.new("RGB", (1, 1)))[:22]
        'data:image/png;base64,'
    """
    if image.mode not in ("RGB", "RGBA", "L"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class _Call:
    """One HTTP attempt that the event loop can abort (its deadline) from another thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.aborted = False

    def attach(self, sock: socket.socket | None) -> None:
        with self._lock:
            if self.aborted:
                raise TimeoutError("deadline passed while connecting")
            self._sock = sock

    def detach(self) -> None:
        with self._lock:
            self._sock = None

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv in the worker thread
            except OSError:
                pass


@dataclass
class _Attempt:
    text: str | None = None
    finish_reason: str | None = None
    error: str | None = None
    retryable: bool = False
    retry_after: float | None = None


# characters http.client refuses in a header value (it would echo the value in its exception)
_BAD_HEADER_CHARS = re.compile(r"[\x00-\x1f\x7f]")


class OpenAIJudgeBackend(JudgeBackend):
    """A judge behind an OpenAI-compatible ``/v1/chat/completions`` endpoint (vLLM, SGLang, APIs).

    Each request is one user message whose content lists the request's parts in order: text parts as
    ``{"type": "text"}``, images as ``{"type": "image_url"}`` with a ``data:image/png;base64,...``
    URL. Requests run concurrently on an asyncio loop, at most ``max_concurrency`` in flight (an
    asyncio semaphore; the blocking HTTP calls run in worker threads so each can be aborted at its
    deadline). Standard library only (``http.client``); HTTP(S) proxies are not used.

    Retry policy: HTTP 429, any 5xx, a timeout or a connection error (refused, reset, closed
    without an answer) is retried up to ``max_retries`` times (so at most ``max_retries + 1``
    attempts) after ``min(max_backoff, backoff * 2**k)`` seconds for the k-th retry (k = 0, 1, ...),
    scaled by a random factor in [0.5, 1] when ``jitter``; a 429's ``Retry-After`` (seconds) is
    honoured (429 and 5xx) up to ``max_backoff``. Any other 4xx and a malformed 2xx body fail at once. The request
    slot is released during back-off.

    The API key is read from the environment variable ``api_key_env`` at every batch (none set: no
    ``Authorization`` header, as local servers expect) and sent as ``Authorization: Bearer <key>``.
    It is never stored on the object, logged, or put in errors: server error bodies and answers that
    echo it are redacted (``***``).

    Args:
        base_url: ``http://host:8000/v1`` (the OpenAI SDK's convention), ``http://host:8000`` (``/v1``
            added) or a full ``.../chat/completions`` URL.
        model: the model name the server expects.
        api_key_env: name of the environment variable holding the key.
        timeout: seconds for one attempt, connection to last byte.
        max_concurrency: requests in flight at once.
        max_retries: retries after the first attempt.
        backoff: base back-off in seconds.
        max_backoff: longest back-off in seconds.
        jitter: randomise back-off (avoids retry storms from many clients).
        temperature: sampling temperature (0: greedy, reproducible judging).
        max_tokens: answer length limit (None: the server's default).
        extra_body: more fields for the request body (``seed``, ``top_p``, ``response_format``, ...).

    Example:
        >>> backend = OpenAIJudgeBackend("http://127.0.0.1:8000/v1", model="Qwen/Qwen2.5-VL-7B-Instruct")
        >>> backend.url
        'http://127.0.0.1:8000/v1/chat/completions'
    """

    max_response_bytes = 16 * 1024 * 1024

    def __init__(self, base_url: str, model: str, api_key_env: str = "OPENAI_API_KEY", timeout: float = 60.0,
                 max_concurrency: int = 8, max_retries: int = 3, backoff: float = 1.0, max_backoff: float = 30.0,
                 jitter: bool = True, temperature: float = 0.0, max_tokens: int | None = 1024,
                 extra_body: dict[str, Any] | None = None) -> None:
        parts = urllib.parse.urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"base_url must be an http(s) URL with a host, got scheme {parts.scheme!r}")
        if parts.username or parts.password:
            raise ValueError("put credentials in the environment variable named by api_key_env, not in base_url")
        if timeout <= 0 or max_concurrency < 1 or max_retries < 0 or backoff < 0 or max_backoff < 0:
            raise ValueError("timeout must be > 0, max_concurrency >= 1, max_retries, backoff and max_backoff >= 0")
        path = parts.path.rstrip("/")
        if not path.endswith("/chat/completions"):
            path = (path or "/v1") + "/chat/completions"
        if parts.query:
            path += "?" + parts.query
        self._https = parts.scheme == "https"
        self._host = parts.hostname
        self._port = parts.port or (443 if self._https else 80)
        self._path = path
        self.url = urllib.parse.urlunsplit((parts.scheme, parts.netloc, path.split("?")[0], parts.query, ""))
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_concurrency = int(max_concurrency)
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_backoff = float(max_backoff)
        self.jitter = jitter
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._ssl_context = ssl.create_default_context() if self._https else None

    def __repr__(self) -> str:
        return (f"OpenAIJudgeBackend(url={self.url!r}, model={self.model!r}, api_key_env={self.api_key_env!r}, "
                f"max_concurrency={self.max_concurrency}, max_retries={self.max_retries})")

    # ---- public entry points ---------------------------------------------------------------------

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request (blocking). Safe to call from a thread whose event loop is running:
        the batch then runs on a fresh loop in a helper thread."""
        requests = list(requests)
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests))
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vlm-judge-loop") as helper:
            return helper.submit(lambda: asyncio.run(self.agenerate(requests))).result()

    async def agenerate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        """Answer every request from async code (``await backend.agenerate(requests)``)."""
        requests = list(requests)
        if not requests:
            return []
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        key = (os.environ.get(self.api_key_env) or "").strip()
        if key:
            if _BAD_HEADER_CHARS.search(key):
                raise ValueError(f"the API key in ${self.api_key_env} contains control characters")
            headers["Authorization"] = f"Bearer {key}"
        semaphore = asyncio.Semaphore(self.max_concurrency)
        workers = min(self.max_concurrency, len(requests))
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="vlm-judge") as pool:
            return list(await asyncio.gather(*(self._request(i, r, headers, key, semaphore, pool)
                                               for i, r in enumerate(requests))))

    # ---- internals -------------------------------------------------------------------------------

    def _body(self, request: JudgeRequest) -> bytes:
        content: list[dict[str, Any]] = []
        for part in request.parts:
            if isinstance(part, Image.Image):
                content.append({"type": "image_url", "image_url": {"url": image_data_url(part)}})
            else:
                content.append({"type": "text", "text": part})
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": content})
        body: dict[str, Any] = {"model": self.model, "messages": messages, "temperature": self.temperature}
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        body.update(self.extra_body)
        return json.dumps(body).encode("utf-8")

    def _post(self, body: bytes, headers: dict[str, str], call: _Call) -> tuple[int, str | None, bytes]:
        """One blocking POST (worker thread): status, Retry-After, body."""
        if self._https:
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl_context)
        else:
            conn = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            conn.connect()
            call.attach(conn.sock)
            conn.request("POST", self._path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read(self.max_response_bytes + 1)
            if call.aborted:  # the deadline shut the socket: what was read is a truncated body
                raise TimeoutError("deadline passed while reading")
            if len(data) <= self.max_response_bytes and resp.length:  # EOF before Content-Length
                raise http.client.IncompleteRead(data, resp.length)
            return resp.status, resp.getheader("Retry-After"), data
        finally:
            call.detach()
            conn.close()

    async def _attempt(self, body: bytes, headers: dict[str, str], key: str,
                       pool: concurrent.futures.Executor) -> _Attempt:
        loop = asyncio.get_running_loop()
        call = _Call()
        deadline = loop.call_later(self.timeout, call.abort)
        future = loop.run_in_executor(pool, self._post, body, headers, call)
        try:
            status, retry_after, data = await future
        except Exception as e:
            if call.aborted or isinstance(e, TimeoutError):
                return _Attempt(error=f"timeout: no answer within {self.timeout:g} s", retryable=True)
            if isinstance(e, ssl.SSLCertVerificationError):
                return _Attempt(error=_redact(f"TLS certificate error: {e}", key))
            if isinstance(e, (OSError, http.client.HTTPException)):
                return _Attempt(error=_redact(f"connection error: {type(e).__name__}: {e}", key), retryable=True)
            return _Attempt(error=_redact(f"{type(e).__name__}: {e}", key))
        finally:
            deadline.cancel()
            if not future.done():  # cancelled from outside: free the worker thread now
                call.abort()
        if len(data) > self.max_response_bytes:
            return _Attempt(error=f"response larger than {self.max_response_bytes} bytes")
        if not 200 <= status <= 299:
            snippet = data[:300].decode("utf-8", "replace").strip()
            retryable = status == 429 or 500 <= status <= 599
            return _Attempt(error=_redact(f"HTTP {status}: {snippet}", key), retryable=retryable,
                            retry_after=_seconds(retry_after) if retryable else None)
        try:
            payload = json.loads(data)
            choice = payload["choices"][0]
            content = choice["message"].get("content")
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as e:
            snippet = data[:200].decode("utf-8", "replace")
            return _Attempt(error=_redact(f"malformed response ({type(e).__name__}): {snippet}", key))
        if isinstance(content, list):  # some servers answer with content parts
            content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
        if not isinstance(content, str):
            content = ""  # a null content (refusal, tool call) is an answer that will not parse
        content = _redact(content, key)  # a server that echoes the request's headers
        finish = choice.get("finish_reason")
        return _Attempt(text=content, finish_reason=finish if isinstance(finish, str) else None)

    def _delay(self, retry: int, retry_after: float | None) -> float:
        delay = min(self.max_backoff, self.backoff * 2.0 ** retry)
        if self.jitter:
            delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(self.max_backoff, retry_after))
        return delay

    async def _request(self, index: int, request: JudgeRequest, headers: dict[str, str], key: str,
                       semaphore: asyncio.Semaphore, pool: concurrent.futures.Executor) -> JudgeResponse:
        loop = asyncio.get_running_loop()
        body: bytes | None = None
        start = time.perf_counter()
        attempts = 0
        while True:
            attempts += 1
            async with semaphore:
                if body is None:
                    try:
                        body = await loop.run_in_executor(pool, self._body, request)
                    except Exception as e:  # an image PIL cannot encode, text that is not JSON-able
                        error = f"cannot encode the request: {type(e).__name__}: {e}"
                        logger.warning("judge request %d: %s", index, error)
                        return JudgeResponse(text=None, attempts=0, error=error)
                t0 = time.perf_counter()
                result = await self._attempt(body, headers, key, pool)
                latency = time.perf_counter() - t0
            if result.text is not None:
                return JudgeResponse(text=result.text, latency=latency, attempts=attempts,
                                     elapsed=time.perf_counter() - start, finish_reason=result.finish_reason)
            if not result.retryable or attempts > self.max_retries:
                logger.warning("judge request %d failed after %d attempt(s): %s", index, attempts, result.error)
                return JudgeResponse(text=None, latency=latency, attempts=attempts, error=result.error,
                                     elapsed=time.perf_counter() - start)
            delay = self._delay(attempts - 1, result.retry_after)
            logger.info("judge request %d: %s; retry %d/%d in %.2f s", index, result.error, attempts,
                        self.max_retries, delay)
            await asyncio.sleep(delay)


def _redact(text: str, key: str) -> str:
    return text.replace(key, "***") if key else text


def _seconds(value: str | None) -> float | None:
    """A ``Retry-After`` header in seconds (HTTP dates are ignored)."""
    if value is None:
        return None
    try:
        x = float(value)
    except ValueError:
        return None
    return x if math.isfinite(x) and x >= 0 else None


class TransformersJudgeBackend(JudgeBackend):
    """A local VLM judge: ``AutoModelForImageTextToText`` + ``AutoProcessor``, greedy, batched.

    Each request becomes a chat (an optional system turn and a user turn whose content lists
    ``{"type": "image"}`` and ``{"type": "text"}`` parts in the request's order) rendered with the
    processor's chat template; a batch is padded on the left and decoded greedily. The images go to the
    processor as one list per request, in order (what SmolVLM / Idefics3 / Gemma 3 need for batches of
    several prompts; Qwen-VL / LLaVA processors flatten it), so a request may show several images
    (reference and generated, or a pairwise judge's two); requests with and without images are
    generated in separate batches. Vision
    special tokens (image / video pads, vision start / end) are suppressed during generation, since a
    generated image token breaks the model's next forward ("image features and image tokens do not
    match"). A batch whose ``generate`` raises fails its requests (``error`` set), not the call.
    ``latency`` is the wall time of the ``generate`` call that answered (shared by its batch).

    Args:
        model_or_path: a local path or hub id (loaded with ``from_pretrained``), or a loaded model.
        processor: the processor (default: ``AutoProcessor.from_pretrained(model_or_path)``; required
            with a loaded model).
        device: where to run; default CUDA when available for a loaded path, else where the model is.
        dtype: a torch dtype (or ``"auto"``) for ``from_pretrained``.
        max_new_tokens: answer length limit.
        batch_size: requests per ``generate`` call.
        suppress_vision_tokens: keep the model from generating vision special tokens.

    Example:
        >>> backend = TransformersJudgeBackend("Qwen/Qwen2.5-VL-7B-Instruct")  # doctest: +SKIP
    """

    def __init__(self, model_or_path: Any, processor: Any = None, device: Any = None, dtype: Any = None,
                 max_new_tokens: int = 512, batch_size: int = 8, suppress_vision_tokens: bool = True) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(model_or_path, (str, os.PathLike)):
            kwargs = {} if dtype is None else {"dtype": dtype}
            model = AutoModelForImageTextToText.from_pretrained(model_or_path, **kwargs)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            if processor is None:
                processor = AutoProcessor.from_pretrained(model_or_path)
        else:
            model = model_or_path
            if processor is None:
                raise ValueError("pass the processor with a loaded model")
            if device is not None:
                model.to(device)
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.suppress_tokens = self._vision_token_ids() if suppress_vision_tokens else []

    def _vision_token_ids(self) -> list[int]:
        from ..models.tokens import vision_token_ids

        return vision_token_ids(self.model)

    def _messages(self, request: JudgeRequest) -> list[dict[str, Any]]:
        content = [{"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
                   for p in request.parts]
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        messages.append({"role": "user", "content": content})
        return messages

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        requests = list(requests)
        out: list[JudgeResponse | None] = [None] * len(requests)
        for with_images in (True, False):  # a processor takes images for all prompts of a batch or for none
            index = [i for i, r in enumerate(requests) if bool(r.images) == with_images]
            for b in range(0, len(index), self.batch_size):
                chunk = index[b:b + self.batch_size]
                for i, response in zip(chunk, self._generate_batch([requests[i] for i in chunk]), strict=True):
                    out[i] = response
        return [r for r in out if r is not None]

    def _generate_batch(self, batch: list[JudgeRequest]) -> list[JudgeResponse]:
        import torch

        t0 = time.perf_counter()
        try:
            texts = [self.processor.apply_chat_template(self._messages(r), tokenize=False,
                                                        add_generation_prompt=True) for r in batch]
            images = [[im.convert("RGB") for im in r.images] for r in batch if r.images]
            inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
            inputs = inputs.to(self.model.device)
            inner = getattr(self.model, "model", None)
            if inner is not None and hasattr(inner, "rope_deltas"):
                inner.rope_deltas = None  # Qwen-VL caches M-RoPE offsets between calls
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
            if self.suppress_tokens:
                kwargs["suppress_tokens"] = self.suppress_tokens
            if self.model.generation_config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
                kwargs["pad_token_id"] = self.tokenizer.pad_token_id
            with torch.inference_mode():
                generated = self.model.generate(**inputs, **kwargs)
            new_tokens = generated[:, inputs["input_ids"].shape[1]:]
            answers = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        except Exception as e:
            dt = time.perf_counter() - t0
            error = f"{type(e).__name__}: {str(e)[:500]}"
            logger.warning("local judge batch of %d failed: %s", len(batch), error)
            return [JudgeResponse(text=None, latency=dt, elapsed=dt, error=error) for _ in batch]
        dt = time.perf_counter() - t0
        return [JudgeResponse(text=a, latency=dt, elapsed=dt) for a in answers]

    def close(self) -> None:
        self.model = None
        self.processor = None


# --------------------------------------------------------------------------------------------------
# The reward
# --------------------------------------------------------------------------------------------------


class VlmJudgeReward(RenderingReward):
    """Ask a VLM judge to score each sample, with one of the presets.

    Samples with a completion but no code get their code extracted
    (:func:`~visalign.rewards.code.fill_code`), then each distinct program is rendered once through
    the reward's :class:`~visalign.rewards.render.RenderService` (``service``, or the one a
    :class:`~visalign.rewards.composite.CompositeReward` binds; without either, a private one started
    on first need and closed with the reward); so are reference programs without a reference image.
    Then every judgeable sample of the batch goes to the backend in one call.

    Scores follow the module's conventions: no code / failed render / blank → ``no_output_score``
    (0.0, no judge call); no reference (or no prompt for ``pointwise``) → None; unparsable answer →
    the preset's ``parse_failure_score``; failed request → ``failure_score`` (default: the preset's
    ``parse_failure_score``).

    Details per sample: ``preset``, ``judged``, and either ``reason`` (not judged) or ``answer`` (the
    raw answer, truncated to ``max_answer_chars``), ``parse_failed`` (+ ``parse_error``), what was
    parsed (``errors`` / ``severity_sum`` / ``raw_score``), ``latency``, ``elapsed``, ``attempts``,
    ``request_failed`` (+ ``error``). Metrics: ``judged``, ``skipped``, ``parse_failures``,
    ``request_failures``, ``mean_latency`` (over answered requests; 0.0 when none).

    Args:
        backend: the judge; closed with the reward.
        preset: a preset name or :class:`JudgePreset` (``get_preset("pointwise", scale=5)``).
        service: the shared render service.
        failure_score: the score of a request that failed after all retries.
        max_answer_chars: longest raw answer kept in details.

    Example:
        >>> judge = CallableJudgeBackend(lambda r: '{"errors": [{"severity": 2}, {"severity": 3}]}')
        >>> reward = VlmJudgeReward(judge, preset="visual_erm")
        >>> ref = Image.new("RGB", (8, 8), "white"); ref.putpixel((1, 1), (255, 0, 0))
        >>> out = reward([Sample(image=ref, reference_image=ref), Sample(reference_image=ref)])
        >>> out.scores, out.details[1]["reason"]
        ([1.9, 0.0], 'no code and no image: not judged')
    """

    name = "vlm_judge"
    needs_render = True
    needs_reference_render = True

    def __init__(self, backend: JudgeBackend, preset: str | JudgePreset = "visual_erm", *,
                 service: RenderService | None = None, failure_score: float | None = None,
                 max_answer_chars: int = 2000) -> None:
        super().__init__(service)
        self.backend = backend
        self.preset = get_preset(preset)
        self.failure_score = self.preset.parse_failure_score if failure_score is None else float(failure_score)
        self.max_answer_chars = max_answer_chars

    def prepare(self, samples: list[Sample]) -> None:
        """Extract and render what the judge will look at (generated programs, reference programs)."""
        if "reference" in self.preset.images:
            refs = [s for s in samples if s.reference_image is None and s.reference_code is not None
                    and s.kind is not None]
            if refs:
                self.render_service().render(refs, reference=True)
        todo = [s for s in samples if s.image is None and (s.code is not None or s.completion is not None)]
        if todo:
            self.render(todo)

    def score(self, samples: list[Sample]) -> RewardOutput:
        self.prepare(samples)
        n = len(samples)
        scores: list[float | None] = [None] * n
        details: list[dict[str, Any]] = [{} for _ in range(n)]
        requests: list[JudgeRequest] = []
        index: list[int] = []
        for i, sample in enumerate(samples):
            prepared = self.preset.prepare(sample)
            if isinstance(prepared, Skip):
                scores[i] = prepared.score
                details[i] = {"preset": self.preset.name, "judged": False, "reason": prepared.reason}
            else:
                requests.append(prepared)
                index.append(i)
        responses = self.backend.generate(requests) if requests else []
        if len(responses) != len(requests):
            raise RuntimeError(f"the judge backend answered {len(responses)} of {len(requests)} requests")
        parse_failures = request_failures = 0
        latencies: list[float] = []
        for i, response in zip(index, responses, strict=True):
            d: dict[str, Any] = {"preset": self.preset.name, "judged": True, "attempts": response.attempts,
                                 "latency": round(response.latency, 4), "elapsed": round(response.elapsed, 4)}
            if response.text is None:
                request_failures += 1
                scores[i] = self.failure_score
                d.update(request_failed=True, error=response.error, parse_failed=False)
            else:
                latencies.append(response.latency)
                judgement = self.preset.parse(response.text)
                scores[i] = judgement.score
                answer = response.text
                if len(answer) > self.max_answer_chars:
                    answer = answer[:self.max_answer_chars] + f"… [{len(response.text)} chars]"
                d.update(request_failed=False, answer=answer, parse_failed=judgement.parse_failed,
                         **judgement.parsed)
                if response.finish_reason is not None:
                    d["finish_reason"] = response.finish_reason
                if judgement.parse_failed:
                    parse_failures += 1
                    d["parse_error"] = judgement.error
            details[i] = d
        metrics = {"judged": float(len(requests)), "skipped": float(n - len(requests)),
                   "parse_failures": float(parse_failures), "request_failures": float(request_failures),
                   "mean_latency": sum(latencies) / len(latencies) if latencies else 0.0}
        return RewardOutput(scores=scores, details=details, metrics=metrics)

    def close(self) -> None:
        """Close the backend and the private render service (a shared ``service`` is left open)."""
        self.backend.close()
        super().close()
