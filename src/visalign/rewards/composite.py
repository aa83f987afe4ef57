"""Weighted combinations of rewards, rendered once, with optional per-group normalisation.

GRPO with several rewards has a known failure: summed raw rewards let the one with the widest spread
(or the easiest one) dominate the advantages. Flow-GRPO's remedy is to normalise each reward within
its prompt group, then weight; :class:`CompositeReward` offers that and the plain alternatives:

``"sum"`` (default)
    ``total = sum_j w_j * s_j`` of the raw scores. Scores keep their meaning across batches, which
    evaluation and logs need; the trainer's group advantages normalise the total afterwards.
``"normalize_then_sum"``
    Each reward is z-scored within its group, ``z = (s - mean_g) / (std_g + eps)``, then
    ``total = sum_j w_j * z_j``.
``"sum_then_normalize"``
    ``total = sum_j w_j * s_j``, then z-scored within its group (what TRL does with
    ``reward_weights`` and ``scale_rewards="group"``).

Groups are ``Sample.group``; the samples without a group form one group together. ``std_g`` is the
unbiased standard deviation (``ddof=1``, as ``torch.std`` and TRL) and ``eps = 1e-4`` (TRL, Flow-GRPO);
a group with one applicable score has z = 0.

None ("not applicable") handling, the same in every mode: a child's None never counts as 0. Within
a sample the total uses the children that are applicable there, with their weights rescaled to the
same total ``sum |w|`` as the full set (``missing="renormalize"``): for positive weights that is
imputing each missing reward by the weighted mean of the present ones, so a row with a non-applicable
reward keeps the scale of a complete row. Children with weight 0 are logged but never counted. A
sample whose weighted children are all None scores None. ``missing="zero"`` counts None as 0 instead
(TRL's ``nansum``). In the normalising modes, z-scores are taken over the applicable values only.

Rendering: the composite owns (or is given) one :class:`~visalign.rewards.render.RenderService` and
calls ``bind(service)`` on every child that has a ``bind`` method (see
:class:`~visalign.rewards.code.RenderingReward`; a child that renders through a service of its own
and has no ``bind`` triggers a warning: construct it with the composite's service); before the children run it extracts the code and
renders each distinct program of the batch once (:meth:`~visalign.rewards.render.RenderService.render`; and
the reference code when a child sets ``needs_reference_render``), so every child reads the same
:attr:`Sample.rendered`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np

from .base import Reward, RewardOutput, Sample
from .code import fill_code
from .render import RenderService

__all__ = ["AGGREGATIONS", "CompositeReward", "group_zscores", "weighted_total"]

Aggregation = Literal["sum", "normalize_then_sum", "sum_then_normalize"]
AGGREGATIONS: tuple[str, ...] = ("sum", "normalize_then_sum", "sum_then_normalize")
_RESERVED = frozenset({"weighted_sum"})


def group_zscores(scores: Sequence[float | None], groups: Sequence[Hashable], eps: float = 1e-4
                  ) -> list[float | None]:
    """Z-score ``scores`` within each group: ``(s - mean) / (std + eps)``, unbiased std; None stays None.

    Means and standard deviations are taken over the non-None scores of a group; a group with one
    such score gets z = 0 (its std is taken as 0).

    Example:
        >>> [round(z, 3) for z in group_zscores([1.0, 2.0, 3.0, 5.0], ["a", "a", "a", "b"])]  # std 1, eps 1e-4
        [-1.0, 0.0, 1.0, 0.0]
        >>> group_zscores([1.0, None], [0, 0])
        [0.0, None]
    """
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores but {len(groups)} groups")
    members: dict[Hashable, list[int]] = {}
    for i, (s, g) in enumerate(zip(scores, groups, strict=True)):
        if s is not None:
            members.setdefault(g, []).append(i)
    out: list[float | None] = [None] * len(scores)
    for idx in members.values():
        values = np.array([scores[i] for i in idx], dtype=np.float64)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        z = (values - values.mean()) / (std + eps)
        for i, v in zip(idx, z, strict=True):
            out[i] = float(v)
    return out


def weighted_total(row: Sequence[float | None], weights: Sequence[float],
                   missing: Literal["renormalize", "zero"] = "renormalize") -> float | None:
    """The weighted sum of one sample's child scores, with the module's None convention.

    Example:
        >>> weighted_total([1.0, 0.5], [1.0, 2.0])
        2.0
        >>> weighted_total([1.0, None], [1.0, 2.0])  # 1.0 * (3 / 1): the row keeps the full scale
        3.0
        >>> weighted_total([1.0, None], [1.0, 2.0], missing="zero")
        1.0
        >>> weighted_total([None, 7.0], [1.0, 0.0]) is None  # weight-0 children never count
        True
    """
    counted = [(s, w) for s, w in zip(row, weights, strict=True) if w != 0]
    present = [(s, w) for s, w in counted if s is not None]
    if not present:
        return None
    total = math.fsum(w * s for s, w in present)
    if missing == "zero":
        return total
    return total * math.fsum(abs(w) for _, w in counted) / math.fsum(abs(w) for _, w in present)


def _children(rewards: Mapping[str, Reward] | Sequence[Reward | tuple[Reward, float]],
              weights: Mapping[str, float] | Sequence[float] | None) -> tuple[list[str], list[Reward], list[float]]:
    names: list[str] = []
    children: list[Reward] = []
    ws: list[float] = []
    if isinstance(rewards, Mapping):
        if weights is not None and not isinstance(weights, Mapping):
            raise TypeError("with rewards as a dict, weights must be a dict of the same names")
        unknown = set(weights or {}) - set(rewards)
        if unknown:
            raise ValueError(f"weights for unknown rewards: {sorted(unknown)}")
        for name, r in rewards.items():
            names.append(name)
            children.append(r)
            ws.append(float((weights or {}).get(name, 1.0)))
    else:
        items = list(rewards)
        tuples = [isinstance(it, tuple) for it in items]
        if any(tuples) and weights is not None:
            raise TypeError("give weights either in (reward, weight) pairs or in weights, not both")
        if weights is not None and (isinstance(weights, Mapping) or len(weights) != len(items)):
            raise ValueError(f"weights must be a sequence of {len(items)} numbers")
        for i, it in enumerate(items):
            r, w = it if isinstance(it, tuple) else (it, 1.0 if weights is None else weights[i])
            names.append(r.name)
            children.append(r)
            ws.append(float(w))
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"two rewards are named {dupes}: pass a dict to name them")
    if not children:
        raise ValueError("a composite needs at least one reward")
    for name, r, w in zip(names, children, ws, strict=True):
        if not isinstance(r, Reward):
            raise TypeError(f"{name!r} is not a Reward: {type(r).__name__}")
        if not math.isfinite(w):
            raise ValueError(f"weight of {name!r} must be finite, got {w}")
        if name in _RESERVED:
            raise ValueError(f"{name!r} is reserved in the composite's details; name the reward otherwise")
    return names, children, ws


class CompositeReward(Reward):
    """A weighted combination of rewards that renders once for all of them (see the module docstring).

    Args:
        rewards: ``{name: reward}``, or a list of ``(reward, weight)`` pairs, or a list of rewards
            (named by their ``name``, which must then be unique).
        weights: ``{name: weight}`` for a dict of rewards, or a list for a list of rewards; missing
            weights are 1.0.
        aggregation: ``"sum"`` (default), ``"normalize_then_sum"`` or ``"sum_then_normalize"``.
        missing: ``"renormalize"`` (default) or ``"zero"``: how a child's None enters the sum.
        eps: added to the group standard deviation (1e-4, TRL's and Flow-GRPO's).
        service: the render service shared by the children; by default the composite creates one and
            closes it in :meth:`close`. A given service is not closed.
        name: the composite's own name (``"composite"``).

    Details of sample i: ``{child_name: {"score": raw, "details": child_details}}`` for every child,
    plus ``"z"`` per child with ``normalize_then_sum`` and ``"weighted_sum"`` (before the group
    normalisation) with ``sum_then_normalize``. Metrics: every child's metrics as
    ``"<child>/<metric>"`` and its mean applicable score as ``"<child>/mean"``.

    Example:
        >>> from visalign.rewards import FormatReward, TedsReward
        >>> ref = "\\\\begin{tabular}{cc} 1 & 2 \\\\end{tabular}"
        >>> reward = CompositeReward({"format": FormatReward(), "teds": TedsReward()},
        ...                          weights={"format": 0.2, "teds": 1.0})
        >>> out = reward([Sample(completion=f"```latex\\n{ref}\\n```", reference_code=ref, kind="latex"),
        ...               Sample(completion=f"```latex\\n{ref}\\n```", kind="latex")])
        >>> out.scores  # the second has no reference: TEDS is None, format stands for the whole weight
        [1.2, 1.2]
        >>> out.details[1]["teds"]
        {'score': None, 'details': {'reason': 'no reference code'}}
        >>> reward.close()
    """

    def __init__(self, rewards: Mapping[str, Reward] | Sequence[Reward | tuple[Reward, float]],
                 weights: Mapping[str, float] | Sequence[float] | None = None, *,
                 aggregation: Aggregation = "sum", missing: Literal["renormalize", "zero"] = "renormalize",
                 eps: float = 1e-4, service: RenderService | None = None, name: str = "composite") -> None:
        if aggregation not in AGGREGATIONS:
            raise ValueError(f"aggregation must be one of {AGGREGATIONS}, got {aggregation!r}")
        if missing not in ("renormalize", "zero"):
            raise ValueError(f"missing must be 'renormalize' or 'zero', got {missing!r}")
        if not (eps >= 0 and math.isfinite(eps)):
            raise ValueError(f"eps must be a non-negative finite number, got {eps!r}")
        self.names, self.rewards, self.weights = _children(rewards, weights)
        self.aggregation = aggregation
        self.missing = missing
        self.eps = float(eps)
        self.name = name
        self.needs_render = any(r.needs_render for r in self.rewards)
        self.needs_reference_render = any(r.needs_reference_render for r in self.rewards)
        self._owns_service = service is None
        self.service = service if service is not None else RenderService()
        for child_name, r in zip(self.names, self.rewards, strict=True):
            bind = getattr(r, "bind", None)
            if callable(bind):
                bind(self.service)
            elif isinstance(getattr(r, "service", None), RenderService) and r.service is not self.service:  # type: ignore[attr-defined]
                warnings.warn(f"reward {child_name!r} renders through its own RenderService and has no bind(): "
                              "give it the composite's service so that the batch renders once", stacklevel=2)

    def render(self, samples: list[Sample]) -> None:
        """Extract code and render the batch once, for every child (skipped when no child renders)."""
        if self.needs_render:
            fill_code(samples)
            self.service.render(samples)
        if self.needs_reference_render:
            self.service.render(samples, reference=True)

    def score(self, samples: list[Sample]) -> RewardOutput:
        self.render(samples)
        outputs = [r(samples) for r in self.rewards]
        groups = [s.group for s in samples]
        columns = [out.scores for out in outputs]
        zs: list[list[float | None]] = []
        if self.aggregation == "normalize_then_sum":
            zs = [group_zscores(col, groups, self.eps) for col in columns]
            rows = zip(*zs, strict=True)
        else:
            rows = zip(*columns, strict=True)
        totals = [weighted_total(row, self.weights, self.missing) for row in rows]
        scores = group_zscores(totals, groups, self.eps) if self.aggregation == "sum_then_normalize" else totals

        details: list[dict[str, Any]] = []
        for i in range(len(samples)):
            d: dict[str, Any] = {}
            for j, (name, out) in enumerate(zip(self.names, outputs, strict=True)):
                d[name] = {"score": out.scores[i], "details": out.details[i]}
                if zs:
                    d[name]["z"] = zs[j][i]
            if self.aggregation == "sum_then_normalize":
                d["weighted_sum"] = totals[i]
            details.append(d)

        metrics: dict[str, float] = {}
        for name, out in zip(self.names, outputs, strict=True):
            metrics.update({f"{name}/{k}": v for k, v in out.metrics.items()})
            present = [s for s in out.scores if s is not None]
            if present:
                metrics[f"{name}/mean"] = math.fsum(present) / len(present)
        return RewardOutput(scores, details, metrics)

    def close(self) -> None:
        for r in self.rewards:
            r.close()
        if self._owns_service:
            self.service.close()
