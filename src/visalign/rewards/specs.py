"""Reward specs: the one schema every config uses to name its rewards, and the one parser.

The documented form is a list; each entry is a reward name or a mapping with ``name``, ``weight``
(default 1.0) and ``options`` (the reward's keyword arguments)::

    rewards:
      - format
      - name: chart_code
        weight: 2.0
        options: {metric: data}

The mapping form of older flow configs (``name: weight`` or ``name: {weight: w, <options>}``) is read
as the same thing. Names come from :data:`visalign.rewards.REWARDS` or are ``"package.module:Class"``.
Errors name the entry (``rewards[1]``) and the field.

Example:
    >>> parse_reward_specs(["format", {"name": "chart_code", "weight": 2, "options": {"metric": "data"}}])
    [RewardSpec(name='format', weight=1.0, options={}), RewardSpec(name='chart_code', weight=2.0, options={'metric': 'data'})]
    >>> parse_reward_specs({"shape_colour": {"weight": 0.5, "coverage_high": [0.35, 0.55]}})
    [RewardSpec(name='shape_colour', weight=0.5, options={'coverage_high': [0.35, 0.55]})]
"""

from __future__ import annotations

import difflib
import importlib
import inspect
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import REWARDS, reward_class
from .base import Reward
from .composite import CompositeReward
from .render import RenderService

__all__ = ["RewardSpec", "build_reward_map", "build_rewards", "instantiate", "parse_reward_specs"]

_FIELDS = ("name", "weight", "options")


@dataclass
class RewardSpec:
    """One configured reward: its name, weight in the composite, and keyword arguments."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def _check_name(name: Any, where: str, extra: Iterable[str]) -> str:
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}.name: a reward name (a string), got {name!r}")
    known = [*REWARDS, *extra]
    if name in known or ":" in name:
        return name
    near = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
    hint = f" (did you mean {' or '.join(repr(n) for n in near)}?)" if near else ""
    raise ValueError(f"{where}.name: unknown reward {name!r}{hint}; choose one of {sorted(known)} "
                     "or 'package.module:Class'")


def _check_weight(weight: Any, where: str) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)):
        raise ValueError(f"{where}.weight: a number, got {weight!r}")
    return float(weight)


def _check_options(options: Any, where: str) -> dict[str, Any]:
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise ValueError(f"{where}.options: a mapping of the reward's keyword arguments, got {options!r}")
    return dict(options)


def _entry(entry: Any, where: str, extra: Iterable[str]) -> RewardSpec:
    if isinstance(entry, str):
        return RewardSpec(_check_name(entry, where, extra))
    if not isinstance(entry, Mapping):
        raise ValueError(f"{where}: a reward name or a mapping with {', '.join(_FIELDS)}; got {entry!r}")
    unknown = [k for k in entry if k not in _FIELDS]
    if unknown:
        key = unknown[0]
        near = difflib.get_close_matches(str(key), _FIELDS, n=1, cutoff=0.6)
        hint = f" (did you mean {near[0]!r}?)" if near else " (a reward's own arguments go under 'options')"
        raise ValueError(f"{where}.{key}: unknown field{hint}; a reward entry has {', '.join(_FIELDS)}")
    if "name" not in entry:
        raise ValueError(f"{where}.name: missing; got {dict(entry)!r}")
    return RewardSpec(_check_name(entry["name"], where, extra), _check_weight(entry.get("weight", 1.0), where),
                      _check_options(entry.get("options"), where))


def _mapping_entry(name: Any, value: Any, where: str, extra: Iterable[str]) -> RewardSpec:
    where = f"{where}.{name}"
    if not isinstance(name, str):
        raise ValueError(f"{where}: a reward name (a string), got {name!r}")
    _check_name(name, where.rsplit(".", 1)[0] + f"[{name!r}]", extra)
    if value is None:
        return RewardSpec(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return RewardSpec(name, float(value))
    if not isinstance(value, Mapping):
        raise ValueError(f"{where}: a weight or a mapping of weight and options, got {value!r}")
    opts = dict(value)
    weight = _check_weight(opts.pop("weight", 1.0), where)
    if isinstance(opts.get("options"), Mapping):  # {weight, options: {...}} as in the list form
        opts = {**opts.pop("options"), **opts}
    return RewardSpec(name, weight, opts)


def parse_reward_specs(spec: Any, *, where: str = "rewards", extra_names: Iterable[str] = ()) -> list[RewardSpec]:
    """The rewards of a config, in order: a list of names / ``{name, weight, options}`` mappings (the
    documented form), one bare name, or the older ``{name: weight | {weight, <options>}}`` mapping.

    ``extra_names`` are accepted besides :data:`~visalign.rewards.REWARDS` (ReFL's ``pixel`` / ``ssim``).
    Raises ``ValueError`` naming the entry and field; an unknown name suggests the nearest known one.

    Example:
        >>> parse_reward_specs("format")
        [RewardSpec(name='format', weight=1.0, options={})]
        >>> parse_reward_specs(["format", {"name": "chart_cod"}])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
            ...
        ValueError: rewards[1].name: unknown reward 'chart_cod' (did you mean 'chart_code'?); choose one of [...] or 'package.module:Class'
    """
    extra = tuple(extra_names)
    if spec is None:
        return []
    if isinstance(spec, str):
        out = [RewardSpec(_check_name(spec, where, extra))]
    elif isinstance(spec, RewardSpec):
        out = [spec]
    elif isinstance(spec, Mapping):
        if set(spec) <= set(_FIELDS) and "name" in spec:  # one list-form entry given on its own
            out = [_entry(spec, f"{where}[0]", extra)]
        else:
            out = [_mapping_entry(n, v, where, extra) for n, v in spec.items()]
    elif isinstance(spec, Sequence):
        out = [e if isinstance(e, RewardSpec) else _entry(e, f"{where}[{i}]", extra) for i, e in enumerate(spec)]
    else:
        raise ValueError(f"{where}: a list of rewards (names or {{name, weight, options}}), got {spec!r}")
    seen: set[str] = set()
    for i, s in enumerate(out):
        if s.name in seen:
            raise ValueError(f"{where}[{i}].name: reward {s.name!r} is listed twice")
        seen.add(s.name)
    return out


def reward_type(name: str) -> Any:
    """The class of a reward name: :data:`~visalign.rewards.REWARDS` or ``"package.module:Class"``."""
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)
    return reward_class(name)


def instantiate(spec: RewardSpec, service: RenderService | None = None) -> Reward:
    """The reward of one spec; ``service`` is handed to a reward whose constructor takes one."""
    cls = reward_type(spec.name)
    kwargs = dict(spec.options)
    if service is not None and "service" in inspect.signature(cls.__init__).parameters:
        kwargs.setdefault("service", service)
    return cls(**kwargs)


def build_reward_map(specs: Any, service: RenderService | None = None) -> dict[str, Reward]:
    """``{name: reward}`` of ``specs`` (anything :func:`parse_reward_specs` reads), sharing ``service``."""
    return {s.name: instantiate(s, service) for s in parse_reward_specs(specs)}


def build_rewards(specs: Any, service: RenderService | None = None, aggregation: str = "sum") -> CompositeReward:
    """A :class:`~visalign.rewards.CompositeReward` of ``specs`` (anything :func:`parse_reward_specs`
    reads) with their weights, its children sharing ``service``.

    Example:
        >>> with RenderService(workers=1) as service:
        ...     reward = build_rewards(["format", {"name": "execution", "weight": 0.5}], service)
        ...     list(zip(reward.names, reward.weights))
        [('format', 1.0), ('execution', 0.5)]
    """
    parsed = parse_reward_specs(specs)
    if not parsed:
        raise ValueError("rewards: no reward configured")
    built = {s.name: instantiate(s, service) for s in parsed}
    return CompositeReward(built, weights={s.name: s.weight for s in parsed},  # type: ignore[arg-type]
                           aggregation=aggregation, service=service)
