"""Prefix-tree advantages: a flat group is exactly GRPO; branching tokens add V(child) - V(parent)."""

from __future__ import annotations

import numpy as np
import torch

from visalign.trainers.grpo import group_advantages
from visalign.trainers.tree import prefix_values, tree_token_advantages


def test_flat_group_is_grpo():
    rng = np.random.default_rng(0)
    ids = [[10 + i, 5, 6, 7] for i in range(8)]  # every completion diverges at its first token
    rewards = torch.tensor(rng.normal(size=8))
    adv = tree_token_advantages(ids, rewards, group_size=8)
    base = group_advantages(rewards, 8)
    for a, b in zip(adv, base, strict=True):
        assert torch.allclose(a, torch.full_like(a, float(b)))


def test_values_by_hand():
    # root -> "a" -> {"b" -> {"c", "d"}, "e"} ; rewards: abc 1, abd 0, ae 3, f 2
    ids = [[1, 2, 3], [1, 2, 4], [1, 5], [6]]
    rewards = [1.0, 0.0, 3.0, 2.0]
    vals = prefix_values(ids, rewards)
    v_a, v_ab = (1 + 0 + 3) / 3, 0.5
    assert vals[0] == [None, (v_a, v_ab), (v_ab, 1.0)]
    assert vals[1] == [None, (v_a, v_ab), (v_ab, 0.0)]
    assert vals[2] == [None, (v_a, 3.0)]
    assert vals[3] == [None]  # a branch of the root: scored by GRPO alone
    adv = tree_token_advantages(ids, torch.tensor(rewards), group_size=4)
    r = np.array(rewards)
    std = r.std(ddof=1) + 1e-4
    a0 = (1.0 - r.mean()) / std
    expected0 = [a0, a0 + (v_ab - v_a) / std, a0 + (1.0 - v_ab) / std]
    assert np.allclose(adv[0].numpy(), expected0, atol=1e-6)
    # the corrections along a path telescope: they sum to V(leaf) - V(first token's node)
    assert np.isclose(sum(expected0) - 3 * a0, (1.0 - v_a) / std)


def test_groups_are_independent_and_nan_rows_get_zero():
    ids = [[1, 2], [1, 3], [1, 2], [1, 3]]
    rewards = torch.tensor([1.0, 0.0, float("nan"), 5.0])
    adv = tree_token_advantages(ids, rewards, group_size=2)
    assert torch.equal(adv[2], torch.zeros(2))
    assert torch.equal(adv[3], torch.zeros(2))  # alone in its group: no signal
    assert adv[0][1] > adv[0][0] > 0 > adv[1][0] > adv[1][1]
