"""Rewards: score batches of samples (renders, code, images) for evaluation and RL.

Every reward maps ``list[Sample]`` to :class:`RewardOutput` (one score per sample, None = not
applicable, never "failed"). Build them by class or by name through :func:`get_reward`; combine them
with :class:`CompositeReward`; hand them to TRL with :func:`as_trl_reward`.

Example:
    >>> from visalign.rewards import Sample, RewardOutput, get_reward
    >>> RewardOutput(scores=[1.0, None], details=[{}, {"reason": "no reference"}]).scores
    [1.0, None]
    >>> get_reward("format", allow_bare=True)([Sample(completion="import matplotlib", kind="matplotlib")]).scores
    [1.0]
"""

from __future__ import annotations

from typing import Any

from .._registry import load
from .base import Reward, RewardOutput, Sample
from .code import (
    ExecutionReward,
    FormatReward,
    RenderingReward,
    extract_code,
    fill_code,
    find_code,
)
from .composite import CompositeReward, group_zscores, weighted_total
from .render import RenderService
from .similarity import RenderSimilarityReward, Table2LatexRLReward, TedsReward, TedsStructureReward
from .trl import as_trl_reward

# name -> (module, class). Modules are imported on first use, so a reward with heavy or optional
# dependencies (a CLIP model, an OCR engine) costs nothing until it is asked for; adding a reward is
# one line here.
REWARDS: dict[str, tuple[str, str]] = {
    "format": ("visalign.rewards.code", "FormatReward"),
    "execution": ("visalign.rewards.code", "ExecutionReward"),
    "render_similarity": ("visalign.rewards.similarity", "RenderSimilarityReward"),
    "teds": ("visalign.rewards.similarity", "TedsReward"),
    "teds_structure": ("visalign.rewards.similarity", "TedsStructureReward"),
    "table2latex_rl": ("visalign.rewards.similarity", "Table2LatexRLReward"),
    "composite": ("visalign.rewards.composite", "CompositeReward"),
    "vlm_judge": ("visalign.rewards.judge", "VlmJudgeReward"),
    "chart_code": ("visalign.rewards.chart_code", "ChartCodeReward"),
    "clip": ("visalign.rewards.clip", "ClipReward"),
    "identity": ("visalign.rewards.identity", "IdentityReward"),
    "ocr": ("visalign.rewards.ocr", "OcrReward"),
    "shape_colour": ("visalign.rewards.shapes", "ShapeColourReward"),
    "frame_mean": ("visalign.rewards.video", "FrameMeanReward"),
    "temporal_consistency": ("visalign.rewards.video", "TemporalConsistencyReward"),
    "model": ("visalign.rewards.model", "ModelReward"),
    "verdict": ("visalign.rewards.verdict", "VerdictReward"),
    "verdict_format": ("visalign.rewards.verdict", "VerdictFormatReward"),
}


def reward_class(name: str) -> type[Reward]:
    """The class registered under ``name`` in :data:`REWARDS`.

    Example:
        >>> reward_class("teds").__name__
        'TedsReward'
    """
    return load(REWARDS, name, "reward")


def get_reward(name: str, **options: Any) -> Reward:
    """Create the reward registered under ``name`` with its options (``metric``, ``service``, ...).

    Example:
        >>> get_reward("render_similarity", metric="psnr").metric
        'psnr'
    """
    return reward_class(name)(**options)


__all__ = [
    "REWARDS",
    "CompositeReward",
    "ExecutionReward",
    "FormatReward",
    "RenderService",
    "RenderSimilarityReward",
    "RenderingReward",
    "Reward",
    "RewardOutput",
    "Sample",
    "Table2LatexRLReward",
    "TedsReward",
    "TedsStructureReward",
    "as_trl_reward",
    "extract_code",
    "fill_code",
    "find_code",
    "get_reward",
    "group_zscores",
    "reward_class",
    "weighted_total",
]
