"""Judge presets: what the judge is shown, in which order, with which instruction, and how its answer
becomes a score: ``visual_erm`` (Visual-ERM error list), ``chartmimic`` (ChartMimic's 100-point rubric),
``pointwise`` (text-image alignment, UnifiedReward / Flow-GRPO style) and ``trained_judge`` (a judge
trained by ``visalign train reward --mode judge``, pointwise or pairwise).

A preset's ``mode`` says what one request judges: ``pointwise``, one sample (the answer is its score);
``pairwise``, two candidates shown as Image 1 and Image 2 (the answer's score is the share of the
verdict for Image 1: 1.0 when Image 1 is better, 0.0 when Image 2 is), which
:class:`~visalign.rewards.judge.VlmJudgeReward` turns into a score per sample (win rate in its group).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ...renderers.base import is_blank
from ..base import Sample
from .backend import JudgeRequest
from .parsing import (
    _ERM_PARSE_FAILURE_SEVERITY,
    Judgement,
    normalise_verdict,
    parse_out_of,
    parse_verdict,
    parse_visual_erm,
    visual_erm_score,
)
from .prompts import CHOICES, check_view, judge_prompt

__all__ = ["MODES", "PRESETS", "JudgePreset", "Skip", "chartmimic_preset", "get_preset", "parse_score",
           "pointwise_preset", "trained_judge_preset", "visual_erm_preset"]

ImageRole = str  # "reference", "generated" (pointwise), "first" / "second" (pairwise: Image 1 / Image 2)
_LABELS = {"reference": "Reference image:", "generated": "Generated image:", "first": "Image 1:",
           "second": "Image 2:"}
_CANDIDATES = {"pointwise": ("generated",), "pairwise": ("first", "second")}
#: What one request judges: one sample (``pointwise``) or two candidates (``pairwise``).
MODES = tuple(_CANDIDATES)


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
        images: the images the judge sees, in order: ``("reference", "generated")`` or ``("generated",)``
            (pointwise); ``("reference", "first", "second")`` or ``("first", "second")`` (pairwise:
            the two candidates, Image 1 and Image 2).
        parse: answer text → :class:`Judgement`; pairwise, its score is the verdict's share for
            Image 1 (1.0: Image 1 is better, 0.0: Image 2 is, 0.5: a tie).
        parse_failure_score: the score of an answer that does not parse.
        no_output_score: the score of a sample with no code, a failed render or (``skip_blank``) a
            one-colour image; it is given without calling the judge.
        skip_blank: treat a one-colour generated image like a failed render.
        needs_prompt: the instruction uses the sample's prompt (None without one).
        system: an optional system prompt.
        scale: the scale of the score the judge gives (pointwise), for ``{scale}``.
        labels: put a short text label before each image (False: the images alone, reference first,
            then the instruction: :func:`~visalign.rewards.judge.prompts.judge_prompt`, as the GRPO
            judge trainer prompts a judge).
        mode: ``pointwise`` (one sample per request) or ``pairwise`` (two candidates per request).
        view: what the judge is shown of the candidates (:data:`~visalign.rewards.judge.prompts.VIEWS`;
            only without ``labels``): ``raw``, or their difference images from the sample's reference
            (which every judged sample then needs; shown itself only when ``images`` has it, ``ref-diff``).
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
    mode: str = "pointwise"
    view: str = "raw"

    def __post_init__(self) -> None:
        if self.mode not in _CANDIDATES:
            raise ValueError(f"mode must be one of {list(MODES)}, got {self.mode!r}")
        candidates = tuple(r for r in self.images if r != "reference")
        if candidates != _CANDIDATES[self.mode] or self.images.count("reference") > 1:
            raise ValueError(f"a {self.mode} preset shows {' and '.join(_CANDIDATES[self.mode])} (and optionally "
                             f"one reference), got images={self.images!r}")
        if not self.labels and "reference" in self.images and self.images[0] != "reference":
            raise ValueError("without labels the reference comes first (as the judge trainer shows it)")
        if check_view(self.view) != "raw":
            if self.labels:
                raise ValueError(f"view {self.view!r} is a trained judge's view: it needs labels=False")
            if ("reference" in self.images) != (self.view == "ref-diff"):
                raise ValueError(f"view {self.view!r} shows the reference first only for 'ref-diff'; got "
                                 f"images={self.images!r}")

    @property
    def needs_reference(self) -> bool:
        """The reference image is shown, or the view is made from it."""
        return "reference" in self.images or self.view != "raw"

    def candidate(self, sample: Sample) -> Image.Image | Skip:
        """The image of ``sample`` the judge will see, or a :class:`Skip` with its score and reason.

        ``sample.rendered`` must already be filled for samples that carry code
        (:class:`VlmJudgeReward` does it).
        """
        if self.needs_reference and sample.target_image is None:
            why = "no reference image" if "reference" in self.images else \
                f"no reference image to make the {self.view!r} view from"
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
        return generated

    def request(self, sample: Sample, *candidates: Image.Image) -> JudgeRequest:
        """The request showing ``candidates`` (one, or Image 1 and Image 2 when pairwise) with the
        reference and prompt of ``sample``."""
        roles = _CANDIDATES[self.mode]
        if len(candidates) != len(roles):
            raise ValueError(f"a {self.mode} request shows {len(roles)} candidate(s), got {len(candidates)}")
        instruction = self.instruction.replace("{scale}", f"{self.scale:g}" if self.scale is not None else "")
        reference = sample.target_image if self.needs_reference else None
        if not self.labels:
            shown = judge_prompt(instruction, candidates, reference=reference, prompt=sample.prompt, view=self.view)
            return JudgeRequest(parts=[*shown.images, shown.text], system=self.system)
        image_of = {"reference": reference, **dict(zip(roles, candidates, strict=True))}
        parts: list[str | Image.Image] = []
        for role in self.images:
            parts += [_LABELS[role], image_of[role]]
        parts.append(instruction.replace("{prompt}", sample.prompt or ""))
        return JudgeRequest(parts=parts, system=self.system)

    def prepare(self, sample: Sample) -> JudgeRequest | Skip:
        """The request for ``sample`` (pointwise), or a :class:`Skip` with its score and reason."""
        if self.mode != "pointwise":
            raise ValueError(f"preset {self.name!r} is pairwise: it compares two candidates (VlmJudgeReward "
                             "with mode='pairwise' pairs them)")
        image = self.candidate(sample)
        return image if isinstance(image, Skip) else self.request(sample, image)


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
                       images=("reference", "generated"), parse=parse_visual_erm,
                       parse_failure_score=visual_erm_score(_ERM_PARSE_FAILURE_SEVERITY))


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
    return parse_out_of(text, 0.0, 100.0, None, failure=0.0)


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
        return parse_out_of(text, 1.0, float(scale), float(scale), failure=0.0)

    return JudgePreset(name="pointwise", instruction=_POINTWISE_INSTRUCTION, images=("generated",),
                       parse=parse, parse_failure_score=0.0, skip_blank=False, needs_prompt=True,
                       scale=float(scale))


def trained_judge_preset(path: str | os.PathLike[str], mode: str = "pointwise") -> JudgePreset:
    """A judge trained by ``visalign train reward --mode judge``, asked exactly as it was trained.

    Reads ``judge.json`` from the model directory ``path`` (the trainer writes it into every saved
    model): the judge's mode, the instruction, whether the reference image comes first, the verdicts,
    the system turn and the view (``view``; a file without it, from before views were recorded: ``raw``).
    The request is what the trainer showed (:func:`~visalign.rewards.judge.prompts.judge_prompt`): the
    images alone (the reference, then the generated image, or Image 1 and Image 2; with a ``diff`` view
    their difference images from the sample's reference, which is then required), then the instruction.
    Answers
    ``<think>...</think><answer>VERDICT</answer>`` are read by
    :func:`~visalign.rewards.judge.parsing.parse_verdict`, as the ``verdict`` reward read them in training:

    * ``mode="pointwise"``: ``good`` / ``bad`` scores 1.0 / 0.0; no readable verdict is a parse failure
      scored 0.0;
    * ``mode="pairwise"``: ``1`` / ``2`` scores 1.0 / 0.0 (the share for Image 1); no readable verdict is a
      parse failure scored 0.5 (no decision) with the verdict's typed ``reason``.

    ``mode`` must be the judge's own (``judge_mode`` in ``judge.json``), else ``ValueError``.

    Example:
        >>> preset = trained_judge_preset("out/judge/checkpoint-000100/model")  # doctest: +SKIP
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    file = os.path.join(os.fspath(path), "judge.json")
    try:
        with open(file, encoding="utf-8") as f:
            spec = json.load(f)
    except OSError as exc:
        raise ValueError(f"{file}: cannot read the judge's spec ({exc}); is {path} a model saved by "
                         "`visalign train reward --mode judge`?") from None
    trained = spec.get("judge_mode")
    if trained != mode:
        if trained == "pairwise":
            raise ValueError(f"{file}: a 'pairwise' judge compares two images: ask for mode='pairwise' "
                             "(vlm_judge then scores each sample by its wins in its group), or train with "
                             "judge_mode: pointwise")
        raise ValueError(f"{file}: a {trained!r} judge cannot be asked for mode={mode!r}: ask for "
                         f"mode={trained!r}, or train with judge_mode: {mode}")
    choices = [normalise_verdict(str(c)) for c in spec.get("choices") or CHOICES[mode]]
    failure = 0.0 if mode == "pointwise" else 0.5

    def parse(text: str) -> Judgement:
        v = parse_verdict(text, choices)
        if v.answer is None:
            return Judgement(failure, True, parsed={"format_ok": v.format_ok}, error=v.error, reason=v.reason)
        return Judgement(1.0 if v.answer == choices[0] else 0.0, parsed={"verdict": v.answer, "format_ok": v.format_ok})

    roles = _CANDIDATES[mode]
    instruction = str(spec["instruction"])
    return JudgePreset(name="trained_judge", instruction=instruction,
                       images=("reference", *roles) if spec.get("reference") else roles, parse=parse,
                       parse_failure_score=failure, skip_blank=False, needs_prompt="{prompt}" in instruction,
                       system=spec.get("system"), labels=False, mode=mode, view=str(spec.get("view") or "raw"))


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
