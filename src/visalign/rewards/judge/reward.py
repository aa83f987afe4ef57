"""The ``vlm_judge`` reward: render what the judge will look at, ask the backend, score the answers
(one sample per request, or pairs of candidates of a group: ``mode="pairwise"``)."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..base import RewardOutput, Sample
from ..code import RenderingReward
from ..render import RenderService
from .backend import JudgeBackend, JudgeRequest, JudgeResponse
from .pairwise import SCORINGS, bradley_terry, check_pairs, combine_votes, plan_pairs, win_rates
from .presets import MODES, JudgePreset, Skip, get_preset

__all__ = ["VlmJudgeReward"]

_ANCHORS = ("first", "reference")
_PAIRWISE_DEFAULTS = {"pairs": "all", "anchor": "first", "swap": True, "scoring": "win_rate"}


class VlmJudgeReward(RenderingReward):
    """Ask a VLM judge to score each sample, with one of the presets.

    Samples with a completion but no code get their code extracted
    (:func:`~visalign.rewards.code.fill_code`), then each distinct program is rendered once through
    the reward's :class:`~visalign.rewards.render.RenderService` (``service``, or the one a
    :class:`~visalign.rewards.composite.CompositeReward` binds; without either, a private one started
    on first need and closed with the reward); so are reference programs without a reference image.
    Then every request of the batch goes to the backend in one call.

    **Pointwise** (the default; the preset's ``mode``): one request per sample. Scores follow the
    conventions of :mod:`visalign.rewards.judge`: no code / failed render / blank → ``no_output_score``
    (0.0, no judge call); no reference (or no prompt for ``pointwise``) → None; unparsable answer →
    the preset's ``parse_failure_score``; failed request → ``failure_score`` (default: the preset's
    ``parse_failure_score``). Details per sample: ``preset``, ``judged``, and either ``reason`` (not
    judged) or ``answer`` (the raw answer, truncated to ``max_answer_chars``), ``parse_failed`` (+
    ``parse_error``), what was parsed (``errors`` / ``severity_sum`` / ``raw_score``), ``latency``,
    ``elapsed``, ``attempts``, ``request_failed`` (+ ``error``). Metrics: ``judged``, ``skipped``,
    ``parse_failures``, ``request_failures``, ``mean_latency`` (over answered requests; 0.0 when none).

    **Pairwise** (``mode="pairwise"``, a pairwise preset: ``trained_judge`` on a judge trained with
    ``judge_mode: pairwise``): the judge is shown two candidates, Image 1 and Image 2, and names the better
    one; a sample's score is its **win rate** among the comparisons it took part in (a win 1, a tie 0.5,
    a loss 0), in [0, 1], or its Bradley-Terry strength (``scoring="bradley_terry"``,
    :func:`~visalign.rewards.judge.pairwise.bradley_terry`). Samples are compared within their
    ``group`` (the prompt's GRPO group; a sample without a group is a group of its own).

    * ``pairs``: which pairs are asked: ``"all"`` (``n (n - 1) / 2`` per group of ``n`` judged
      candidates), ``"anchor"`` (each candidate against one anchor: ``anchor="first"``, the group's
      first judged candidate, ``n - 1`` pairs; ``anchor="reference"``, the sample's reference image,
      ``n`` pairs, for judges that do not show a reference themselves), or ``k`` (an int: each
      candidate against the next ``k`` of its group, cyclically; ``n k`` pairs when ``n > 2 k``).
    * ``swap`` (default on): each pair is asked in both orders, A/B and B/A, so that a judge that
      favours a position cannot favour a sample: the two votes are averaged, and a pair whose orders
      disagree is a tie. Requests per batch = pairs x (2 if ``swap`` else 1).
    * a sample with no output (no code, failed render, blank when the preset skips blanks) is not shown
      to the judge, scores ``no_output_score`` (0.0), and counts as a loss against every judged
      candidate of its group (no request), so a rendered sample always beats a failed one;
    * an answer with no usable verdict (garbage, a failed request) is **no decision** for that order,
      counted in ``metrics["no_decision/<reason>"]`` with a typed reason (``request_failed``, or the
      verdict's: ``no_answer_block``, ``empty_answer``, ``not_a_choice``, ``several_choices``); a pair
      without any decision is left out of both samples' scores, and a judged candidate with no decided
      comparison (and no free win) scores ``failure_score`` (default 0.5, neither better nor worse); the
      batch never fails;
    * a pair of byte-identical images (two samples that rendered the same, or a sample that reproduced
      its reference exactly with ``anchor="reference"``) is a tie, 0.5, without a request (``identical``
      in its comparisons, ``metrics["identical_pairs"]``);
    * a judged sample with nothing to compare with (alone in its group) scores None (not applicable).

    Details per judged sample: ``wins``, ``ties``, ``losses``, ``undecided`` (its judged pairs),
    ``free_wins`` (against no-output samples) and ``comparisons``, each ``{"vs": index | "reference", "result": share,
    "votes": [share per order asked], "no_decision": [reasons]}`` from this sample's side. Metrics:
    ``judged`` (candidates shown), ``skipped``, ``pairs``, ``requests``, ``identical_pairs``, ``undecided_pairs``,
    ``swap_disagreements`` (pairs whose two orders chose different samples), ``parse_failures``,
    ``request_failures``, ``no_decision`` (+ per reason), ``picked_first_mean`` (share of verdicts for
    Image 1: a position-bias gauge, 0.5 for an unbiased judge when ``swap`` is on), ``mean_latency``.

    Args:
        backend: the judge; closed with the reward. None: a local
            :class:`~visalign.rewards.judge.TransformersJudgeBackend` loaded from ``path``.
        preset: a preset name or :class:`JudgePreset` (``get_preset("pointwise", scale=5)``).
        path: a local judge model directory: the backend when none is given (with
            ``backend_options``), and ``judge.json`` for ``preset="trained_judge"``.
        mode: ``"pointwise"`` or ``"pairwise"``; None: the preset's (a preset given by name:
            pointwise). A trained judge must be asked in the mode it was trained in.
        pairs, anchor, swap, scoring: pairwise options (above); setting them in pointwise mode raises.
        backend_options: keyword arguments of the local backend (``max_new_tokens``, ``batch_size``,
            ``device``, ``dtype``).
        service: the shared render service.
        failure_score: pointwise, the score of a request that failed after all retries; pairwise, the
            score of a judged candidate with no decided comparison.
        max_answer_chars: longest raw answer kept in details (pointwise).

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
        >>> reward = get_reward("vlm_judge", preset="trained_judge", path="out/judge/final/model",
        ...                     mode="pairwise", pairs="all", swap=True)  # doctest: +SKIP
    """

    name = "vlm_judge"
    needs_render = True
    needs_reference_render = True

    def __init__(self, backend: JudgeBackend | None = None, preset: str | JudgePreset = "visual_erm", *,
                 path: str | os.PathLike[str] | None = None, mode: str | None = None, pairs: str | int = "all",
                 anchor: str = "first", swap: bool = True, scoring: str = "win_rate",
                 backend_options: dict[str, Any] | None = None, service: RenderService | None = None,
                 failure_score: float | None = None, max_answer_chars: int = 2000) -> None:
        super().__init__(service)
        self.preset = _resolve_preset(preset, path, mode)
        pairwise_options = {"pairs": pairs, "anchor": anchor, "swap": swap, "scoring": scoring}
        if self.preset.mode == "pointwise":
            changed = sorted(k for k, v in pairwise_options.items() if v != _PAIRWISE_DEFAULTS[k])
            if changed:
                raise ValueError(f"{', '.join(changed)}: pairwise options, but preset {self.preset.name!r} "
                                 "judges one sample at a time (mode='pointwise')")
        else:
            check_pairs(pairs)
            if anchor not in _ANCHORS:
                raise ValueError(f"anchor must be one of {list(_ANCHORS)}, got {anchor!r}")
            if anchor != "first" and pairs != "anchor":
                raise ValueError(f"anchor={anchor!r} applies to pairs='anchor', got pairs={pairs!r}")
            if anchor == "reference" and "reference" in self.preset.images:
                raise ValueError("anchor='reference' compares each sample with its reference image, but this "
                                 "judge already shows the reference first: use anchor='first' or pairs='all'")
            if scoring not in SCORINGS:
                raise ValueError(f"scoring must be one of {list(SCORINGS)}, got {scoring!r}")
        self.pairs, self.anchor, self.swap, self.scoring = pairs, anchor, bool(swap), scoring
        self.failure_score = self.preset.parse_failure_score if failure_score is None else float(failure_score)
        self.max_answer_chars = max_answer_chars
        if backend is None:
            if path is None:
                raise ValueError("pass a judge backend, or path= (a local model directory) for the local backend")
            from .transformers_backend import TransformersJudgeBackend

            backend = TransformersJudgeBackend(os.fspath(path), **(backend_options or {}))
        elif backend_options:
            raise ValueError("backend_options configure the local backend built from path; a backend was given")
        self.backend = backend

    @property
    def mode(self) -> str:
        return self.preset.mode

    def prepare(self, samples: list[Sample]) -> None:
        """Extract and render what the judge will look at (generated programs, reference programs)."""
        if self.preset.needs_reference or (self.mode == "pairwise" and self.anchor == "reference"):
            refs = [s for s in samples if s.reference_image is None and s.reference_code is not None
                    and s.kind is not None]
            if refs:
                self.render_service().render(refs, reference=True)
        todo = [s for s in samples if s.image is None and (s.code is not None or s.completion is not None)]
        if todo:
            self.render(todo)

    def _ask(self, requests: list[JudgeRequest]) -> list[JudgeResponse]:
        responses = self.backend.generate(requests) if requests else []
        if len(responses) != len(requests):
            raise RuntimeError(f"the judge backend answered {len(responses)} of {len(requests)} requests")
        return responses

    def score(self, samples: list[Sample]) -> RewardOutput:
        self.prepare(samples)
        if self.mode == "pairwise":
            return self._score_pairwise(samples)
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
        responses = self._ask(requests)
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

    def _score_pairwise(self, samples: list[Sample]) -> RewardOutput:
        """Plan the pairs of each group, ask each in one or both orders, score the outcomes."""
        scores: list[float | None] = [None] * len(samples)
        details: list[dict[str, Any]] = [{} for _ in samples]
        images, groups, group_of = self._pairwise_candidates(samples, scores, details)
        plan = self._plan(groups, images)
        asked = self._ask_pairs(samples, images, plan)
        results = [combine_votes(v) for v in asked.votes]
        outcomes, comparisons = _pair_outcomes(plan, asked, results, images, group_of)
        free_wins: Counter[int] = Counter()
        for members in groups.values():
            for i in (m for m in members if m in images):
                for f in (m for m in members if m not in images):
                    outcomes.append((i, f, 1.0))
                    free_wins[i] += 1
        strengths = win_rates(outcomes) if self.scoring == "win_rate" else bradley_terry(outcomes)
        for i in images:
            scores[i], details[i] = self._pairwise_detail(comparisons[i], free_wins[i], strengths.get(i))
        metrics: dict[str, float] = {
            "judged": float(len(images)), "skipped": float(len(samples) - len(images)), "pairs": float(len(plan)),
            "requests": float(asked.requests), "identical_pairs": float(len(asked.identical)),
            "undecided_pairs": float(sum(r is None for r in results)),
            "swap_disagreements": float(sum(len(v) == 2 and None not in v and v[0] != v[1] for v in asked.votes)),
            "parse_failures": float(asked.parse_failures), "request_failures": float(asked.request_failures),
            "no_decision": float(sum(asked.no_decision.values())),
            **{f"no_decision/{k}": float(c) for k, c in sorted(asked.no_decision.items())},
            "mean_latency": sum(asked.latencies) / len(asked.latencies) if asked.latencies else 0.0}
        if asked.first_shares:
            metrics["picked_first_mean"] = sum(asked.first_shares) / len(asked.first_shares)
        return RewardOutput(scores=scores, details=details, metrics=metrics)

    def _pairwise_candidates(self, samples: list[Sample], scores: list[float | None], details: list[dict[str, Any]],
                             ) -> tuple[dict[int, Image.Image], dict[Hashable, list[int]], dict[int, Hashable]]:
        """The judged candidates' images, the groups (judged and no-output members, in batch order) and each
        member's group; skipped samples get their score and reason in ``scores`` / ``details``."""
        images: dict[int, Image.Image] = {}
        groups: dict[Hashable, list[int]] = {}
        group_of: dict[int, Hashable] = {}
        for i, sample in enumerate(samples):
            got = self.preset.candidate(sample)
            if not isinstance(got, Skip) and self.anchor == "reference" and sample.target_image is None:
                got = Skip(None, "no reference image to compare with (anchor='reference')")
            if isinstance(got, Skip):
                scores[i] = got.score
                details[i] = {"preset": self.preset.name, "judged": False, "reason": got.reason}
                if got.score is None:
                    continue
            else:
                images[i] = got
            group_of[i] = ("group", sample.group) if sample.group is not None else ("alone", i)
            groups.setdefault(group_of[i], []).append(i)
        return images, groups, group_of

    def _plan(self, groups: dict[Hashable, list[int]], images: dict[int, Image.Image]) -> list[tuple[int, int | None]]:
        """The pairs asked, ``(a, b)``; ``b`` None: ``a``'s reference image."""
        plan: list[tuple[int, int | None]] = []
        for members in groups.values():
            judged = [m for m in members if m in images]
            if self.pairs == "anchor" and self.anchor == "reference":
                plan += [(m, None) for m in judged]
            else:
                plan += plan_pairs(judged, self.pairs)
        return plan

    def _ask_pairs(self, samples: list[Sample], images: dict[int, Image.Image],
                   plan: list[tuple[int, int | None]]) -> _Asked:
        """Ask each planned pair in one or both orders and read the votes (each ``a``'s share). A pair of
        byte-identical images is a tie (one vote 0.5) without a request: the judge has nothing to tell
        apart, and asking it would pay one position."""
        asked = _Asked(votes=[[] for _ in plan], reasons=[[] for _ in plan])
        requests: list[JudgeRequest] = []
        order: list[tuple[int, bool]] = []  # per request: (pair, a shown as Image 1)
        for k, (a, b) in enumerate(plan):
            image_b = images[b] if b is not None else samples[a].target_image
            if _same_pixels(images[a], image_b):
                asked.votes[k].append(0.5)
                asked.identical.append(k)
                continue
            requests.append(self.preset.request(samples[a], images[a], image_b))
            order.append((k, True))
            if self.swap:
                requests.append(self.preset.request(samples[a], image_b, images[a]))
                order.append((k, False))
        asked.requests = len(requests)
        for (k, a_first), response in zip(order, self._ask(requests), strict=True):
            vote: float | None = None
            if response.text is None:
                asked.request_failures += 1
                reason = "request_failed"
            else:
                asked.latencies.append(response.latency)
                judgement = self.preset.parse(response.text)
                if judgement.parse_failed:
                    asked.parse_failures += 1
                    reason = judgement.reason or "unparsable"
                else:
                    asked.first_shares.append(judgement.score)
                    vote = judgement.score if a_first else 1.0 - judgement.score
            asked.votes[k].append(vote)
            if vote is None:
                asked.reasons[k].append(reason)
                asked.no_decision[reason] += 1
        return asked

    def _pairwise_detail(self, mine: list[dict[str, Any]], free_wins: int,
                         strength: float | None) -> tuple[float | None, dict[str, Any]]:
        """A judged candidate's score and details from its comparisons."""
        decided = [c["result"] for c in mine if c["result"] is not None]
        d: dict[str, Any] = {"preset": self.preset.name, "judged": True, "wins": sum(r == 1.0 for r in decided),
                             "ties": sum(0.0 < r < 1.0 for r in decided), "losses": sum(r == 0.0 for r in decided),
                             "undecided": len(mine) - len(decided), "free_wins": free_wins, "comparisons": mine}
        if not mine and not free_wins:
            d.update(judged=False, reason="nothing to compare with: alone in its group")
            return None, d
        if not decided and not free_wins:
            d["reason"] = "no comparison decided: every answer was unusable"
            return self.failure_score, d
        return strength, d

    def close(self) -> None:
        """Close the backend and the private render service (a shared ``service`` is left open)."""
        self.backend.close()
        super().close()


@dataclass
class _Asked:
    """What the judge said about the planned pairs: per pair its votes (``a``'s share per order asked;
    None: no decision) and no-decision reasons, and the counts behind the metrics."""

    votes: list[list[float | None]]
    reasons: list[list[str]]
    requests: int = 0
    identical: list[int] = field(default_factory=list)  # pairs of byte-identical images: a tie, not asked
    parse_failures: int = 0
    request_failures: int = 0
    no_decision: Counter[str] = field(default_factory=Counter)
    first_shares: list[float] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)


def _same_pixels(a: Image.Image, b: Image.Image) -> bool:
    """Byte-identical images (same size, mode and pixels)."""
    return a is b or (a.size == b.size and a.mode == b.mode and a.tobytes() == b.tobytes())


def _pair_outcomes(plan: list[tuple[int, int | None]], asked: _Asked, results: list[float | None],
                   images: dict[int, Image.Image], group_of: dict[int, Hashable],
                   ) -> tuple[list[tuple[Hashable, Hashable, float]], dict[int, list[dict[str, Any]]]]:
    """The decided outcomes between players (sample indices, or a group's reference image) and each judged
    sample's comparisons, from its own side."""
    outcomes: list[tuple[Hashable, Hashable, float]] = []
    comparisons: dict[int, list[dict[str, Any]]] = {i: [] for i in images}
    identical = set(asked.identical)
    for k, ((a, b), v, why, r) in enumerate(zip(plan, asked.votes, asked.reasons, results, strict=True)):
        for me, other, flip in ((a, b, False), (b, a, True)):
            if me is None:
                continue
            c: dict[str, Any] = {"vs": "reference" if other is None else other,
                                 "result": None if r is None else (1.0 - r if flip else r),
                                 "votes": [None if x is None else (1.0 - x if flip else x) for x in v]}
            if why:
                c["no_decision"] = list(why)
            if k in identical:
                c["identical"] = True
            comparisons[me].append(c)
        if r is not None:
            outcomes.append((a, b if b is not None else ("reference", group_of[a]), r))
    return outcomes, comparisons


def _resolve_preset(preset: str | JudgePreset, path: str | os.PathLike[str] | None, mode: str | None) -> JudgePreset:
    """The preset of ``preset`` (a name or a preset) asked in ``mode`` (None: the preset's)."""
    if mode is not None and mode not in MODES:
        raise ValueError(f"mode must be one of {list(MODES)}, got {mode!r}")
    if isinstance(preset, JudgePreset):
        if mode is not None and mode != preset.mode:
            raise ValueError(f"preset {preset.name!r} is {preset.mode}, not {mode}")
        return preset
    if preset == "trained_judge":
        if path is None:
            raise ValueError("preset 'trained_judge' reads judge.json from the judge's model directory: pass path=")
        return get_preset(preset, path=path, mode=mode or "pointwise")
    if mode == "pairwise":
        raise ValueError(f"preset {preset!r} judges one sample at a time; pairwise judging needs a pairwise preset: "
                         "'trained_judge' on a judge trained with judge_mode: pairwise, or a JudgePreset(mode='pairwise')")
    return get_preset(preset)
