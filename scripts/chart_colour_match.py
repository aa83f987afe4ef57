"""A ground-truth colour term for chart GRPO (``scripts/reward_grpo_demo.py --colour-match-weight``).

``chart_colour_match:ColourNameMatch``: 1.0 when the generated program's first ``color='<name>'`` is the
reference program's, else 0.0 (None without a reference program). It reads code, renders nothing. The
chart-code colour F1 is not enough as a guard here: it scores colours by their distance, so a wrong colour
still earns 0.24-0.66 (gray 0.63-0.66 on average over wrong references), and a policy rewarded with it and
the reward model drifted to gray (46 % of validation charts against 17 % of the references).
Loaded by its ``module:Class`` name with ``scripts/`` on ``sys.path`` (the demo script puts it there).
"""

from __future__ import annotations

import re

from visalign.rewards.base import Reward, RewardOutput, Sample
from visalign.rewards.code import fill_code

COLOUR = re.compile(r"color\s*=\s*['\"](\w+)['\"]")


def colour_name(code: str | None) -> str | None:
    """The first ``color='<name>'`` of a program, or None."""
    m = COLOUR.search(code or "")
    return m.group(1) if m else None


class ColourNameMatch(Reward):
    """1.0 when the program's colour name is the reference program's, else 0.0."""

    name = "colour_match"

    def score(self, samples: list[Sample]) -> RewardOutput:
        fill_code(samples)
        scores: list[float | None] = []
        details = []
        for s in samples:
            if s.reference_code is None:
                scores.append(None)
                details.append({"reason": "no reference_code"})
                continue
            got, want = colour_name(s.code), colour_name(s.reference_code)
            scores.append(float(got is not None and got == want))
            details.append({"colour": got, "reference_colour": want})
        return RewardOutput(scores=scores, details=details)
