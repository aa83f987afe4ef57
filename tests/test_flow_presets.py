"""Flow-GRPO presets held to the reference repositories' formulas, transcribed below in numpy / plain Python.

Each ``ref_*`` function transcribes one reference computation (file named in its docstring); the tests compare
visalign's public functions with them on several shapes, steps and iterations. Nothing here is visalign's own
output pasted back.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from test_trainers_flow import CLASSES, Bright, config, unet_policy
from visalign.trainers.config import load_config
from visalign.trainers.flow import (
    PRESETS,
    FlowGRPOConfig,
    FlowGRPOTrainer,
    describe_flow_options,
    ppo_clip_loss,
    sde_window,
    trained_steps,
    tree_advantages,
    width_pruning_masks,
)
from visalign.trainers.grpo import group_advantages, keyed_group_advantages
from visalign.trainers.sde import kl_to_reference, sde_sigma_t, sde_step_with_logprob

SHAPES = [(2, 4, 8, 8), (3, 16, 5), (1, 2, 3, 4)]
F32 = {"rtol": 1e-5, "atol": 1e-5}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def sd3_sigmas(n: int, shift: float = 3.0) -> np.ndarray:
    t = np.linspace(1, 0, n + 1, dtype=np.float32)
    return (shift * t / (1 + (shift - 1) * t)).astype(np.float32)


# ------------------------------------------------------------------------------- reference formulas


def ref_flow_grpo_step(v, x, sigmas, i, a, noise=None, prev=None):
    """flow_grpo/diffusers_patch/sd3_sde_with_logprob.py: returns (prev, log_prob, mean, std_dev_t)."""
    v, x = v.astype(np.float32), x.astype(np.float32)
    b = (-1,) + (1,) * (x.ndim - 1)
    sigma = np.asarray(sigmas[i], np.float32).reshape(b) if np.ndim(i) else np.float32(sigmas[i])
    sigma_prev = np.asarray(sigmas[np.asarray(i) + 1], np.float32).reshape(b) if np.ndim(i) else np.float32(sigmas[i + 1])
    sigma_max = sigmas[1]
    dt = sigma_prev - sigma
    std_dev_t = np.sqrt(sigma / (1 - np.where(sigma == 1, sigma_max, sigma))) * a
    mean = x * (1 + std_dev_t**2 / (2 * sigma) * dt) + v * (1 + std_dev_t**2 * (1 - sigma) / (2 * sigma)) * dt
    if prev is None:
        prev = mean + std_dev_t * np.sqrt(-1 * dt) * noise
    lp = (-((prev - mean) ** 2) / (2 * (std_dev_t * np.sqrt(-1 * dt)) ** 2) - np.log(std_dev_t * np.sqrt(-1 * dt))
          - np.log(np.sqrt(2 * np.pi)))
    return prev, lp.mean(axis=tuple(range(1, lp.ndim))), mean, std_dev_t


def ref_flux_step(v, x, eta, sigmas, index, noise=None, prev=None, split_noise_scale=1.0):
    """DanceGRPO fastvideo/train_grpo_flux.py flux_step (sde_solver=True) and BranchGRPO
    train_branchgrpo_flux.py flux_step_with_split (noise * split_noise_scale, log-prob under std_dev_t)."""
    sigma = sigmas[index]
    dsigma = sigmas[index + 1] - sigma
    mean = x + dsigma * v
    pred_original = x - sigma * v
    delta_t = sigma - sigmas[index + 1]
    std_dev_t = max(eta * math.sqrt(delta_t), 1e-8)
    score = -(x - pred_original * (1 - sigma)) / sigma**2
    log_term = -0.5 * eta**2 * score
    mean = mean + log_term * dsigma
    if prev is None:
        prev = mean + (noise * split_noise_scale) * std_dev_t
    lp = -((prev - mean) ** 2) / (2 * std_dev_t**2) - math.log(std_dev_t) - 0.5 * math.log(2 * math.pi)
    return prev, lp.mean(axis=tuple(range(1, lp.ndim))), mean, std_dev_t


def ref_flow_grpo_kl(mean, mean_ref, std_dev_t):
    """scripts/train_sd3.py: ((mu - mu_ref)^2).mean(non-batch) / (2 * std_dev_t^2), per sample."""
    kl = ((mean - mean_ref) ** 2).mean(axis=tuple(range(1, mean.ndim)))
    return kl / (2 * np.asarray(std_dev_t).reshape(-1) ** 2)


def ref_stat_tracker(prompts, rewards, global_std):
    """flow_grpo/stat_tracking.py PerPromptStatTracker.update (type 'grpo'), one call then clear()."""
    prompts, rewards = np.array(prompts), np.array(rewards, dtype=np.float64)
    advantages = np.empty_like(rewards) * 0.0
    stats = {}
    for p in np.unique(prompts):
        stats[p] = list(rewards[prompts == p])
    for p in np.unique(prompts):
        mean = np.mean(stats[p], axis=0, keepdims=True)
        std = (np.std(rewards, axis=0, keepdims=True) if global_std else np.std(stats[p], axis=0, keepdims=True)) + 1e-4
        advantages[prompts == p] = (rewards[prompts == p] - mean) / std
    return advantages


def ref_batch_path(rewards):
    """scripts/train_sd3.py, per_prompt_stat_tracking=False: (r - r.mean()) / (r.std() + 1e-4) on numpy."""
    r = np.asarray(rewards, np.float64)
    return (r - r.mean()) / (r.std() + 1e-4)


def ref_dance_group(rewards, n_gen):
    """DanceGRPO train_one_step (use_group): torch std (unbiased) + 1e-8 per contiguous group."""
    r = torch.as_tensor(rewards, dtype=torch.float64)
    adv = torch.zeros_like(r)
    for i in range(len(r) // n_gen):
        g = r[i * n_gen:(i + 1) * n_gen]
        adv[i * n_gen:(i + 1) * n_gen] = (g - g.mean()) / (g.std() + 1e-8)
    return adv.numpy()


def ref_ppo_loss(log_prob, old_log_prob, adv, clip):
    """scripts/train_sd3.py grpo logic: maximum(-A r, -A clip(r)) (before the mean)."""
    ratio = np.exp(log_prob - old_log_prob)
    return np.maximum(-adv * ratio, -adv * np.clip(ratio, 1.0 - clip, 1.0 + clip))


class Node:
    def __init__(self, depth, parent=None):
        self.depth, self.parent, self.children = depth, parent, []
        self.reward = self.advantage = None
        self.step = depth  # BranchGRPO: a node made at sampling step i has step i + 1 = its depth

    def leaves(self):
        return [self] if not self.children else [leaf for c in self.children for leaf in c.leaves()]


def ref_branch_tree(leaf_rewards, num_steps, split_points):
    """BranchGRPO run_tree_sample_step (structure), compute_node_rewards_from_leaves (mean of leaves) and
    compute_hierarchical_advantages_by_depth (torch std, 0 if < 1e-6, else / (std + 1e-8))."""
    root, current = Node(0), None
    current = [root]
    for i in range(num_steps):
        new = []
        for node in current:
            for _ in range(2 if i in split_points else 1):
                child = Node(node.depth + 1, node)
                node.children.append(child)
                new.append(child)
        current = new
    for leaf, r in zip(current, leaf_rewards, strict=True):
        leaf.reward = torch.tensor(float(r), dtype=torch.float64)
    by_depth: dict[int, list[Node]] = {}

    def collect(n):
        by_depth.setdefault(n.depth, []).append(n)
        for c in n.children:
            collect(c)

    collect(root)
    for d in reversed(range(num_steps)):
        for n in by_depth[d]:
            n.reward = torch.stack([leaf.reward for leaf in n.leaves()]).mean()
    for _, nodes in by_depth.items():
        if len(nodes) <= 1:
            for n in nodes:
                n.advantage = torch.tensor(0.0)
            continue
        rewards = torch.stack([n.reward for n in nodes])
        std = rewards.std()
        adv = torch.zeros_like(rewards) if std < 1e-6 else (rewards - rewards.mean()) / (std + 1e-8)
        for n, a in zip(nodes, adv, strict=True):
            n.advantage = a
    return root, by_depth


def ref_branch_transitions(roots):
    """collect_all_transitions: depth-first, parent step, child depth, child advantage."""
    out = []

    def walk(node, tree):
        for child in node.children:
            out.append({"tree": tree, "step": node.step, "child_depth": child.depth, "child": child,
                        "advantage": child.advantage, "parent": node})
            walk(child, tree)

    for t, r in enumerate(roots):
        walk(r, t)
    return out


def ref_branch_depth_pruning(samples, depth_pruning, current_step, interval, stop_depth, split_points, slide=True):
    """train_one_step_tree depth pruning (sliding window toward earlier depths, stop_depth)."""
    base = sorted(depth_pruning)
    active = base
    if slide:
        stop = max(split_points) if stop_depth is None else stop_depth
        shift = max(0, int(current_step // max(1, interval)))
        shift = min(shift, max(0, base[0] - stop))
        active = [d - shift for d in base]
    return [s for s in samples if s["child_depth"] not in set(active)]


def ref_branch_width_pruning(samples, mode, ratio, split_points):
    """train_one_step_tree width pruning (modes 1 and 2), after depth pruning."""
    last_split = max(split_points)
    last_layer = [s for s in samples if s["step"] > last_split]
    other = [s for s in samples if s["step"] <= last_split]
    if mode == 1:
        groups: dict[int, list] = {}
        for s in last_layer:
            node = s["parent"]
            while node.step != last_split + 1:
                node = node.parent
            groups.setdefault(id(node), []).append(s)
        kept = []
        for group in groups.values():
            keep = max(1, int(len(group) * ratio))
            kept += sorted(group, key=lambda x: float(x["advantage"]), reverse=True)[:keep]
    else:
        ranked = sorted(last_layer, key=lambda x: float(x["advantage"]), reverse=True)
        keep = max(2, int(len(ranked) * ratio))
        best = keep // 2
        worst = keep - best
        kept = ranked[:best] + (ranked[-worst:] if worst > 0 else [])
    return other + kept


def ref_mixgrpo_windows(num_steps, iterations, size, iters_per_group, step):
    """fastvideo/utils/grpo_states.py GRPOTrainingStates (progressive, prog_overlap, roll_back), as the
    training loop uses it: get_current_timesteps() then update_iteration()."""
    cur, it_in_group, out, max_t = 0, 0, [], num_steps - 2
    for _ in range(iterations):
        out.append(list(range(cur, min(cur + size, max_t))))
        it_in_group += 1
        if it_in_group >= iters_per_group:
            it_in_group = 0
            cur += step
        if cur > max_t:
            cur, it_in_group = 0, 0
    return out


# ------------------------------------------------------------------------------------- the step


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [4, 10])
def test_flow_grpo_step_sample_log_prob_mean_and_std_dev_t(shape, steps) -> None:
    g = torch.Generator().manual_seed(steps + len(shape))
    sigmas = torch.from_numpy(sd3_sigmas(steps))
    for i in (0, 1, steps // 2, steps - 2):
        x, v, n = (torch.randn(shape, generator=g) for _ in range(3))
        prev, lp, mean, std = sde_step_with_logprob(v, x, sigmas, i, noise_level=0.7, noise=n)
        r_prev, r_lp, r_mean, r_std = ref_flow_grpo_step(v.numpy(), x.numpy(), sigmas.numpy(), i, 0.7, noise=n.numpy())
        np.testing.assert_allclose(prev.numpy(), r_prev, **F32)
        np.testing.assert_allclose(mean.numpy(), r_mean, **F32)
        np.testing.assert_allclose(lp.numpy(), r_lp, **F32)
        dt = float(sigmas[i] - sigmas[i + 1])
        np.testing.assert_allclose((std / math.sqrt(dt)).reshape(-1).numpy(), np.full(shape[0], r_std), **F32)
        np.testing.assert_allclose(float(sde_sigma_t(sigmas, i, 0.7)), r_std, **F32)
        # recomputing a stored sample (the training path)
        _, lp2, _, _ = sde_step_with_logprob(v, x, sigmas, i, noise_level=0.7, prev_sample=prev)
        np.testing.assert_allclose(lp2.numpy(), r_lp, **F32)


def test_flow_grpo_step_batched_step_index() -> None:
    sigmas = torch.from_numpy(sd3_sigmas(10))
    g = torch.Generator().manual_seed(3)
    idx = torch.tensor([0, 4, 8])
    x, v, n = (torch.randn(3, 4, 6, 6, generator=g) for _ in range(3))
    prev, lp, mean, _ = sde_step_with_logprob(v, x, sigmas, idx, noise_level=0.9, noise=n)
    r_prev, r_lp, r_mean, _ = ref_flow_grpo_step(v.numpy(), x.numpy(), sigmas.numpy(), idx.numpy(), 0.9, noise=n.numpy())
    np.testing.assert_allclose(prev.numpy(), r_prev, **F32)
    np.testing.assert_allclose(lp.numpy(), r_lp, **F32)
    np.testing.assert_allclose(mean.numpy(), r_mean, **F32)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("steps", [16, 20])
def test_constant_sigma_step_is_dance_and_branch_grpo_flux_step(shape, steps) -> None:
    g = torch.Generator().manual_seed(steps)
    sigmas = torch.from_numpy(sd3_sigmas(steps))
    for i in (0, 3, steps // 2, steps - 1):  # BranchGRPO trains the last step too
        x, v, n = (torch.randn(shape, generator=g) for _ in range(3))
        for scale in (1.0, 4.0):
            prev, lp, mean, std = sde_step_with_logprob(v, x, sigmas, i, noise_level=0.3, noise=n,
                                                        sigma_mode="constant", noise_scale=scale)
            r_prev, r_lp, r_mean, r_std = ref_flux_step(v.numpy(), x.numpy(), 0.3, sigmas.numpy(), i,
                                                        noise=n.numpy(), split_noise_scale=scale)
            np.testing.assert_allclose(prev.numpy(), r_prev, **F32)
            np.testing.assert_allclose(mean.numpy(), r_mean, **F32)
            np.testing.assert_allclose(lp.numpy(), r_lp, rtol=1e-5, atol=1e-4)
            np.testing.assert_allclose(std.reshape(-1).numpy(), np.full(shape[0], r_std), **F32)
            # training recomputes under the unscaled std
            _, lp2, _, _ = ref_flux_step(v.numpy(), x.numpy(), 0.3, sigmas.numpy(), i, prev=prev.numpy())
            _, ours2, _, _ = sde_step_with_logprob(v, x, sigmas, i, noise_level=0.3, prev_sample=prev,
                                                   sigma_mode="constant")
            np.testing.assert_allclose(ours2.numpy(), lp2, rtol=1e-5, atol=1e-4)


def test_noise_is_drawn_in_float32_like_the_references() -> None:
    sigmas = torch.from_numpy(sd3_sigmas(10)).double()
    x, v = torch.randn(2, 3, 4, 4).double(), torch.randn(2, 3, 4, 4).double()
    prev, _, mean, std = sde_step_with_logprob(v, x, sigmas, 2, noise_level=0.7,
                                               generator=torch.Generator().manual_seed(5))
    noise = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(5), dtype=torch.float32)
    torch.testing.assert_close(prev, mean + std * noise.double())


@pytest.mark.parametrize("shape", SHAPES)
def test_kl_with_dt_is_flow_grpo_kl(shape) -> None:
    sigmas = torch.from_numpy(sd3_sigmas(10))
    g = torch.Generator().manual_seed(11)
    for i in (0, 4, 8):
        x, v, v_ref = (torch.randn(shape, generator=g) for _ in range(3))
        _, _, mean, std = sde_step_with_logprob(v, x, sigmas, i, noise_level=0.7, noise=torch.zeros(shape))
        _, _, ref_mean, _ = sde_step_with_logprob(v_ref, x, sigmas, i, noise_level=0.7, noise=torch.zeros(shape))
        _, _, r_mean, std_dev_t = ref_flow_grpo_step(v.numpy(), x.numpy(), sigmas.numpy(), i, 0.7, noise=np.zeros(shape))
        _, _, r_ref_mean, _ = ref_flow_grpo_step(v_ref.numpy(), x.numpy(), sigmas.numpy(), i, 0.7, noise=np.zeros(shape))
        dt = float(sigmas[i] - sigmas[i + 1])
        ours = kl_to_reference(mean, ref_mean, std, dt=dt)
        np.testing.assert_allclose(ours.numpy(), ref_flow_grpo_kl(r_mean, r_ref_mean, np.full(shape[0], std_dev_t)),
                                   rtol=1e-4, atol=1e-6)
        exact = kl_to_reference(mean, ref_mean, std)
        torch.testing.assert_close(ours, exact * dt, rtol=1e-4, atol=1e-7)


# ------------------------------------------------------------------------------------- advantages


@pytest.mark.parametrize("groups,size", [(2, 2), (3, 4), (4, 24)])
def test_group_advantages_ddof0_and_global_std_are_flow_grpo_stat_tracker(groups, size) -> None:
    rng = np.random.default_rng(groups * size)
    rewards = rng.normal(size=groups * size)
    prompts = [f"p{i // size}" for i in range(groups * size)]
    t = torch.from_numpy(rewards)
    for global_std in (False, True):
        ref = ref_stat_tracker(prompts, rewards, global_std)
        scale = "batch" if global_std else "group"
        np.testing.assert_allclose(group_advantages(t, size, scale, 1e-4, ddof=0).numpy(), ref, rtol=1e-6, atol=1e-9)
        np.testing.assert_allclose(keyed_group_advantages(t, prompts, scale, 1e-4, ddof=0).numpy(), ref,
                                   rtol=1e-6, atol=1e-9)


def test_prompt_identity_grouping_and_batch_path() -> None:
    rng = np.random.default_rng(0)
    rewards = rng.normal(size=12)
    prompts = ["cat", "cat", "dog", "dog", "cat", "cat", "owl", "owl", "dog", "dog", "owl", "owl"]  # slots merge
    for global_std in (False, True):
        ours = keyed_group_advantages(torch.from_numpy(rewards), prompts, "batch" if global_std else "group", 1e-4, 0)
        np.testing.assert_allclose(ours.numpy(), ref_stat_tracker(prompts, rewards, global_std), rtol=1e-6, atol=1e-9)
    ours = keyed_group_advantages(torch.from_numpy(rewards), None, "group", 1e-4, 0)
    np.testing.assert_allclose(ours.numpy(), ref_batch_path(rewards), rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("groups,size", [(2, 2), (3, 12), (2, 16)])
def test_group_advantages_ddof1_is_dance_grpo(groups, size) -> None:
    rewards = np.random.default_rng(size).normal(size=groups * size).astype(np.float32)
    ours = group_advantages(torch.from_numpy(rewards).double(), size, "group", 1e-8, ddof=1)
    np.testing.assert_allclose(ours.numpy(), ref_dance_group(rewards, size), rtol=1e-6, atol=1e-9)


def test_clipped_loss_is_the_references() -> None:
    rng = np.random.default_rng(1)
    for clip in (1e-4, 1e-3, 0.2):
        lp, old, adv = rng.normal(size=64) * 1e-3, rng.normal(size=64) * 1e-3, rng.normal(size=64)
        loss, _ = ppo_clip_loss(torch.from_numpy(lp), torch.from_numpy(old), torch.from_numpy(adv), clip)
        np.testing.assert_allclose(loss.numpy(), ref_ppo_loss(lp, old, adv, clip), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("num_steps,splits", [(20, [0, 3, 6, 9]), (8, [1, 4]), (6, [0, 1, 2])])
def test_depthwise_advantages_are_branch_grpo(num_steps, splits) -> None:
    rng = np.random.default_rng(num_steps)
    trees = 3
    leaves = 2 ** len(splits)
    rewards = rng.normal(size=(trees, leaves))
    rewards[2] = 0.5  # a tree with constant rewards: advantages 0
    ours = tree_advantages(torch.from_numpy(rewards), num_steps, splits, 2, eps=1e-8)
    for t in range(trees):
        _, by_depth = ref_branch_tree(rewards[t], num_steps, splits)
        for k in range(num_steps):
            ref = np.array([float(n.advantage) for n in by_depth[k + 1]])
            np.testing.assert_allclose(ours[k][t].numpy(), ref, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------------------------------- pruning


def _branch_config(**kw) -> FlowGRPOConfig:
    return FlowGRPOConfig.from_preset("branch_grpo", **kw)


@pytest.mark.parametrize("depths,interval,stop", [([15, 16, 17, 18], 30, 9), ([12, 13], 5, None), ([18, 19, 20], 1, 15)])
def test_depth_pruning_is_branch_grpo(depths, interval, stop) -> None:
    splits = [0, 3, 6, 9]
    c = _branch_config(depth_pruning=depths, depth_pruning_shift_every=interval, depth_pruning_stop_depth=stop,
                       max_steps=400)
    root, _ = ref_branch_tree(np.zeros(16), 20, splits)
    samples = ref_branch_transitions([root])
    for it in (0, 1, 4, 29, 30, 59, 60, 150, 399):
        kept = ref_branch_depth_pruning(samples, depths, it + 1, interval, stop, splits)
        assert sorted({s["step"] for s in kept}) == trained_steps(c, it), it


def test_pruning_step_ratio_stops_pruning() -> None:
    c = _branch_config(depth_pruning=[15, 16], max_steps=10, pruning_step_ratio=0.5)
    assert len(trained_steps(c, 4)) == 18 and len(trained_steps(c, 5)) == 20  # BranchGRPO: current_step <= 5


@pytest.mark.parametrize("mode", [1, 2])
@pytest.mark.parametrize("num_steps,splits,depths", [(20, [0, 3, 6, 9], []), (20, [0, 3, 6, 9], [15, 16, 17, 18]),
                                                     (7, [0, 2], [6]), (9, [1, 3, 4], [])])
@pytest.mark.parametrize("ratio", [0.5, 0.3])
def test_width_pruning_is_branch_grpo(mode, num_steps, splits, depths, ratio) -> None:
    rng = np.random.default_rng(num_steps + mode + len(depths))
    trees, leaves = 2, 2 ** len(splits)
    rewards = rng.normal(size=(trees, leaves))
    rewards[1, :2] = rewards[1, 2]  # ties
    roots = [ref_branch_tree(rewards[t], num_steps, splits)[0] for t in range(trees)]
    samples = ref_branch_transitions(roots)
    if depths:
        samples = ref_branch_depth_pruning(samples, depths, 1, 1, None, splits, slide=False)
    kept = ref_branch_width_pruning(samples, mode, ratio, splits)
    # node index within its depth, left to right
    index = {}
    for root in roots:
        level = [root]
        while level:
            for j, n in enumerate(level):
                index[id(n)] = j
            level = [c for n in level for c in n.children]
    expected = sorted((s["tree"], s["step"], index[id(s["child"])]) for s in kept)
    steps = [k for k in range(num_steps) if k + 1 not in set(depths)]
    masks = width_pruning_masks(torch.from_numpy(rewards), num_steps, splits, 2, mode=mode, ratio=ratio, steps=steps,
                                eps=1e-8)
    got = sorted((t, k, j) for k in steps for t in range(trees) for j in range(masks[k].shape[1]) if masks[k][t, j])
    assert got == expected


def test_mixgrpo_window_is_grpo_training_states() -> None:
    for num_steps, size, every, stride in [(25, 4, 25, 1), (10, 4, 3, 2), (8, 3, 1, 1)]:
        iterations = 30 * every
        ref = ref_mixgrpo_windows(num_steps, iterations, size, every, stride)
        ours = [list(sde_window(num_steps, it, size, every, stride, mode="mix_grpo")) for it in range(iterations)]
        assert ours == ref
        c = FlowGRPOConfig.from_preset("mix_grpo", num_steps=num_steps, sde_window_size=size,
                                       sde_window_shift_every=every, sde_window_stride=stride)
        assert [trained_steps(c, it) for it in range(iterations)] == ref


# ----------------------------------------------------------------------------------- preset options


def test_presets_set_the_reference_semantics_and_explicit_options_win(tmp_path: Path) -> None:
    c = FlowGRPOConfig.from_preset("flow_grpo")
    assert (c.kl_form, c.adv_ddof, c.global_std, c.group_by, c.drop_zero_advantage, c.beta, c.noise_level,
            c.timestep_fraction, c.group_size, c.lora_r, c.lora_alpha, c.learning_rate) == (
        "flow_grpo", 0, True, "prompt", True, 0.04, 0.7, 0.99, 24, 32, 64.0, 3e-4)
    d = FlowGRPOConfig.from_preset("dance_grpo")
    assert (d.sigma_mode, d.noise_level, d.adv_ddof, d.std_eps, d.beta, d.lora, d.timestep_selection) == (
        "constant", 0.3, 1, 1e-8, 0.0, False, "random")
    b = FlowGRPOConfig.from_preset("branch_grpo")
    assert (b.rollout, b.split_steps, b.split_noise_scale, b.split_noise_mode, b.tree_std_eps, b.num_steps) == (
        "tree", [0, 3, 6, 9], 4.0, "draw", 1e-8, 20)
    assert FlowGRPOConfig() == FlowGRPOConfig.from_preset("visalign")
    # an explicit value equal to visalign's default still overrides the preset (YAML and --set)
    path = tmp_path / "c.yaml"
    path.write_text("flow:\n  preset: flow_grpo\n  global_std: false\n")
    loaded = load_config(FlowGRPOConfig, path, section="flow", adv_ddof=1)
    assert (loaded.global_std, loaded.adv_ddof, loaded.kl_form) == (False, 1, "flow_grpo")
    table = describe_flow_options(path, adv_ddof=1)
    assert "| `global_std` | `False` | config |" in table and "| `adv_ddof` | `1` | --set |" in table
    assert "| `kl_form` | `'flow_grpo'` | preset flow_grpo |" in table and "| `seed` | `0` | default |" in table
    with pytest.raises(ValueError, match="unknown preset"):
        FlowGRPOConfig(preset="nope")  # type: ignore[arg-type]
    assert set(PRESETS) == {"visalign", "flow_grpo", "dance_grpo", "branch_grpo", "mix_grpo"}


# ---------------------------------------------------------------------------------- end to end (tiny)

TINY = {"num_steps": 4, "group_size": 2, "prompts_per_iteration": 2, "batch_size": 8, "guidance_scale": 1.0,
        "lora_r": 4, "lora_alpha": 8.0, "eval_every": 0, "max_steps": 1, "log_with": "none",
        "learning_rate": 1e-4, "resolution": 8}


@pytest.mark.slow
@pytest.mark.parametrize("preset,extra", [
    ("flow_grpo", {}),
    ("dance_grpo", {}),
    ("branch_grpo", {"split_steps": [0, 2], "depth_pruning": [3], "depth_pruning_shift_every": 1,
                     "depth_pruning_stop_depth": 1, "width_pruning": True}),
    ("mix_grpo", {"sde_window_size": 2}),
])
def test_each_preset_trains_one_tiny_iteration(tmp_path: Path, preset: str, extra: dict) -> None:
    c = config(tmp_path, **{**TINY, **extra, "preset": preset})
    assert c.preset == preset
    trainer = FlowGRPOTrainer(c, unet_policy(), Bright(), CLASSES)
    (m,) = trainer.train()
    assert math.isfinite(m["reward/mean"]) and m["transitions/trained"] > 0
    assert m["ratio/first_update_max_abs_dev"] < 1e-5
    if preset == "flow_grpo":
        assert math.isfinite(m["kl"])  # Flow-GRPO's KL (beta 0.04) against the adapter-less reference
        # trajectories with advantage exactly 0 leave training (and the loss denominator)
        rollout = trainer.rollout(CLASSES, [(i, i // 2) for i in range(4)], [0.7] * 4, 0)
        adv = [torch.tensor([0.5, 0.0, -0.5, 0.0])] * 4
        masks = trainer._train_masks(rollout, torch.zeros(4), 0, adv)
        assert [m.tolist() for m in masks[:3]] == [[True, False, True, False]] * 3
    if preset == "branch_grpo":
        # child depth 3 (step 2) slides to depth 2 (step 1) at iteration 0: BranchGRPO counts from 1, 1 // 1
        assert trained_steps(c, 0) == [0, 2, 3]
