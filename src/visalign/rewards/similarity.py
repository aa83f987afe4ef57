"""Similarity rewards: the render of the generated code against the reference, and TEDS on tables.

- :class:`RenderSimilarityReward` (``render_similarity``) renders the generated code once through the
  shared :class:`~visalign.rewards.render.RenderService` and compares the image with the reference
  image (or the render of the reference code) by an image metric of :mod:`visalign.metrics`.
- :class:`TedsReward` (``teds``) and :class:`TedsStructureReward` (``teds_structure``) compare LaTeX
  or HTML table code with the reference code by PubTabNet's TEDS, without rendering.
- :class:`Table2LatexRLReward` (``table2latex_rl``) is Table2LaTeX-RL's binary recipe on top of both.

Every score is in a bounded range with 1.0 for a perfect match (see :data:`METRICS` for the
normalisation of each metric); None means "not applicable" (no reference, or a reference that could
not be rendered); a generated program that fails gets ``failure_score``.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from typing import Any

from PIL import Image

from ..metrics import cw_ssim, latex_table_to_html, ms_ssim, mse, psnr, ssim, teds
from ..metrics.image import SizePolicy
from .base import Reward, RewardOutput, Sample
from .code import RenderingReward, fill_code
from .render import RenderService

__all__ = [
    "METRICS",
    "RenderSimilarityReward",
    "Table2LatexRLReward",
    "TedsReward",
    "TedsStructureReward",
    "table_html",
]

# metric -> how its raw value becomes the score
METRICS: dict[str, str] = {
    "ssim": "raw SSIM (scikit-image's definition), in [-1, 1]",
    "ms_ssim": "raw MS-SSIM, in [0, 1]; the reference's short side must be >= 161 px",
    "cw_ssim": "raw CW-SSIM (pyssim 0.7.1's definition), in [0, 1]",
    "psnr": "min(PSNR, psnr_max) / psnr_max, in [0, 1]; identical images (PSNR = inf) score 1",
    "mse": "1 - sqrt(MSE) / 255 (one minus the RMS error on a 0..1 scale), in [0, 1]",
}

ImageMetric = Callable[[Image.Image, Image.Image], float]


class RenderSimilarityReward(RenderingReward):
    """``render_similarity``: how much the generated image looks like the reference, in [0, 1] mostly.

    The generated image is ``Sample.image`` when given (text-to-image), else the render of
    ``Sample.code`` (or of the code extracted from ``Sample.completion``); the reference is
    ``Sample.reference_image``, else the render of ``Sample.reference_code`` (rendered only for the
    samples that have no reference image). All renders go through one shared service, so a
    composite renders each program once.

    Scores, by ``metric`` (the raw value is always in the details as ``raw``):

    - ``"ssim"`` (default), ``"ms_ssim"``, ``"cw_ssim"``: the metric itself;
    - ``"psnr"``: ``min(psnr, psnr_max) / psnr_max`` (50 dB by default: above it two 8-bit renders
      differ by less than ~1 grey level RMS), identical images 1.0;
    - ``"mse"``: ``1 - sqrt(mse) / 255``, bounded and increasing with similarity like the others
      (``1 / (1 + mse)`` on 0..255 values is ~0 for any visible difference, and a negative MSE is
      unbounded and would dominate a weighted sum);
    - a callable ``f(pred, ref) -> float`` on PIL images: its value.

    TEDS is not an image metric: use :class:`TedsReward` for tables.

    Outcomes:

    - no reference image and no reference code: None (``reason: "no reference"``);
    - the reference code failed to render: None (not the policy's fault), with
      ``reference_error_kind`` / ``reference_error``;
    - nothing generated (no image, code or completion) or no ``kind`` to render with: None;
    - no code in the completion: ``failure_score`` with ``error_kind: "no_code"``;
    - the render failed (including ``blank``): ``failure_score`` with ``error_kind`` and ``error``;
    - sizes differ with ``resize="error"``: ``failure_score`` with ``error_kind: "size_mismatch"``;
    - the metric cannot compare the pair (e.g. MS-SSIM on a reference under 161 px): None with
      ``reason: "metric error"``.

    Args:
        metric: ``"ssim"``, ``"ms_ssim"``, ``"cw_ssim"``, ``"psnr"``, ``"mse"`` or a callable.
        service: the shared render service (default: one created on first use).
        failure_score: the score of a generated program that did not render. 0.0 by default (the
            worst SSIM of a real pair is rarely below 0).
        resize: how sizes that differ are brought together, passed to the metric as its
            ``size_policy``: ``"resize_pred"`` (default: the render is resized to the reference),
            ``"pad"`` (white padding, so a wrong figure size costs), or ``"error"`` (a size mismatch
            is a failure).
        psnr_max: the PSNR in dB that scores 1.0 with ``metric="psnr"``.
        metric_options: extra keyword arguments for the metric (e.g. ``{"width": 30}`` for CW-SSIM).

    Example:
        >>> from visalign.rewards import RenderService
        >>> svg = '<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32"><rect width="{}" height="32"/></svg>'
        >>> with RenderService(timeout=10, workers=1) as service:
        ...     reward = RenderSimilarityReward("ssim", service=service)
        ...     out = reward([Sample(code=svg.format(16), reference_code=svg.format(16), kind="svg"),
        ...                   Sample(code=svg.format(12), reference_code=svg.format(16), kind="svg"),
        ...                   Sample(code="<svg", reference_code=svg.format(16), kind="svg"),
        ...                   Sample(code=svg.format(16), kind="svg")])
        >>> out.scores[0], out.scores[1] < 1, out.scores[2], out.details[2]["error_kind"], out.scores[3]
        (1.0, True, 0.0, 'syntax', None)
    """

    name = "render_similarity"

    def __init__(self, metric: str | ImageMetric = "ssim", *, service: RenderService | None = None,
                 failure_score: float = 0.0, resize: SizePolicy = "resize_pred", psnr_max: float = 50.0,
                 metric_options: dict[str, Any] | None = None) -> None:
        super().__init__(service)
        if isinstance(metric, str):
            if metric == "teds":
                raise ValueError("teds compares table code, not images: use TedsReward / TedsStructureReward")
            if metric not in METRICS:
                raise ValueError(f"unknown metric {metric!r}; choose one of {sorted(METRICS)} or pass a callable")
        elif not callable(metric):
            raise TypeError(f"metric must be a name or a callable, got {type(metric).__name__}")
        if resize not in ("resize_pred", "pad", "error"):
            raise ValueError(f"resize must be 'resize_pred', 'pad' or 'error', got {resize!r}")
        if not (psnr_max > 0 and math.isfinite(psnr_max)):
            raise ValueError(f"psnr_max must be a positive finite number, got {psnr_max!r}")
        self.metric = metric
        self.failure_score = float(failure_score)
        self.resize = resize
        self.psnr_max = float(psnr_max)
        self.metric_options = dict(metric_options or {})

    @property
    def metric_name(self) -> str:
        return self.metric if isinstance(self.metric, str) else getattr(self.metric, "__name__", "custom")

    def compare(self, pred: Image.Image, ref: Image.Image) -> tuple[float, float]:
        """(score, raw metric value) of one image pair; raises ``ValueError`` when the metric cannot compare them."""
        opts = self.metric_options
        m = self.metric
        if callable(m):
            raw = float(m(pred, ref, **opts))
            return raw, raw
        if m == "ssim":
            raw = ssim(pred, ref, size_policy=self.resize, **opts)
        elif m == "ms_ssim":
            raw = ms_ssim(pred, ref, size_policy=self.resize, **opts)
        elif m == "cw_ssim":
            raw = cw_ssim(pred, ref, size_policy=self.resize, **opts)
        elif m == "psnr":
            raw = psnr(pred, ref, size_policy=self.resize, **opts)
            return (1.0 if math.isinf(raw) else min(raw, self.psnr_max) / self.psnr_max), raw
        else:  # mse
            raw = mse(pred, ref, size_policy=self.resize, **opts)
            return 1.0 - math.sqrt(raw) / 255.0, raw
        return raw, raw

    def prepare(self, samples: list[Sample]) -> None:
        """Render what this reward reads: references without an image, generated code without an image."""
        refs = [s for s in samples if s.reference_image is None and s.reference_code is not None
                and s.kind is not None]
        if refs:
            self.render_service().render(refs, reference=True)
        self.render([s for s in samples if s.image is None and s.kind is not None
                     and (s.reference_image is not None or s.reference_code is not None)])

    def _one(self, s: Sample) -> tuple[float | None, dict[str, Any]]:
        d: dict[str, Any] = {"metric": self.metric_name}
        if s.reference_image is None and s.reference_code is None:
            return None, {**d, "reason": "no reference"}
        target = s.target_image
        if target is None:
            if s.kind is None:
                return None, {**d, "reason": "no renderer kind for the reference code"}
            ref = s.reference_rendered
            return None, {**d, "reason": "reference failed to render",
                          "reference_error_kind": ref.error_kind if ref else None,
                          "reference_error": ref.error if ref else None}
        if s.image is None:
            if s.code is None and s.completion is None:
                return None, {**d, "reason": "nothing generated"}
            if s.kind is None:
                return None, {**d, "reason": "no renderer kind"}
            if s.code is None or s.rendered is None:
                return self.failure_score, {**d, "error_kind": "no_code", "error": f"no {s.kind} code found"}
            if not s.rendered.ok:
                return self.failure_score, {**d, "error_kind": s.rendered.error_kind, "error": s.rendered.error}
        pred = s.generated_image
        assert pred is not None
        if self.resize == "error" and pred.size != target.size:
            return self.failure_score, {**d, "error_kind": "size_mismatch",
                                        "error": f"render {pred.size} vs reference {target.size} (WxH)"}
        try:
            score, raw = self.compare(pred, target)
        except ValueError as err:
            return None, {**d, "reason": "metric error", "error": str(err)}
        return score, {**d, "raw": raw}

    def score(self, samples: list[Sample]) -> RewardOutput:
        self.prepare(samples)
        pairs = [self._one(s) for s in samples]
        fails = Counter(d["error_kind"] for _, d in pairs if "error_kind" in d)
        metrics = {f"fail/{k}": float(v) for k, v in fails.items()}
        return RewardOutput([p[0] for p in pairs], [p[1] for p in pairs], metrics)


# --------------------------------------------------------------------------------------------------
# TEDS on table code

_TABLE_TAG = re.compile(r"<(/?)table\b[^>]*>", re.I)


def table_html(code: str, kind: str) -> str:
    """The first table of ``code`` as the HTML that :func:`~visalign.metrics.teds` compares, or ``""``.

    ``kind="latex"``: :func:`~visalign.metrics.latex_table_to_html`. ``kind="html"``: the first
    ``<table>...</table>`` element wherever it sits (inside a ``div`` too; nested tables are kept in
    it; an unclosed one runs to the end), since TEDS only looks at tables directly in ``<body>``.

    Example:
        >>> table_html("<div><table><tr><td>1</td></tr></table></div>", "html")
        '<table><tr><td>1</td></tr></table>'
        >>> table_html("\\\\begin{tabular}{c} 1 \\\\end{tabular}", "latex")
        '<table><tbody><tr><td>1</td></tr></tbody></table>'
    """
    if kind == "latex":
        return latex_table_to_html(code)
    if kind != "html":
        raise ValueError(f"table kind must be 'latex' or 'html', got {kind!r}")
    depth, start = 0, None
    for m in _TABLE_TAG.finditer(code):
        if m.group(1) == "":
            if start is None:
                start = m.start()
            depth += 1
        elif start is not None:
            depth -= 1
            if depth == 0:
                return code[start:m.end()]
    return code[start:] if start is not None else ""


def _table_kind(s: Sample) -> str | None:
    if s.kind in ("latex", "html"):
        return s.kind
    if s.kind is None and s.reference_code is not None:  # guess from the reference
        if re.search(r"<table\b", s.reference_code, re.I):
            return "html"
        if re.search(r"\\begin\{(?:tabular|longtable|array)", s.reference_code):
            return "latex"
    return None


class TedsReward(Reward):
    """``teds``: PubTabNet TEDS between the generated table code and the reference table code.

    Code only, nothing is rendered: both sides go through :func:`table_html` (LaTeX tables through
    :func:`~visalign.metrics.latex_table_to_html`, HTML tables as their first ``<table>``) and are
    compared by :func:`~visalign.metrics.teds` (``structure_only`` for TEDS-S).

    The table language is the sample's ``kind`` (``latex`` or ``html``; when the kind is None it is
    guessed from the reference code). Outcomes: no reference code, another kind, or a reference with
    no table: None; a completion with no code or a code with no table: 0.0 (``reason`` in the
    details); else the TEDS in [0, 1] (1.0 = identical tables).

    Example:
        >>> ref = "\\\\begin{tabular}{cc} 1 & 2 \\\\\\\\ 3 & 4 \\\\end{tabular}"
        >>> out = TedsReward()([Sample(completion=f"```latex\\n{ref}\\n```", reference_code=ref, kind="latex"),
        ...                     Sample(completion="```latex\\n" + ref.replace("4", "5") + "\\n```",
        ...                            reference_code=ref, kind="latex"),
        ...                     Sample(completion="no table", reference_code=ref, kind="latex"),
        ...                     Sample(completion=ref, kind="latex")])
        >>> [None if s is None else round(s, 4) for s in out.scores]
        [1.0, 0.8571, 0.0, None]
    """

    name = "teds"
    structure_only = False

    def _one(self, s: Sample) -> tuple[float | None, dict[str, Any]]:
        if s.reference_code is None:
            return None, {"reason": "no reference code"}
        kind = _table_kind(s)
        if kind is None:
            return None, {"reason": f"not a table kind: {s.kind!r}"}
        ref_html = table_html(s.reference_code, kind)
        if not ref_html:
            return None, {"reason": "no table in the reference code"}
        if s.code is None and s.completion is None:
            return None, {"reason": "nothing generated"}
        if s.code is None:
            return 0.0, {"reason": "no code", "table_kind": kind}
        pred_html = table_html(s.code, kind)
        if not pred_html:
            return 0.0, {"reason": "no table in the code", "table_kind": kind}
        return teds(pred_html, ref_html, structure_only=self.structure_only), {"table_kind": kind}

    def score(self, samples: list[Sample]) -> RewardOutput:
        fill_code([s for s in samples if _table_kind(s) is not None])
        pairs = [self._one(s) for s in samples]
        return RewardOutput([p[0] for p in pairs], [p[1] for p in pairs])


class TedsStructureReward(TedsReward):
    """``teds_structure``: TEDS-S, the structure-only TEDS (tags, ``colspan``, ``rowspan``; no cell text).

    Same inputs and outcomes as :class:`TedsReward`.

    Example:
        >>> ref = "\\\\begin{tabular}{cc} 1 & 2 \\\\\\\\ 3 & 4 \\\\end{tabular}"
        >>> TedsStructureReward()([Sample(code=ref.replace("4", "5"), reference_code=ref, kind="latex")]).scores
        [1.0]
    """

    name = "teds_structure"
    structure_only = True


class Table2LatexRLReward(RenderingReward):
    """``table2latex_rl``: Table2LaTeX-RL's binary reward: TEDS-S < 0.3 → 0, else CW-SSIM > 0.6 → 1, else 0.

    The structure gate (:class:`TedsStructureReward`) runs on code; only the samples that pass it are
    rendered and compared with CW-SSIM (:class:`RenderSimilarityReward`, ``metric="cw_ssim"``).
    Score None where TEDS-S is None (no reference code) or the CW-SSIM is None (the reference could
    not be rendered); a failed render scores 0.

    Differences from the paper's code, on purpose: CW-SSIM here is pyssim's (the paper's is a
    one-level Haar split with unwindowed SSIM on wrapping uint8 sums), and renders are cropped to
    the table instead of a mostly white letter page, so the 0.6 threshold may want recalibrating.

    Args:
        service: the shared render service.
        teds_threshold: the TEDS-S gate (0.3).
        cw_ssim_threshold: CW-SSIM above it scores 1 (0.6).

    Example:
        >>> reward = Table2LatexRLReward()
        >>> ref = "\\\\begin{tabular}{cc} 1 & 2 \\\\\\\\ 3 & 4 \\\\end{tabular}"
        >>> reward([Sample(code="\\\\begin{tabular}{c} a \\\\end{tabular}", reference_code=ref, kind="latex")]).scores
        [0.0]
    """

    name = "table2latex_rl"
    needs_reference_render = False

    def __init__(self, service: RenderService | None = None, *, teds_threshold: float = 0.3,
                 cw_ssim_threshold: float = 0.6) -> None:
        super().__init__(service)
        self.teds_threshold = teds_threshold
        self.cw_ssim_threshold = cw_ssim_threshold
        self._structure = TedsStructureReward()
        self._visual = RenderSimilarityReward("cw_ssim", service=service)

    def bind(self, service: RenderService) -> Table2LatexRLReward:
        super().bind(service)
        self._visual.bind(service)
        return self

    def score(self, samples: list[Sample]) -> RewardOutput:
        gate = self._structure(samples)
        passed = [i for i, sc in enumerate(gate.scores) if sc is not None and sc >= self.teds_threshold]
        scores: list[float | None] = [None if sc is None else 0.0 for sc in gate.scores]
        details: list[dict[str, Any]] = [{"teds_structure": sc, **d} for sc, d in zip(gate.scores, gate.details,
                                                                                     strict=True)]
        if passed:
            self._visual.bind(self.render_service())
            visual = self._visual([samples[i] for i in passed])
            for i, sc, d in zip(passed, visual.scores, visual.details, strict=True):
                details[i].update({"cw_ssim": sc, **{k: v for k, v in d.items() if k != "metric"}})
                scores[i] = None if sc is None else float(sc > self.cw_ssim_threshold)
        return RewardOutput(scores, details)

    def close(self) -> None:
        self._visual.close()
        super().close()
