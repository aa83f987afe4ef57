"""The ``vlm_judge`` reward: a vision-language model looks at images and judges them.

Three layers, each usable alone:

* **parsing** (pure functions, :mod:`~visalign.rewards.judge.parsing`): :func:`strip_reasoning`,
  :func:`first_json_object`, :func:`parse_score`, :func:`parse_verdict` (R1-Reward's
  ``<answer>VERDICT</answer>``, shared with the ``verdict`` rewards);
* **presets** (:class:`JudgePreset`, :mod:`~visalign.rewards.judge.presets`): the prompt, which images the judge sees in which order, and how
  its answer becomes a score: ``visual_erm`` (Visual-ERM error list), ``chartmimic`` (ChartMimic's
  100-point rubric), ``pointwise`` (text-image alignment, UnifiedReward / Flow-GRPO style) and
  ``trained_judge`` (a judge trained by ``visalign train reward --mode judge``, pointwise or pairwise,
  prompted by :func:`~visalign.rewards.judge.prompts.judge_prompt` as its trainer prompted it);
* **pairwise** (pure functions, :mod:`~visalign.rewards.judge.pairwise`): which pairs of a group are
  asked, how the two orders of a pair combine, win rates and Bradley-Terry strengths;
* **backends** (:class:`JudgeBackend`, :mod:`~visalign.rewards.judge.backend`): :class:`OpenAIJudgeBackend`
  (:mod:`~visalign.rewards.judge.openai_backend`) for any OpenAI-compatible ``/v1/chat/completions``
  server (vLLM, SGLang, hosted APIs), :class:`TransformersJudgeBackend`
  (:mod:`~visalign.rewards.judge.transformers_backend`) for a local model, :class:`CallableJudgeBackend`
  for a Python function (replays, tests).

:class:`VlmJudgeReward` (:mod:`~visalign.rewards.judge.reward`) ties them together, one sample per request
(pointwise) or two candidates of a group per request (``mode="pairwise"``: a sample scores its win rate
in its group; see the class). Conventions (the same for every preset unless said):

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

from .backend import CallableJudgeBackend, JudgeBackend, JudgeRequest, JudgeResponse
from .openai_backend import OpenAIJudgeBackend, image_data_url
from .pairwise import bradley_terry, plan_pairs, win_rates
from .parsing import Judgement, Verdict, first_json_object, format_ok, parse_verdict, strip_reasoning
from .presets import (
    PRESETS,
    JudgePreset,
    Skip,
    chartmimic_preset,
    get_preset,
    parse_score,
    pointwise_preset,
    trained_judge_preset,
    visual_erm_preset,
)
from .prompts import judge_instruction, judge_prompt
from .reward import VlmJudgeReward
from .transformers_backend import TransformersJudgeBackend

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
    "Verdict",
    "VlmJudgeReward",
    "bradley_terry",
    "chartmimic_preset",
    "first_json_object",
    "format_ok",
    "get_preset",
    "image_data_url",
    "judge_instruction",
    "judge_prompt",
    "parse_score",
    "parse_verdict",
    "plan_pairs",
    "pointwise_preset",
    "strip_reasoning",
    "trained_judge_preset",
    "visual_erm_preset",
    "win_rates",
]
