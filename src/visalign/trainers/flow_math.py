"""The Flow-GRPO trainer's math, as small functions of tensors and the config: tree rollout cost, the
MixGRPO SDE window and per-step noise levels, which steps train (timestep fraction, BranchGRPO depth
and width pruning), tree advantages, and the PPO-clip loss.

Example:
    >>> tree_rollout_nfe(num_steps=4, split_steps=[0, 2], branch_factor=2)  # 1 + 2 + 2 + 4 live nodes
    9
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .sde import depthwise_advantages

if TYPE_CHECKING:
    from .flow_config import FlowGRPOConfig

__all__ = ["config_sde_window", "depth_pruned_steps", "ppo_clip_loss", "pruning_active", "sde_window",
           "step_noise_levels", "trained_steps", "tree_advantages", "tree_rollout_nfe", "width_pruning_masks"]


def tree_rollout_nfe(num_steps: int, split_steps: Sequence[int], branch_factor: int, roots: int = 1,
                     cfg: bool = False) -> int:
    """Denoiser forward passes of a tree rollout: ``roots * sum_k B ** #{s in split_steps: s < k}``, x2 with CFG.

    (A node at step ``k`` runs one forward pass; its children at a split share it.)

    Example:
        >>> tree_rollout_nfe(4, [0, 2], 2, roots=3, cfg=True)  # 3 * (1 + 2 + 2 + 4) * 2
        54
    """
    live = sum(branch_factor ** sum(s < k for s in split_steps) for k in range(num_steps))
    return roots * live * (2 if cfg else 1)


def sde_window(num_steps: int, iteration: int, size: int, shift_every: int, stride: int = 1,
               trainable: int | None = None, mode: str = "visalign") -> range:
    """MixGRPO's SDE window at ``iteration``: ``size`` consecutive steps starting at
    ``(iteration // shift_every) * stride``, wrapping within the first ``trainable`` steps.
    ``size`` 0 (or >= trainable) means every step.

    ``mode="mix_grpo"``: MixGRPO's ``GRPOTrainingStates`` (progressive, ``prog_overlap``, ``roll_back``,
    ``max_timesteps = num_steps - 2``): the start moves by ``stride`` every ``shift_every`` iterations,
    rolls back to 0 once it passes ``num_steps - 2``, and the window is ``range(start, min(start + size,
    num_steps - 2))`` (cut short near the end, empty at ``start == num_steps - 2``; ``trainable`` unused).

    Example:
        >>> [list(sde_window(10, it, 4, 25)) for it in (0, 25, 150, 175)]
        [[0, 1, 2, 3], [1, 2, 3, 4], [6, 7, 8, 9], [0, 1, 2, 3]]
        >>> [list(sde_window(10, it, 4, 25, mode="mix_grpo")) for it in (0, 125, 175, 200, 225)]
        [[0, 1, 2, 3], [5, 6, 7], [7], [], [0, 1, 2, 3]]
    """
    if mode == "mix_grpo":
        if size <= 0:
            return range(num_steps)
        last = num_steps - 2
        positions = last // max(stride, 1) + 1
        start = ((iteration // max(shift_every, 1)) % positions) * stride
        return range(start, max(start, min(start + size, last)))
    if mode != "visalign":
        raise ValueError(f"sde_window mode must be 'visalign' or 'mix_grpo', got {mode!r}")
    trainable = num_steps if trainable is None else trainable
    if size <= 0 or size >= trainable:
        return range(num_steps)
    positions = trainable - size + 1
    start = ((iteration // max(shift_every, 1)) * stride) % positions
    return range(start, start + size)


def step_noise_levels(config: FlowGRPOConfig, iteration: int) -> list[float]:
    """The noise level of every sampling step at ``iteration``: ``noise_levels`` or ``noise_level``, x
    ``split_noise_scale`` at tree split steps, and 0 (ODE) outside the MixGRPO window.

    Example:
        >>> from visalign.trainers.flow_config import FlowGRPOConfig
        >>> step_noise_levels(FlowGRPOConfig(num_steps=4, sde_window_size=2, noise_level=0.5), 0)
        [0.5, 0.5, 0.0, 0.0]
    """
    t = config.num_steps
    levels = list(config.noise_levels) if config.noise_levels is not None else [config.noise_level] * t
    if len(levels) != t:
        raise ValueError(f"noise_levels has {len(levels)} entries for {t} steps")
    if config.rollout == "tree" and config.split_noise_mode == "level":
        levels = [a * config.split_noise_scale if k in config.split_steps else a for k, a in enumerate(levels)]
    window = config_sde_window(config, iteration)
    return [float(a) if k in window else 0.0 for k, a in enumerate(levels)]


def config_sde_window(config: FlowGRPOConfig, iteration: int) -> range:
    """:func:`sde_window` with the config's window options: the steps sampled with noise at ``iteration``."""
    return sde_window(config.num_steps, iteration, config.sde_window_size, config.sde_window_shift_every,
                      config.sde_window_stride, _num_trainable(config), config.sde_window_mode)


def _num_trainable(config: FlowGRPOConfig) -> int:
    return max(1, min(config.num_steps, int(config.num_steps * config.timestep_fraction)))


def pruning_active(config: FlowGRPOConfig, iteration: int) -> bool:
    """Whether depth and width pruning apply at ``iteration`` (0-based). ``depth_pruning_mode`` child_depth:
    BranchGRPO's ``pruning_step_ratio`` (its training steps count from 1: prune while ``iteration + 1 <=
    int(max_steps * ratio)``); step mode: always.

    Example:
        >>> from visalign.trainers.flow_config import FlowGRPOConfig
        >>> c = FlowGRPOConfig(depth_pruning_mode="child_depth", max_steps=10, pruning_step_ratio=0.5)
        >>> [pruning_active(c, it) for it in (3, 4, 5)]
        [True, True, False]
    """
    if config.depth_pruning_mode != "child_depth":
        return True
    return iteration + 1 <= int(config.max_steps * config.pruning_step_ratio)


def depth_pruned_steps(config: FlowGRPOConfig, iteration: int) -> set[int]:
    """The steps depth pruning leaves untrained at ``iteration`` (0-based).

    ``depth_pruning_mode="step"`` (visalign): ``depth_pruning`` lists steps, shifted *later* by one every
    ``depth_pruning_shift_every`` iterations, modulo ``num_steps``.
    ``"child_depth"`` (BranchGRPO's ``train_one_step_tree``): ``depth_pruning`` lists child depths
    (step + 1); with ``depth_pruning_shift_every = k > 0`` (``--depth_pruning_slide``) the window slides
    *earlier* by ``shift = min((iteration + 1) // k, max(0, min(depths) - stop_depth))`` with ``stop_depth
    = depth_pruning_stop_depth`` (None: ``max(split_steps)``); no pruning once :func:`pruning_active` is
    False.

    Example:
        >>> from visalign.trainers.flow_config import FlowGRPOConfig
        >>> c = FlowGRPOConfig(num_steps=20, depth_pruning=[15, 16, 17, 18], depth_pruning_mode="child_depth",
        ...                    depth_pruning_shift_every=30, depth_pruning_stop_depth=9, split_steps=[0, 3, 6, 9],
        ...                    max_steps=300)
        >>> [sorted(depth_pruned_steps(c, it)) for it in (0, 29, 299)]
        [[14, 15, 16, 17], [13, 14, 15, 16], [8, 9, 10, 11]]
    """
    t = config.num_steps
    if not config.depth_pruning:
        return set()
    if config.depth_pruning_mode == "step":
        shift = iteration // config.depth_pruning_shift_every if config.depth_pruning_shift_every > 0 else 0
        return {(s + shift) % t for s in config.depth_pruning}
    if config.depth_pruning_mode != "child_depth":
        raise ValueError(f"depth_pruning_mode must be 'step' or 'child_depth', got {config.depth_pruning_mode!r}")
    if not pruning_active(config, iteration):
        return set()
    depths = sorted(config.depth_pruning)
    if config.depth_pruning_shift_every > 0:
        stop = config.depth_pruning_stop_depth
        if stop is None:
            stop = max(config.split_steps) if config.split_steps else 0
        shift = min((iteration + 1) // config.depth_pruning_shift_every, max(0, depths[0] - stop))
        depths = [d - shift for d in depths]
    return {d - 1 for d in depths}


def trained_steps(config: FlowGRPOConfig, iteration: int) -> list[int]:
    """Steps trained at ``iteration``: the candidates, inside the SDE window, with a non-zero noise level,
    minus the depth-pruned steps (:func:`depth_pruned_steps`).

    Candidates: ``timestep_selection="first"``: the first ``int(num_steps * timestep_fraction)`` (Flow-GRPO;
    the ``branch_grpo`` preset's fraction 1.0 trains every tree edge as BranchGRPO does);
    ``"random"``: ``int((num_steps - 1) * timestep_fraction)`` of the first ``num_steps - 1`` steps, drawn
    from ``(seed, iteration)`` (DanceGRPO's ``--ignore_last`` and ``randperm``; DanceGRPO draws one
    permutation per sample, visalign one per iteration).

    Example:
        >>> from visalign.trainers.flow_config import FlowGRPOConfig
        >>> trained_steps(FlowGRPOConfig(num_steps=10), 0)
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
        >>> trained_steps(FlowGRPOConfig(num_steps=10, depth_pruning=[0, 1], depth_pruning_shift_every=5), 5)
        [0, 3, 4, 5, 6, 7, 8]
        >>> len(trained_steps(FlowGRPOConfig(num_steps=16, timestep_selection="random", timestep_fraction=0.6), 3))
        9
    """
    t = config.num_steps
    pruned = depth_pruned_steps(config, iteration)
    levels = step_noise_levels(config, iteration)
    if config.timestep_selection == "random":
        n = int((t - 1) * config.timestep_fraction)
        candidates = sorted(int(k) for k in np.random.default_rng([config.seed, iteration, 77]).permutation(t - 1)[:n])
    elif config.timestep_selection == "first":
        candidates = list(range(_num_trainable(config)))
    else:
        raise ValueError(f"timestep_selection must be 'first' or 'random', got {config.timestep_selection!r}")
    return [k for k in candidates if levels[k] > 0 and k not in pruned]


def _impute_missing(leaf_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN leaves take their tree's mean of valid leaves (0 if none); returns (rewards, valid mask)."""
    valid = ~torch.isnan(leaf_rewards)
    counts = valid.sum(-1, keepdim=True)
    means = torch.where(valid, leaf_rewards, torch.zeros_like(leaf_rewards)).sum(-1, keepdim=True) / counts.clamp(min=1)
    return torch.where(valid, leaf_rewards, means.expand_as(leaf_rewards)), valid


def tree_advantages(leaf_rewards: torch.Tensor, num_steps: int, split_steps: Sequence[int],
                    branch_factor: int, eps: float | None = None) -> list[torch.Tensor]:
    """:func:`~visalign.trainers.sde.depthwise_advantages` for ``(trees, leaves)`` rewards that may hold NaN
    (missing): a missing leaf takes its tree's mean of valid leaves, and the transitions after the last
    split that lead only to it get advantage 0. ``eps``: as in
    :func:`~visalign.trainers.sde.depthwise_advantages` (BranchGRPO: 1e-8).

    Example:
        >>> adv = tree_advantages(torch.tensor([[1.0, 2.0, 3.0, float("nan")]]), 3, [0, 1], 2)
        >>> [round(a, 3) for a in adv[-1][0].tolist()]  # the NaN leaf counts as 2.0 at shallower depths
        [-1.225, 0.0, 1.225, 0.0]
    """
    filled, valid = _impute_missing(leaf_rewards.double())
    adv = depthwise_advantages(filled, num_steps, split_steps, branch_factor, eps=eps)
    last_split = max(split_steps) if len(split_steps) else -1
    return [torch.where(valid, a, torch.zeros_like(a)) if k > last_split else a for k, a in enumerate(adv)]


def width_pruning_masks(leaf_rewards: torch.Tensor, num_steps: int, split_steps: Sequence[int], branch_factor: int,
                        keep: int = 1, *, mode: int = 0, ratio: float = 0.5, steps: Sequence[int] | None = None,
                        eps: float | None = None) -> list[torch.Tensor]:
    """Width pruning: which transitions of each step are trained, ``(trees, nodes)`` bools.

    ``mode=0`` (visalign): at every depth with more than ``2 * keep`` nodes per tree, only the transitions
    into the ``keep`` best and ``keep`` worst nodes by mean leaf reward (missing leaves imputed as in
    :func:`tree_advantages`; ties: the leftmost) are trained; after the last split those are the best and
    worst leaf chains.

    ``mode=1`` / ``mode=2`` (BranchGRPO's ``train_one_step_tree``, ``width_pruning_mode``): only the
    transitions of steps after the last split step that are still trained (``steps``, e.g. after depth
    pruning; default every step) are pruned, over all ``trees`` given (BranchGRPO: the trees of one
    process), ranked by their depth-wise advantage (:func:`tree_advantages` with ``eps``) with a stable
    descending sort of the transitions listed tree by tree, branch by branch, step by step. Mode 1 keeps,
    per branch (the chain below a node of the last split), the first ``max(1, int(n * ratio))``; mode 2
    keeps the first ``keep // 2`` and the last ``keep - keep // 2`` of all, ``keep = max(2, int(n *
    ratio))``. Transitions at or before the last split are all kept. Element ``k`` refers to the
    transitions of step ``k`` (nodes at depth ``k + 1``).

    Example:
        >>> masks = width_pruning_masks(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), 3, [0, 1], 2)
        >>> [m[0].tolist() for m in masks]
        [[True, True], [True, False, False, True], [True, False, False, True]]
        >>> masks = width_pruning_masks(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), 4, [0, 1], 2, mode=2)
        >>> [m[0].tolist() for m in masks[2:]]  # 8 transitions after the last split: keep 2 best, 2 worst
        [[True, False, False, True], [True, False, False, True]]
    """
    if mode in (1, 2):
        return _branch_width_masks(leaf_rewards, num_steps, split_steps, branch_factor, mode, ratio, steps, eps)
    if mode != 0:
        raise ValueError(f"width pruning mode must be 0, 1 or 2, got {mode!r}")
    filled, _ = _impute_missing(leaf_rewards.double())
    trees, leaves = filled.shape
    out = []
    for depth in range(1, num_steps + 1):
        nodes = branch_factor ** sum(s < depth for s in split_steps)
        node_rewards = filled.reshape(trees, nodes, leaves // nodes).mean(-1)
        mask = torch.ones(trees, nodes, dtype=torch.bool)
        if nodes > 2 * keep:
            mask[:] = False
            order = torch.sort(node_rewards, dim=-1, stable=True).indices
            mask.scatter_(1, order[:, :keep], True)
            mask.scatter_(1, order[:, -keep:], True)
        out.append(mask)
    return out


def _branch_width_masks(leaf_rewards: torch.Tensor, num_steps: int, split_steps: Sequence[int], branch_factor: int,
                        mode: int, ratio: float, steps: Sequence[int] | None, eps: float | None) -> list[torch.Tensor]:
    trees = leaf_rewards.shape[0]
    nodes = [branch_factor ** sum(s < k + 1 for s in split_steps) for k in range(num_steps)]
    masks = [torch.ones(trees, n, dtype=torch.bool) for n in nodes]
    if not split_steps:
        return masks
    last = max(split_steps)
    pool_steps = [k for k in range(last + 1, num_steps) if steps is None or k in set(steps)]
    if not pool_steps:
        return masks
    adv = tree_advantages(leaf_rewards, num_steps, split_steps, branch_factor, eps=eps)
    for k in pool_steps:
        masks[k][:] = False
    # the transitions after the last split in BranchGRPO's depth-first order: tree, branch, step
    pool = [(t, j, k) for t in range(trees) for j in range(nodes[last]) for k in pool_steps]
    key = [-float(adv[k][t, j]) for t, j, k in pool]
    if mode == 2:
        order = sorted(range(len(pool)), key=key.__getitem__)  # stable: ties keep the depth-first order
        keep = max(2, int(len(pool) * ratio))
        best = keep // 2
        chosen = order[:best] + (order[-(keep - best):] if keep - best > 0 else [])
    else:
        chosen = []
        per_branch = len(pool_steps)
        for start in range(0, len(pool), per_branch):
            block = sorted(range(start, start + per_branch), key=key.__getitem__)
            chosen += block[:max(1, int(per_branch * ratio))]
    for i in chosen:
        t, j, k = pool[i]
        masks[k][t, j] = True
    return masks


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  epsilon: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition PPO-clip loss ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` and the ratio ``r``.

    Example:
        >>> loss, ratio = ppo_clip_loss(torch.tensor([0.0, 0.1]), torch.zeros(2), torch.tensor([1.0, 1.0]), 1e-4)
        >>> [round(x, 4) for x in loss.tolist()], [round(x, 4) for x in ratio.tolist()]
        ([-1.0, -1.0001], [1.0, 1.1052])
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - epsilon, 1.0 + epsilon)
    return torch.maximum(unclipped, clipped), ratio
