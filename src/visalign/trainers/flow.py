"""Flow-GRPO for flow-matching text-to-image models, with tree rollouts (BranchGRPO) and an SDE window
(MixGRPO).

One iteration, top to bottom (:meth:`FlowGRPOTrainer.train_iteration`):

1. pick ``prompts_per_iteration`` prompts; **roll out**: from pure noise, ``num_steps`` stochastic steps
   (the policy's ``step_with_logprob`` with the configured ``sampler``: Flow-GRPO's SDE
   (:func:`~visalign.trainers.sde.sde_step_with_logprob`) or CPS for flow-matching policies, DDIM for
   epsilon-prediction ones), storing every transition's parent latents,
   child latents, float32 log-prob and the noise level actually used. ``rollout="independent"``:
   ``group_size`` trajectories per prompt (Flow-GRPO). ``rollout="tree"``: one root per prompt that
   splits into ``branch_factor`` children at every step of ``split_steps`` (BranchGRPO; leaves
   depth-first). Outside the MixGRPO window the step is the ODE (noise level 0);
2. decode the leaves and **score** them with the reward (None / non-finite scores count as missing);
3. **advantages**: per prompt group (:func:`~visalign.trainers.grpo.group_advantages`) or per depth of
   the tree (:func:`tree_advantages`), gathered over processes first, clipped to ``+-adv_clip``;
4. **train** (``num_inner_updates`` optimizer steps, each on its share of the trajectories): for every
   chosen transition (:func:`trained_steps`, :func:`width_pruning_masks`) recompute the log-prob of the
   stored child under the current policy with the same step function, PPO-clip loss (:func:`ppo_clip_loss`)
   + ``beta`` x KL to the reference policy's step mean (adapter disabled;
   :func:`~visalign.trainers.sde.kl_to_reference`);
5. log one JSON line to ``output_dir/metrics.jsonl`` (and to accelerate trackers), checkpoint, eval.

NFE (forward passes of the denoiser, x2 with CFG) are counted for rollout and training; a tree's
rollout NFE is ``sum_k (live nodes at step k)`` (:func:`tree_rollout_nfe`). Randomness is a pure
function of ``(seed, iteration, root, depth, node)``, so runs reproduce across resumes and across
process counts.

Example (a random tiny class-conditional UNet, one iteration):
    >>> import tempfile
    >>> from diffusers import UNet2DModel
    >>> from visalign.rewards import Reward, RewardOutput
    >>> from visalign.trainers.flow_policies import ClassConditionalFlowPolicy
    >>> class Bright(Reward):
    ...     name = "bright"
    ...     def score(self, samples):
    ...         return RewardOutput([float(np.asarray(s.image).mean()) for s in samples], [{}] * len(samples))
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
    ...                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=2)
    >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle", "a blue square"])
    >>> config = FlowGRPOConfig(num_steps=3, group_size=2, prompts_per_iteration=2, guidance_scale=1.0,
    ...                         num_iterations=1, lora_rank=4, eval_every=0, beta=0.0,
    ...                         output_dir=tempfile.mkdtemp())
    >>> trainer = FlowGRPOTrainer(config, policy, Bright(), ["a red circle", "a blue square"])
    >>> history = trainer.train()
    >>> history[0]["nfe/rollout"], history[0]["ratio/first_update_max_abs_dev"]
    (12, 0.0)
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from ..rewards.base import Reward, Sample
from .config import config_to_dict, load_config, option, save_config
from .flow_policies import Conditioning, FlowPolicy, image_grid, load_flow_policy
from .grpo import group_advantages
from .sde import depthwise_advantages, kl_to_reference

__all__ = [
    "FlowGRPOConfig",
    "FlowGRPOTrainer",
    "ParameterEMA",
    "Rollout",
    "StepRecord",
    "build_reward",
    "ppo_clip_loss",
    "sde_window",
    "step_noise_levels",
    "train_flow_from_config",
    "trained_steps",
    "tree_advantages",
    "tree_rollout_nfe",
    "width_pruning_masks",
]

logger = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- config


@dataclass
class FlowGRPOConfig:
    """Options of :class:`FlowGRPOTrainer` (``describe_config(FlowGRPOConfig)`` prints the table)."""

    # model and data
    pretrained: str | None = option(None, "local directory: a StableDiffusion3Pipeline, a StableDiffusionPipeline "
                                    "(SD1.5, DDIM), or a class-conditional UNet2DModel with classes.json "
                                    "(train_flow_from_config only)")
    resolution: int = option(512, "image size in pixels (pipeline policies)", source="Flow-GRPO (SD3.5-M)")
    max_sequence_length: int = option(256, "T5 tokens per prompt (SD3 policies)", source="diffusers SD3")
    prompts: list[str] = option([], "training prompts (or prompts_file)")
    prompts_file: str | None = option(None, "text file, one training prompt per line")
    eval_prompts: list[str] = option([], "fixed prompts of the eval grid (or eval_prompts_file)")
    eval_prompts_file: str | None = option(None, "text file, one eval prompt per line")
    rewards: dict[str, Any] = option({}, "reward name -> weight, or -> {weight: w, <reward options>} "
                                     "(train_flow_from_config only; names from visalign.rewards.REWARDS or "
                                     "'package.module:Class')")
    reward_aggregation: str = option("normalize_then_sum", "how several rewards combine (CompositeReward): sum, "
                                     "normalize_then_sum or sum_then_normalize", source="Flow-GRPO")
    # sampling
    num_steps: int = option(10, "sampling steps in rollouts", source="Flow-GRPO")
    guidance_scale: float = option(4.5, "classifier-free guidance in rollouts and training (1 = off)",
                                   source="Flow-GRPO (SD3.5-M)")
    sampler: Literal["auto", "sde", "cps", "ddim"] = option(
        "auto", "stochastic step of rollouts and training. Flow-matching policies: sde (Flow-GRPO's SDE) or cps "
        "(coefficients-preserving, Flow-GRPO's log-prob form); epsilon-prediction policies (SD1.5): ddim (DDPO). "
        "auto: the policy's first, i.e. sde for flow matching, ddim for epsilon prediction",
        source="Flow-GRPO / DDPO")
    noise_level: float = option(0.7, "noise level a of every step, 0 = deterministic (ODE / DDIM eta 0). sde: "
                                "sigma_t = a * sqrt(s / (1 - s)), a >= 0 (SD3.5: 0.7, FLUX: 0.9); cps: std = "
                                "s' * sin(a * pi / 2), a in [0, 1]; ddim: eta >= 0 (DDPO: 1.0, the DDPM variance)",
                                source="Flow-GRPO (SD3.5-M)")
    noise_levels: list[float] | None = option(None, "one noise level per step, overriding noise_level "
                                              "(depth-dependent noise)", source="Dynamic-TreeRPO")
    # GRPO
    prompts_per_iteration: int = option(8, "prompts (groups / trees) per iteration, over all processes")
    group_size: int = option(24, "images per prompt for independent rollouts", source="Flow-GRPO")
    batch_size: int = option(8, "samples per forward pass in rollouts and training")
    timestep_fraction: float = option(0.99, "train the first int(num_steps * fraction) steps (the last step's "
                                      "tiny std makes its log-density overflow)", source="Flow-GRPO")
    clip_range: float = option(1e-4, "PPO clip epsilon of the ratio", source="Flow-GRPO")
    beta: float = option(0.04, "KL-to-reference weight (0: no reference forward passes)",
                         source="Flow-GRPO (GenEval/OCR; 0.01 PickScore)")
    adv_clip: float = option(5.0, "advantages are clipped to +-adv_clip", source="Flow-GRPO")
    std_eps: float = option(1e-4, "added to the group std of the rewards", source="Flow-GRPO")
    global_std: bool = option(False, "divide advantages by the std of all rewards of the iteration (gathered over "
                              "processes) instead of the group's", source="Flow-GRPO option")
    num_inner_updates: int = option(1, "optimizer steps per iteration, each on its own share of the trajectories "
                                    "(Flow-GRPO's SD3.5 recipe makes 2)")
    # tree rollouts (BranchGRPO)
    rollout: Literal["independent", "tree"] = option("independent", "independent (Flow-GRPO) or tree (BranchGRPO)")
    split_steps: list[int] = option([0, 2, 4, 6], "tree: steps at which every node splits", source="BranchGRPO "
                                    "(0, 3, 6, 9 of 20)")
    branch_factor: int = option(2, "tree: children per split", source="BranchGRPO")
    split_noise_scale: float = option(1.0, "tree: noise level multiplier at split steps (the stored log-prob uses "
                                      "the scaled level)", source="BranchGRPO")
    width_pruning: bool = option(False, "tree: at each depth, train only transitions into the best and worst "
                                 "nodes (width_pruning_keep of each)", source="BranchGRPO")
    width_pruning_keep: int = option(1, "tree: nodes kept at each end by width pruning")
    depth_pruning: list[int] = option([], "steps not trained (depth pruning)", source="BranchGRPO")
    depth_pruning_shift_every: int = option(0, "shift the pruned steps by one every k iterations (0: fixed)",
                                            source="BranchGRPO")
    # MixGRPO
    sde_window_size: int = option(0, "steps of the SDE window; outside it the ODE is used and nothing is trained "
                                  "(0: no window)", source="MixGRPO (4)")
    sde_window_shift_every: int = option(25, "move the window every k iterations", source="MixGRPO")
    sde_window_stride: int = option(1, "steps the window moves by", source="MixGRPO")
    # optimisation
    lora: bool = option(True, "train a LoRA adapter (False: full fine-tune)", source="Flow-GRPO")
    lora_rank: int = option(32, "LoRA rank", source="Flow-GRPO")
    lora_alpha: float = option(64.0, "LoRA alpha", source="Flow-GRPO")
    lora_target_modules: list[str] | None = option(None, "peft target_modules (default: the policy's, attention "
                                                   "projections to_q/to_k/to_v/to_out.0; for a UNet without "
                                                   "attention its ResNet conv1/conv2)", source="Flow-GRPO")
    learning_rate: float = option(3e-4, "AdamW learning rate (full fine-tune: ~1e-5)", source="Flow-GRPO")
    adam_betas: tuple[float, float] = option((0.9, 0.999), "AdamW betas", source="Flow-GRPO")
    weight_decay: float = option(1e-4, "AdamW weight decay", source="Flow-GRPO")
    adam_eps: float = option(1e-8, "AdamW epsilon", source="Flow-GRPO")
    max_grad_norm: float = option(1.0, "gradient clipping norm (0: off)", source="Flow-GRPO")
    ema: bool = option(True, "keep an EMA of the trainable weights, used for eval", source="Flow-GRPO")
    ema_decay: float = option(0.9, "EMA decay (warm-up: min(decay, (1 + n) / (10 + n)))", source="Flow-GRPO")
    ema_every: int = option(8, "EMA update every k optimizer steps", source="Flow-GRPO")
    mixed_precision: Literal["no", "bf16", "fp16"] = option("no", "accelerate mixed precision; with LoRA the "
                                                            "frozen weights are cast to it. Log-probs stay float32")
    gradient_checkpointing: bool = option(False, "recompute activations in the backward pass (less memory)")
    cpu: bool = option(False, "force the CPU even when a GPU is available")
    # run
    num_iterations: int = option(100, "GRPO iterations")
    max_minutes: float | None = option(None, "stop after this many minutes of training (checked between "
                                       "iterations, alike on every process; a wall-clock budget)")
    num_threads: int | None = option(None, "torch CPU threads (None: torch's default)")
    seed: int = option(0, "seed of prompts, noise and LoRA init")
    output_dir: str = option("runs/flow_grpo", "metrics.jsonl, checkpoints, eval grids, final weights")
    save_every: int = option(0, "checkpoint every k iterations (0: only the final weights)")
    resume_from: str | None = option(None, "checkpoint directory, or 'latest' in output_dir")
    eval_every: int = option(10, "eval grid every k iterations (0: never); also before the first iteration")
    eval_num_steps: int = option(10, "ODE steps of the eval samples", source="Flow-GRPO uses 40 at 512 px")
    eval_images_per_prompt: int = option(4, "columns of the eval grid")
    eval_seed: int = option(1234, "noise seed of the eval grid (fixed over training)")
    log_with: str | None = option("auto", "accelerate tracker: auto (tensorboard when installed), none, or a name")


# --------------------------------------------------------------------------------------------- math


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
               trainable: int | None = None) -> range:
    """MixGRPO's SDE window at ``iteration``: ``size`` consecutive steps starting at
    ``(iteration // shift_every) * stride``, wrapping within the first ``trainable`` steps.
    ``size`` 0 (or >= trainable) means every step.

    Example:
        >>> [list(sde_window(10, it, 4, 25)) for it in (0, 25, 150, 175)]
        [[0, 1, 2, 3], [1, 2, 3, 4], [6, 7, 8, 9], [0, 1, 2, 3]]
    """
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
        >>> step_noise_levels(FlowGRPOConfig(num_steps=4, sde_window_size=2, noise_level=0.5), 0)
        [0.5, 0.5, 0.0, 0.0]
    """
    t = config.num_steps
    levels = list(config.noise_levels) if config.noise_levels is not None else [config.noise_level] * t
    if len(levels) != t:
        raise ValueError(f"noise_levels has {len(levels)} entries for {t} steps")
    if config.rollout == "tree":
        levels = [a * config.split_noise_scale if k in config.split_steps else a for k, a in enumerate(levels)]
    window = sde_window(t, iteration, config.sde_window_size, config.sde_window_shift_every,
                        config.sde_window_stride, _num_trainable(config))
    return [float(a) if k in window else 0.0 for k, a in enumerate(levels)]


def _num_trainable(config: FlowGRPOConfig) -> int:
    return max(1, min(config.num_steps, int(config.num_steps * config.timestep_fraction)))


def trained_steps(config: FlowGRPOConfig, iteration: int) -> list[int]:
    """Steps trained at ``iteration``: the first ``int(num_steps * timestep_fraction)``, inside the SDE
    window, with a non-zero noise level, minus the depth-pruned steps (shifted by one every
    ``depth_pruning_shift_every`` iterations).

    Example:
        >>> trained_steps(FlowGRPOConfig(num_steps=10), 0)
        [0, 1, 2, 3, 4, 5, 6, 7, 8]
        >>> trained_steps(FlowGRPOConfig(num_steps=10, depth_pruning=[0, 1], depth_pruning_shift_every=5), 5)
        [0, 3, 4, 5, 6, 7, 8]
    """
    t = config.num_steps
    shift = iteration // config.depth_pruning_shift_every if config.depth_pruning_shift_every > 0 else 0
    pruned = {(s + shift) % t for s in config.depth_pruning}
    levels = step_noise_levels(config, iteration)
    return [k for k in range(_num_trainable(config)) if levels[k] > 0 and k not in pruned]


def _impute_missing(leaf_rewards: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """NaN leaves take their tree's mean of valid leaves (0 if none); returns (rewards, valid mask)."""
    valid = ~torch.isnan(leaf_rewards)
    counts = valid.sum(-1, keepdim=True)
    means = torch.where(valid, leaf_rewards, torch.zeros_like(leaf_rewards)).sum(-1, keepdim=True) / counts.clamp(min=1)
    return torch.where(valid, leaf_rewards, means.expand_as(leaf_rewards)), valid


def tree_advantages(leaf_rewards: torch.Tensor, num_steps: int, split_steps: Sequence[int],
                    branch_factor: int) -> list[torch.Tensor]:
    """:func:`~visalign.trainers.sde.depthwise_advantages` for ``(trees, leaves)`` rewards that may hold NaN
    (missing): a missing leaf takes its tree's mean of valid leaves, and the transitions after the last
    split that lead only to it get advantage 0.

    Example:
        >>> adv = tree_advantages(torch.tensor([[1.0, 2.0, 3.0, float("nan")]]), 3, [0, 1], 2)
        >>> [round(a, 3) for a in adv[-1][0].tolist()]  # the NaN leaf counts as 2.0 at shallower depths
        [-1.225, 0.0, 1.225, 0.0]
    """
    filled, valid = _impute_missing(leaf_rewards.double())
    adv = depthwise_advantages(filled, num_steps, split_steps, branch_factor)
    last_split = max(split_steps) if len(split_steps) else -1
    return [torch.where(valid, a, torch.zeros_like(a)) if k > last_split else a for k, a in enumerate(adv)]


def width_pruning_masks(leaf_rewards: torch.Tensor, num_steps: int, split_steps: Sequence[int], branch_factor: int,
                        keep: int = 1) -> list[torch.Tensor]:
    """BranchGRPO's width pruning: which transitions of each step are trained, ``(trees, nodes)`` bools.

    At every depth with more than ``2 * keep`` nodes per tree, only the transitions into the ``keep``
    best and ``keep`` worst nodes by mean leaf reward (missing leaves imputed as in
    :func:`tree_advantages`; ties: the leftmost) are trained; after the last split those are the best and
    worst leaf chains. Element ``k`` refers to the transitions of step ``k`` (nodes at depth ``k + 1``).

    Example:
        >>> masks = width_pruning_masks(torch.tensor([[1.0, 2.0, 3.0, 6.0]]), 3, [0, 1], 2)
        >>> [m[0].tolist() for m in masks]
        [[True, True], [True, False, False, True], [True, False, False, True]]
    """
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


def ppo_clip_loss(log_prob: torch.Tensor, old_log_prob: torch.Tensor, advantages: torch.Tensor,
                  clip_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-transition PPO-clip loss ``max(-A r, -A clip(r, 1 - eps, 1 + eps))`` and the ratio ``r``.

    Example:
        >>> loss, ratio = ppo_clip_loss(torch.tensor([0.0, 0.1]), torch.zeros(2), torch.tensor([1.0, 1.0]), 1e-4)
        >>> [round(x, 4) for x in loss.tolist()], [round(x, 4) for x in ratio.tolist()]
        ([-1.0, -1.0001], [1.0, 1.1052])
    """
    ratio = torch.exp(log_prob - old_log_prob)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    return torch.maximum(unclipped, clipped), ratio


class ParameterEMA:
    """Exponential moving average of parameters (Flow-GRPO's ``EMAModuleWrapper``): every ``update_every``
    calls of :meth:`step`, ``shadow <- d * shadow + (1 - d) * p`` with ``d = min(decay, (1 + n) / (10 + n))``.

    Example:
        >>> p = torch.nn.Parameter(torch.zeros(2))
        >>> ema = ParameterEMA([p], decay=0.5, update_every=1)
        >>> p.data += 1.0; ema.step([p])  # d = min(0.5, 1 / 10)
        >>> [round(x, 4) for x in ema.shadow[0].tolist()]
        [0.9, 0.9]
    """

    def __init__(self, parameters: Sequence[torch.nn.Parameter], decay: float = 0.9, update_every: int = 8) -> None:
        self.decay, self.update_every = decay, max(1, update_every)
        self.shadow = [p.detach().float().clone() for p in parameters]
        self.calls = 0
        self.updates = 0

    @torch.no_grad()
    def step(self, parameters: Sequence[torch.nn.Parameter]) -> None:
        self.calls += 1
        if self.calls % self.update_every:
            return
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow, parameters, strict=True):
            s.mul_(d).add_(p.detach().float(), alpha=1 - d)
        self.updates += 1

    @contextlib.contextmanager
    def swapped_in(self, parameters: Sequence[torch.nn.Parameter]) -> Iterator[None]:
        """Within the context the parameters hold the EMA weights."""
        backup = [p.detach().clone() for p in parameters]
        with torch.no_grad():
            for s, p in zip(self.shadow, parameters, strict=True):
                p.copy_(s.to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for b, p in zip(backup, parameters, strict=True):
                    p.copy_(b)

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": [s.cpu() for s in self.shadow], "calls": self.calls, "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow = [s.to(old.device) for s, old in zip(state["shadow"], self.shadow, strict=True)]
        self.calls, self.updates = int(state["calls"]), int(state["updates"])


# ------------------------------------------------------------------------------------------ rollouts


@dataclass
class StepRecord:
    """The transitions of one sampling step, for every node alive at that step.

    ``parents[parent_index[j]] -> children[j]`` is transition ``j``; ``log_probs[j]`` its float32
    log-prob under the rollout policy with ``noise_level`` (the level actually used).
    """

    step: int
    noise_level: float
    parents: torch.Tensor
    parent_prompt: torch.Tensor
    parent_index: torch.Tensor
    children: torch.Tensor
    log_probs: torch.Tensor


@dataclass
class Rollout:
    """Trajectories of this process's roots: ``roots[r] = (global root id, local prompt index)``; every
    root has ``leaves_per_root`` leaves, listed root-major and depth-first within a root."""

    prompts: list[str]
    roots: list[tuple[int, int]]
    steps: list[StepRecord]
    leaves: torch.Tensor
    leaves_per_root: int
    nfe: int
    cond: Conditioning | None = None

    def nodes_per_root(self, step: int) -> int:
        """Nodes of each root among the transitions of ``step`` (i.e. at depth ``step + 1``)."""
        return self.steps[step].children.shape[0] // len(self.roots)


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0])


def _noise(shape: Sequence[int], *entropy: int) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=torch.Generator().manual_seed(_seed(*entropy)))


# ------------------------------------------------------------------------------------------ trainer


class FlowGRPOTrainer:
    """GRPO on a :class:`~visalign.trainers.flow_policies.FlowPolicy` (module docstring for the loop).

    Args:
        config: the options.
        policy: the model; the trainer adds the LoRA adapter (or sets up a full fine-tune).
        reward: scores ``Sample(prompt=..., image=PIL, group=prompt slot)``.
        prompts: the training prompts (``prompts_per_iteration`` are drawn each iteration).
        eval_prompts: prompts of the fixed-seed eval grid (default: the first four training prompts).
    """

    def __init__(self, config: FlowGRPOConfig, policy: FlowPolicy, reward: Reward, prompts: Sequence[str],
                 eval_prompts: Sequence[str] | None = None) -> None:
        from accelerate import Accelerator

        self.config = config
        self._validate()
        self.policy, self.reward = policy, reward
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("no training prompts")
        self.eval_prompts = list(eval_prompts) if eval_prompts else self.prompts[:4]
        self.output_dir = Path(config.output_dir)
        log_with = config.log_with
        if log_with == "auto":
            import importlib.util

            log_with = "tensorboard" if importlib.util.find_spec("tensorboard") is not None else None
        elif log_with in ("none", ""):
            log_with = None
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.accelerator = Accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                                       log_with=log_with, project_dir=str(self.output_dir))
        torch.manual_seed(config.seed)  # LoRA init
        if config.lora:
            policy.add_lora(config.lora_rank, config.lora_alpha, config.lora_target_modules)
        else:
            policy.set_full_finetune(keep_reference=config.beta > 0)
        weight_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.mixed_precision)
        policy.to(self.accelerator.device, weight_dtype if config.lora else None)
        if config.gradient_checkpointing and not policy.enable_gradient_checkpointing():
            logger.warning("gradient_checkpointing: %s does not support it", type(policy.model).__name__)
        self.params = policy.trainable_parameters()
        self.param_names = list(policy.named_trainable_parameters())
        optimizer = torch.optim.AdamW(self.params, lr=config.learning_rate, betas=tuple(config.adam_betas),
                                      weight_decay=config.weight_decay, eps=config.adam_eps)
        self.optimizer = self.accelerator.prepare(optimizer)
        self.ema = ParameterEMA(self.params, config.ema_decay, config.ema_every) if config.ema else None
        self.iteration = 0  # iterations completed
        self.history: list[dict[str, Any]] = []
        self.trained_transitions: list[dict[int, list[int]]] = []  # per update of the last iteration
        self._cfg = config.guidance_scale != 1.0
        self._forwards = policy.forwards_per_prediction(config.guidance_scale)  # NFE per prediction
        self.sampler = policy.resolve_sampler(config.sampler)  # "auto" resolved: sde / cps / ddim
        self._schedule = policy.schedule(config.num_steps)
        if config.resume_from:
            self.load_checkpoint(config.resume_from)

    def _validate(self) -> None:
        c = self.config
        if c.rollout not in ("independent", "tree"):
            raise ValueError(f"rollout must be 'independent' or 'tree', got {c.rollout!r}")
        if c.rollout == "tree":
            bad = [s for s in c.split_steps if not 0 <= s < c.num_steps]
            if bad:
                raise ValueError(f"split_steps {bad} outside [0, {c.num_steps})")
            if c.global_std:
                raise ValueError("global_std applies to independent rollouts; trees standardise per depth")
        if c.num_inner_updates < 1 or c.batch_size < 1:
            raise ValueError("num_inner_updates and batch_size must be >= 1")

    # ----------------------------------------------------------------------------- the loop
    def train(self) -> list[dict[str, Any]]:
        """Run ``num_iterations`` iterations (from the resumed one); returns the per-iteration metrics."""
        c, acc = self.config, self.accelerator
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if acc.is_main_process:
            save_config(c, self.output_dir / "config.yaml")
        acc.init_trackers("flow_grpo", config={k: str(v) for k, v in config_to_dict(c).items()})
        start: dict[str, Any] = {}
        if c.eval_every > 0 and self.iteration == 0:
            start = {k.replace("eval/", "eval_start/").replace("time/eval", "time/eval_start"): v
                     for k, v in self.evaluate().items()}
        started = time.monotonic()
        while self.iteration < c.num_iterations:
            metrics = {**self.train_iteration(), **start}
            start = {}
            out_of_time = False
            if c.max_minutes is not None:
                spent = torch.tensor([time.monotonic() - started], device=acc.device)
                out_of_time = float(acc.gather(spent).max()) >= 60 * c.max_minutes  # alike on every process
            last = out_of_time or self.iteration == c.num_iterations
            if c.save_every > 0 and self.iteration % c.save_every == 0:
                self.save_checkpoint()
            if c.eval_every > 0 and (self.iteration % c.eval_every == 0 or last):
                metrics.update(self.evaluate())
            self._log(metrics)
            if out_of_time:
                logger.info("max_minutes %.1f reached after %d iterations", c.max_minutes, self.iteration)
                break
        self.save_final()
        for tracker in acc.trackers:  # not end_training(): it destroys the process group of the caller's script
            tracker.finish()
        return self.history

    def train_iteration(self) -> dict[str, Any]:
        """One GRPO iteration: rollout, reward, advantages, ``num_inner_updates`` optimizer steps."""
        c, it = self.config, self.iteration
        prompts, roots = self._roots_for_iteration(it)
        levels = step_noise_levels(c, it)
        if c.rollout == "tree" and any(levels[s] <= 0 for s in c.split_steps):
            raise ValueError(f"iteration {it}: a split step has noise level 0 (outside the SDE window?): "
                             f"its children would be identical; noise levels {levels}")
        t0 = time.perf_counter()
        rollout = self.rollout(prompts, roots, levels, it)
        t1 = time.perf_counter()
        rewards, reward_metrics = self.score(rollout)
        t2 = time.perf_counter()
        advantages, adv_metrics = self.advantages(rewards, rollout)
        train_metrics = self.optimize(rollout, advantages, rewards, levels, it)
        t3 = time.perf_counter()
        self.iteration += 1
        return {"iteration": self.iteration, **reward_metrics, **adv_metrics, **train_metrics,
                "nfe/rollout": self._sum_over_processes(rollout.nfe),
                "noise_levels": levels, "sde_window": list(sde_window(
                    c.num_steps, it, c.sde_window_size, c.sde_window_shift_every, c.sde_window_stride,
                    _num_trainable(c))),
                "time/rollout": t1 - t0, "time/reward": t2 - t1, "time/train": t3 - t2}

    # ----------------------------------------------------------------------------- rollouts
    def _roots_for_iteration(self, iteration: int) -> tuple[list[str], list[tuple[int, int]]]:
        """This process's prompts and roots ``(global root id, local prompt index)``."""
        c, acc = self.config, self.accelerator
        rng = np.random.default_rng([c.seed, iteration])
        n = c.prompts_per_iteration
        picks = rng.choice(len(self.prompts), n, replace=len(self.prompts) < n)
        per_prompt = c.group_size if c.rollout == "independent" else 1
        total = n * per_prompt
        if total % acc.num_processes:
            raise ValueError(f"{total} trajectories do not split over {acc.num_processes} processes")
        share = total // acc.num_processes
        mine = range(acc.process_index * share, (acc.process_index + 1) * share)
        slots = sorted({r // per_prompt for r in mine})
        prompts = [self.prompts[int(picks[s])] for s in slots]
        roots = [(r, slots.index(r // per_prompt)) for r in mine]
        self._slots = slots
        return prompts, roots

    @torch.no_grad()
    def rollout(self, prompts: Sequence[str], roots: Sequence[tuple[int, int]], noise_levels: Sequence[float],
                iteration: int, *, split_steps: Sequence[int] | None = None, stream: int = 0,
                num_steps: int | None = None) -> Rollout:
        """Sample trajectories from ``roots`` with the sampler (``noise_levels`` per step), splitting into
        ``branch_factor`` children at ``split_steps`` (default: the config's for tree rollouts).

        Noise of node ``i`` (within its root) at depth ``d`` is drawn from a generator seeded with
        ``(seed, stream, iteration, root id, d, i)``; log-probs are float32.
        """
        c, policy = self.config, self.policy
        if split_steps is None:
            split_steps = c.split_steps if c.rollout == "tree" else []
        num_steps = num_steps or c.num_steps
        schedule = self._schedule if num_steps == c.num_steps else policy.schedule(num_steps)
        device, shape = policy.device, policy.latent_shape
        cond = policy.encode_prompts(prompts, guidance=self._cfg)
        x = torch.stack([_noise(shape, c.seed, stream, iteration, r, 0, 0) for r, _ in roots]).to(device)
        node_prompt = torch.tensor([p for _, p in roots], dtype=torch.long)
        per_root, steps, nfe = 1, [], 0
        for k in range(num_steps):
            v = self._predict_chunks(x, schedule[k], cond, node_prompt)
            nfe += x.shape[0] * self._forwards
            b = c.branch_factor if k in split_steps else 1
            parent_index = torch.arange(x.shape[0]).repeat_interleave(b)
            noise = torch.stack([_noise(shape, c.seed, stream, iteration, roots[j // (per_root * b)][0], k + 1,
                                        j % (per_root * b)) for j in range(x.shape[0] * b)]).to(device)
            pidx = parent_index.to(device)
            child, log_prob, _, _ = policy.step_with_logprob(v[pidx], x[pidx], schedule, k, sampler=self.sampler,
                                                             noise_level=noise_levels[k], noise=noise)
            steps.append(StepRecord(k, float(noise_levels[k]), x, node_prompt, parent_index, child, log_prob))
            x, node_prompt, per_root = child, node_prompt[parent_index], per_root * b
        return Rollout(list(prompts), list(roots), steps, x, per_root, nfe, cond)

    def _predict_chunks(self, x: torch.Tensor, t: torch.Tensor, cond: Conditioning,
                        prompt_index: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, x.shape[0], self.config.batch_size):
            sl = slice(i, i + self.config.batch_size)
            with self.accelerator.autocast():
                out.append(self.policy.predict(x[sl], t, cond.select(prompt_index[sl]), self.config.guidance_scale))
        return torch.cat(out)

    # ----------------------------------------------------------------------------- rewards
    def score(self, rollout: Rollout) -> tuple[torch.Tensor, dict[str, Any]]:
        """Rewards of this process's leaves (float64, NaN where missing) and the reward metrics."""
        images = self.policy.decode(rollout.leaves)
        leaf_prompt = rollout.steps[-1].parent_prompt[rollout.steps[-1].parent_index]
        samples = [Sample(prompt=rollout.prompts[int(p)], image=im, group=self._slots[int(p)])
                   for p, im in zip(leaf_prompt, images, strict=True)]
        out = self.reward(samples)
        values = []
        for s in out.scores:
            try:
                value = float(s) if s is not None and not isinstance(s, bool) else math.nan
            except (TypeError, ValueError):
                value = math.nan
            values.append(value if math.isfinite(value) else math.nan)
        rewards = torch.tensor(values, dtype=torch.float64)
        all_rewards = self._gather(rewards)
        valid = all_rewards[~torch.isnan(all_rewards)]
        metrics: dict[str, Any] = {
            "reward/mean": float(valid.mean()) if len(valid) else math.nan,
            "reward/std": float(valid.std()) if len(valid) > 1 else 0.0,
            "reward/missing": int(torch.isnan(all_rewards).sum())}
        for key, value in out.metrics.items():
            if isinstance(value, (int, float)):
                metrics[f"reward/{key}"] = float(value)
        return rewards, metrics

    def advantages(self, rewards: torch.Tensor, rollout: Rollout) -> tuple[list[torch.Tensor], dict[str, Any]]:
        """Per-step advantages of this process's transitions (float32, clipped), from rewards gathered
        over all processes (groups may span processes)."""
        c, acc = self.config, self.accelerator
        all_rewards = self._gather(rewards)
        n_local = rewards.numel()
        mine = slice(acc.process_index * n_local, (acc.process_index + 1) * n_local)
        if c.rollout == "independent":
            flat = group_advantages(all_rewards, c.group_size, "batch" if c.global_std else "group", c.std_eps)
            per_step = [flat[mine]] * c.num_steps
        else:
            trees = all_rewards.view(-1, rollout.leaves_per_root)
            depth = tree_advantages(trees, c.num_steps, c.split_steps, c.branch_factor)
            r0 = acc.process_index * len(rollout.roots)
            per_step = [d[r0:r0 + len(rollout.roots)].reshape(-1) for d in depth]
        per_step = [a.clamp(-c.adv_clip, c.adv_clip).float() for a in per_step]
        last = per_step[-1]
        return per_step, {"adv/mean": float(last.mean()), "adv/std": float(last.std()) if last.numel() > 1 else 0.0,
                          "adv/abs_max": float(last.abs().max())}

    # ----------------------------------------------------------------------------- training
    def _train_masks(self, rollout: Rollout, rewards: torch.Tensor, iteration: int) -> list[torch.Tensor]:
        """Which transitions of each step are trained (bool per child, this process)."""
        c = self.config
        steps = set(trained_steps(c, iteration))
        masks = [torch.full((r.children.shape[0],), k in steps, dtype=torch.bool) for k, r in enumerate(rollout.steps)]
        if c.rollout == "tree" and c.width_pruning:
            trees = rewards.view(-1, rollout.leaves_per_root)
            width = width_pruning_masks(trees, c.num_steps, c.split_steps, c.branch_factor, c.width_pruning_keep)
            masks = [m & w.reshape(-1) for m, w in zip(masks, width, strict=True)]
        return masks

    def optimize(self, rollout: Rollout, advantages: list[torch.Tensor], rewards: torch.Tensor,
                 noise_levels: Sequence[float], iteration: int) -> dict[str, Any]:
        """``num_inner_updates`` optimizer steps on the chosen transitions; returns the training metrics."""
        c, acc, policy = self.config, self.accelerator, self.policy
        masks = self._train_masks(rollout, rewards, iteration)
        shares = np.array_split(np.arange(len(rollout.roots)), c.num_inner_updates)
        cond = rollout.cond if rollout.cond is not None else policy.encode_prompts(rollout.prompts, guidance=self._cfg)
        stats: dict[str, list[torch.Tensor]] = {"loss": [], "kl": [], "ratio": [], "clipped": []}
        nfe_train = nfe_backward = 0
        first_dev = math.nan
        self.trained_transitions = []
        for update, share in enumerate(shares):
            roots = torch.zeros(len(rollout.roots), dtype=torch.bool)
            roots[torch.as_tensor(share, dtype=torch.long)] = True
            chosen = [m & roots.repeat_interleave(rollout.nodes_per_root(k)) for k, m in enumerate(masks)]
            count = self._sum_over_processes(int(sum(int(m.sum()) for m in chosen)))
            self.trained_transitions.append({k: m.nonzero().flatten().tolist() for k, m in enumerate(chosen) if m.any()})
            ratios = []
            for k, record in enumerate(rollout.steps):
                kids = chosen[k].nonzero().flatten()
                if kids.numel() == 0:
                    continue
                parents = torch.unique(record.parent_index[kids])
                for i in range(0, parents.numel(), c.batch_size):
                    chunk = parents[i:i + c.batch_size]
                    in_chunk = kids[torch.isin(record.parent_index[kids], chunk)]
                    pos = torch.searchsorted(chunk, record.parent_index[in_chunk]).to(policy.device)
                    x, sub = record.parents[chunk.to(record.parents.device)], cond.select(record.parent_prompt[chunk])
                    with acc.autocast():
                        v = policy.predict(x, self._schedule[k], sub, c.guidance_scale)
                    nfe_train += chunk.numel() * self._forwards
                    nfe_backward += chunk.numel()
                    dev = policy.device
                    children = record.children[in_chunk.to(record.children.device)]
                    _, log_prob, mean, std = policy.step_with_logprob(
                        v[pos], x[pos], self._schedule, k, sampler=self.sampler, noise_level=noise_levels[k],
                        prev_sample=children)
                    loss, ratio = ppo_clip_loss(log_prob, record.log_probs[in_chunk.to(dev)],
                                                advantages[k][in_chunk].to(dev), c.clip_range)
                    kl = torch.zeros_like(loss)
                    if c.beta > 0:
                        with torch.no_grad(), policy.reference(), acc.autocast():
                            v_ref = policy.predict(x, self._schedule[k], sub, c.guidance_scale)
                        nfe_train += chunk.numel() * self._forwards
                        ref_mean = policy.step_with_logprob(v_ref[pos], x[pos], self._schedule, k,
                                                            sampler=self.sampler, noise_level=noise_levels[k],
                                                            prev_sample=children)[2]
                        kl = kl_to_reference(mean, ref_mean, std)
                    acc.backward((loss + c.beta * kl).sum() / max(count, 1))
                    ratios.append(ratio.detach())
                    stats["loss"].append(loss.detach())
                    stats["kl"].append(kl.detach())
                    stats["clipped"].append(((ratio.detach() - 1).abs() > c.clip_range).float())
            if update == 0 and ratios:
                first_dev = float((torch.cat(ratios) - 1).abs().max())
                if first_dev > 1e-6:
                    logger.warning("importance ratio deviates from 1 by %.3g at the first inner update: rollout "
                                   "and training compute different log-probs (bf16 rounding, dropout, batching)",
                                   first_dev)
            stats["ratio"].extend(ratios)
            self._step_optimizer()
        cat = {k: torch.cat(v) if v else torch.zeros(0) for k, v in stats.items()}
        ratio = cat["ratio"]
        return {"loss": float(cat["loss"].mean()) if ratio.numel() else math.nan,
                "kl": float(cat["kl"].mean()) if ratio.numel() else math.nan,
                "clip_fraction": float(cat["clipped"].mean()) if ratio.numel() else math.nan,
                "ratio/mean": float(ratio.mean()) if ratio.numel() else math.nan,
                "ratio/min": float(ratio.min()) if ratio.numel() else math.nan,
                "ratio/max": float(ratio.max()) if ratio.numel() else math.nan,
                "ratio/first_update_max_abs_dev": first_dev,
                "transitions/trained": self._sum_over_processes(int(sum(int(m.sum()) for m in masks))),
                "nfe/train": self._sum_over_processes(nfe_train),
                "nfe/train_backward": self._sum_over_processes(nfe_backward),
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _step_optimizer(self) -> None:
        c, acc = self.config, self.accelerator
        if acc.num_processes > 1:  # one all-reduce per update, whatever each process trained
            for p in self.params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
        if c.max_grad_norm > 0:
            acc.clip_grad_norm_(self.params, c.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.step(self.params)

    # ----------------------------------------------------------------------------- eval and logs
    @torch.no_grad()
    def evaluate(self) -> dict[str, Any]:
        """Fixed-seed ODE samples of ``eval_prompts`` (EMA weights): a grid PNG and the mean reward."""
        c, acc = self.config, self.accelerator
        if not acc.is_main_process:
            acc.wait_for_everyone()
            return {}
        n = c.eval_images_per_prompt
        roots = [(i, i // n) for i in range(len(self.eval_prompts) * n)]
        context = self.ema.swapped_in(self.params) if self.ema is not None else contextlib.nullcontext()
        t0 = time.perf_counter()
        with context:
            rollout = self.rollout(self.eval_prompts, roots, [0.0] * c.eval_num_steps, 0, split_steps=[],
                                   stream=c.eval_seed + 1, num_steps=c.eval_num_steps)
        images = self.policy.decode(rollout.leaves)
        out = self.reward([Sample(prompt=self.eval_prompts[p], image=im, group=p)
                           for (_, p), im in zip(roots, images, strict=True)])
        scores = [float(s) for s in out.scores if isinstance(s, (int, float)) and math.isfinite(float(s))]
        path = self.output_dir / "eval" / f"iteration_{self.iteration:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = max(1, 128 // max(images[0].size))
        image_grid(images, columns=n, scale=scale).save(path)
        acc.wait_for_everyone()
        return {"eval/reward_mean": float(np.mean(scores)) if scores else math.nan, "eval/grid": str(path),
                "time/eval": time.perf_counter() - t0}

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.accelerator.is_main_process:
            with open(self.output_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(scalars, step=metrics["iteration"])

    def _gather(self, values: torch.Tensor) -> torch.Tensor:
        if self.accelerator.num_processes == 1:
            return values
        return self.accelerator.gather(values.to(self.accelerator.device)).cpu()

    def _sum_over_processes(self, value: int) -> int:
        if self.accelerator.num_processes == 1:
            return value
        t = torch.tensor([value], dtype=torch.long, device=self.accelerator.device)
        return int(self.accelerator.reduce(t, reduction="sum").item())

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoint-<iteration>``: trainable weights, optimizer, EMA, RNG states, iteration."""
        acc = self.accelerator
        path = self.output_dir / f"checkpoint-{self.iteration:06d}"
        path.mkdir(parents=True, exist_ok=True)
        rng = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        torch.save(rng, path / f"rng_{acc.process_index}.pt")
        if acc.is_main_process:
            torch.save({n: p.detach().cpu() for n, p in zip(self.param_names, self.params, strict=True)},
                       path / "trainable.pt")
            torch.save(self.optimizer.state_dict(), path / "optimizer.pt")
            if self.ema is not None:
                torch.save(self.ema.state_dict(), path / "ema.pt")
            c = self.config
            state = {"iteration": self.iteration, "sde_window": list(sde_window(
                c.num_steps, self.iteration, c.sde_window_size, c.sde_window_shift_every, c.sde_window_stride,
                _num_trainable(c)))}
            (path / "trainer_state.json").write_text(json.dumps(state))
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (``"latest"``: the newest in ``output_dir``)."""
        if str(path) == "latest":
            found = sorted(self.output_dir.glob("checkpoint-*"))
            if not found:
                raise FileNotFoundError(f"no checkpoint in {self.output_dir}")
            path = found[-1]
        path = Path(path)
        weights = torch.load(path / "trainable.pt", map_location="cpu")
        with torch.no_grad():
            for name, p in zip(self.param_names, self.params, strict=True):
                p.copy_(weights[name])
        self.optimizer.load_state_dict(torch.load(path / "optimizer.pt", map_location=self.accelerator.device))
        if self.ema is not None:
            self.ema.load_state_dict(torch.load(path / "ema.pt"))
        rng_file = path / f"rng_{self.accelerator.process_index}.pt"
        if rng_file.exists():
            rng = torch.load(rng_file, weights_only=False)
            torch.set_rng_state(rng["torch"])
            np.random.set_state(rng["numpy"])
            random.setstate(rng["python"])
            if rng["cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(rng["cuda"])
        self.iteration = json.loads((path / "trainer_state.json").read_text())["iteration"]

    def save_final(self) -> Path | None:
        """The trained weights in ``output_dir/final`` (a peft adapter, or the diffusers model);
        the EMA weights too (``final_ema``) when EMA is on."""
        if not self.accelerator.is_main_process:
            return None
        path = self.output_dir / "final"
        self.policy.model.save_pretrained(str(path))
        if self.ema is not None:
            with self.ema.swapped_in(self.params):
                self.policy.model.save_pretrained(str(self.output_dir / "final_ema"))
        return path


# ------------------------------------------------------------------------------------- from config


def build_reward(spec: Mapping[str, Any] | Sequence[Any], aggregation: str = "normalize_then_sum") -> Reward:
    """A reward from a config: ``{name: weight}`` or ``{name: {weight: w, **options}}``; several make a
    :class:`~visalign.rewards.CompositeReward`. Names: :data:`visalign.rewards.REWARDS` or ``"module:Class"``.

    Example:
        >>> build_reward({"format": {"allow_bare": True}}).name
        'format'
    """
    import importlib

    from ..rewards import CompositeReward, get_reward

    items = dict(spec) if isinstance(spec, Mapping) else {s["name"]: {k: v for k, v in s.items() if k != "name"}
                                                          for s in spec}
    if not items:
        raise ValueError("no reward configured")
    rewards, weights = {}, {}
    for name, opts in items.items():
        opts = {"weight": opts} if isinstance(opts, (int, float)) else dict(opts or {})
        weights[name] = float(opts.pop("weight", 1.0))
        if ":" in name:
            module, cls = name.split(":", 1)
            rewards[name] = getattr(importlib.import_module(module), cls)(**opts)
        else:
            rewards[name] = get_reward(name, **opts)
    if len(rewards) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(rewards.values()))
    return CompositeReward(rewards, weights, aggregation=aggregation)  # type: ignore[arg-type]


def _read_prompts(inline: Sequence[str], file: str | None) -> list[str]:
    prompts = list(inline)
    if file:
        prompts += [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
    return prompts


def train_flow_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> FlowGRPOTrainer:
    """Build policy (``pretrained``), reward(s) and prompts from a YAML file or mapping, train, and return
    the trainer (``trainer.history`` holds the per-iteration metrics). A YAML file may hold the options
    under a ``flow:`` key."""
    config = load_config(FlowGRPOConfig, source, section="flow", **overrides)
    if not config.pretrained:
        raise ValueError("train_flow_from_config needs `pretrained` (a local model directory)")
    kwargs: dict[str, Any] = {}
    index = Path(config.pretrained) / "model_index.json"
    if index.exists():
        kwargs = {"resolution": config.resolution}
        if json.loads(index.read_text()).get("_class_name", "").startswith("StableDiffusion3"):
            kwargs["max_sequence_length"] = config.max_sequence_length
    policy = load_flow_policy(config.pretrained, **kwargs)
    reward = build_reward(config.rewards, config.reward_aggregation)
    prompts = _read_prompts(config.prompts, config.prompts_file)
    eval_prompts = _read_prompts(config.eval_prompts, config.eval_prompts_file)
    trainer = FlowGRPOTrainer(config, policy, reward, prompts, eval_prompts or None)
    try:
        trainer.train()
    finally:
        reward.close()
    return trainer
