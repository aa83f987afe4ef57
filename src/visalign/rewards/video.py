"""Rewards for generated videos (text-to-video policies): a video is scored as its frames.

- :class:`FrameMeanReward`: any image reward applied to every frame, averaged per video
  (:func:`frame_mean`),
- :class:`TemporalConsistencyReward`: how alike consecutive frames are (:func:`temporal_consistency`:
  mean SSIM or mean cosine similarity of consecutive frames).

A video arrives as ``Sample.frames`` (``Sample.image`` is its first frame).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput, Sample

__all__ = ["FrameMeanReward", "TemporalConsistencyReward", "frame_mean", "temporal_consistency"]

_METRICS = ("ssim", "cosine")


def frame_mean(scores: Sequence[float | None]) -> float | None:
    """Mean of per-frame scores, leaving out frames whose score is None or not finite; None when no
    frame has a score (the reward does not apply to this video).

    Example:
        >>> frame_mean([0.2, None, 0.6, float("nan")])
        0.4
        >>> frame_mean([None, None]) is None
        True
    """
    valid = [float(s) for s in scores if s is not None and math.isfinite(float(s))]
    return float(np.mean(valid)) if valid else None


def _cosine(a: Image.Image, b: Image.Image) -> float:
    x = np.asarray(a.convert("RGB"), dtype=np.float64).ravel() / 255.0
    y = np.asarray(b.convert("RGB"), dtype=np.float64).ravel() / 255.0
    nx, ny = float(np.linalg.norm(x)), float(np.linalg.norm(y))
    if nx == 0.0 or ny == 0.0:  # black frames: alike only to black frames
        return 1.0 if nx == ny else 0.0
    return float(np.dot(x, y) / (nx * ny))


def temporal_consistency(frames: Sequence[Image.Image], metric: str = "ssim") -> float:
    """Mean similarity of consecutive frames ``(frames[i], frames[i + 1])``.

    Args:
        frames: at least two equally sized frames.
        metric: ``"ssim"`` (:func:`visalign.metrics.ssim` on the RGB frames: Gaussian 11x11 window,
            scikit-image's definition; frames at least 11 pixels a side) or ``"cosine"`` (cosine
            similarity of the RGB pixel vectors scaled to ``[0, 1]``; two black frames count as 1, a black
            and a non-black frame as 0).

    Example:
        >>> red, yellow = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (255, 255, 0))
        >>> round(temporal_consistency([red, yellow, yellow], "cosine"), 6)  # (1 / sqrt(2) + 1) / 2
        0.853553
        >>> temporal_consistency([red, red], "ssim")
        1.0
    """
    if metric not in _METRICS:
        raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
    frames = list(frames)
    if len(frames) < 2:
        raise ValueError(f"temporal consistency needs at least two frames, got {len(frames)}")
    sizes = {f.size for f in frames}
    if len(sizes) != 1:
        raise ValueError(f"frames differ in size: {sorted(sizes)}")
    if metric == "cosine":
        values = [_cosine(a, b) for a, b in itertools.pairwise(frames)]
    else:
        from ..metrics import ssim

        values = [ssim(b.convert("RGB"), a.convert("RGB"), size_policy="error") for a, b in itertools.pairwise(frames)]
    return float(np.mean(values))


def _frames(sample: Sample) -> list[Image.Image] | None:
    if sample.frames:
        return list(sample.frames)
    return [sample.image] if sample.image is not None else None


class FrameMeanReward(Reward):
    """An image reward applied to every frame of each video, averaged per video (:func:`frame_mean`).

    ``reward``: a :class:`~visalign.rewards.Reward`, or a registered name (or ``"module:Class"``) built with
    ``options`` (e.g. ``FrameMeanReward("clip", model=...)``; in a config ``{"name": ..., **options}``). Each frame is scored as a sample with the video's
    prompt, group and metadata; all frames of a batch go to the inner reward in one call. A sample
    without ``frames`` is scored on its ``image`` (a one-frame video); one with neither scores None.

    Example:
        >>> class Bright(Reward):
        ...     def score(self, samples):
        ...         return RewardOutput([float(np.asarray(s.image).mean()) / 255 for s in samples],
        ...                             [{} for _ in samples])
        >>> video = [Image.new("RGB", (4, 4), (0, 0, 0)), Image.new("RGB", (4, 4), (255, 255, 255))]
        >>> FrameMeanReward(Bright())([Sample(image=video[0], frames=video)]).scores
        [0.5]
    """

    name = "frame_mean"

    def __init__(self, reward: Reward | str | Mapping[str, Any] = "clip", **options: Any) -> None:
        if isinstance(reward, Reward):
            if options:
                raise ValueError("options go with a reward name, not a reward object")
            self.reward = reward
        else:
            from . import get_reward

            if isinstance(reward, Mapping):
                spec = dict(reward)
                reward = spec.pop("name")
                options = {**spec, **options}
            name = str(reward)
            if ":" in name:  # "module:Class", as in trainer configs
                import importlib

                module, cls = name.split(":", 1)
                self.reward = getattr(importlib.import_module(module), cls)(**options)
            else:
                self.reward = get_reward(name, **options)
        self.needs_render = False
        self.name = f"frame_mean({getattr(self.reward, 'name', 'reward')})"

    def score(self, samples: list[Sample]) -> RewardOutput:
        per_frame: list[Sample] = []
        owner: list[int] = []
        for i, s in enumerate(samples):
            for frame in _frames(s) or []:
                per_frame.append(Sample(prompt=s.prompt, image=frame, reference_image=s.reference_image,
                                        group=s.group, metadata=dict(s.metadata)))
                owner.append(i)
        out = self.reward(per_frame) if per_frame else RewardOutput([], [])
        grouped: list[list[float | None]] = [[] for _ in samples]
        for i, score in zip(owner, out.scores, strict=True):
            grouped[i].append(score)
        scores = [frame_mean(g) for g in grouped]
        details = [{"frames": len(g), "frame_scores": g} for g in grouped]
        return RewardOutput(scores, details, {"frames": float(len(per_frame)), **out.metrics})

    def close(self) -> None:
        self.reward.close()


class TemporalConsistencyReward(Reward):
    """Mean similarity of consecutive frames of each video (:func:`temporal_consistency`), in ``[0, 1]``
    for ``"cosine"`` and at most 1 for ``"ssim"``; None for a sample with fewer than two frames (not a
    video). High for a still or smoothly moving video, low for flicker: pair it with a content reward,
    since a frozen video maximises it.

    Example:
        >>> red, green = Image.new("RGB", (16, 16), (255, 0, 0)), Image.new("RGB", (16, 16), (0, 255, 0))
        >>> reward = TemporalConsistencyReward(metric="cosine")
        >>> reward([Sample(image=red, frames=[red, red, green]), Sample(image=red)]).scores
        [0.5, None]
    """

    name = "temporal_consistency"

    def __init__(self, metric: str = "ssim") -> None:
        if metric not in _METRICS:
            raise ValueError(f"metric must be one of {list(_METRICS)}, got {metric!r}")
        self.metric = metric

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = []
        for s in samples:
            frames = list(s.frames or [])
            scores.append(temporal_consistency(frames, self.metric) if len(frames) >= 2 else None)
        return RewardOutput(scores, [{"metric": self.metric, "frames": len(s.frames or [])} for s in samples])
