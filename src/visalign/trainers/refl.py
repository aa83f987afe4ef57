"""ReFL and DRaFT: back-propagate a differentiable reward through the sampler of a flow or diffusion policy.

Two ways to put a reward's gradient on the denoiser (``ReFLConfig.mode``):

- **DRaFT-K** (Clark et al., "Directly Fine-Tuning Diffusion Models on Differentiable Rewards", 2023):
  sample all ``num_steps`` steps; the first ``num_steps - draft_k`` run under ``torch.no_grad()`` and the
  last ``draft_k`` keep their graph, so the reward's gradient reaches the model only through those
  steps (truncated back-propagation). ``lv_samples = n > 0`` is DRaFT-LV (``draft_k`` must be 1): the
  finished sample is noised back to the last step ``n`` times with fresh noise and the last step is
  redone, with the gradient, for each; the reward is averaged over the ``n`` redone steps.
- **ReFL** (Xu et al., ImageReward, 2023): draw a step ``m`` uniformly in ``refl_steps = [lo, hi]``
  (ImageReward's ``train_refl``: 40 steps, ``m`` in 30..39), run steps ``0 .. m - 1`` without the graph,
  predict at step ``m`` with the graph and score the one-step prediction ``x0`` of that step
  (:func:`predict_x0`: ``x - sigma v`` for flow matching, ``(x - sqrt(1 - a) eps) / sqrt(a)`` for epsilon
  prediction) instead of finishing the trajectory.

The loss of a sample is ``reward_loss(r)`` (:func:`reward_loss`: ``-scale r``, or ImageReward's
``scale * relu(target - r)``) + ``kl_weight`` x the squared distance of the policy's prediction from the
reference policy's at every step that carries the graph (:func:`prediction_regulariser`; the reference is
the model with its LoRA adapter disabled, or the frozen copy of a full fine-tune) + ``pretrain_weight`` x
the denoising loss on data when ``pretrain_data`` is given (:func:`pretraining_loss`, ReFL's
regulariser). ``max_grad_norm`` clips the gradient.

The runtime is the Flow-GRPO trainer's (:class:`~visalign.trainers.flow.FlowGRPOTrainer`, held as
``ReFLTrainer.runtime``): LoRA or full fine-tune, accelerate, AdamW, EMA, the fixed-seed eval grid
(``output_dir/eval/iteration_*.png`` with the eval reward's mean), ``metrics.jsonl``, checkpoints and
resume, the final weights. ReFL only adds the loop and the math here.

Rewards (``rewards`` in the config) must be differentiable: an object with
``differentiable(images, references=None, prompts=None) -> (B,)``, ``images`` ``(B, 3, H, W)`` floats in
``[0, 1]`` (:class:`DifferentiableReward`). Built in: ``model`` (a saved Bradley-Terry reward model,
:meth:`~visalign.rewards.model.ModelReward.differentiable`), ``clip`` (CLIP score or CLIP-I,
:meth:`~visalign.rewards.clip.ClipReward.differentiable`), ``shape_colour`` (a smooth surrogate of the
shapes reward, :meth:`~visalign.rewards.shapes.ShapeColourReward.differentiable`), and ``pixel`` /
``ssim`` against a target image (:class:`TargetSimilarityReward`). The evaluation reward
(``eval_rewards``; default: the training rewards' own non-differentiable scores) only feeds the eval grid
and the logs: with ``eval_rewards`` set to a reward that is not trained on (the dlib ``identity`` reward in
``configs/id_aligner_sd15.yaml``) the logs show whether the gain carries over.

Example (a random tiny class-conditional UNet, one ReFL iteration on a brightness reward):
    >>> import tempfile
    >>> from diffusers import UNet2DModel
    >>> from visalign.trainers.flow_policies import ClassConditionalFlowPolicy
    >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
    <torch._C.Generator object at ...>
    >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
    ...                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
    ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=2)
    >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle", "a blue square"])
    >>> config = ReFLConfig(mode="refl", num_steps=4, prompts_per_iteration=2, max_steps=1, lora_r=4,
    ...                     eval_every=0, guidance_scale=1.0, output_dir=tempfile.mkdtemp())
    >>> trainer = ReFLTrainer(config, policy, TargetSimilarityReward("pixel", target=torch.ones(3, 8, 8)),
    ...                       ["a red circle", "a blue square"])
    >>> history = trainer.train()
    >>> history[0]["grad_steps"], history[0]["nfe/train"]  # steps 0-2 without the graph, step 3 with it
    ([3], 8)
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..rewards.base import Reward, RewardOutput, Sample
from ..rewards.specs import parse_reward_specs
from .config import apply_renamed_options, load_config, option, save_config, shared_option
from .flow import FlowGRPOConfig, FlowGRPOTrainer, _noise, _read_prompts, build_reward
from .flow_config import flow_section
from .flow_policies import (
    ClassConditionalFlowPolicy,
    FlowPolicy,
    FluxPolicy,
    SanaPolicy,
    SD3Policy,
    StableDiffusionPolicy,
    flow_policy_class,
    load_flow_policy,
)
from .runtime import prepare_output_dir

__all__ = [
    "DifferentiableReward",
    "GradientPlan",
    "ReFLConfig",
    "ReFLTrainer",
    "SampleWithGrad",
    "TargetSimilarityReward",
    "WeightedDifferentiableReward",
    "build_differentiable_reward",
    "decode_images",
    "describe_refl_options",
    "encode_images",
    "gradient_plan",
    "noise_to",
    "predict_x0",
    "prediction_regulariser",
    "pretraining_loss",
    "reward_loss",
    "sample_with_grad",
    "train_refl_from_config",
]

logger = logging.getLogger(__name__)

_GRPO_FIELDS = {f.name: f for f in dataclasses.fields(FlowGRPOConfig)}


def _shared(name: str, default: Any = dataclasses.MISSING, source: str | None = None) -> Any:
    """A field taken from :class:`FlowGRPOConfig` (one help text for both trainers); ``default`` /
    ``source`` override where ReFL's recipe differs."""
    f = _GRPO_FIELDS[name]
    if default is dataclasses.MISSING:
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return option(default, f.metadata["help"], source=source or f.metadata["source"])


# ------------------------------------------------------------------------------------------- config


@dataclass
class ReFLConfig:
    """Options of :class:`ReFLTrainer` (``visalign train flow CONFIG --algorithm refl --describe``).

    A separate dataclass rather than more fields on :class:`~visalign.trainers.flow.FlowGRPOConfig`: the
    GRPO options (group size, clipping, advantages, trees, SDE windows) mean nothing here, and ReFL's
    (mode, steps with the graph, reward loss) mean nothing there. The options both trainers share (model,
    prompts, LoRA, optimiser, EMA, eval grid, checkpoints) take their help text from ``FlowGRPOConfig``.
    """

    RENAMED_OPTIONS: ClassVar[tuple[str, ...]] = ("lora_rank", "num_iterations")  # config.VOCABULARY

    algorithm: Literal["refl"] = option("refl", "the flow trainer's algorithm: refl (this config) or grpo "
                                        "(FlowGRPOConfig); also `visalign train flow --algorithm refl`")
    mode: Literal["refl", "draft"] = option(
        "refl", "refl: score the one-step x0 prediction at a random step of refl_steps (ImageReward); draft: "
        "sample to the end, gradient through the last draft_k steps (DRaFT-K; lv_samples: DRaFT-LV)",
        source="ImageReward / DRaFT")
    # model and data
    pretrained: str | None = _shared("pretrained")
    resolution: int = _shared("resolution")
    max_sequence_length: int = _shared("max_sequence_length")
    prompts: list[str] = _shared("prompts")  # noqa: RUF009 (a fresh field per call)
    prompts_file: str | None = _shared("prompts_file")
    eval_prompts: list[str] = _shared("eval_prompts")  # noqa: RUF009 (a fresh field per call)
    eval_prompts_file: str | None = _shared("eval_prompts_file")
    rewards: list | dict = option([], "differentiable rewards: a list of names or {name, weight, options} "
                                  "mappings (the older name -> weight | {weight, <options>} mapping is read too); "
                                  "names: model, clip, shape_colour, pixel, ssim, or 'package.module:Class' "
                                  "with a differentiable() method (train_refl_from_config only)")
    eval_rewards: list | dict = option([], "rewards of the eval grid and logs, any visalign reward (e.g. the "
                                       "dlib identity reward), in the rewards' form; []: the training rewards' "
                                       "own scores")
    reference_image: str | None = option(None, "image file every sample is compared with (rewards that take a "
                                         "reference: model with condition reference, clip image_image, pixel, "
                                         "ssim)")
    # sampling
    num_steps: int = option(40, "sampling steps", source="ImageReward ReFL (40)")
    guidance_scale: float = _shared("guidance_scale", 7.5, "ImageReward ReFL (SD1.4: 7.5)")
    sampler: Literal["auto", "sde", "cps", "ddim"] = _shared("sampler")
    noise_level: float = option(0.0, "noise level of the sampling steps (0: ODE / DDIM eta 0, as DRaFT samples)",
                                source="DRaFT")
    # what carries the gradient
    refl_steps: list[int] | None = option(None, "refl: [lo, hi], the step whose x0 prediction is scored is drawn "
                                          "uniformly in lo..hi (inclusive); None: [int(0.75 * num_steps), "
                                          "num_steps - 1]", source="ImageReward ReFL (30..39 of 40)")
    draft_k: int = option(1, "draft: the last K steps keep the graph", source="DRaFT (K = 1)")
    lv_samples: int = option(0, "draft: DRaFT-LV, redo the last step this many times with fresh noise and average "
                             "the rewards (0: off; needs draft_k 1)", source="DRaFT-LV (n = 2)")
    # loss
    reward_loss: Literal["linear", "relu"] = option(
        "linear", "linear: -reward_scale * r; relu: reward_scale * relu(reward_target - r) (ImageReward)",
        source="DRaFT / ImageReward")
    reward_target: float = option(2.0, "relu loss: rewards above it give no gradient", source="ImageReward ReFL")
    reward_scale: float = option(1.0, "multiplies the reward loss (ImageReward's grad_scale: 1e-3)",
                                 source="ImageReward ReFL (1e-3)")
    kl_weight: float = option(0.0, "weight of mean (pred - pred_ref)^2 at the steps with the graph, pred_ref the "
                              "reference policy's (LoRA off / frozen copy); 0: no reference passes")
    pretrain_data: str | None = option(None, "JSONL of {image: path relative to the file, prompt} rows: ReFL's "
                                       "denoising loss on data, added with pretrain_weight", source="ImageReward ReFL")
    pretrain_weight: float = option(1.0, "weight of the denoising loss on pretrain_data")
    pretrain_batch_size: int = option(8, "data rows per iteration for the denoising loss")
    # batches
    prompts_per_iteration: int = option(8, "samples (one prompt each, drawn with replacement) per optimizer step")
    micro_batch_size: int = option(8, "samples per forward/backward pass; gradients accumulate over the iteration")
    # optimisation (shared with Flow-GRPO)
    lora: bool = _shared("lora")
    lora_r: int = _shared("lora_r")
    lora_alpha: float = _shared("lora_alpha")
    lora_target_modules: list[str] | None = _shared("lora_target_modules")  # noqa: RUF009 (a fresh field per call)
    learning_rate: float = _shared("learning_rate", 1e-4)
    adam_betas: tuple[float, float] = _shared("adam_betas")
    weight_decay: float = _shared("weight_decay")
    adam_eps: float = _shared("adam_eps")
    max_grad_norm: float | None = _shared("max_grad_norm")
    ema: bool = _shared("ema", False)
    ema_decay: float = _shared("ema_decay")
    ema_every: int = _shared("ema_every", 1)
    mixed_precision: Literal["no", "bf16", "fp16"] = _shared("mixed_precision")
    gradient_checkpointing: bool = shared_option("gradient_checkpointing", source="DRaFT", note=(
        "here every step that keeps the graph (torch.utils.checkpoint around the denoiser call: any family)"))
    cpu: bool = _shared("cpu")
    # run
    max_steps: int = _shared("max_steps")
    max_minutes: float | None = _shared("max_minutes")
    num_threads: int | None = _shared("num_threads")
    seed: int = _shared("seed")
    output_dir: str = _shared("output_dir", "runs/refl")
    save_every: int = _shared("save_every")
    resume_from: str | None = _shared("resume_from")
    overwrite_output_dir: bool = _shared("overwrite_output_dir")
    progress: bool = _shared("progress")
    eval_every: int = _shared("eval_every")
    eval_num_steps: int = _shared("eval_num_steps", 40)
    eval_images_per_prompt: int = _shared("eval_images_per_prompt")
    eval_seed: int = _shared("eval_seed")
    log_with: str | None = _shared("log_with")

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"{name}: {why}, got {getattr(self, name)!r}")

        # a bad reward entry fails here, before anything loads
        parse_reward_specs(self.rewards, extra_names=_TARGET_METRICS)
        parse_reward_specs(self.eval_rewards, where="eval_rewards")

        if self.algorithm != "refl":
            raise bad("algorithm", "ReFLConfig is the 'refl' algorithm (grpo: FlowGRPOConfig)")
        if self.mode not in ("refl", "draft"):
            raise bad("mode", "must be 'refl' or 'draft'")
        if self.num_steps < 1:
            raise bad("num_steps", "must be >= 1")
        if not 1 <= self.draft_k <= self.num_steps:
            raise bad("draft_k", f"must be in [1, num_steps={self.num_steps}]")
        if self.lv_samples < 0:
            raise bad("lv_samples", "must be >= 0")
        if self.lv_samples and (self.mode != "draft" or self.draft_k != 1):
            raise bad("lv_samples", "DRaFT-LV needs mode 'draft' and draft_k 1")
        if self.refl_steps is not None:
            steps = list(self.refl_steps)
            if len(steps) != 2 or not 0 <= steps[0] <= steps[1] < self.num_steps:
                raise bad("refl_steps", f"must be [lo, hi] with 0 <= lo <= hi < num_steps={self.num_steps}")
        if self.reward_loss not in ("linear", "relu"):
            raise bad("reward_loss", "must be 'linear' or 'relu'")
        if self.noise_level < 0:
            raise bad("noise_level", "must be >= 0")
        for name in ("kl_weight", "pretrain_weight", "reward_scale"):
            if getattr(self, name) < 0 or not math.isfinite(getattr(self, name)):
                raise bad(name, "must be a finite number >= 0")
        for name in ("prompts_per_iteration", "micro_batch_size", "pretrain_batch_size", "eval_num_steps"):
            if getattr(self, name) < 1:
                raise bad(name, "must be >= 1")

    @property
    def refl_range(self) -> tuple[int, int]:
        """``refl_steps`` resolved: ``(lo, hi)``, inclusive.

        Example:
            >>> ReFLConfig(num_steps=40).refl_range
            (30, 39)
        """
        if self.refl_steps is not None:
            return int(self.refl_steps[0]), int(self.refl_steps[1])
        return min(int(0.75 * self.num_steps), self.num_steps - 1), self.num_steps - 1


def describe_refl_options(source: str | Path | Mapping[str, Any] | None = None, **overrides: Any) -> str:
    """A markdown table of the resolved ReFL options and where each came from (``--set``, ``config`` or
    ``default``); raises ``ValueError`` naming the field for a bad one (nothing is loaded).

    Example:
        >>> print(describe_refl_options({"mode": "draft"}, draft_k=2).splitlines()[3])
        | `mode` | `'draft'` | config |
    """
    data = apply_renamed_options(ReFLConfig, flow_section(source))
    config = load_config(ReFLConfig, source, section="flow", **overrides)
    rows = ["| option | value | from |", "| --- | --- | --- |"]
    for f in dataclasses.fields(config):
        where = "--set" if f.name in overrides else "config" if f.name in data else "default"
        rows.append(f"| `{f.name}` | `{getattr(config, f.name)!r}` | {where} |")
    return "\n".join(rows)


# --------------------------------------------------------------------------------------------- math


@dataclass(frozen=True)
class GradientPlan:
    """Which sampling steps run, and which keep the graph: steps ``0 .. last_step`` run; ``grad_steps``
    keep it; ``one_step_x0``: the reward sees the x0 prediction of ``last_step`` (ReFL) rather than the
    sample after it (DRaFT)."""

    grad_steps: tuple[int, ...]
    last_step: int
    one_step_x0: bool


def gradient_plan(config: ReFLConfig, iteration: int) -> GradientPlan:
    """The steps of ``iteration``: DRaFT-K's last ``draft_k``, or ReFL's one step drawn uniformly in
    :attr:`ReFLConfig.refl_range` from ``(seed, iteration)`` (the same draw after a resume).

    Example:
        >>> gradient_plan(ReFLConfig(mode="draft", num_steps=10, draft_k=3), 0)
        GradientPlan(grad_steps=(7, 8, 9), last_step=9, one_step_x0=False)
        >>> plan = gradient_plan(ReFLConfig(mode="refl", num_steps=40), 5)
        >>> 30 <= plan.last_step <= 39 and plan.grad_steps == (plan.last_step,) and plan.one_step_x0
        True
    """
    t = config.num_steps
    if config.mode == "draft":
        return GradientPlan(tuple(range(t - config.draft_k, t)), t - 1, False)
    lo, hi = config.refl_range
    m = int(np.random.default_rng([config.seed, iteration, 3]).integers(lo, hi + 1))
    return GradientPlan((m,), m, True)


def _alphas(policy: FlowPolicy, schedule: torch.Tensor, k: int, like: torch.Tensor) -> torch.Tensor:
    """``alphas_cumprod`` at schedule point ``k`` of an epsilon-prediction (DDIM) policy, as a scalar tensor."""
    t = int(schedule[k])
    table = policy.scheduler.alphas_cumprod  # type: ignore[attr-defined]
    value = table[t] if t >= 0 else torch.tensor(float(policy.scheduler.final_alpha_cumprod))  # type: ignore[attr-defined]
    return value.to(like.device, torch.float32)


def _is_epsilon(policy: FlowPolicy) -> bool:
    return "ddim" in policy.samplers


def predict_x0(policy: FlowPolicy, model_output: torch.Tensor, latents: torch.Tensor, schedule: torch.Tensor,
               k: int) -> torch.Tensor:
    """The one-step clean-sample prediction at schedule point ``k`` (ReFL's ``pred_original_sample``):
    flow matching ``x0 = x - sigma v`` (``x = (1 - sigma) x0 + sigma noise``, ``v = noise - x0``); epsilon
    prediction (DDIM policies) ``x0 = (x - sqrt(1 - a) eps) / sqrt(a)`` with ``a = alphas_cumprod[t]``.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
        >>> predict_x0(policy, torch.ones(1, 1, 1, 1), torch.zeros(1, 1, 1, 1), policy.schedule(4), 1).item()
        -0.75
    """
    x, out = latents.float(), model_output.float()
    if _is_epsilon(policy):
        a = _alphas(policy, schedule, k, x)
        return (x - torch.sqrt(1 - a) * out) / torch.sqrt(a)
    return x - schedule[k].to(x.device, torch.float32) * out


def noise_to(policy: FlowPolicy, x0: torch.Tensor, schedule: torch.Tensor, k: int, noise: torch.Tensor) -> torch.Tensor:
    """The forward process: clean ``x0`` noised to schedule point ``k`` (flow ``(1 - s) x0 + s noise``;
    epsilon prediction ``sqrt(a) x0 + sqrt(1 - a) noise``). DRaFT-LV and the pretraining loss use it.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
        >>> noise_to(policy, torch.zeros(1, 1), policy.schedule(4), 1, torch.ones(1, 1)).item()
        0.75
    """
    x0, noise = x0.float(), noise.float()
    if _is_epsilon(policy):
        a = _alphas(policy, schedule, k, x0)
        return torch.sqrt(a) * x0 + torch.sqrt(1 - a) * noise
    s = schedule[k].to(x0.device, torch.float32)
    return (1 - s) * x0 + s * noise


def prediction_regulariser(pred: torch.Tensor, ref_pred: torch.Tensor) -> torch.Tensor:
    """``mean over non-batch dims of (pred - ref_pred)^2``, shape ``(B,)``: the KL-like pull toward the
    reference policy (for a Gaussian step with a fixed std it is the step KL up to a step-dependent
    factor; :func:`~visalign.trainers.sde.kl_to_reference` has that exact form for the SDE step).

    Example:
        >>> prediction_regulariser(torch.tensor([[1.0, 3.0]]), torch.tensor([[0.0, 1.0]])).tolist()
        [2.5]
    """
    if pred.shape != ref_pred.shape:
        raise ValueError(f"ref_pred shape {tuple(ref_pred.shape)} differs from pred shape {tuple(pred.shape)}")
    diff = pred.float() - ref_pred.float().detach()
    return diff.pow(2).flatten(1).mean(1)


def reward_loss(rewards: torch.Tensor, kind: str = "linear", target: float = 2.0, scale: float = 1.0) -> torch.Tensor:
    """Per-sample loss whose gradient raises the reward: ``linear`` ``-scale r`` (DRaFT), ``relu``
    ``scale * relu(target - r)`` (ImageReward's ReFL: target 2, scale 1e-3; rewards above the target stop
    pulling).

    Example:
        >>> reward_loss(torch.tensor([1.0, 3.0]), "relu", target=2.0, scale=0.5).tolist()
        [0.5, 0.0]
        >>> reward_loss(torch.tensor([1.0, 3.0])).tolist()
        [-1.0, -3.0]
    """
    if kind == "linear":
        return -scale * rewards
    if kind == "relu":
        return scale * F.relu(target - rewards)
    raise ValueError(f"reward_loss must be 'linear' or 'relu', got {kind!r}")


def pretraining_loss(policy: FlowPolicy, x0: torch.Tensor, cond: Any, schedule_points: torch.Tensor,
                     noise: torch.Tensor) -> torch.Tensor:
    """The denoising loss on data (ReFL's regulariser), ``(B,)``: ``x0`` noised to the per-sample schedule
    values ``schedule_points`` (sigma in ``(0, 1]`` for flow matching, integer timesteps for epsilon
    prediction) with ``noise``; the target is the velocity ``noise - x0`` (flow) or ``noise`` (epsilon);
    mean squared error over non-batch dims. No guidance.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
        >>> cond = policy.encode_prompts(["a red circle"], guidance=False)
        >>> pretraining_loss(policy, torch.zeros(1, 3, 8, 8), cond, torch.tensor([0.5]), torch.randn(1, 3, 8, 8)).shape
        torch.Size([1])
    """
    x0, noise = x0.float().to(policy.device), noise.float().to(policy.device)
    shape = (-1,) + (1,) * (x0.ndim - 1)
    if _is_epsilon(policy):
        table = policy.scheduler.alphas_cumprod.to(x0.device, torch.float32)  # type: ignore[attr-defined]
        a = table[schedule_points.long().to(x0.device)].view(shape)
        x_t, target = torch.sqrt(a) * x0 + torch.sqrt(1 - a) * noise, noise
    else:
        s = schedule_points.float().to(x0.device).view(shape)
        x_t, target = (1 - s) * x0 + s * noise, noise - x0
    pred = policy.predict(x_t, schedule_points, cond, 1.0)
    return (pred - target).pow(2).flatten(1).mean(1)


@dataclass
class SampleWithGrad:
    """What :func:`sample_with_grad` returns: ``x0`` (the clean latents the reward sees; with DRaFT-LV,
    ``lv_samples`` of them per sample, sample-major), ``regulariser`` ``(B,)`` (summed over the steps that
    keep the graph; zeros when ``kl_weight`` is 0), ``nfe`` (denoiser forward passes, x2 with CFG, reference
    passes included) and ``nfe_backward`` (passes that keep the graph)."""

    x0: torch.Tensor
    regulariser: torch.Tensor
    nfe: int
    nfe_backward: int


def sample_with_grad(policy: FlowPolicy, cond: Any, latents: torch.Tensor, schedule: torch.Tensor,
                     plan: GradientPlan, *, guidance_scale: float = 1.0, sampler: str = "auto",
                     noise_level: float = 0.0, step_noise: Sequence[torch.Tensor] | None = None,
                     regularise: bool = False, checkpoint: bool = False, lv_noise: Sequence[torch.Tensor] = (),
                     autocast: Any = None) -> SampleWithGrad:
    """Run the sampler from ``latents`` (pure noise) through ``plan.last_step`` with the graph kept only at
    ``plan.grad_steps``: every other step runs under ``torch.no_grad()`` (its output is a leaf, so no
    gradient reaches the model through it).

    ``step_noise[k]``: the noise draw of step ``k`` when ``noise_level > 0``. ``regularise``: also run the
    reference policy (no graph) at the graph steps and return :func:`prediction_regulariser` summed over
    them. ``checkpoint``: wrap each graph step's denoiser call in ``torch.utils.checkpoint``.
    ``lv_noise`` (DRaFT-LV, ``plan`` = the last step only): sample every step without the graph, then
    for each draw noise the result back to the last step (:func:`noise_to`) and redo that step with the
    graph; ``x0`` then holds ``len(lv_noise)`` results per sample.
    """
    import contextlib

    autocast = autocast or contextlib.nullcontext
    n = latents.shape[0]
    forwards = policy.forwards_per_prediction(guidance_scale)
    nfe = nfe_backward = 0
    reg = torch.zeros(n, device=latents.device)
    grad_steps = set() if lv_noise else set(plan.grad_steps)

    def predict(x: torch.Tensor, k: int) -> torch.Tensor:
        with autocast():
            if checkpoint and torch.is_grad_enabled():
                from torch.utils.checkpoint import checkpoint as ckpt

                return ckpt(policy.predict, x, schedule[k], cond, guidance_scale, use_reentrant=False)
            return policy.predict(x, schedule[k], cond, guidance_scale)

    def step(x: torch.Tensor, k: int, noise: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One step; returns (next latents or x0 prediction, the regulariser term or None)."""
        nonlocal nfe, nfe_backward
        out = predict(x, k)
        nfe += n * forwards
        term = None
        if torch.is_grad_enabled():
            nfe_backward += n
            if regularise:
                with torch.no_grad(), policy.reference():
                    ref = predict(x, k)
                nfe += n * forwards
                term = prediction_regulariser(out, ref)
        if plan.one_step_x0 and k == plan.last_step:
            return predict_x0(policy, out, x, schedule, k), term
        level = noise_level if noise is not None else 0.0
        nxt = policy.step_with_logprob(out, x, schedule, k, sampler=sampler, noise_level=level,
                                       noise=noise if level > 0 else None)[0]
        return nxt, term

    x = latents
    for k in range(plan.last_step + 1):
        noise = step_noise[k] if step_noise is not None and noise_level > 0 else None
        with torch.set_grad_enabled(k in grad_steps):
            x, term = step(x if k in grad_steps else x.detach(), k, noise)
        if term is not None:
            reg = reg + term
    if not lv_noise:
        return SampleWithGrad(x, reg, nfe, nfe_backward)
    last = plan.last_step
    outs, regs = [], []
    for draw in lv_noise:
        x_last = noise_to(policy, x.detach(), schedule, last, draw.to(x.device))
        reg = torch.zeros(n, device=latents.device)
        with torch.enable_grad():
            y, term = step(x_last, last, None)
        outs.append(y)
        regs.append(term if term is not None else reg)
    x0 = torch.stack(outs, 1).flatten(0, 1)  # sample-major: (n * draws, ...)
    return SampleWithGrad(x0, torch.stack(regs, 1).mean(1), nfe, nfe_backward)


# ------------------------------------------------------------------------------- pixels <-> latents

_VAE_POLICIES = (SD3Policy, FluxPolicy, SanaPolicy, StableDiffusionPolicy)  # SDXL subclasses SD1.5's


def _check_decodable(policy: FlowPolicy) -> None:
    if callable(getattr(policy, "decode_tensor", None)) or isinstance(policy, (ClassConditionalFlowPolicy,
                                                                               *_VAE_POLICIES)):
        return
    raise ValueError(f"{type(policy).__name__}: ReFL / DRaFT need a differentiable decode; supported: "
                     "ClassConditionalFlowPolicy, SD3, FLUX.1, Sana, SD1.5, SDXL (or a policy with decode_tensor)")


def decode_images(policy: FlowPolicy, latents: torch.Tensor) -> torch.Tensor:
    """Latents -> ``(B, 3, H, W)`` float images in ``[0, 1]``, differentiable: the tensor path of the
    policy's ``decode`` (pixel space: ``(x + 1) / 2``; VAE policies: undo scaling and shift, VAE decode,
    ``(y / 2 + 0.5).clamp(0, 1)`` as diffusers' image processor does before quantising).

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
        >>> decode_images(policy, torch.zeros(1, 3, 8, 8)).unique().tolist()
        [0.5]
    """
    hook = getattr(policy, "decode_tensor", None)
    if callable(hook):
        return hook(latents)
    if isinstance(policy, ClassConditionalFlowPolicy):
        return ((latents.float() + 1) / 2).clamp(0, 1)
    _check_decodable(policy)
    vae = policy.pipeline.vae  # type: ignore[attr-defined]
    x = latents.to(policy.device, vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        x = x + shift
    image = vae.decode(x, return_dict=False)[0]
    return (image.float() / 2 + 0.5).clamp(0, 1)


def encode_images(policy: FlowPolicy, images: torch.Tensor) -> torch.Tensor:
    """``(B, 3, H, W)`` images in ``[0, 1]`` -> the policy's latents (the inverse of :func:`decode_images`;
    VAE policies take the posterior mean), for the pretraining loss. No gradient.

    Example:
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
        ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
        >>> encode_images(policy, torch.ones(1, 3, 8, 8)).unique().tolist()
        [1.0]
    """
    with torch.no_grad():
        if isinstance(policy, ClassConditionalFlowPolicy):
            return images.float().to(policy.device) * 2 - 1
        _check_decodable(policy)
        vae = policy.pipeline.vae  # type: ignore[attr-defined]
        out = vae.encode(images.to(policy.device, vae.dtype) * 2 - 1)
        z = out.latent_dist.mean if hasattr(out, "latent_dist") else out.latent
        shift = getattr(vae.config, "shift_factor", None)
        if shift is not None:
            z = z - shift
        return (z * vae.config.scaling_factor).float()


# ---------------------------------------------------------------------------------- rewards


@runtime_checkable
class DifferentiableReward(Protocol):
    """A reward ReFL can back-propagate: ``(B, 3, H, W)`` images in ``[0, 1]`` -> ``(B,)`` scores with a
    graph to ``images``; ``references`` (a tensor like ``images`` or PIL images) and ``prompts`` as the
    reward needs them."""

    def differentiable(self, images: torch.Tensor, references: Any = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor: ...


def _image_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    if isinstance(image, torch.Tensor):
        return image.float()
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(arr).permute(2, 0, 1)


class TargetSimilarityReward(Reward):
    """Similarity of the generated image to a target: ``metric="ssim"`` (SSIM, Wang et al. 2004, the
    :func:`~visalign.metrics.image.ssim_batch` definition on ``[0, 1]`` images) or ``"pixel"``
    (``-mean squared error``). The target is ``target`` (a tensor ``(3, H, W)`` in ``[0, 1]`` or a PIL
    image), else each sample's reference; it is resized (bilinear) to the image's size.

    Example:
        >>> reward = TargetSimilarityReward("pixel", target=torch.zeros(3, 4, 4))
        >>> reward.differentiable(torch.full((2, 3, 4, 4), 0.5)).tolist()
        [-0.25, -0.25]
    """

    name = "target_similarity"

    def __init__(self, metric: str = "ssim", target: Image.Image | torch.Tensor | str | None = None) -> None:
        if metric not in ("ssim", "pixel"):
            raise ValueError(f"metric must be 'ssim' or 'pixel', got {metric!r}")
        self.metric = metric
        if isinstance(target, str):
            target = Image.open(target).convert("RGB")
        self.target = _image_tensor(target) if target is not None else None

    def _targets(self, images: torch.Tensor, references: Any) -> torch.Tensor:
        if self.target is not None:
            refs = self.target.unsqueeze(0).expand(images.shape[0], -1, -1, -1)
        elif references is None:
            raise ValueError(f"{self.metric} reward: give target= or references")
        elif isinstance(references, torch.Tensor):
            refs = references.float()
        else:
            refs = torch.stack([_image_tensor(r) for r in references])
        refs = refs.to(images.device)
        if refs.shape[-2:] != images.shape[-2:]:
            refs = F.interpolate(refs, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return refs

    def differentiable(self, images: torch.Tensor, references: Any = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor:
        x = images.float()
        refs = self._targets(x, references)
        if self.metric == "pixel":
            return -(x - refs).pow(2).flatten(1).mean(1)
        from ..metrics.image import ssim_batch

        return ssim_batch(x, refs, data_range=1.0)

    def score(self, samples: list[Sample]) -> RewardOutput:
        todo = [i for i, s in enumerate(samples) if s.generated_image is not None
                and (self.target is not None or s.target_image is not None)]
        scores: list[float | None] = [None] * len(samples)
        if todo:
            images = torch.stack([_image_tensor(samples[i].generated_image) for i in todo])
            refs = None if self.target is not None else [samples[i].target_image for i in todo]
            with torch.no_grad():
                values = self.differentiable(images, refs).tolist()
            for i, v in zip(todo, values, strict=True):
                scores[i] = float(v)
        return RewardOutput(scores, [{} for _ in samples])


class WeightedDifferentiableReward(Reward):
    """``sum_i w_i r_i``: of the ``differentiable`` scores in training, of the plain scores in eval (a
    sample any part scores None is None). Weights are used as given (no normalisation: a gradient needs
    no group statistics).

    Example:
        >>> a, b = TargetSimilarityReward("pixel", torch.zeros(3, 2, 2)), TargetSimilarityReward("pixel", torch.ones(3, 2, 2))
        >>> WeightedDifferentiableReward({"a": a, "b": b}, {"a": 1.0, "b": 0.5}).differentiable(torch.zeros(1, 3, 2, 2)).tolist()
        [-0.5]
    """

    name = "weighted"

    def __init__(self, rewards: Mapping[str, Any], weights: Mapping[str, float]) -> None:
        self.rewards, self.weights = dict(rewards), {k: float(weights[k]) for k in rewards}

    def differentiable(self, images: torch.Tensor, references: Any = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor:
        total = None
        for name, reward in self.rewards.items():
            value = self.weights[name] * reward.differentiable(images, references=references, prompts=prompts).float()
            total = value if total is None else total + value.to(total.device)
        assert total is not None
        return total

    def score(self, samples: list[Sample]) -> RewardOutput:
        outs = {name: reward(samples) for name, reward in self.rewards.items()}
        scores: list[float | None] = []
        for i in range(len(samples)):
            parts = [outs[n].scores[i] for n in self.rewards]
            scores.append(None if any(p is None for p in parts)
                          else sum(self.weights[n] * float(p) for n, p in zip(self.rewards, parts, strict=True)))
        details = [{n: outs[n].details[i] for n in self.rewards} for i in range(len(samples))]
        return RewardOutput(scores, details)

    def close(self) -> None:
        for reward in self.rewards.values():
            reward.close()


_TARGET_METRICS = ("pixel", "ssim")


def build_differentiable_reward(spec: Any) -> WeightedDifferentiableReward | Any:
    """Differentiable reward(s) from a config's ``rewards`` (a list of names or ``{name, weight, options}``;
    the older ``{name: weight | {weight, **options}}`` mapping is read too:
    :func:`visalign.rewards.specs.parse_reward_specs`); names: ``pixel`` / ``ssim``
    (:class:`TargetSimilarityReward`; option ``target``: an image path), any name of
    :data:`visalign.rewards.REWARDS` whose reward has ``differentiable`` (``model``, ``clip``,
    ``shape_colour``), or ``"package.module:Class"``. Raises ``ValueError`` naming the reward that is not
    differentiable.

    Example:
        >>> type(build_differentiable_reward(["shape_colour"])).__name__
        'ShapeColourReward'
        >>> build_differentiable_reward(["ocr"])
        Traceback (most recent call last):
            ...
        ValueError: rewards.ocr: OcrReward has no differentiable() method; differentiable rewards: model, clip, shape_colour, pixel, ssim
    """
    from ..rewards.specs import reward_type

    specs = parse_reward_specs(spec, extra_names=_TARGET_METRICS)
    if not specs:
        raise ValueError("rewards: give at least one differentiable reward (model, clip, shape_colour, pixel, ssim)")
    rewards, weights = {}, {}
    for s in specs:
        opts = dict(s.options)
        if s.name in _TARGET_METRICS:
            cls: Any = TargetSimilarityReward
            opts = {"metric": s.name, **opts}
        else:
            cls = reward_type(s.name)
        if not callable(getattr(cls, "differentiable", None)):
            raise ValueError(f"rewards.{s.name}: {cls.__name__} has no differentiable() method; differentiable "
                             "rewards: model, clip, shape_colour, pixel, ssim")
        rewards[s.name] = cls(**opts)
        weights[s.name] = s.weight
    if len(rewards) == 1 and next(iter(weights.values())) == 1.0:
        return next(iter(rewards.values()))
    return WeightedDifferentiableReward(rewards, weights)


# ------------------------------------------------------------------------------------------ trainer


def _runtime_config(c: ReFLConfig) -> FlowGRPOConfig:
    """The Flow-GRPO options that drive the shared runtime (model set-up, optimiser, EMA, eval grid,
    checkpoints). ``beta > 0`` only keeps a frozen reference for a full fine-tune when the KL term needs it."""
    shared = {f.name: getattr(c, f.name) for f in dataclasses.fields(c) if f.name in _GRPO_FIELDS
              and f.name not in ("rewards", "prompts_per_iteration", "gradient_checkpointing")}
    shared.update(beta=1.0 if c.kl_weight > 0 else 0.0, noise_level=c.noise_level, group_size=1,
                  prompts_per_iteration=1, batch_size=c.micro_batch_size, gradient_checkpointing=False)
    return FlowGRPOConfig.from_options(shared)


class ReFLTrainer:
    """ReFL / DRaFT on a :class:`~visalign.trainers.flow_policies.FlowPolicy` (module docstring).

    Args:
        config: the options.
        policy: the model; the runtime adds the LoRA adapter (or sets up a full fine-tune).
        reward: a :class:`DifferentiableReward` (trained on).
        prompts: training prompts (``prompts_per_iteration`` drawn with replacement each iteration).
        eval_prompts: prompts of the fixed-seed eval grid (default: the first four training prompts).
        eval_reward: a :class:`~visalign.rewards.Reward` for the eval grid and logs (default: ``reward``).
        reference: the image every sample is compared with (rewards that take a reference).
        pretrain_rows: ``(image, prompt)`` pairs for the denoising loss (``pretrain_weight``).
    """

    def __init__(self, config: ReFLConfig, policy: FlowPolicy, reward: Any, prompts: Sequence[str],
                 eval_prompts: Sequence[str] | None = None, eval_reward: Reward | None = None,
                 reference: Image.Image | torch.Tensor | None = None,
                 pretrain_rows: Sequence[tuple[Image.Image, str]] | None = None) -> None:
        if not callable(getattr(reward, "differentiable", None)):
            raise ValueError(f"rewards: {type(reward).__name__} has no differentiable() method")
        _check_decodable(policy)
        if eval_reward is None and not isinstance(reward, Reward):
            raise ValueError("eval_rewards: the training reward is not a visalign Reward; give eval_reward")
        self.config, self.reward = config, reward
        self.runtime = FlowGRPOTrainer(_runtime_config(config), policy, eval_reward or reward, prompts, eval_prompts)
        self.policy, self.prompts = policy, self.runtime.prompts
        self.reference = _image_tensor(reference) if reference is not None else None
        self.pretrain_rows = list(pretrain_rows or [])
        if config.pretrain_data and not self.pretrain_rows:
            raise ValueError("pretrain_data: no rows given (train_refl_from_config reads the file)")
        self.schedule = policy.schedule(config.num_steps)
        self.sampler = policy.resolve_sampler(config.sampler)
        self.history = self.runtime.history

    @property
    def iteration(self) -> int:
        """Iterations completed (the runtime's counter: checkpoints and eval grids are named by it)."""
        return self.runtime.iteration

    # ----------------------------------------------------------------------------- the loop
    def train(self) -> list[dict[str, Any]]:
        """Run ``max_steps`` iterations (from the resumed one); returns the per-iteration metrics.

        The loop is the runtime's (:meth:`FlowGRPOTrainer.train`: eval grid before and every ``eval_every``,
        checkpoints, ``metrics.jsonl``, ``max_minutes``, final weights) with ReFL's iteration in place of
        GRPO's; ``output_dir/config.yaml`` is this ReFL config (what ``resume_from`` runs are built from)."""
        self.runtime.train_iteration = self.train_iteration  # type: ignore[method-assign]
        try:
            return self.runtime.train()
        finally:
            if self.runtime.accelerator.is_main_process:
                save_config(self.config, self.runtime.output_dir / "config.yaml")

    def train_iteration(self) -> dict[str, Any]:
        """One optimizer step: sample with the plan's graph steps, decode, score, back-propagate, step."""
        c, rt = self.config, self.runtime
        it = rt.iteration
        plan = gradient_plan(c, it)
        rng = np.random.default_rng([c.seed, it])
        picks = rng.choice(len(self.prompts), c.prompts_per_iteration, replace=True)
        t0 = time.perf_counter()
        rewards, losses, regs, pre = [], [], [], []
        nfe = nfe_backward = 0
        for start in range(0, c.prompts_per_iteration, c.micro_batch_size):
            idx = list(range(start, min(start + c.micro_batch_size, c.prompts_per_iteration)))
            prompts = [self.prompts[int(picks[i])] for i in idx]
            out = self._micro_batch(prompts, idx, plan, it)
            weight = len(idx) / c.prompts_per_iteration
            rt.accelerator.backward(out["loss"] * weight)
            rewards.append(out["rewards"])
            losses.append(float(out["loss"].detach()) * weight)
            regs.append(out["regulariser"])
            nfe += out["nfe"]
            nfe_backward += out["nfe_backward"]
        if self.pretrain_rows and c.pretrain_weight > 0:
            loss = self._pretraining_loss(it)
            rt.accelerator.backward(c.pretrain_weight * loss)
            pre.append(float(loss))
        t1 = time.perf_counter()
        grad_norm = float(torch.norm(torch.stack([p.grad.detach().float().norm() for p in rt.params
                                                  if p.grad is not None] or [torch.zeros(())])))
        rt._step_optimizer()
        rt.iteration += 1
        r = torch.cat(rewards)
        reg = torch.cat(regs)
        return {"iteration": rt.iteration, "mode": c.mode, "grad_steps": list(plan.grad_steps),
                "reward/mean": float(r.mean()), "reward/std": float(r.std()) if r.numel() > 1 else 0.0,
                "loss": sum(losses), "regulariser": float(reg.mean()),
                "pretrain_loss": pre[0] if pre else math.nan, "grad_norm": grad_norm,
                "nfe/train": nfe, "nfe/train_backward": nfe_backward, "lr": rt.optimizer.param_groups[0]["lr"],
                "time/train": t1 - t0}

    def _micro_batch(self, prompts: list[str], slots: list[int], plan: GradientPlan, it: int) -> dict[str, Any]:
        """Loss of one micro-batch (graph attached) and its logs."""
        c, policy = self.config, self.policy
        shape, device = policy.latent_shape, policy.device
        cond = policy.encode_prompts(prompts, guidance=c.guidance_scale != 1.0)
        x = torch.stack([_noise(shape, c.seed, 0, it, s, 0, 0) for s in slots]).to(device)
        step_noise = None
        if c.noise_level > 0:
            step_noise = [torch.stack([_noise(shape, c.seed, 0, it, s, k + 1, 0) for s in slots]).to(device)
                          for k in range(c.num_steps)]
        lv = [torch.stack([_noise(shape, c.seed, 1, it, s, j, 0) for s in slots]) for j in range(c.lv_samples)]
        result = sample_with_grad(policy, cond, x, self.schedule, plan, guidance_scale=c.guidance_scale,
                                  sampler=self.sampler, noise_level=c.noise_level, step_noise=step_noise,
                                  regularise=c.kl_weight > 0, checkpoint=c.gradient_checkpointing, lv_noise=lv,
                                  autocast=self.runtime.accelerator.autocast)
        repeat = max(1, c.lv_samples)
        images = decode_images(policy, result.x0)
        score_prompts = [p for p in prompts for _ in range(repeat)]
        refs = None
        if self.reference is not None:
            refs = self.reference.unsqueeze(0).expand(images.shape[0], -1, -1, -1).to(images.device)
        r = self.reward.differentiable(images, references=refs, prompts=score_prompts).float().to(device)
        r = r.view(len(prompts), repeat).mean(1)
        per_sample = reward_loss(r, c.reward_loss, c.reward_target, c.reward_scale) + c.kl_weight * result.regulariser
        return {"loss": per_sample.mean(), "rewards": r.detach().cpu(), "regulariser": result.regulariser.detach().cpu(),
                "nfe": result.nfe, "nfe_backward": result.nfe_backward}

    def _pretraining_loss(self, it: int) -> torch.Tensor:
        """ReFL's denoising loss on ``pretrain_batch_size`` data rows drawn from ``(seed, iteration)``."""
        c, policy = self.config, self.policy
        rng = np.random.default_rng([c.seed, it, 11])
        rows = [self.pretrain_rows[int(i)] for i in rng.choice(len(self.pretrain_rows), c.pretrain_batch_size)]
        images = torch.stack([_image_tensor(im) for im, _ in rows])
        x0 = encode_images(policy, images)
        cond = policy.encode_prompts([p for _, p in rows], guidance=False)
        noise = torch.from_numpy(rng.standard_normal(x0.shape).astype(np.float32))
        if _is_epsilon(policy):
            points = torch.from_numpy(rng.integers(0, policy.scheduler.config.num_train_timesteps,  # type: ignore[attr-defined]
                                                   len(rows)))
        else:
            points = torch.from_numpy(rng.uniform(1e-3, 1.0, len(rows)).astype(np.float32))
        with self.runtime.accelerator.autocast():
            return pretraining_loss(policy, x0, cond, points, noise).mean()


# ------------------------------------------------------------------------------------- from config


def _read_pretrain_rows(path: str | Path) -> list[tuple[Image.Image, str]]:
    """``{image, prompt}`` JSONL rows; image paths relative to the file. Errors name ``file:line``."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows.append((Image.open(path.parent / row["image"]).convert("RGB"), str(row["prompt"])))
        except (ValueError, KeyError, OSError) as exc:
            raise ValueError(f"pretrain_data {path}:{n}: needs image (a readable path) and prompt: {exc}") from None
    if not rows:
        raise ValueError(f"pretrain_data {path}: no rows")
    return rows


def build_refl_trainer(source: str | Path | Mapping[str, Any], **overrides: Any) -> ReFLTrainer:
    """Policy (``pretrained``), rewards, prompts, reference and data from a YAML file or mapping (options
    under a ``flow:`` key or at the top level): the trainer, not yet trained. Every option is checked
    (errors name the field) before the model loads."""
    config = load_config(ReFLConfig, source, section="flow", **overrides)  # file paths relative to the file
    if not config.pretrained:
        raise ValueError("pretrained: train_refl_from_config needs a local model directory")
    prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir, resume_from=config.resume_from,
                       check_only=True)  # refused before the model loads; the runtime clears it
    if not config.rewards:
        raise ValueError("rewards: give at least one differentiable reward (model, clip, shape_colour, pixel, ssim)")
    prompts = _read_prompts(config.prompts, config.prompts_file)
    if not prompts:
        raise ValueError("prompts: no training prompts (prompts or prompts_file)")
    reference = Image.open(config.reference_image).convert("RGB") if config.reference_image else None
    rows = _read_pretrain_rows(config.pretrain_data) if config.pretrain_data else None
    options = flow_policy_class(config.pretrained).config_options
    policy = load_flow_policy(config.pretrained, **{n: getattr(config, n) for n in options if hasattr(config, n)})
    reward = build_differentiable_reward(config.rewards)
    eval_reward = build_reward(config.eval_rewards) if config.eval_rewards else None
    eval_prompts = _read_prompts(config.eval_prompts, config.eval_prompts_file)
    return ReFLTrainer(config, policy, reward, prompts, eval_prompts or None, eval_reward, reference, rows)


def train_refl_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> ReFLTrainer:
    """:func:`build_refl_trainer`, then train; returns the trainer (``trainer.history``: per-iteration
    metrics). ``visalign train flow CONFIG --algorithm refl`` calls it."""
    trainer = build_refl_trainer(source, **overrides)
    try:
        trainer.train()
    finally:
        for reward in {id(r): r for r in (trainer.reward, trainer.runtime.reward)}.values():
            if callable(getattr(reward, "close", None)):
                reward.close()
    return trainer
