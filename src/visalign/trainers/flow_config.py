"""The Flow-GRPO trainer's options (:class:`FlowGRPOConfig`) and the reference recipes they can take
(:data:`PRESETS`: Flow-GRPO, DanceGRPO, BranchGRPO, MixGRPO, each read from its repository's own code).

Example:
    >>> c = FlowGRPOConfig.from_preset("flow_grpo")
    >>> c.epsilon, c.beta, c.option_sources["beta"]
    (0.0001, 0.04, 'preset flow_grpo')
"""

from __future__ import annotations

import contextvars
import copy
import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml

from ..rewards.specs import parse_reward_specs
from .config import apply_renamed_options, load_config, option, shared_option

__all__ = ["PRESETS", "FlowGRPOConfig", "Preset", "describe_flow_options", "flow_section"]


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
    lora: bool = shared_option("lora", True, source="Flow-GRPO")
    lora_r: int = shared_option("lora_r", 32, source="Flow-GRPO")
    lora_alpha: float = shared_option("lora_alpha", 64.0, source="Flow-GRPO")
    lora_target_modules: list[str] | None = option(None, "peft target_modules (default: the policy's, attention "
                                                   "projections to_q/to_k/to_v/to_out.0; for a UNet without "
                                                   "attention its ResNet conv1/conv2)", source="Flow-GRPO")
    learning_rate: float = option(3e-4, "AdamW learning rate (full fine-tune: ~1e-5)", source="Flow-GRPO")
    adam_betas: tuple[float, float] = shared_option("adam_betas")
    weight_decay: float = shared_option("weight_decay", 1e-4, source="Flow-GRPO")
    adam_eps: float = option(1e-8, "AdamW epsilon", source="Flow-GRPO")
    max_grad_norm: float | None = shared_option("max_grad_norm")
    ema: bool = option(True, "keep an EMA of the trainable weights, used for eval", source="Flow-GRPO")
    ema_decay: float = option(0.9, "EMA decay (warm-up: min(decay, (1 + n) / (10 + n)))", source="Flow-GRPO")
    ema_every: int = option(8, "EMA update every k optimizer steps", source="Flow-GRPO")
    mixed_precision: Literal["no", "bf16", "fp16"] = shared_option("mixed_precision", note="with LoRA the frozen weights are cast to it; log-probs stay float32")
    gradient_checkpointing: bool = shared_option("gradient_checkpointing")
    cpu: bool = option(False, "force the CPU even when a GPU is available")
    # run
    max_steps: int = option(100, "training iterations, each one sampled batch and its num_inner_updates "
                                   "optimizer steps (Flow-GRPO's epochs)")
    max_minutes: float | None = shared_option("max_minutes")
    num_threads: int | None = shared_option("num_threads")
    seed: int = option(0, "seed of prompts, noise and LoRA init")
    output_dir: str = option("runs/flow_grpo", "metrics.jsonl, checkpoints, eval grids, final weights")
    save_every: int = shared_option("save_every")
    resume_from: str | None = shared_option("resume_from")
    overwrite_output_dir: bool = shared_option("overwrite_output_dir")
    progress: bool = shared_option("progress")
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


def flow_section(source: str | Path | Mapping[str, Any] | None) -> dict[str, Any]:
    """The options a flow config gives, as written (a file's or mapping's ``flow:`` section, or its top
    level): what ``--describe`` attributes to "config".

    Example:
        >>> flow_section({"flow": {"beta": 0.1}, "algorithm": "grpo"}), flow_section(None)
        ({'beta': 0.1}, {})
    """
    if source is None:
        return {}
    data = dict(source) if isinstance(source, Mapping) else dict(yaml.safe_load(Path(source).read_text()) or {})
    return dict(data["flow"]) if isinstance(data.get("flow"), Mapping) else data


def describe_flow_options(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> str:
    """A markdown table of the resolved options of a flow config and where each value came from:
    ``--set`` (``overrides``), ``config`` (the file or mapping), ``preset <name>``, or ``default``.

    Example:
        >>> print(describe_flow_options({"preset": "dance_grpo"}, beta=0.01).splitlines()[2])
        | `preset` | `'dance_grpo'` | config |
    """
    data = apply_renamed_options(FlowGRPOConfig, flow_section(source))
    config = load_config(FlowGRPOConfig, source, section="flow", **overrides)
    rows = ["| option | value | from |", "| --- | --- | --- |"]
    for f in dataclasses.fields(config):
        where = ("--set" if f.name in overrides else "config" if f.name in data
                 else config.option_sources.get(f.name, "default"))
        rows.append(f"| `{f.name}` | `{getattr(config, f.name)!r}` | {where} |")
    return "\n".join(rows)
