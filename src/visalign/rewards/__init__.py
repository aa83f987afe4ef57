"""Rewards: score batches of samples (renders, code, images) for evaluation and RL.

Example:
    >>> from visalign.rewards import Sample, RewardOutput
    >>> RewardOutput(scores=[1.0, None], details=[{}, {"reason": "no reference"}]).scores
    [1.0, None]
"""

from .base import Reward, RewardOutput, Sample
from .render import RenderService

__all__ = ["RenderService", "Reward", "RewardOutput", "Sample"]
