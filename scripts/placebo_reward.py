"""A placebo reward for chart GRPO's drift control (``scripts/reward_grpo_demo.py --placebo``).

``placebo_reward:PlaceboReward``: a number in [0, 1) drawn from a hash of the completion's text, so the
same program always gets the same score and the score carries no information about the chart. GRPO with
it moves the policy only by the optimisation itself (sampling noise, shared parameters, the KL term): how
far the hack checks of ``reward_grpo_demo.py`` (colour and value collapse on greedy completions) move
without any reward signal, the baseline a reward's drift is judged against.
Loaded by its ``module:Class`` name with ``scripts/`` on ``sys.path`` (the demo script puts it there).
"""

from __future__ import annotations

import hashlib

from visalign.rewards.base import Reward, RewardOutput, Sample


def placebo_score(text: str | None) -> float:
    """A uniform number in [0, 1) fixed by ``text``.

    Example:
        >>> placebo_score("plt.plot([1, 2])") == placebo_score("plt.plot([1, 2])")
        True
        >>> 0.0 <= placebo_score("") < 1.0
        True
    """
    digest = hashlib.sha256((text or "").encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


class PlaceboReward(Reward):
    """A score from a hash of the completion: the same text, the same score; no information."""

    name = "placebo"

    def score(self, samples: list[Sample]) -> RewardOutput:
        return RewardOutput(scores=[placebo_score(s.completion) for s in samples], details=[{} for _ in samples])
