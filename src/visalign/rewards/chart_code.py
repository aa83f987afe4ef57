"""``chart_code``: ChartMimic's low-level code metrics (text, layout, type, colour), and data, as a reward.

The generated and the reference program are rendered once each through the shared
:class:`~visalign.rewards.render.RenderService` with the matplotlib ``chart`` instrument, so the same
renders serve image rewards too; the score compares their traces
(:func:`visalign.metrics.chart_code.compare_chart_traces`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..metrics.chart_code import (
    CHART_INSTRUMENT,
    DATA_KEY,
    F1_KEYS,
    METRIC_GROUPS,
    SCORE_KEYS,
    chart_metrics_from_renders,
)
from ..renderers.base import RenderResult
from .base import Reward, RewardOutput, Sample
from .code import fill_code
from .render import RenderService

METRICS: tuple[str, ...] = ("mean_f1", *F1_KEYS, DATA_KEY)
WEIGHT_KEYS: tuple[str, ...] = (*F1_KEYS, DATA_KEY)
# short names accepted in ``weights``: "text" → "text_f1", ..., "color" → "color_f1"
_WEIGHT_ALIASES = {g: f"{g}_f1" for g in METRIC_GROUPS}


class ChartCodeReward(Reward):
    """Score matplotlib code by ChartMimic's text / layout / type / colour F1 against ``reference_code``.

    Args:
        service: the shared render service (one is created, and closed with the reward, if None);
            the reward asks it for the ``chart`` instrument.
        metric: ``"mean_f1"`` (weighted mean of the four F1, ChartMimic's low-level score on a 0–1
            scale, and of the data score when weighted) or one of ``text_f1``, ``layout_f1``,
            ``type_f1``, ``color_f1``, ``data`` (alone).
        weights: for ``mean_f1``, weights of ``text_f1``, ``layout_f1``, ``type_f1``, ``color_f1``
            and ``data`` (the plotted values: :func:`~visalign.metrics.chart_code.compare_chart_traces`),
            also by the short names ``text``, ``layout``, ``type``, ``color``; missing keys weigh 0.
            Default: the four F1 weigh 1 each, ``data`` 0 (ChartMimic's score). Example:
            ``{"text": 1, "layout": 1, "type": 1, "color": 1, "data": 4}``.
        timeout: seconds per render, for a service created here.
        workers: sandboxed workers, for a service created here.

    The generated program is ``Sample.code``, else the code extracted from ``Sample.completion``.
    Inside a :class:`~visalign.rewards.composite.CompositeReward`, :meth:`bind` switches the reward
    to the composite's shared service.

    Scores: a float in [0, 1]; 0.0 when the generated code is missing, fails to render or its trace
    is malformed (``details["error_kind"]`` says why); None (not applicable) for a sample without
    ``reference_code``, of another renderer kind, or whose reference fails to render (a dataset bug:
    ``details["reference_error_kind"]``). ``details`` hold all twelve P/R/F1 numbers and ``data``. Samples whose
    ``kind`` is None are taken as matplotlib. References shared by several samples (a GRPO group)
    are rendered once; renders already in ``Sample.rendered`` / ``reference_rendered`` are reused.

    Example:
        >>> ref = "import matplotlib.pyplot as plt\\nplt.bar([1, 2], [3, 4], color='red')\\nplt.title('Sales')"
        >>> samples = [Sample(code=ref, reference_code=ref, kind="matplotlib"),
        ...            Sample(code=ref.replace("bar(", "barh("), reference_code=ref, kind="matplotlib"),
        ...            Sample(code="plt.plot(", reference_code=ref, kind="matplotlib"),
        ...            Sample(code=ref, kind="matplotlib")]
        >>> with ChartCodeReward(workers=1) as reward:
        ...     out = reward(samples)
        >>> [None if s is None else round(s, 2) for s in out.scores]
        [1.0, 0.75, 0.0, None]
        >>> out.details[2]["error_kind"]
        'syntax'
    """

    name = "chart_code"
    needs_render = True
    needs_reference_render = True

    def __init__(self, service: RenderService | None = None, metric: str = "mean_f1",
                 weights: Mapping[str, float] | None = None, timeout: float = 10.0,
                 workers: int | None = None) -> None:
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
        if weights is None:
            weights = dict.fromkeys(F1_KEYS, 1.0)
        else:
            unknown = set(weights) - set(WEIGHT_KEYS) - set(_WEIGHT_ALIASES)
            if unknown:
                raise ValueError(f"weights may only name {WEIGHT_KEYS} (or {tuple(_WEIGHT_ALIASES)}), "
                                 f"got {sorted(unknown)}")
            canonical = [_WEIGHT_ALIASES.get(k, k) for k in weights]
            if len(set(canonical)) != len(canonical):
                raise ValueError(f"weights name a metric twice (short and long name): {sorted(weights)}")
            weights = {_WEIGHT_ALIASES.get(k, k): w for k, w in weights.items()}
            values = [float(w) for w in weights.values()]
            if any(not w >= 0 for w in values) or not 0 < sum(values) < float("inf"):
                raise ValueError("weights must be non-negative with a positive sum")
        self.metric = metric
        self.weights = {k: float(weights.get(k, 0.0)) for k in WEIGHT_KEYS}
        self._own_service = service is None
        self.service = service if service is not None else RenderService(timeout=timeout, workers=workers)
        self.service.require_instrument("matplotlib", CHART_INSTRUMENT)

    def bind(self, service: RenderService) -> ChartCodeReward:
        """Render through ``service`` from now on (a composite's shared one); asks it for the ``chart``
        instrument and closes the service this reward created itself. Returns self."""
        if service is not self.service:
            if self._own_service:
                self.service.close()
            self.service = service
            self._own_service = False
        service.require_instrument("matplotlib", CHART_INSTRUMENT)
        return self

    def _combine(self, metrics: Mapping[str, float]) -> float:
        if self.metric != "mean_f1":
            return float(metrics[self.metric])
        total = sum(self.weights.values())
        return float(sum(w * float(metrics[k]) for k, w in self.weights.items() if w) / total)

    def _render(self, samples: list[Sample]) -> None:
        fill_code(samples)  # code from the completion where no code is given
        self.service.render(samples)
        # One render per distinct reference program: render a representative, share its result.
        firsts: dict[str, Sample] = {}
        for s in samples:
            if s.reference_rendered is None and s.reference_code is not None:
                firsts.setdefault(s.reference_code, s)
        self.service.render(list(firsts.values()), reference=True)
        for s in samples:
            if s.reference_rendered is None and s.reference_code in firsts:
                s.reference_rendered = firsts[s.reference_code].reference_rendered

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = [None] * len(samples)
        details: list[dict[str, Any]] = [{} for _ in samples]
        todo = []
        for i, s in enumerate(samples):
            if s.reference_code is None:
                details[i] = {"reason": "no reference_code"}
                continue
            if s.kind is None:
                s.kind = "matplotlib"
            if s.kind != "matplotlib":
                details[i] = {"reason": f"chart_code scores matplotlib code, not {s.kind!r}"}
            else:
                todo.append(i)
        self._render([samples[i] for i in todo])
        counts = {"failed_renders": 0, "reference_failures": 0}
        for i in todo:
            s = samples[i]
            # no code (nothing extracted from the completion): a failed render of its own
            pred = s.rendered if s.rendered is not None else RenderResult.failure("no_output", "no code")
            ref = s.reference_rendered
            try:
                if ref is None:
                    raise ValueError("the reference was not rendered")
                metrics = chart_metrics_from_renders(pred, ref)
            except ValueError as exc:
                details[i] = {"reason": f"reference unusable: {exc}",
                              "reference_error_kind": ref.error_kind if ref is not None else None}
                counts["reference_failures"] += 1
                continue
            score = 0.0 if "pred_error_kind" in metrics else min(max(self._combine(metrics), 0.0), 1.0)
            detail = {k: float(metrics[k]) for k in SCORE_KEYS}
            detail["metric"] = self.metric
            if "pred_error_kind" in metrics:
                detail["error_kind"] = metrics["pred_error_kind"]
                detail["error"] = metrics.get("pred_error")
                counts["failed_renders"] += 1
            scores[i] = score
            details[i] = detail
        return RewardOutput(scores=scores, details=details,
                            metrics={k: float(v) for k, v in counts.items()})

    def close(self) -> None:
        if self._own_service:
            self.service.close()
