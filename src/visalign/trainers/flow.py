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
    ...                         max_steps=1, lora_r=4, eval_every=0, beta=0.0,
    ...                         output_dir=tempfile.mkdtemp())
    >>> trainer = FlowGRPOTrainer(config, policy, Bright(), ["a red circle", "a blue square"])
    >>> history = trainer.train()
    >>> history[0]["nfe/rollout"], history[0]["ratio/first_update_max_abs_dev"]
    (12, 0.0)
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import yaml

from ..rewards.base import Reward, Sample
from ..rewards.specs import build_rewards, instantiate, parse_reward_specs
from .config import config_to_dict, load_config, option, save_config
from .flow_policies import Conditioning, FlowPolicy, flow_policy_class, image_grid, load_flow_policy
from .grpo import group_advantages, keyed_group_advantages
from .runtime import (
    Callback,
    MetricsLog,
    TimeBudget,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    resolve_checkpoint,
    reward_postfix,
    run_callbacks,
    trackers,
)
from .sde import depthwise_advantages, kl_to_reference

__all__ = [
    "PRESETS",
    "FlowGRPOConfig",
    "FlowGRPOTrainer",
    "ParameterEMA",
    "Rollout",
    "StepRecord",
    "build_reward",
    "depth_pruned_steps",
    "describe_flow_options",
    "flow_algorithm",
    "ppo_clip_loss",
    "pruning_active",
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
    """Options of :class:`FlowGRPOTrainer` (``describe_config(FlowGRPOConfig)`` prints the table).

    ``preset`` sets every option whose meaning or default differs between visalign and a reference
    repository (:data:`PRESETS`); an option given explicitly (YAML, ``--set``, keyword) overrides the
    preset. Built with :func:`~visalign.trainers.config.load_config` or :meth:`from_preset` the explicit
    options are known exactly; built directly (``FlowGRPOConfig(preset=..., beta=...)``) an option left
    at its visalign default takes the preset's value. ``config.option_sources`` says where each value
    came from (``visalign train flow CONFIG --describe`` prints it).
    """

    RENAMED_OPTIONS: ClassVar[tuple[str, ...]] = ("clip_range", "lora_rank", "num_iterations")  # config.VOCABULARY

    preset: Literal["visalign", "flow_grpo", "dance_grpo", "branch_grpo", "mix_grpo"] = option(
        "visalign", "reference whose semantics and default hyperparameters to take (PRESETS; README table): "
        "visalign (this package's defaults), flow_grpo (Flow-GRPO SD3.5-M), dance_grpo (DanceGRPO FLUX), "
        "branch_grpo (BranchGRPO FLUX), mix_grpo (MixGRPO FLUX)")
    # model and data
    pretrained: str | None = option(None, "local directory: a StableDiffusion3Pipeline, a StableDiffusionPipeline "
                                    "(SD1.5, DDIM), or a class-conditional UNet2DModel with classes.json "
                                    "(train_flow_from_config only)")
    resolution: int = option(512, "image size in pixels (pipeline policies)", source="Flow-GRPO (SD3.5-M)")
    max_sequence_length: int = option(256, "text tokens per prompt (SD3, Qwen-Image, FLUX.2, Wan policies)",
                                      source="diffusers SD3")
    num_frames: int = option(81, "frames per video (video policies: Wan; num_frames - 1 divisible by the VAE's "
                             "temporal factor)", source="diffusers Wan")
    prompts: list[str] = option([], "training prompts (or prompts_file)")
    prompts_file: str | None = option(None, "text file, one training prompt per line")
    eval_prompts: list[str] = option([], "fixed prompts of the eval grid (or eval_prompts_file)")
    eval_prompts_file: str | None = option(None, "text file, one eval prompt per line")
    rewards: list | dict = option([], "rewards: a list of names or {name, weight, options} mappings (the older "
                                  "name -> weight | {weight, <options>} mapping is read too; "
                                  "train_flow_from_config only; names from visalign.rewards.REWARDS or "
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
    sigma_mode: Literal["flow_grpo", "constant"] = option(
        "flow_grpo", "sde sampler: sigma_t = noise_level * sqrt(s / (1 - s)) (flow_grpo) or sigma_t = noise_level "
        "at every step (constant: DanceGRPO / BranchGRPO eta)", source="Flow-GRPO / DanceGRPO")
    same_initial_noise: bool = option(False, "independent rollouts: the group_size trajectories of a prompt start "
                                      "from the same initial noise (DanceGRPO's --init_same_noise)",
                                      source="DanceGRPO")
    # GRPO
    prompts_per_iteration: int = option(8, "prompts (groups / trees) per iteration, over all processes")
    group_size: int = option(24, "images per prompt for independent rollouts", source="Flow-GRPO")
    batch_size: int = option(8, "samples per forward pass in rollouts and training")
    timestep_fraction: float = option(0.99, "train the first int(num_steps * fraction) steps (the last step's "
                                      "tiny std makes its log-density overflow)", source="Flow-GRPO")
    epsilon: float = option(1e-4, "PPO clip range of the importance ratio (Flow-GRPO's clip_range)", source="Flow-GRPO")
    beta: float = option(0.04, "KL-to-reference weight (0: no reference forward passes)",
                         source="Flow-GRPO (GenEval/OCR; 0.01 PickScore)")
    adv_clip: float = option(5.0, "advantages are clipped to +-adv_clip", source="Flow-GRPO")
    std_eps: float = option(1e-4, "added to the group std of the rewards", source="Flow-GRPO")
    global_std: bool = option(False, "divide advantages by the std of all rewards of the iteration (gathered over "
                              "processes) instead of the group's", source="Flow-GRPO option")
    adv_ddof: int = option(1, "delta degrees of freedom of the advantage std: 1 unbiased (torch.std: TRL, DanceGRPO, "
                           "MixGRPO), 0 population (np.std: Flow-GRPO)", source="TRL")
    group_by: Literal["slot", "prompt"] = option(
        "slot", "advantage groups: slot (each drawn prompt slot is a group of group_size) or prompt (equal prompt "
        "strings merge into one group, Flow-GRPO's PerPromptStatTracker)", source="visalign / Flow-GRPO")
    per_prompt_stat_tracking: bool = option(True, "False: one batch mean and std for all samples (Flow-GRPO's "
                                            "per_prompt_stat_tracking=False path)", source="Flow-GRPO")
    drop_zero_advantage: bool = option(False, "leave trajectories whose advantage is exactly 0 out of training and "
                                       "of the loss denominator (Flow-GRPO filters them before training)",
                                       source="Flow-GRPO")
    kl_form: Literal["exact", "flow_grpo"] = option(
        "exact", "KL term: exact (the KL of the Gaussian step, divided by the step variance sigma_t^2 * -dt) or "
        "flow_grpo ((mu - mu_ref)^2 / (2 sigma_t^2), Flow-GRPO's: -dt times the exact one, so a paper's beta "
        "means the paper's penalty only with flow_grpo; sde sampler only)", source="visalign / Flow-GRPO")
    timestep_selection: Literal["first", "random"] = option(
        "first", "which steps are trained: first int(num_steps * timestep_fraction) (Flow-GRPO) or random: "
        "int((num_steps - 1) * timestep_fraction) of the first num_steps - 1, drawn per iteration (DanceGRPO's "
        "--ignore_last with a random permutation; DanceGRPO draws per sample)", source="Flow-GRPO / DanceGRPO")
    num_inner_updates: int = option(1, "optimizer steps per iteration, each on its own share of the trajectories "
                                    "(Flow-GRPO's SD3.5 recipe makes 2)")
    # tree rollouts (BranchGRPO)
    rollout: Literal["independent", "tree"] = option("independent", "independent (Flow-GRPO) or tree (BranchGRPO)")
    split_steps: list[int] = option([0, 2, 4, 6], "tree: steps at which every node splits", source="BranchGRPO "
                                    "(0, 3, 6, 9 of 20)")
    branch_factor: int = option(2, "tree: children per split", source="BranchGRPO")
    split_noise_scale: float = option(1.0, "tree: noise multiplier at split steps (see split_noise_mode)",
                                      source="BranchGRPO")
    split_noise_mode: Literal["level", "draw"] = option(
        "level", "level: the noise level is scaled (std x scale, the SDE mean moves, the log-prob uses the scaled "
        "std); draw: only the noise draw is scaled and the log-prob stays under the unscaled std (BranchGRPO's "
        "flux_step_with_split)", source="visalign / BranchGRPO")
    tree_std_eps: float | None = option(None, "tree: depth-wise advantages divide by std + tree_std_eps "
                                        "(BranchGRPO: 1e-8); None: by max(std, 1e-6)", source="BranchGRPO")
    width_pruning: bool = option(False, "tree: width pruning on (the rule: width_pruning_mode)", source="BranchGRPO")
    width_pruning_mode: int = option(0, "0: at every depth train only transitions into the width_pruning_keep best "
                                     "and worst nodes (visalign); 1: after the last split keep, per branch, the best "
                                     "width_pruning_ratio by advantage; 2: after the last split keep the top and "
                                     "bottom width_pruning_ratio/2 of all transitions by advantage (BranchGRPO)",
                                     source="visalign / BranchGRPO")
    width_pruning_keep: int = option(1, "tree: nodes kept at each end by width pruning mode 0")
    width_pruning_ratio: float = option(0.5, "tree: fraction kept by width pruning modes 1 and 2", source="BranchGRPO")
    depth_pruning: list[int] = option([], "not trained: steps (depth_pruning_mode step) or child depths = step + 1 "
                                      "(child_depth, BranchGRPO's numbers)", source="BranchGRPO")
    depth_pruning_mode: Literal["step", "child_depth"] = option(
        "step", "step: depth_pruning lists steps, shifted later by one every depth_pruning_shift_every iterations "
        "and wrapping modulo num_steps (visalign); child_depth: it lists child depths, sliding earlier by one every "
        "depth_pruning_shift_every iterations (counted from 1) until the shallowest reaches depth_pruning_stop_depth "
        "(BranchGRPO)", source="visalign / BranchGRPO")
    depth_pruning_shift_every: int = option(0, "slide the pruned window by one every k iterations (0: fixed)",
                                            source="BranchGRPO")
    depth_pruning_stop_depth: int | None = option(None, "child_depth mode: the window stops sliding here "
                                                  "(None: max(split_steps))", source="BranchGRPO")
    pruning_step_ratio: float = option(1.0, "child_depth mode: depth and width pruning only while iteration + 1 <= "
                                       "int(max_steps * ratio)", source="BranchGRPO")
    # MixGRPO
    sde_window_size: int = option(0, "steps of the SDE window; outside it the ODE is used and nothing is trained "
                                  "(0: no window)", source="MixGRPO (4)")
    sde_window_shift_every: int = option(25, "move the window every k iterations", source="MixGRPO")
    sde_window_stride: int = option(1, "steps the window moves by", source="MixGRPO")
    sde_window_mode: Literal["visalign", "mix_grpo"] = option(
        "visalign", "visalign: the window slides over the trainable steps and wraps, always full size; mix_grpo: "
        "start = k * stride rolls back to 0 after passing num_steps - 2 and the window is cut at num_steps - 2 "
        "(MixGRPO's GRPOTrainingStates, progressive with roll_back)", source="visalign / MixGRPO")
    # optimisation
    lora: bool = option(True, "train a LoRA adapter (False: full fine-tune)", source="Flow-GRPO")
    lora_r: int = option(32, "LoRA rank (peft's r)", source="Flow-GRPO")
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
    max_steps: int = option(100, "training iterations, each one sampled batch and its num_inner_updates "
                                   "optimizer steps (Flow-GRPO's epochs)")
    max_minutes: float | None = option(None, "stop after this many minutes of training (checked between "
                                       "iterations, alike on every process; a wall-clock budget)")
    num_threads: int | None = option(None, "torch CPU threads (None: torch's default)")
    seed: int = option(0, "seed of prompts, noise and LoRA init")
    output_dir: str = option("runs/flow_grpo", "metrics.jsonl, checkpoints, eval grids, final weights")
    save_every: int = option(0, "checkpoint every k iterations (0: only the final weights)")
    resume_from: str | None = option(None, "checkpoint directory, or 'latest': the newest checkpoint-<N> in "
                                     "output_dir (a fresh start when there is none yet)")
    overwrite_output_dir: bool = option(False, "delete a previous run's artefacts in output_dir and start over "
                                        "(without it or resume_from, such an output_dir is refused)",
                                        source="HF Trainer")
    progress: bool = option(True, "progress bar (with ETA and each reward's mean)")
    eval_every: int = option(10, "eval grid every k iterations (0: never); also before the first iteration")
    eval_num_steps: int = option(10, "ODE steps of the eval samples", source="Flow-GRPO uses 40 at 512 px")
    eval_images_per_prompt: int = option(4, "columns of the eval grid")
    eval_seed: int = option(1234, "noise seed of the eval grid (fixed over training)")
    log_with: str | None = option("auto", "accelerate tracker: auto (tensorboard when installed), none, or a name")

    def __post_init__(self) -> None:
        parse_reward_specs(self.rewards)  # a bad reward entry fails here, before anything loads
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; valid: {', '.join(PRESETS)}")
        explicit = _EXPLICIT.get()
        values = PRESETS[self.preset].values
        sources: dict[str, str] = {}
        for f in dataclasses.fields(self):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            given = f.name in explicit if explicit is not None else getattr(self, f.name) != default
            if f.name == "preset" or given:
                sources[f.name] = "explicit"
            elif f.name in values:
                setattr(self, f.name, copy.deepcopy(values[f.name]))
                sources[f.name] = f"preset {self.preset}"
            else:
                sources[f.name] = "default"
        self.option_sources = sources

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> FlowGRPOConfig:
        """Build from explicit options (what :func:`~visalign.trainers.config.load_config` calls): every key
        given counts as explicit and overrides the preset, whatever its value."""
        token = _EXPLICIT.set(frozenset(options))
        try:
            return cls(**options)
        finally:
            _EXPLICIT.reset(token)

    @classmethod
    def from_preset(cls, preset: str, **options: Any) -> FlowGRPOConfig:
        """``preset``'s values with ``options`` on top (explicit, even when equal to a visalign default).

        Example:
            >>> c = FlowGRPOConfig.from_preset("flow_grpo", beta=0.0)
            >>> c.beta, c.kl_form, c.adv_ddof, c.option_sources["beta"], c.option_sources["adv_ddof"]
            (0.0, 'flow_grpo', 0, 'explicit', 'preset flow_grpo')
        """
        return cls.from_options({"preset": preset, **options})


_EXPLICIT: contextvars.ContextVar[frozenset[str] | None] = contextvars.ContextVar("flow_explicit", default=None)


@dataclass(frozen=True)
class Preset:
    """A reference recipe: what it reproduces, the reference file, and the options it sets."""

    reproduces: str
    reference: str
    values: Mapping[str, Any]


#: Every option whose meaning or default differs from visalign's, per reference repository (read from
#: the repositories' own code: yifan123/flow_grpo, XueZeyue/DanceGRPO, Fredreic1849/BranchGRPO,
#: Tencent-Hunyuan/MixGRPO). What no option reproduces is listed in ``not_reproduced``.
PRESETS: dict[str, Preset] = {
    "visalign": Preset("visalign's own defaults (exact step KL, unbiased std, contiguous groups)", "-", {}),
    "flow_grpo": Preset(
        "Flow-GRPO, SD3.5-M GenEval/OCR recipe (config/grpo.py geneval_sd3 / general_ocr_sd3)",
        "yifan123/flow_grpo: flow_grpo/diffusers_patch/sd3_sde_with_logprob.py, flow_grpo/stat_tracking.py, "
        "scripts/train_sd3.py, config/grpo.py",
        {"sampler": "sde", "sigma_mode": "flow_grpo", "noise_level": 0.7, "num_steps": 10, "eval_num_steps": 40,
         "guidance_scale": 4.5, "resolution": 512, "group_size": 24, "timestep_fraction": 0.99,
         "timestep_selection": "first", "epsilon": 1e-4, "beta": 0.04, "kl_form": "flow_grpo", "adv_clip": 5.0,
         "std_eps": 1e-4, "adv_ddof": 0, "global_std": True, "group_by": "prompt", "per_prompt_stat_tracking": True,
         "drop_zero_advantage": True, "num_inner_updates": 2, "lora": True, "lora_r": 32, "lora_alpha": 64.0,
         "learning_rate": 3e-4, "adam_betas": (0.9, 0.999), "weight_decay": 1e-4, "adam_eps": 1e-8,
         "max_grad_norm": 1.0, "ema": True, "ema_decay": 0.9, "ema_every": 8}),
    "dance_grpo": Preset(
        "DanceGRPO, FLUX.1-dev HPS recipe (scripts/finetune/finetune_flux_grpo_8gpus.sh)",
        "XueZeyue/DanceGRPO: fastvideo/train_grpo_flux.py (flux_step, train_one_step)",
        {"sampler": "sde", "sigma_mode": "constant", "noise_level": 0.3, "num_steps": 16, "resolution": 720,
         "guidance_scale": 3.5, "group_size": 12, "same_initial_noise": True, "timestep_fraction": 0.6,
         "timestep_selection": "random", "epsilon": 1e-4, "beta": 0.0, "adv_clip": 5.0, "std_eps": 1e-8,
         "adv_ddof": 1, "global_std": False, "group_by": "slot", "drop_zero_advantage": False, "lora": False,
         "learning_rate": 1e-5, "weight_decay": 1e-4, "max_grad_norm": 0.01, "ema": True, "ema_decay": 0.995,
         "ema_every": 1}),
    "branch_grpo": Preset(
        "BranchGRPO, FLUX.1-dev tree recipe (scripts/finetune/finetune_flux_branchgrpo_8gpus.sh)",
        "Fredreic1849/BranchGRPO: fastvideo/train_branchgrpo_flux.py (flux_step_with_split, "
        "compute_hierarchical_advantages_by_depth, train_one_step_tree)",
        {"sampler": "sde", "sigma_mode": "constant", "noise_level": 0.3, "num_steps": 20, "resolution": 720,
         "guidance_scale": 3.5, "rollout": "tree", "split_steps": [0, 3, 6, 9], "branch_factor": 2,
         "split_noise_scale": 4.0, "split_noise_mode": "draw", "tree_std_eps": 1e-8, "same_initial_noise": False,
         "timestep_fraction": 1.0, "timestep_selection": "first", "epsilon": 1e-3, "beta": 0.0, "adv_clip": 5.0,
         "global_std": False, "depth_pruning_mode": "child_depth", "depth_pruning": [],
         "depth_pruning_shift_every": 30, "depth_pruning_stop_depth": 9, "width_pruning": False,
         "width_pruning_mode": 2, "width_pruning_ratio": 0.5, "pruning_step_ratio": 1.0, "lora": False,
         "learning_rate": 1e-5, "weight_decay": 1e-4, "max_grad_norm": 1.0, "ema": False}),
    "mix_grpo": Preset(
        "MixGRPO, FLUX.1-dev recipe (scripts/finetune/finetune_flux_grpo_MixGRPO.sh, flow_grpo_sampling)",
        "Tencent-Hunyuan/MixGRPO: fastvideo/train_grpo_flux.py, fastvideo/utils/grpo_states.py, "
        "fastvideo/utils/sampling_utils.py (flow_grpo_step)",
        {"sampler": "sde", "sigma_mode": "flow_grpo", "noise_level": 0.7, "num_steps": 25, "resolution": 720,
         "guidance_scale": 3.5, "group_size": 12, "same_initial_noise": True, "sde_window_size": 4,
         "sde_window_shift_every": 25, "sde_window_stride": 1, "sde_window_mode": "mix_grpo",
         "timestep_fraction": 1.0, "timestep_selection": "first", "epsilon": 1e-4, "beta": 0.0, "adv_clip": 5.0,
         "std_eps": 1e-8, "adv_ddof": 1, "global_std": False, "group_by": "slot", "lora": False,
         "learning_rate": 1e-5, "weight_decay": 1e-4, "max_grad_norm": 1.0, "ema": False}),
}


def describe_flow_options(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> str:
    """A markdown table of the resolved options of a flow config and where each value came from:
    ``--set`` (``overrides``), ``config`` (the file or mapping), ``preset <name>``, or ``default``.

    Example:
        >>> print(describe_flow_options({"preset": "dance_grpo"}, beta=0.01).splitlines()[2])
        | `preset` | `'dance_grpo'` | config |
    """
    data: dict[str, Any] = {}
    if source is not None:
        data = dict(source) if isinstance(source, Mapping) else dict(yaml.safe_load(Path(source).read_text()) or {})
        if isinstance(data.get("flow"), Mapping):
            data = dict(data["flow"])
    config = load_config(FlowGRPOConfig, source, section="flow", **overrides)
    rows = ["| option | value | from |", "| --- | --- | --- |"]
    for f in dataclasses.fields(config):
        where = ("--set" if f.name in overrides else "config" if f.name in data
                 else config.option_sources.get(f.name, "default"))
        rows.append(f"| `{f.name}` | `{getattr(config, f.name)!r}` | {where} |")
    return "\n".join(rows)


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
        >>> step_noise_levels(FlowGRPOConfig(num_steps=4, sde_window_size=2, noise_level=0.5), 0)
        [0.5, 0.5, 0.0, 0.0]
    """
    t = config.num_steps
    levels = list(config.noise_levels) if config.noise_levels is not None else [config.noise_level] * t
    if len(levels) != t:
        raise ValueError(f"noise_levels has {len(levels)} entries for {t} steps")
    if config.rollout == "tree" and config.split_noise_mode == "level":
        levels = [a * config.split_noise_scale if k in config.split_steps else a for k, a in enumerate(levels)]
    window = _window(config, iteration)
    return [float(a) if k in window else 0.0 for k, a in enumerate(levels)]


def _window(config: FlowGRPOConfig, iteration: int) -> range:
    return sde_window(config.num_steps, iteration, config.sde_window_size, config.sde_window_shift_every,
                      config.sde_window_stride, _num_trainable(config), config.sde_window_mode)


def _num_trainable(config: FlowGRPOConfig) -> int:
    return max(1, min(config.num_steps, int(config.num_steps * config.timestep_fraction)))


def pruning_active(config: FlowGRPOConfig, iteration: int) -> bool:
    """Whether depth and width pruning apply at ``iteration`` (0-based). ``depth_pruning_mode`` child_depth:
    BranchGRPO's ``pruning_step_ratio`` (its training steps count from 1: prune while ``iteration + 1 <=
    int(max_steps * ratio)``); step mode: always.

    Example:
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

        self.config = config
        self._validate()
        self.policy, self.reward = policy, reward
        self.prompts = list(prompts)
        if not self.prompts:
            raise ValueError("no training prompts")
        self.eval_prompts = list(eval_prompts) if eval_prompts else self.prompts[:4]
        self.output_dir = Path(config.output_dir)
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.accelerator = make_accelerator(mixed_precision=config.mixed_precision, cpu=config.cpu,
                                       log_with=trackers(config.log_with) or None, project_dir=str(self.output_dir))
        prepare_output_dir(self.output_dir, overwrite=config.overwrite_output_dir, resume_from=config.resume_from,
                           main_process=self.accelerator.is_main_process)
        self.accelerator.wait_for_everyone()
        self.eval_results: list[dict[str, Any]] = []  # per eval: iteration, grid, prompts, scores
        torch.manual_seed(config.seed)  # LoRA init
        if config.lora:
            policy.add_lora(config.lora_r, config.lora_alpha, config.lora_target_modules)
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
        if self.sampler != "sde" and (config.kl_form != "exact" or config.sigma_mode != "flow_grpo"
                                      or (config.rollout == "tree" and config.split_noise_mode == "draw"
                                          and config.split_noise_scale != 1.0)):
            raise ValueError(f"kl_form flow_grpo, sigma_mode constant and split_noise_mode draw need the sde "
                             f"sampler, not {self.sampler!r}")
        self._sde = {"sigma_mode": config.sigma_mode} if self.sampler == "sde" else {}
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
        if c.adv_ddof not in (0, 1):
            raise ValueError(f"adv_ddof must be 0 or 1, got {c.adv_ddof}")
        if c.width_pruning_mode not in (0, 1, 2):
            raise ValueError(f"width_pruning_mode must be 0, 1 or 2, got {c.width_pruning_mode}")
        if c.rollout == "tree" and (c.group_by != "slot" or not c.per_prompt_stat_tracking):
            raise ValueError("group_by / per_prompt_stat_tracking apply to independent rollouts")

    # ----------------------------------------------------------------------------- the loop
    @property
    def metrics_log(self) -> MetricsLog:
        """``output_dir/metrics.jsonl`` (one line per iteration)."""
        return MetricsLog(self.output_dir / "metrics.jsonl", step_key="iteration")

    def train(self, callbacks: Sequence[Callback] = ()) -> list[dict[str, Any]]:
        """Run ``max_steps`` iterations (from the resumed one); returns the per-iteration metrics.

        Writes ``metrics.jsonl``, eval grids (``eval/iteration_<N>.png``, captioned), ``curves.png``,
        ``comparison.html`` (first and last eval grid side by side) and ``final/`` (+ ``final_ema/``).
        ``callbacks`` (``callback(trainer, metrics) -> stop?``) run after every logged iteration; one that
        returns True ends the run there (the final eval, weights and curves still follow)."""
        c, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
            save_config(c, self.output_dir / "config.yaml")
            self.metrics_log.start(self.iteration)
        acc.init_trackers("flow_grpo", config={k: str(v) for k, v in config_to_dict(c).items()})
        bar = progress_bar(c.max_steps, initial=self.iteration, desc="flow-grpo", unit="it",
                           enabled=c.progress and acc.is_main_process, output_dir=self.output_dir)
        start: dict[str, Any] = {}
        if c.eval_every > 0 and self.iteration == 0:
            start = {k.replace("eval/", "eval_start/").replace("time/eval", "time/eval_start"): v
                     for k, v in self.evaluate().items()}
        budget = TimeBudget(c.max_minutes, acc)
        try:
            while self.iteration < c.max_steps:
                metrics = {**self.train_iteration(), **start}
                start = {}
                out_of_time = budget.spent()
                metrics["time/elapsed"] = budget.seconds()
                stop = run_callbacks(callbacks, self, metrics)  # before the eval: a stop makes this the last
                last = out_of_time or stop or self.iteration == c.max_steps
                if c.save_every > 0 and self.iteration % c.save_every == 0:
                    self.save_checkpoint()
                if c.eval_every > 0 and (self.iteration % c.eval_every == 0 or last):
                    metrics.update(self.evaluate())
                self._log(metrics)
                bar.update(1)
                bar.set_postfix(**reward_postfix(metrics), loss=f"{metrics.get('loss', math.nan):.4f}")
                if out_of_time:
                    logger.info("max_minutes %.1f reached after %d iterations", c.max_minutes, self.iteration)
                    break
                if stop:
                    logger.info("a callback stopped the run after %d iterations", self.iteration)
                    break
        finally:
            bar.close()
        self.save_final()
        if acc.is_main_process:
            self.write_report()
        for tracker in acc.trackers:  # not end_training(): it destroys the process group of the caller's script
            tracker.finish()
        return self.history

    def write_report(self) -> dict[str, Path]:
        """``curves.png`` from ``metrics.jsonl`` and, with two evals or more, ``comparison.html``: the first
        and the last eval grid with their captions and reward means. Returns what was written."""
        written: dict[str, Path] = {}
        curves = plot_curves(self.output_dir / "metrics.jsonl", self.output_dir / "curves.png",
                             ("reward/mean", "reward/std", "loss", "kl", "clip_fraction"), step_key="iteration",
                             eval_keys=("eval/reward_mean", "eval_start/reward_mean"))
        if curves is not None:
            written["curves"] = curves
        if len(self.eval_results) >= 2:
            written["comparison"] = write_eval_comparison(self.eval_results[0], self.eval_results[-1],
                                                          self.output_dir / "comparison.html", curves=curves)
        return written

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
                "noise_levels": levels, "sde_window": list(_window(c, it)),
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
        self._root_prompts = [self.prompts[int(picks[r // per_prompt])] for r in range(total)]  # all processes
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
        same = c.same_initial_noise and c.rollout == "independent" and stream == 0
        x = torch.stack([_noise(shape, c.seed, stream, iteration, r // c.group_size, 0, 0, 1) if same
                         else _noise(shape, c.seed, stream, iteration, r, 0, 0) for r, _ in roots]).to(device)
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
            scale = c.split_noise_scale if k in split_steps and c.split_noise_mode == "draw" else 1.0
            extra = {**self._sde, **({"noise_scale": scale} if scale != 1.0 else {})}
            child, log_prob, _, _ = policy.step_with_logprob(v[pidx], x[pidx], schedule, k, sampler=self.sampler,
                                                             noise_level=noise_levels[k], noise=noise, **extra)
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
        fields = self.policy.decode_samples(rollout.leaves)  # {"image"}, and "frames" for videos
        leaf_prompt = rollout.steps[-1].parent_prompt[rollout.steps[-1].parent_index]
        samples = [Sample(prompt=rollout.prompts[int(p)], group=self._slots[int(p)], **f)
                   for p, f in zip(leaf_prompt, fields, strict=True)]
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
            scale = "batch" if c.global_std else "group"
            if c.group_by == "prompt" or not c.per_prompt_stat_tracking:
                keys = self._root_prompts if c.per_prompt_stat_tracking else None
                flat = keyed_group_advantages(all_rewards, keys, scale, c.std_eps, c.adv_ddof)
            else:
                flat = group_advantages(all_rewards, c.group_size, scale, c.std_eps, c.adv_ddof)
            per_step, everyone = [flat[mine]] * c.num_steps, flat
        else:
            trees = all_rewards.view(-1, rollout.leaves_per_root)
            depth = tree_advantages(trees, c.num_steps, c.split_steps, c.branch_factor, eps=c.tree_std_eps)
            r0 = acc.process_index * len(rollout.roots)
            per_step, everyone = [d[r0:r0 + len(rollout.roots)].reshape(-1) for d in depth], depth[-1].reshape(-1)
        per_step = [a.clamp(-c.adv_clip, c.adv_clip).float() for a in per_step]
        last = everyone.clamp(-c.adv_clip, c.adv_clip).float()  # the logged statistics: all processes' leaves
        return per_step, {"adv/mean": float(last.mean()), "adv/std": float(last.std()) if last.numel() > 1 else 0.0,
                          "adv/abs_max": float(last.abs().max())}

    # ----------------------------------------------------------------------------- training
    def _train_masks(self, rollout: Rollout, rewards: torch.Tensor, iteration: int,
                     advantages: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Which transitions of each step are trained (bool per child, this process)."""
        c = self.config
        steps = set(trained_steps(c, iteration))
        masks = [torch.full((r.children.shape[0],), k in steps, dtype=torch.bool) for k, r in enumerate(rollout.steps)]
        if c.rollout == "tree" and c.width_pruning and pruning_active(c, iteration):
            trees = rewards.view(-1, rollout.leaves_per_root)
            width = width_pruning_masks(trees, c.num_steps, c.split_steps, c.branch_factor, c.width_pruning_keep,
                                        mode=c.width_pruning_mode, ratio=c.width_pruning_ratio, steps=sorted(steps),
                                        eps=c.tree_std_eps)
            masks = [m & w.reshape(-1) for m, w in zip(masks, width, strict=True)]
        if c.drop_zero_advantage and advantages is not None:
            masks = [m & (a.cpu() != 0) for m, a in zip(masks, advantages, strict=True)]
        return masks

    def optimize(self, rollout: Rollout, advantages: list[torch.Tensor], rewards: torch.Tensor,
                 noise_levels: Sequence[float], iteration: int) -> dict[str, Any]:
        """``num_inner_updates`` optimizer steps on the chosen transitions; returns the training metrics."""
        c, acc, policy = self.config, self.accelerator, self.policy
        masks = self._train_masks(rollout, rewards, iteration, advantages)
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
                        prev_sample=children, **self._sde)
                    loss, ratio = ppo_clip_loss(log_prob, record.log_probs[in_chunk.to(dev)],
                                                advantages[k][in_chunk].to(dev), c.epsilon)
                    kl = torch.zeros_like(loss)
                    if c.beta > 0:
                        with torch.no_grad(), policy.reference(), acc.autocast():
                            v_ref = policy.predict(x, self._schedule[k], sub, c.guidance_scale)
                        nfe_train += chunk.numel() * self._forwards
                        ref_mean = policy.step_with_logprob(v_ref[pos], x[pos], self._schedule, k,
                                                            sampler=self.sampler, noise_level=noise_levels[k],
                                                            prev_sample=children, **self._sde)[2]
                        dt = float(self._schedule[k] - self._schedule[k + 1]) if c.kl_form == "flow_grpo" else None
                        kl = kl_to_reference(mean, ref_mean, std, dt=dt)
                    acc.backward((loss + c.beta * kl).sum() / max(count, 1))
                    ratios.append(ratio.detach())
                    stats["loss"].append(loss.detach())
                    stats["kl"].append(kl.detach())
                    stats["clipped"].append(((ratio.detach() - 1).abs() > c.epsilon).float())
            if update == 0 and ratios:
                first_dev = float((torch.cat(ratios) - 1).abs().max())
                if first_dev > 1e-6:
                    logger.warning("importance ratio deviates from 1 by %.3g at the first inner update: rollout "
                                   "and training compute different log-probs (bf16 rounding, dropout, batching)",
                                   first_dev)
            stats["ratio"].extend(ratios)
            self._step_optimizer()
        pooled = self._pool_over_processes({k: torch.cat(v) if v else torch.zeros(0) for k, v in stats.items()},
                                           first_dev)
        return {**pooled,
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
        fields = self.policy.decode_samples(rollout.leaves)
        images = [f["image"] for f in fields]
        out = self.reward([Sample(prompt=self.eval_prompts[p], group=p, **f)
                           for (_, p), f in zip(roots, fields, strict=True)])
        scores = [float(s) for s in out.scores if isinstance(s, (int, float)) and math.isfinite(float(s))]
        path = self.output_dir / "eval" / f"iteration_{self.iteration:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        scale = max(1, 128 // max(images[0].size))
        per_image = [float(s) if isinstance(s, (int, float)) and math.isfinite(float(s)) else None for s in out.scores]
        captioned_grid(images, self.eval_prompts, per_image, columns=n, scale=scale).save(path)
        mean = float(np.mean(scores)) if scores else math.nan
        self.eval_results.append({"iteration": self.iteration, "grid": path, "prompts": list(self.eval_prompts),
                                  "scores": per_image, "reward_mean": mean})
        acc.wait_for_everyone()
        return {"eval/reward_mean": mean, "eval/grid": str(path), "time/eval": time.perf_counter() - t0}

    def _log(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.accelerator.is_main_process:
            self.metrics_log.append(metrics)
        scalars = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.accelerator.log(scalars, step=metrics["iteration"])

    def _pool_over_processes(self, per_transition: dict[str, torch.Tensor], first_dev: float) -> dict[str, float]:
        """Loss, KL, clip fraction and ratio statistics over the transitions *every* process trained (a
        rank's own mean would make the logged loss depend on how the batch was split)."""
        ratio = per_transition["ratio"].double()
        sums = torch.stack([per_transition[k].double().sum() for k in ("loss", "kl", "clipped")]
                           + [torch.tensor(float(ratio.numel()), dtype=torch.float64), ratio.sum()])
        low = ratio.min() if ratio.numel() else torch.tensor(math.inf, dtype=torch.float64)
        high = ratio.max() if ratio.numel() else torch.tensor(-math.inf, dtype=torch.float64)
        dev = torch.tensor(-math.inf if math.isnan(first_dev) else first_dev, dtype=torch.float64)
        if self.accelerator.num_processes > 1:
            device = self.accelerator.device
            sums, low, high, dev = (t.to(device) for t in (sums, low, high, dev))
            torch.distributed.all_reduce(sums)
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
            torch.distributed.all_reduce(dev, op=torch.distributed.ReduceOp.MAX)
        loss, kl, clipped, n, ratio_sum = (float(v) for v in sums.cpu())
        if n == 0:
            return {k: math.nan for k in ("loss", "kl", "clip_fraction", "ratio/mean", "ratio/min", "ratio/max",
                                          "ratio/first_update_max_abs_dev")}
        return {"loss": loss / n, "kl": kl / n, "clip_fraction": clipped / n, "ratio/mean": ratio_sum / n,
                "ratio/min": float(low), "ratio/max": float(high),
                "ratio/first_update_max_abs_dev": float(dev) if math.isfinite(float(dev)) else math.nan}

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
            state = {"iteration": self.iteration, "sde_window": list(_window(c, self.iteration))}
            (path / "trainer_state.json").write_text(json.dumps(state))
        acc.wait_for_everyone()
        return path

    def load_checkpoint(self, path: str | Path) -> None:
        """Restore what :meth:`save_checkpoint` wrote (``"latest"``: the newest ``checkpoint-<N>`` in
        ``output_dir``; none yet: a fresh start, logged)."""
        found = resolve_checkpoint(self.output_dir, path)
        if found is None:
            return
        path = found
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
        _save_policy_extras(self.policy, path)
        if self.ema is not None:
            with self.ema.swapped_in(self.params):
                self.policy.model.save_pretrained(str(self.output_dir / "final_ema"))
            _save_policy_extras(self.policy, self.output_dir / "final_ema")
        return path


def _save_policy_extras(policy: FlowPolicy, path: Path) -> None:
    """What ``load_flow_policy`` needs beside the weights: a class-conditional UNet's ``classes.json``."""
    classes = getattr(policy, "classes", None)
    if classes is not None:
        (path / "classes.json").write_text(json.dumps(list(classes), indent=1) + "\n")


def captioned_grid(images: Sequence[Any], prompts: Sequence[str], scores: Sequence[float | None], columns: int,
                   scale: int = 1) -> Any:
    """:func:`image_grid` with a caption band above each row (its prompt) and each tile's reward under it.

    Example:
        >>> from PIL import Image
        >>> grid = captioned_grid([Image.new("RGB", (8, 8))] * 4, ["a", "b"], [0.5, None, 1.0, 0.25], 2, 4)
        >>> grid.size  # 2 columns of 8 px x 4; 2 rows of 14 (caption) + 32 (tile) + 11 (score)
        (64, 114)
    """
    from PIL import Image, ImageDraw

    w, h = images[0].size
    tile_w, tile_h, band, label = w * scale, h * scale, 14, 11
    rows = math.ceil(len(images) / columns)
    grid = Image.new("RGB", (columns * tile_w, rows * (band + tile_h + label)), "white")
    draw = ImageDraw.Draw(grid)
    for r in range(rows):
        y = r * (band + tile_h + label)
        draw.text((2, y + 1), str(prompts[r]) if r < len(prompts) else "", fill="black")
        row = images[r * columns:(r + 1) * columns]
        grid.paste(image_grid(row, columns=columns, scale=scale), (0, y + band))
        for c in range(len(row)):
            score = scores[r * columns + c] if r * columns + c < len(scores) else None
            text = "n/a" if score is None else f"{score:.3f}"
            draw.text((c * tile_w + 2, y + band + tile_h), text, fill=(70, 70, 70))
    return grid


def write_eval_comparison(before: Mapping[str, Any], after: Mapping[str, Any], out_path: str | Path, *,
                          curves: Path | None = None, title: str = "Flow-GRPO: held-out eval grid") -> Path:
    """A standalone HTML page: the ``before`` and ``after`` eval grids side by side (captioned PNGs, kept
    inline), the mean reward of each and of each prompt, and the training curves when given."""
    import html

    from PIL import Image

    from ..report.eval_report import _png_data_uri

    def uri(path: str | Path) -> str:
        with Image.open(path) as im:
            return _png_data_uri(im.convert("RGB"), max_side=max(im.size))

    def per_prompt(ev: Mapping[str, Any]) -> dict[str, float]:
        n = max(1, len(ev["scores"]) // max(1, len(ev["prompts"])))
        out = {}
        for i, p in enumerate(ev["prompts"]):
            vals = [s for s in ev["scores"][i * n:(i + 1) * n] if s is not None]
            out[p] = float(np.mean(vals)) if vals else math.nan
        return out

    b, a = per_prompt(before), per_prompt(after)
    rows = "".join(f"<tr><td>{html.escape(p)}</td><td>{b[p]:.4f}</td><td>{a.get(p, math.nan):.4f}</td>"
                   f"<td>{a.get(p, math.nan) - b[p]:+.4f}</td></tr>" for p in b)
    figs = "".join(f"<figure><figcaption>{name} (iteration {ev['iteration']}): mean reward {ev['reward_mean']:.4f}"
                   f"</figcaption><img src='{uri(ev['grid'])}' alt='{name} eval grid'></figure>"
                   for name, ev in (("before", before), ("after", after)))
    curve = f"<h2>Training curves</h2><img src='{uri(curves)}' alt='curves'>" if curves is not None else ""
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>"
            "body{font-family:sans-serif;margin:1.5em}figure{display:inline-block;margin:0 1em 1em 0}"
            "img{image-rendering:pixelated;border:1px solid #ccc}td,th{padding:2px 10px;text-align:right}"
            "td:first-child{text-align:left}</style></head><body>"
            f"<h1>{html.escape(title)}</h1><p>Fixed-seed ODE samples of the eval prompts (same noise before and "
            f"after; EMA weights when EMA is on). Each row is one prompt, each tile's reward under it.</p>{figs}"
            f"<h2>Mean reward per prompt</h2><table><tr><th>prompt</th><th>before</th><th>after</th>"
            f"<th>difference</th></tr>{rows}</table>{curve}</body></html>")
    Path(out_path).write_text(page, encoding="utf-8")
    return Path(out_path)


# ------------------------------------------------------------------------------------- from config


def build_reward(spec: Any, aggregation: str = "normalize_then_sum") -> Reward:
    """A reward from a config's ``rewards`` (a list of names or ``{name, weight, options}``; the older
    ``{name: weight | {weight, **options}}`` mapping is read too: :func:`visalign.rewards.specs.parse_reward_specs`);
    several, or one with a weight other than 1, make a :class:`~visalign.rewards.CompositeReward`.
    Names: :data:`visalign.rewards.REWARDS` or ``"module:Class"``.

    Example:
        >>> build_reward([{"name": "format", "options": {"allow_bare": True}}]).name
        'format'
    """
    specs = parse_reward_specs(spec)
    if not specs:
        raise ValueError("rewards: no reward configured")
    if len(specs) == 1 and specs[0].weight == 1.0:
        return instantiate(specs[0])
    return build_rewards(specs, aggregation=aggregation)


def _read_prompts(inline: Sequence[str], file: str | None) -> list[str]:
    prompts = list(inline)
    if file:
        prompts += [line.strip() for line in Path(file).read_text().splitlines() if line.strip()]
    return prompts


def flow_algorithm(source: str | Path | Mapping[str, Any] | None, algorithm: str | None = None) -> str:
    """``"grpo"`` or ``"refl"``: ``algorithm`` when given (``--algorithm``), else the config's ``algorithm``
    key (under ``flow:`` or at the top level), else ``"grpo"``.

    Example:
        >>> flow_algorithm({"flow": {"algorithm": "refl"}}), flow_algorithm({}), flow_algorithm({}, "refl")
        ('refl', 'grpo', 'refl')
    """
    if algorithm is None and source is not None:
        data = dict(source) if isinstance(source, Mapping) else dict(yaml.safe_load(Path(source).read_text()) or {})
        section = data.get("flow") if isinstance(data.get("flow"), Mapping) else data
        algorithm = section.get("algorithm", "grpo")
    algorithm = algorithm or "grpo"
    if algorithm not in ("grpo", "refl"):
        raise ValueError(f"algorithm must be 'grpo' or 'refl', got {algorithm!r}")
    return algorithm


def train_flow_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> Any:
    """Build policy (``pretrained``), reward(s) and prompts from a YAML file or mapping, train, and return
    the trainer (``trainer.history`` holds the per-iteration metrics). A YAML file may hold the options
    under a ``flow:`` key. ``algorithm: refl`` (in the file or as an override) hands over to
    :func:`visalign.trainers.refl.train_refl_from_config`."""
    if flow_algorithm(source, overrides.pop("algorithm", None)) == "refl":
        from .refl import train_refl_from_config  # refl builds on this module: imported on use

        return train_refl_from_config(source, algorithm="refl", **overrides)
    config = load_config(FlowGRPOConfig, source, section="flow", **overrides)
    if not config.pretrained:
        raise ValueError("train_flow_from_config needs `pretrained` (a local model directory)")
    prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir, resume_from=config.resume_from,
                       check_only=True)  # refused before the model loads; the trainer clears it
    options = flow_policy_class(config.pretrained).config_options  # what this family's policy takes
    policy = load_flow_policy(config.pretrained, **{name: getattr(config, name) for name in options})
    reward = build_reward(config.rewards, config.reward_aggregation)
    prompts = _read_prompts(config.prompts, config.prompts_file)
    eval_prompts = _read_prompts(config.eval_prompts, config.eval_prompts_file)
    trainer = FlowGRPOTrainer(config, policy, reward, prompts, eval_prompts or None)
    try:
        trainer.train()
    finally:
        reward.close()
    return trainer
