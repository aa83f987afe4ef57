"""Rewards for generative judges trained with RL: the verdict, its format, and whether the reasoning
supports it (R1-Reward's rule-based rewards; UnifiedReward-Think uses the first two).

A judge answers ``<think>reasoning</think><answer>VERDICT</answer>``: ``1`` / ``2`` when it compares two
images (pairwise), ``good`` / ``bad`` (or a score) when it rates one (pointwise). The label comes with the
sample, ``sample.metadata["label"]`` (the GRPO judge trainer puts it there from the row), and the allowed
verdicts with ``metadata["choices"]`` or the reward's ``choices``. Nothing is rendered. Answers are read by
:func:`parse_verdict` / :func:`format_ok` (:mod:`visalign.rewards.judge.parsing`, re-exported here), the parser
``vlm_judge`` uses for a trained judge too, so a judge is paid in training for what it is read as in use.

* :class:`VerdictFormatReward` (``verdict_format``): 1.0 when the whole answer is exactly
  ``<think>...</think><answer>...</answer>`` with one tag of each (R1-Reward's ``verify_format``), else 0.0.
* :class:`VerdictReward` (``verdict``): 1.0 for the label's verdict, 0.0 for another, a garbled or a
  missing one; None (not applicable) for a sample without a label. With ``consistency`` on it is
  R1-Reward's ``acc * (1 + 0.5 * consistency)``, ``consistency`` in {1, 0, -1}: the reasoning supports,
  says nothing about, or contradicts the verdict. Together with ``verdict_format`` at weight 0.5 the
  composite is R1-Reward's ``0.5 * format + acc * (1 + 0.5 * consistency)``.

Consistency comes from one of two checkers:

* ``"rules"`` (:func:`rule_consistency`, the default when asked for): the *last* verdict cue the
  reasoning names (``image 1`` / ``first`` ... for pairwise, ``match`` / ``differ`` ... for
  pointwise, with "not" flipping a pointwise cue) must be the verdict. Cheap, no model, and blind to
  reasoning that names no cue (it then gives 0, no bonus and no penalty). It is what the tiny demo
  judge can be held to.
* a :class:`~visalign.rewards.judge.JudgeBackend` (R1-Reward's choice: a second model reads the end of the
  reasoning and the verdict and answers 1 (match) or 0 (mismatch)); :class:`ModelConsistency`.

Example:
    >>> v = parse_verdict("<think>the bars of image 2 are wrong</think><answer>1</answer>", choices=["1", "2"])
    >>> v.answer, v.format_ok, v.reasoning
    ('1', True, 'the bars of image 2 are wrong')
    >>> s = Sample(completion="<think>image 1 is closer</think><answer>1</answer>", metadata={"label": "1"})
    >>> VerdictReward(choices=["1", "2"], consistency="rules")([s]).scores
    [1.5]
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from .base import Reward, RewardOutput, Sample
from .judge import JudgeBackend, JudgeRequest
from .judge.parsing import Verdict, format_ok, normalise_verdict, parse_verdict

__all__ = [
    "DEFAULT_CUES",
    "ModelConsistency",
    "Verdict",
    "VerdictFormatReward",
    "VerdictReward",
    "format_ok",
    "parse_verdict",
    "rule_consistency",
]

#: Verdict cues per choice for :func:`rule_consistency` (regular expressions, matched as whole words).
DEFAULT_CUES: dict[str, list[str]] = {
    "1": [r"(?:image|chart|candidate|response|picture)\s*(?:#\s*)?1", r"first(?:\s+(?:image|chart|one))?"],
    "2": [r"(?:image|chart|candidate|response|picture)\s*(?:#\s*)?2", r"second(?:\s+(?:image|chart|one))?"],
    "good": [r"match(?:es|ed)?", r"same", r"identical", r"faithful", r"correct", r"good"],
    "bad": [r"differ(?:s|ent|ence|ences)?", r"mismatch(?:es|ed)?", r"wrong", r"missing", r"incorrect", r"bad"],
}
_NEGATION = re.compile(r"(?:not|no|never|n't)\s+(?:\w+\s+)?$")
_OPPOSITE = {"good": "bad", "bad": "good"}
_PAIRS = (("1", "2"), ("good", "bad"))


def rule_consistency(reasoning: str, answer: str | None, cues: Mapping[str, Sequence[str]] | None = None,
                     choices: Sequence[str] | None = None) -> int:
    """Whether ``reasoning`` ends up where the verdict ``answer`` does: 1 yes, -1 no, 0 cannot tell.

    The reasoning's conclusion is the *last* cue it names of any of ``choices`` (default: ``1`` / ``2``
    or ``good`` / ``bad``, whichever holds ``answer``); ``cues`` maps a choice to regular expressions
    matched as whole words (default :data:`DEFAULT_CUES`; a choice without cues is its own word). A
    ``good`` / ``bad`` cue after a negation ("does not match") counts for the opposite. A reasoning that
    is exactly one of the choices (``<think>2</think>``, `` good. ``: compared as verdicts are,
    :func:`~visalign.rewards.judge.parsing.normalise_verdict`) names that choice; a choice's bare word
    inside longer reasoning ("3 bars, 1 missing") is no cue for ``1`` / ``2``. No verdict, or no cue in the
    reasoning, gives 0.

    Example:
        >>> rule_consistency("image 1 has the wrong bars, image 2 is closer", "2")
        1
        >>> rule_consistency("the charts do not match", "good")
        -1
        >>> rule_consistency("hmm", "good")
        0
        >>> rule_consistency(" 2 ", "2"), rule_consistency("1", "2"), rule_consistency("3 bars, 1 missing", "1")
        (1, -1, 0)
    """
    if answer is None or not reasoning:
        return 0
    table = DEFAULT_CUES if cues is None else cues
    if choices is None:
        choices = next((list(p) for p in _PAIRS if answer in p), [answer])
    bare = normalise_verdict(reasoning)
    named = [c for c in choices if normalise_verdict(c) == bare]
    if named:  # the whole reasoning is a choice
        return 1 if normalise_verdict(named[0]) == normalise_verdict(answer) else -1
    text = reasoning.lower()
    last: tuple[int, str] | None = None
    for choice in choices:
        for pattern in table.get(choice, [re.escape(choice)]):
            for m in re.finditer(rf"(?<!\w)(?:{pattern})(?!\w)", text):
                said = choice
                if choice in _OPPOSITE and _NEGATION.search(text[:m.start()]):
                    said = _OPPOSITE[choice]
                if last is None or m.start() > last[0]:
                    last = (m.start(), said)
    if last is None:
        return 0
    return 1 if last[1] == answer else -1


_MODEL_CONSISTENCY_PROMPT = """\
You are a strict judge with one task: decide whether a model's reasoning supports its final answer.

Rules:
1. Output 1 when the reasoning and the answer mean the same thing.
2. Output 0 when they do not: the reasoning is ambiguous, points the other way, or approves both.

Reasoning (its last lines):
{reasoning}

Answer:
{answer}

Output 1 or 0 only."""


class ModelConsistency:
    """R1-Reward's consistency check with a second model: the last three lines of the reasoning and the
    verdict go to a :class:`~visalign.rewards.judge.JudgeBackend` (text only), which answers 1 (the
    reasoning supports the verdict) or 0. Read as they do: an answer that is exactly ``1`` / ``0`` gives
    1 / -1; otherwise any ``0`` in it gives -1, then any ``1`` gives 1; anything else, or a failed
    request, gives 0.

    Example:
        >>> from visalign.rewards.judge import CallableJudgeBackend
        >>> ModelConsistency(CallableJudgeBackend(lambda r: "1")).check(["image 1 is closer"], ["1"])
        [1]
    """

    def __init__(self, backend: JudgeBackend, labels: Mapping[str, str] | None = None) -> None:
        self.backend = backend
        self.labels = dict(labels or {"1": "image 1 is better", "2": "image 2 is better"})

    def request(self, reasoning: str, answer: str) -> JudgeRequest:
        tail = ";".join(reasoning.strip().split("\n")[-3:])
        return JudgeRequest(parts=[_MODEL_CONSISTENCY_PROMPT.format(reasoning=tail,
                                                                      answer=self.labels.get(answer, answer))])

    @staticmethod
    def read(text: str | None) -> int:
        """The reply as R1-Reward reads it: 1, -1, or 0 (unreadable)."""
        if text is None:
            return 0
        t = text.replace("output:", "").replace("Output:", "").strip()
        if t in ("1", "0"):
            return 1 if t == "1" else -1
        if "0" in t:
            return -1
        if "1" in t:
            return 1
        return 0

    def check(self, reasonings: Sequence[str], answers: Sequence[str | None]) -> list[int]:
        """Consistency of each (reasoning, verdict); 0 without a verdict or reasoning (no request)."""
        todo = [i for i, (r, a) in enumerate(zip(reasonings, answers, strict=True)) if a is not None and r]
        out = [0] * len(reasonings)
        if not todo:
            return out
        replies = self.backend.generate([self.request(reasonings[i], str(answers[i])) for i in todo])
        for i, reply in zip(todo, replies, strict=True):
            out[i] = self.read(reply.text)
        return out

    def close(self) -> None:
        self.backend.close()


def _label_of(sample: Sample, key: str) -> Any:
    label = sample.metadata.get(key)
    if isinstance(label, float) and math.isnan(label):
        return None
    return label


def _choices(sample: Sample, default: Sequence[str] | None) -> list[str] | None:
    choices = sample.metadata.get("choices", default)
    return None if choices is None else [normalise_verdict(str(c)) for c in choices]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    m = re.fullmatch(r"[-+]?\d+(?:\.\d+)?", text.strip())
    return float(m.group(0)) if m else None


class VerdictFormatReward(Reward):
    """1.0 when a judge's answer follows ``<think>...</think><answer>...</answer>`` exactly, else 0.0.

    Example:
        >>> VerdictFormatReward()([Sample(completion="<think>a</think><answer>1</answer>"),
        ...                        Sample(completion="1")]).scores
        [1.0, 0.0]
    """

    name = "verdict_format"

    def score(self, samples: list[Sample]) -> RewardOutput:
        oks = [format_ok(s.completion or "") for s in samples]
        return RewardOutput(scores=[1.0 if ok else 0.0 for ok in oks], details=[{"format_ok": ok} for ok in oks],
                            metrics={"format_ok": sum(oks) / max(1, len(oks))})


class VerdictReward(Reward):
    """Verdict correctness against the label, optionally scaled by reasoning-verdict consistency.

    Per sample: the verdict (:func:`parse_verdict` with the sample's ``metadata["choices"]`` or
    ``choices``) against ``metadata[label_key]``. A categorical label is met by the equal verdict; a
    numeric label (a score) by a numeric verdict within ``tolerance``. Score 1.0 / 0.0; None when the
    sample has no label (details say so). With ``consistency`` (``"rules"`` or a
    :class:`~visalign.rewards.judge.JudgeBackend`) the score is ``correct * (1 + consistency_weight * c)``,
    ``c`` in {1, 0, -1} (R1-Reward: weight 0.5; a wrong verdict scores 0 whatever its reasoning).

    Details: ``answer``, ``label``, ``correct``, ``format_ok``, ``consistency`` (when on), ``error``
    (why there is no verdict). Metrics: ``accuracy`` over labelled samples, ``no_verdict`` (count),
    ``consistency_mean``.

    Args:
        choices: the allowed verdicts when samples do not carry theirs (None: any text, or numbers).
        consistency: None (off), ``"rules"`` or a judge backend (closed with the reward).
        consistency_weight: R1-Reward's 0.5.
        label_key: the metadata key of the label.
        tolerance: numeric verdicts within this of a numeric label are correct.
        cues: verdict cues for the rules checker (default :data:`DEFAULT_CUES`).
    """

    name = "verdict"

    def __init__(self, choices: Sequence[str] | None = None, consistency: str | JudgeBackend | None = None,
                 consistency_weight: float = 0.5, label_key: str = "label", tolerance: float = 0.0,
                 cues: Mapping[str, Sequence[str]] | None = None) -> None:
        if consistency not in (None, "rules") and not isinstance(consistency, JudgeBackend):
            raise ValueError(f"consistency must be None, 'rules' or a JudgeBackend, got {consistency!r}")
        if tolerance < 0:
            raise ValueError(f"tolerance must be >= 0, got {tolerance}")
        self.choices = None if choices is None else [str(c) for c in choices]
        self.consistency = consistency
        self.checker = ModelConsistency(consistency) if isinstance(consistency, JudgeBackend) else None
        self.consistency_weight = float(consistency_weight)
        self.label_key = label_key
        self.tolerance = float(tolerance)
        self.cues = cues

    def _correct(self, answer: str | None, label: Any) -> bool:
        if answer is None:
            return False
        if isinstance(label, (int, float)) and not isinstance(label, bool):
            value = _number(answer)
            return value is not None and abs(value - float(label)) <= self.tolerance + 1e-12
        return answer == normalise_verdict(str(label))

    def score(self, samples: list[Sample]) -> RewardOutput:
        verdicts = [parse_verdict(s.completion, _choices(s, self.choices)) for s in samples]
        labels = [_label_of(s, self.label_key) for s in samples]
        if self.consistency is None:
            agree = [0] * len(samples)
        elif self.checker is not None:
            agree = self.checker.check([v.reasoning for v in verdicts], [v.answer for v in verdicts])
        else:
            agree = [rule_consistency(v.reasoning, v.answer, self.cues, _choices(s, self.choices))
                     for v, s in zip(verdicts, samples, strict=True)]
        scores: list[float | None] = []
        details: list[dict[str, Any]] = []
        n_labelled = n_correct = n_none = 0
        for v, label, c in zip(verdicts, labels, agree, strict=True):
            d: dict[str, Any] = {"answer": v.answer, "label": label, "format_ok": v.format_ok}
            if v.error:
                d["error"] = v.error
                n_none += 1
            if self.consistency is not None:
                d["consistency"] = c
            if label is None:
                d["reason"] = f"no label (metadata[{self.label_key!r}]): not applicable"
                scores.append(None)
                details.append(d)
                continue
            correct = self._correct(v.answer, label)
            n_labelled += 1
            n_correct += correct
            d["correct"] = correct
            bonus = 1.0 + self.consistency_weight * c if self.consistency is not None else 1.0
            scores.append(float(correct) * bonus)
            details.append(d)
        metrics = {"accuracy": n_correct / n_labelled if n_labelled else 0.0, "no_verdict": float(n_none)}
        if self.consistency is not None:
            metrics["consistency_mean"] = sum(agree) / max(1, len(agree))
        return RewardOutput(scores=scores, details=details, metrics=metrics)

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()
