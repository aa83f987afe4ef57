"""Tests for visalign.trainers.sde: SDE / CPS / DDIM steps with log-probs, KL, BranchGRPO advantages."""

from __future__ import annotations

import math

import pytest
import torch

from visalign.trainers.sde import (
    cps_step_with_logprob,
    ddim_step_with_logprob,
    depthwise_advantages,
    kl_to_reference,
    sde_step_with_logprob,
)

X = torch.tensor([[0.5, -0.25, 1.0, 0.0]])
V = torch.tensor([[-1.0, 0.5, 0.25, 2.0]])
NOISE = torch.tensor([[1.0, -1.0, 2.0, 0.0]])
SIGMAS = torch.tensor([1.0, 0.96, 0.8, 0.5, 0.2, 0.0])


def _normal_log_prob(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    lp = torch.distributions.Normal(mean.double(), std.double().expand_as(mean)).log_prob(x.double())
    return lp.flatten(1).mean(1)


# ---------------------------------------------------------------------------------------------- SDE


def test_sde_step_reference_values_from_issue() -> None:
    prev, log_prob, mean, std = sde_step_with_logprob(V, X, SIGMAS, 0, noise_level=0.7, noise=NOISE)
    assert std.shape == (1, 1)
    assert std.item() == pytest.approx(0.7, abs=1e-6)
    torch.testing.assert_close(mean, torch.tensor([[0.4175, -0.20875, 0.745, -0.08]]))
    torch.testing.assert_close(prev, mean + 0.7 * NOISE)
    assert log_prob.shape == (1,)
    assert log_prob.item() == pytest.approx(-1.312264, abs=1e-6)
    # independent computation
    torch.testing.assert_close(log_prob.double(), _normal_log_prob(prev, mean, std))


def test_sde_step_matches_formula_at_interior_step_and_batched_step_index() -> None:
    torch.manual_seed(0)
    x, v, eps = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    a = 0.9
    steps = torch.tensor([1, 2, 4])
    prev, log_prob, mean, std = sde_step_with_logprob(v, x, SIGMAS, steps, noise_level=a, noise=eps)
    assert std.shape == (3, 1, 1, 1)
    for b, i in enumerate(steps.tolist()):
        s, s_next = SIGMAS[i].item(), SIGMAS[i + 1].item()
        dt = s_next - s
        sigma_t = a * math.sqrt(s / (1 - s))
        m = x[b] + dt * (v[b] + sigma_t**2 / (2 * s) * (x[b] + (1 - s) * v[b]))
        sd = sigma_t * math.sqrt(-dt)
        torch.testing.assert_close(mean[b], m)
        assert std[b].item() == pytest.approx(sd, rel=1e-6)
        # per-sample result equals the int step_index call
        _, lp_b, m_b, _ = sde_step_with_logprob(
            v[b : b + 1], x[b : b + 1], SIGMAS, i, noise_level=a, prev_sample=prev[b : b + 1]
        )
        torch.testing.assert_close(lp_b, log_prob[b : b + 1])
        torch.testing.assert_close(m_b, mean[b : b + 1])
    torch.testing.assert_close(log_prob.double(), _normal_log_prob(prev, mean, std))


def test_sde_step_noise_level_zero_is_euler_with_zero_log_prob() -> None:
    prev, log_prob, mean, std = sde_step_with_logprob(V, X, SIGMAS, 0, noise_level=0.0, noise=NOISE)
    dt = SIGMAS[1] - SIGMAS[0]
    torch.testing.assert_close(prev, X + dt * V)
    torch.testing.assert_close(mean, X + dt * V)
    assert std.item() == 0.0
    assert log_prob.tolist() == [0.0]


def test_sde_step_prev_sample_round_trip_generator_and_gradients() -> None:
    x, v = torch.randn(2, 3, 5), torch.randn(2, 3, 5, requires_grad=True)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    p1, lp1, _, _ = sde_step_with_logprob(v, x, SIGMAS, 1, noise_level=0.7, generator=g1)
    p2, _, _, _ = sde_step_with_logprob(v, x, SIGMAS, 1, noise_level=0.7, generator=g2)
    torch.testing.assert_close(p1, p2)
    # recomputing the stored transition gives the same log-prob and a finite gradient wrt v
    _, lp3, _, _ = sde_step_with_logprob(v, x, SIGMAS, 1, noise_level=0.7, prev_sample=p1.detach())
    torch.testing.assert_close(lp3, lp1)
    lp3.sum().backward()
    assert v.grad is not None and torch.isfinite(v.grad).all() and v.grad.abs().sum() > 0
    # a = 0: zero log-prob with a zero, finite gradient
    v.grad = None
    _, lp0, _, _ = sde_step_with_logprob(v, x, SIGMAS, 1, noise_level=0.0)
    lp0.sum().backward()
    assert torch.equal(v.grad, torch.zeros_like(v))


def test_sde_step_bf16_inputs_are_upcast() -> None:
    prev, log_prob, mean, std = sde_step_with_logprob(
        V.bfloat16(), X.bfloat16(), SIGMAS.bfloat16(), 0, noise_level=0.7, noise=NOISE.bfloat16()
    )
    assert prev.dtype == log_prob.dtype == mean.dtype == std.dtype == torch.float32
    assert log_prob.item() == pytest.approx(-1.312264, abs=1e-3)


def test_sde_step_validation() -> None:
    with pytest.raises(ValueError, match="at most one"):
        sde_step_with_logprob(V, X, SIGMAS, 0, noise_level=0.7, noise=NOISE, prev_sample=X)
    with pytest.raises(ValueError, match="step_index out of range"):
        sde_step_with_logprob(V, X, SIGMAS, len(SIGMAS) - 1, noise_level=0.7)
    with pytest.raises(ValueError, match="noise_level"):
        sde_step_with_logprob(V, X, SIGMAS, 0, noise_level=-0.1)
    with pytest.raises(ValueError, match="velocity shape"):
        sde_step_with_logprob(V[:, :3], X, SIGMAS, 0, noise_level=0.7)
    with pytest.raises(ValueError, match="batch dimension"):
        sde_step_with_logprob(V[0], X[0], SIGMAS, 0, noise_level=0.7)


# ---------------------------------------------------------------------------------------------- CPS


def test_cps_step_matches_formula_and_both_log_prob_forms() -> None:
    torch.manual_seed(1)
    x, v, eps = torch.randn(2, 3, 4), torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    a, i = 0.6, 2
    s, s_next = SIGMAS[i].item(), SIGMAS[i + 1].item()
    sd = s_next * math.sin(a * math.pi / 2)
    m = (1 - s_next) * (x - s * v) + math.sqrt(s_next**2 - sd**2) * (x + (1 - s) * v)
    prev, lp, mean, std = cps_step_with_logprob(v, x, SIGMAS, i, noise_level=a, noise=eps)
    torch.testing.assert_close(mean, m)
    assert std.flatten().tolist() == pytest.approx([sd, sd])
    torch.testing.assert_close(prev, m + sd * eps)
    torch.testing.assert_close(lp, -((sd * eps) ** 2).flatten(1).mean(1))
    _, lp_g, _, _ = cps_step_with_logprob(
        v, x, SIGMAS, i, noise_level=a, prev_sample=prev, log_prob_form="gaussian"
    )
    torch.testing.assert_close(lp_g.double(), _normal_log_prob(prev, mean, std))
    with pytest.raises(ValueError, match="log_prob_form"):
        cps_step_with_logprob(v, x, SIGMAS, i, noise_level=a, log_prob_form="exact")  # type: ignore[arg-type]


def test_cps_step_zero_noise_is_euler_and_last_step_is_finite() -> None:
    prev, lp, mean, std = cps_step_with_logprob(V, X, SIGMAS, 1, noise_level=0.0, noise=NOISE)
    torch.testing.assert_close(mean, X + (SIGMAS[2] - SIGMAS[1]) * V)
    torch.testing.assert_close(prev, mean)
    assert lp.tolist() == [0.0]
    # last step (s' = 0): std 0, mean = x0_hat, log-prob 0 in both forms
    last = len(SIGMAS) - 2
    for form in ("flow_grpo", "gaussian"):
        prev, lp, mean, std = cps_step_with_logprob(V, X, SIGMAS, last, noise_level=0.7, log_prob_form=form)
        torch.testing.assert_close(mean, X - SIGMAS[last] * V)
        assert std.item() == 0.0 and lp.tolist() == [0.0]


# --------------------------------------------------------------------------------------------- DDIM


def _alphas_cumprod() -> torch.Tensor:
    return torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0).float()


def test_ddim_step_matches_direct_computation() -> None:
    torch.manual_seed(2)
    ac = _alphas_cumprod()
    x, e, z = torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3), torch.randn(2, 4, 3, 3)
    t, tp, eta = 500, 480, 0.8
    at, ap = ac[t].item(), ac[tp].item()
    x0 = (x - math.sqrt(1 - at) * e) / math.sqrt(at)
    sd = eta * math.sqrt((1 - ap) / (1 - at) * (1 - at / ap))
    m = math.sqrt(ap) * x0 + math.sqrt(1 - ap - sd**2) * e
    prev, lp, mean, std = ddim_step_with_logprob(e, x, ac, t, tp, eta=eta, noise=z)
    torch.testing.assert_close(mean, m)
    assert std.flatten().tolist() == pytest.approx([sd, sd], rel=1e-5)
    torch.testing.assert_close(prev, m + sd * z)
    torch.testing.assert_close(lp.double(), _normal_log_prob(prev, mean, std))
    # per-batch timesteps agree with scalar calls
    prev_b, lp_b, mean_b, _ = ddim_step_with_logprob(
        e, x, ac, torch.tensor([t, 300]), torch.tensor([tp, 280]), eta=eta, noise=z
    )
    torch.testing.assert_close(lp_b[:1], lp[:1])
    _, lp_1, mean_1, _ = ddim_step_with_logprob(e[1:], x[1:], ac, 300, 280, eta=eta, prev_sample=prev_b[1:])
    torch.testing.assert_close(lp_1, lp_b[1:])
    torch.testing.assert_close(mean_1, mean_b[1:])


def test_ddim_eta_zero_is_deterministic_ddim_and_final_step() -> None:
    torch.manual_seed(3)
    ac = _alphas_cumprod()
    x, e = torch.randn(2, 8), torch.randn(2, 8)
    at, ap = ac[300], ac[200]
    x0 = (x - (1 - at).sqrt() * e) / at.sqrt()
    expected = ap.sqrt() * x0 + (1 - ap).sqrt() * e
    prev, lp, mean, std = ddim_step_with_logprob(e, x, ac, 300, 200, eta=0.0)
    torch.testing.assert_close(prev, expected)
    assert torch.equal(std, torch.zeros_like(std)) and lp.tolist() == [0.0, 0.0]
    # t_prev < 0 uses final_alpha_cumprod (1 -> x0, std 0 even with eta 1)
    prev, lp, mean, std = ddim_step_with_logprob(e, x, ac, 0, -1, eta=1.0)
    torch.testing.assert_close(prev, (x - (1 - ac[0]).sqrt() * e) / ac[0].sqrt())
    assert lp.tolist() == [0.0, 0.0]
    _, _, mean_t, _ = ddim_step_with_logprob(e, x, ac, torch.tensor([0, 0]), torch.tensor([-1, -1]), eta=1.0)
    torch.testing.assert_close(mean_t, mean)
    with pytest.raises(ValueError, match="t out of range"):
        ddim_step_with_logprob(e, x, ac, 1000, 900, eta=1.0)


# ----------------------------------------------------------------------------------------------- KL


def test_kl_to_reference_matches_normal_kl() -> None:
    torch.manual_seed(4)
    m, r = torch.randn(3, 2, 4), torch.randn(3, 2, 4)
    std = torch.tensor([0.5, 1.0, 2.0]).reshape(3, 1, 1)
    kl = kl_to_reference(m, r, std)
    p = torch.distributions.Normal(m, std.expand_as(m))
    q = torch.distributions.Normal(r, std.expand_as(r))
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(p, q).flatten(1).mean(1))
    assert kl_to_reference(m.bfloat16(), r.bfloat16(), 1.0).dtype == torch.float32
    assert kl_to_reference(m, r, 0.0).tolist() == [0.0, 0.0, 0.0]


def test_kl_with_sde_step_std() -> None:
    v, v_ref = V, V + 0.1
    _, _, mean, std = sde_step_with_logprob(v, X, SIGMAS, 0, noise_level=0.7, noise=NOISE)
    _, _, ref_mean, _ = sde_step_with_logprob(v_ref, X, SIGMAS, 0, noise_level=0.7, noise=NOISE)
    expected = ((mean - ref_mean) ** 2).mean(1) / (2 * 0.7**2)
    torch.testing.assert_close(kl_to_reference(mean, ref_mean, std), expected)


# ---------------------------------------------------------------------------------- BranchGRPO tree


def _flat_grpo(r: torch.Tensor) -> torch.Tensor:
    return (r - r.mean(-1, keepdim=True)) / r.std(-1, keepdim=True)


def test_depthwise_advantages_reference_from_issue() -> None:
    adv = depthwise_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), num_steps=4, split_steps={0, 2})
    assert [a.shape[-1] for a in adv] == [2, 2, 4, 4]
    # depths 0-1: two nodes, rewards mean(1, 2) = 1.5 and mean(3, 6) = 4.5; unbiased std 3 / sqrt(2), so
    # (r - 3) / std = -+1 / sqrt(2). Depths 2-3: the leaves, mean 3, unbiased std sqrt(14 / 3)
    torch.testing.assert_close(adv[0], torch.tensor([-0.7071, 0.7071]), atol=1e-4, rtol=0)
    torch.testing.assert_close(adv[0], torch.tensor([-1.0, 1.0]) / 2 ** 0.5)
    torch.testing.assert_close(adv[3], torch.tensor([-0.9258, -0.4629, 0.0, 1.3887]), atol=1e-4, rtol=0)
    torch.testing.assert_close(adv[3], torch.tensor([-2.0, -1.0, 0.0, 3.0]) / (14 / 3) ** 0.5)
    torch.testing.assert_close(adv[1], adv[0])
    torch.testing.assert_close(adv[2], adv[3])


@pytest.mark.parametrize(
    ("num_steps", "split_steps", "branch_factor"),
    [(4, {0, 2}, 2), (5, {1}, 3), (20, {0, 3, 6, 9}, 2), (3, {2}, 2), (4, {0, 1, 2, 3}, 2)],
)
def test_leaf_depth_is_flat_grpo_and_shapes(
    num_steps: int, split_steps: set[int], branch_factor: int
) -> None:
    torch.manual_seed(5)
    leaves = branch_factor ** len(split_steps)
    rewards = torch.rand(3, leaves)  # three prompts, one tree each
    adv = depthwise_advantages(rewards, num_steps, split_steps, branch_factor)
    assert len(adv) == num_steps
    for depth, a in enumerate(adv, start=1):
        nodes = branch_factor ** sum(s < depth for s in split_steps)
        assert a.shape == (3, nodes)
        if nodes == 1:
            assert torch.equal(a, torch.zeros(3, 1))
        else:
            node_r = rewards.reshape(3, nodes, -1).mean(-1)
            torch.testing.assert_close(a, _flat_grpo(node_r))
    torch.testing.assert_close(adv[-1], _flat_grpo(rewards))


def test_depthwise_branch_three_single_split() -> None:
    adv = depthwise_advantages([0.0, 3.0, 6.0], num_steps=3, split_steps=[1], branch_factor=3)
    assert adv[0].tolist() == [0.0]  # root transition: one node
    torch.testing.assert_close(adv[1], torch.tensor([-1.0, 0.0, 1.0]))
    torch.testing.assert_close(adv[2], adv[1])


def test_depthwise_constant_rewards_and_weights() -> None:
    adv = depthwise_advantages([2.0, 2.0, 2.0, 2.0], 4, {0, 2})
    assert all(torch.equal(a, torch.zeros_like(a)) for a in adv)
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    w = torch.tensor([3.0, 1.0, 1.0, 1.0])
    adv_w = depthwise_advantages(r, 4, {0, 2}, weights=w)
    node = torch.tensor([(3 * 1 + 2) / 4, 4.5])
    torch.testing.assert_close(adv_w[0], _flat_grpo(node))
    torch.testing.assert_close(adv_w[3], _flat_grpo(r))  # leaves unaffected by weights


def test_depthwise_validation() -> None:
    with pytest.raises(ValueError, match="expected 4 leaves"):
        depthwise_advantages([1.0, 2.0, 3.0], 4, {0, 2})
    with pytest.raises(ValueError, match="split steps must be"):
        depthwise_advantages([1.0, 2.0], 4, {4})
    with pytest.raises(ValueError, match="duplicates"):
        depthwise_advantages([1.0, 2.0, 3.0, 4.0], 4, [1, 1])
    with pytest.raises(ValueError, match="branch_factor"):
        depthwise_advantages([1.0], 4, set(), branch_factor=1)
    with pytest.raises(ValueError, match="num_steps"):
        depthwise_advantages([1.0, 2.0], 0, {0})
    with pytest.raises(ValueError, match="weights must be"):
        depthwise_advantages([1.0, 2.0], 2, {0}, weights=[1.0, 0.0])
    with pytest.raises(ValueError, match="weights shape"):
        depthwise_advantages([1.0, 2.0], 2, {0}, weights=[1.0])
