"""The ``vlm_judge`` reward: render what the judge will look at, ask the backend, score the answers."""

from __future__ import annotations

from typing import Any

from ..base import RewardOutput, Sample
from ..code import RenderingReward
from ..render import RenderService
from .backend import JudgeBackend, JudgeRequest
from .presets import JudgePreset, Skip, get_preset

__all__ = ["VlmJudgeReward"]


class VlmJudgeReward(RenderingReward):
    """Ask a VLM judge to score each sample, with one of the presets.

    Samples with a completion but no code get their code extracted
    (:func:`~visalign.rewards.code.fill_code`), then each distinct program is rendered once through
    the reward's :class:`~visalign.rewards.render.RenderService` (``service``, or the one a
    :class:`~visalign.rewards.composite.CompositeReward` binds; without either, a private one started
    on first need and closed with the reward); so are reference programs without a reference image.
    Then every judgeable sample of the batch goes to the backend in one call.

    Scores follow the conventions of :mod:`visalign.rewards.judge`: no code / failed render / blank → ``no_output_score``
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
        >>> from PIL import Image
        >>> from visalign.rewards import Sample
        >>> from visalign.rewards.judge import CallableJudgeBackend
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
