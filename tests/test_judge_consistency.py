"""Rule consistency when the reasoning is exactly a choice (``<think>K</think>``, the tiny demo judge's
short reasoning): it names that choice; a bare digit inside longer reasoning does not."""

from __future__ import annotations

import pytest

from visalign.rewards import Sample
from visalign.rewards.verdict import VerdictReward, rule_consistency


@pytest.mark.parametrize(("reasoning", "answer", "expected"), [
    ("1", "1", 1), (" 2 ", "2", 1), ("2", "1", -1), ("1.", "2", -1), ("**2**", "2", 1),
    ("good", "good", 1), (" Bad ", "good", -1), ("bad", "bad", 1),
    ("3 bars, 1 missing", "1", 0),  # digits inside longer reasoning are no cue
    ("1 2", "1", 0), ("12", "1", 0), ("2", "good", 0),  # not exactly a choice of the answer's kind
    ("", "1", 0), ("1", None, 0),
])
def test_bare_choice_is_a_cue(reasoning: str, answer: str | None, expected: int) -> None:
    assert rule_consistency(reasoning, answer) == expected


def test_bare_choice_with_explicit_choices() -> None:
    assert rule_consistency("B", "a", choices=["A", "B"]) == -1
    assert rule_consistency("a", "a", choices=["A", "B"]) == 1


def test_short_think_reward_by_hand() -> None:
    """R1-Reward's acc * (1 + 0.5 consistency): a correct, consistent short answer 1.5; a correct answer
    whose bare reasoning names the other image 0.5; a wrong one 0."""
    texts = ["<think>1</think><answer>1</answer>", "<think>2</think><answer>1</answer>",
             "<think>2</think><answer>2</answer>"]
    samples = [Sample(completion=t, metadata={"label": "1", "choices": ["1", "2"]}) for t in texts]
    out = VerdictReward(consistency="rules")(samples)
    assert out.scores == [1.5, 0.5, 0.0]
    assert [d.get("consistency") for d in out.details] == [1, -1, 1]
