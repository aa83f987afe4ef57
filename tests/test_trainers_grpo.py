"""GRPO math against TRL 1.16's numbers (from the issue) and against the formulas written out here."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from visalign.trainers.grpo import group_advantages, policy_loss

MASK = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)
LOGPS = torch.tensor([[-1.0, -0.5, -2.0, -0.1], [-0.3, -1.2, 0, 0], [-0.7, -0.2, -1.5, 0]], dtype=torch.float64)
OLD = LOGPS + torch.tensor([[0.1, -0.3, 0, 0.2], [-0.25, 0.05, 0, 0], [0, 0.4, -0.1, 0]], dtype=torch.float64)
ADV = torch.tensor([1.0, -0.5, -0.5], dtype=torch.float64)
KW = {"epsilon": 0.2, "epsilon_high": 0.28, "max_completion_length": 4, "num_items_in_batch": 9}


def test_trl_reference_numbers():
    # TRL 1.16 on these inputs (the check)
    assert float(policy_loss(LOGPS, OLD, ADV, MASK, loss_type="grpo", **KW)) == pytest.approx(0.014039, abs=1e-6)
    assert float(policy_loss(LOGPS, OLD, ADV, MASK, loss_type="dapo", **KW)) == pytest.approx(-0.159262, abs=1e-6)


def _per_token(logps, old, adv, eps_low=0.2, eps_high=0.28):
    r = np.exp(logps - old)
    c = np.clip(r, 1 - eps_low, 1 + eps_high)
    a = adv[:, None]
    return -np.minimum(r * a, c * a)


def test_aggregations_follow_their_definitions():
    pt = _per_token(LOGPS.numpy(), OLD.numpy(), ADV.numpy())
    m = MASK.numpy()
    expected = {
        "grpo": np.mean((pt * m).sum(1) / m.sum(1)),
        "bnpo": (pt * m).sum() / m.sum(),
        "dr_grpo": (pt * m).sum() / (3 * 4),
        "dapo": (pt * m).sum() / 9,
    }
    for loss_type, value in expected.items():
        assert float(policy_loss(LOGPS, OLD, ADV, MASK, loss_type=loss_type, **KW)) == pytest.approx(value, abs=1e-12)
    # dapo over 2 processes divides by the per-process share of the generation batch's tokens
    two = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="dapo", num_processes=2, **KW)
    assert float(two) == pytest.approx((pt * m).sum() / 4.5, abs=1e-12)


def test_sequence_level_importance_sampling_is_gspo():
    lr = (LOGPS - OLD).numpy()
    m = MASK.numpy()
    seq = np.exp((lr * m).sum(1) / m.sum(1))[:, None]  # one ratio per sequence
    a = ADV.numpy()[:, None]
    pt = -np.minimum(seq * a, np.clip(seq, 0.8, 1.28) * a) * np.ones_like(m)
    expected = np.mean((pt * m).sum(1) / m.sum(1))
    got = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="grpo", importance_sampling_level="sequence", **KW)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_kl_term_is_k3_weighted_by_the_ratio():
    ref = LOGPS + 0.3 * torch.sin(torch.arange(12, dtype=torch.float64).view(3, 4))
    d = (ref - LOGPS).numpy()
    ratio = np.exp((LOGPS - OLD).numpy())
    pt = _per_token(LOGPS.numpy(), OLD.numpy(), ADV.numpy()) + 0.04 * (np.exp(d) - d - 1) * ratio
    m = MASK.numpy()
    got = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="bnpo", beta=0.04, ref_logps=ref, **KW)
    assert float(got) == pytest.approx((pt * m).sum() / m.sum(), abs=1e-12)
    plain = policy_loss(LOGPS, OLD, ADV, MASK, loss_type="bnpo", beta=0.04, ref_logps=ref,
                        kl_importance_weighting=False, **KW)
    pt2 = _per_token(LOGPS.numpy(), OLD.numpy(), ADV.numpy()) + 0.04 * (np.exp(d) - d - 1)
    assert float(plain) == pytest.approx((pt2 * m).sum() / m.sum(), abs=1e-12)
    with pytest.raises(ValueError, match="ref_logps"):
        policy_loss(LOGPS, OLD, ADV, MASK, beta=0.1)


def test_on_policy_gradient_is_the_policy_gradient():
    logps = LOGPS.clone().requires_grad_(True)
    loss = policy_loss(logps, LOGPS.detach(), ADV, MASK, loss_type="bnpo")
    assert float(loss.detach()) == pytest.approx(float(-(ADV[:, None] * MASK).sum() / MASK.sum()))  # ratio exactly 1
    loss.backward()
    assert torch.allclose(logps.grad, -(ADV[:, None] * MASK) / MASK.sum())


def test_group_advantages_match_the_formula():
    rng = np.random.default_rng(0)
    r = rng.normal(size=12)
    got = group_advantages(torch.tensor(r), group_size=4).numpy()
    g = r.reshape(3, 4)
    want = (g - g.mean(1, keepdims=True)) / (g.std(1, ddof=1, keepdims=True) + 1e-4)
    assert np.allclose(got, want.ravel(), atol=1e-12)
    got = group_advantages(torch.tensor(r), group_size=4, scale="batch").numpy()
    assert np.allclose(got, ((g - g.mean(1, keepdims=True)) / (r.std(ddof=1) + 1e-4)).ravel(), atol=1e-12)
    got = group_advantages(torch.tensor(r), group_size=4, scale="none").numpy()
    assert np.allclose(got, (g - g.mean(1, keepdims=True)).ravel(), atol=1e-12)


def test_not_applicable_rewards_are_ignored():
    r = torch.tensor([1.0, float("nan"), 3.0, 5.0, float("nan"), float("nan")])
    adv = group_advantages(r, group_size=3)
    vals = np.array([1.0, 3.0])
    assert float(adv[1]) == 0.0 and float(adv[4]) == 0.0 and float(adv[5]) == 0.0
    expected = (vals - vals.mean()) / (vals.std(ddof=1) + 1e-4)
    assert np.allclose(adv[[0, 2]].numpy(), expected)
    assert float(adv[3]) == 0.0  # a single applicable reward in its group: no signal


def test_equal_rewards_give_zero_advantage_and_bad_shapes_raise():
    assert torch.equal(group_advantages(torch.ones(4), group_size=2), torch.zeros(4))
    with pytest.raises(ValueError, match="groups of 3"):
        group_advantages(torch.ones(4), group_size=3)
    with pytest.raises(ValueError, match="scale"):
        group_advantages(torch.ones(4), group_size=2, scale="global")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="shape"):
        policy_loss(LOGPS, OLD[:, :3], ADV, MASK)
