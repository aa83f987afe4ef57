"""Denoising policies for the Flow-GRPO trainer: one interface, one class per model family.

The trainer (:mod:`visalign.trainers.flow`) never touches a pipeline: it asks a :class:`FlowPolicy` for

- ``encode_prompts(prompts) -> Conditioning`` (the conditional and, for CFG, the unconditional input),
- ``schedule(num_steps)``: the ``num_steps + 1`` points of the sampling schedule (sigmas from 1 down
  to 0 for flow matching, DDIM timesteps for epsilon prediction),
- ``predict(latents, t, cond, guidance_scale)``: the model output at schedule point ``t`` (CFG inside,
  see below): the velocity for flow matching (``velocity`` is the same method), epsilon for DDIM,
- ``step_with_logprob(model_output, sample, schedule, k, noise_level=..., sampler=...)``: the stochastic
  transition from ``schedule[k]`` to ``schedule[k + 1]`` with its log-prob; ``sampler`` is one of the
  policy's ``samplers``: ``"sde"`` (Flow-GRPO, the default) or ``"cps"`` (coefficients-preserving) for
  flow matching, ``"ddim"`` (DDPO) for epsilon prediction. Rollout, training and the KL reference mean
  all go through this one method (:mod:`visalign.trainers.sde` holds the math),
- ``decode(latents) -> list[PIL.Image]``, ``latent_shape``,
- ``trainable_parameters()``, ``add_lora(...)`` / ``set_full_finetune()``, and ``reference()``, a
  context in which ``velocity`` is the frozen reference policy (LoRA adapter disabled, or a frozen
  copy for a full fine-tune).

Rectified-flow convention, shared by the flow policies here and by ``scripts/make_tiny_flow_model.py``:
``x_t = (1 - sigma) * x0 + sigma * noise``; the model predicts the velocity ``v = noise - x0``; its
timestep input is ``sigma * 1000`` (``num_train_timesteps``); sampling runs from sigma 1 to 0 and the
Euler step is ``x <- x + (sigma' - sigma) * v``.

CFG: ``v = v_uncond + g * (v_cond - v_uncond)`` with the unconditional branch computed under
``torch.no_grad()`` (detached, as Flow-GRPO does: only the conditional branch is trained). The two
branches are two separate forward passes (2 NFE per sample) in rollouts *and* training, so that a
stored rollout is re-evaluated with bit-identical inputs and the first importance ratio is exactly 1.

Implementations:

- :class:`SD3Policy`: a diffusers ``StableDiffusion3Pipeline`` (SD3 / SD3.5; its ``encode_prompt`` and
  VAE, the same code path as ``from_pretrained`` on a real checkpoint).
- :class:`FluxPolicy`: a diffusers ``FluxPipeline`` (FLUX.1-dev / -schnell): packed 2x2 latents, sigma as
  the timestep input, no CFG (a guidance-distilled transformer takes ``guidance_scale`` as its guidance
  embedding, one forward pass), the pipeline's resolution-dependent shift ``mu``.
- :class:`SanaPolicy`: a diffusers ``SanaPipeline`` (Gemma-2 prompt embeddings with attention masks, DC-AE
  latents, ``sigma * 1000`` timesteps, two-pass CFG).
- :class:`ClassConditionalFlowPolicy`: a class-conditional diffusers ``UNet2DModel`` in pixel space
  (images in ``[-1, 1]``); prompts map to class ids through a caption list (``classes.json``).
- :class:`StableDiffusionPolicy`: a diffusers ``StableDiffusionPipeline`` (SD1.x/2.x base, epsilon
  prediction), sampled with DDIM; the UNet sees the integer DDIM timesteps.

:func:`load_flow_policy` picks the class from a directory; :func:`tiny_sd3_pipeline`,
:func:`tiny_flux_pipeline`, :func:`tiny_sana_pipeline` and :func:`tiny_sd15_pipeline` build random pipelines from configs, offline (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from .sde import cps_step_with_logprob, ddim_step_with_logprob, sde_step_with_logprob

__all__ = [
    "ClassConditionalFlowPolicy",
    "Conditioning",
    "FlowPolicy",
    "FluxPolicy",
    "SD3Policy",
    "StableDiffusionPolicy",
    "load_flow_policy",
    "tiny_flux_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd15_pipeline",
]

NUM_TRAIN_TIMESTEPS = 1000
_FLOW_STEPS = {"sde": sde_step_with_logprob, "cps": cps_step_with_logprob}


@dataclass
class Conditioning:
    """Model inputs for a batch of prompts: ``cond`` and (for CFG) ``uncond`` tensors, batch first.

    Example:
        >>> c = Conditioning({"labels": torch.tensor([3, 5])}, {"labels": torch.tensor([9, 9])})
        >>> c.select(torch.tensor([1, 1, 0])).cond["labels"].tolist()
        [5, 5, 3]
    """

    cond: dict[str, torch.Tensor]
    uncond: dict[str, torch.Tensor] | None = None
    prompts: list[str] = field(default_factory=list)

    def select(self, index: torch.Tensor | Sequence[int]) -> Conditioning:
        """Rows ``index`` of every tensor (one row per sample, e.g. each sample's prompt)."""
        idx = torch.as_tensor(index, dtype=torch.long)

        def pick(d: dict[str, torch.Tensor] | None) -> dict[str, torch.Tensor] | None:
            return None if d is None else {k: v[idx.to(v.device)] for k, v in d.items()}

        prompts = [self.prompts[i] for i in idx.tolist()] if self.prompts else []
        return Conditioning(pick(self.cond) or {}, pick(self.uncond), prompts)


class FlowPolicy(ABC):
    """A text-to-image denoising policy seen by the trainer (module docstring); rectified flow by default.

    Subclasses set ``self.model`` (the denoiser that is trained), implement :meth:`_forward`,
    :meth:`encode_prompts`, :meth:`decode`, :meth:`sigmas` and :attr:`latent_shape`, and may override
    :attr:`default_lora_targets`. A policy with another parameterisation (:class:`StableDiffusionPolicy`)
    overrides :meth:`schedule`, :meth:`_timestep`, :meth:`step_with_logprob` and :attr:`samplers` instead
    of implementing :meth:`sigmas`.
    """

    samplers: ClassVar[tuple[str, ...]] = ("sde", "cps")
    """Transitions :meth:`step_with_logprob` implements; the first is the default (``sampler="auto"``)."""

    model: torch.nn.Module
    lora: bool = False
    _reference_model: torch.nn.Module | None = None
    _in_reference: bool = False

    # ---------------------------------------------------------------- what subclasses provide
    @abstractmethod
    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """One forward pass of ``model`` (the velocity), inputs already on the right device/dtype."""

    @abstractmethod
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        """Conditioning for ``prompts`` (one row per prompt); ``uncond`` too when ``guidance``."""

    @abstractmethod
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """Final latents -> RGB images."""

    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The ``num_steps + 1`` sigmas of the sampling schedule, 1 down to 0 (float32, CPU).

        Flow policies implement it (:meth:`schedule` returns it); other policies override :meth:`schedule`.
        """
        raise NotImplementedError(f"{type(self).__name__} has no flow-matching sigmas; use schedule()")

    @property
    @abstractmethod
    def latent_shape(self) -> tuple[int, ...]:
        """Shape of one sample's latents (no batch dimension)."""

    @property
    def default_lora_targets(self) -> list[str]:
        """peft ``target_modules`` used when the config gives none."""
        return ["to_q", "to_k", "to_v", "to_out.0"]

    # ---------------------------------------------------------------- shared machinery
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """dtype of the model's frozen weights (inputs are cast to it)."""
        return next(p for p in self.model.parameters() if not p.requires_grad or not self.lora).dtype

    def schedule(self, num_steps: int) -> torch.Tensor:
        """The ``num_steps + 1`` points of the sampling schedule: step ``k`` goes from ``schedule[k]`` to
        ``schedule[k + 1]``; :meth:`predict` takes ``schedule[k]``. Flow policies: :meth:`sigmas`."""
        return self.sigmas(num_steps)

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """The model's ``(batch,)`` timestep input at schedule point ``t``: ``sigma * 1000`` for flow policies."""
        sigma = torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch)
        return (sigma * NUM_TRAIN_TIMESTEPS).to(self.device)

    def resolve_sampler(self, sampler: str) -> str:
        """``sampler`` checked against :attr:`samplers`; ``"auto"`` is the policy's default (the first).

        Example:
            >>> from diffusers import UNet2DModel
            >>> unet = UNet2DModel(sample_size=8, block_out_channels=(8,), layers_per_block=1, norm_num_groups=4,
            ...                    down_block_types=("DownBlock2D",), up_block_types=("UpBlock2D",), num_class_embeds=1)
            >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle"])
            >>> policy.resolve_sampler("auto"), policy.resolve_sampler("cps")
            ('sde', 'cps')
        """
        if sampler == "auto":
            return self.samplers[0]
        if sampler not in self.samplers:
            raise ValueError(f"{type(self).__name__} supports the samplers {list(self.samplers)} (or 'auto'), "
                             f"got {sampler!r}")
        return sampler

    def step_with_logprob(self, model_output: torch.Tensor, sample: torch.Tensor, schedule: torch.Tensor,
                          step_index: int | torch.Tensor, *, noise_level: float, sampler: str = "auto",
                          prev_sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, sigma_mode: str = "flow_grpo",
                          noise_scale: float = 1.0,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One stochastic step from ``schedule[k]`` to ``schedule[k + 1]`` with its log-prob:
        ``(prev_sample, log_prob, mean, std)`` as in :mod:`visalign.trainers.sde`.

        Flow policies: ``sampler="sde"`` is :func:`~visalign.trainers.sde.sde_step_with_logprob`
        (``noise_level`` = Flow-GRPO's ``a >= 0``, or with ``sigma_mode="constant"`` DanceGRPO's eta;
        ``noise_scale`` scales only the noise draw, BranchGRPO's split noise), ``"cps"`` is
        :func:`~visalign.trainers.sde.cps_step_with_logprob` (``std = sigma' * sin(a * pi / 2)``,
        ``a`` in ``[0, 1]``; Flow-GRPO's log-prob form). ``noise_level`` 0 is the Euler (ODE) step.
        """
        sampler = self.resolve_sampler(sampler)
        if sampler == "sde":
            return sde_step_with_logprob(model_output, sample, schedule, step_index, noise_level=noise_level,
                                         prev_sample=prev_sample, noise=noise, generator=generator,
                                         sigma_mode=sigma_mode, noise_scale=noise_scale)  # type: ignore[arg-type]
        if sigma_mode != "flow_grpo" or noise_scale != 1.0:
            raise ValueError(f"sigma_mode / noise_scale apply to the sde sampler, not {sampler!r}")
        return _FLOW_STEPS[sampler](model_output, sample, schedule, step_index, noise_level=noise_level,
                                    prev_sample=prev_sample, noise=noise, generator=generator)

    def predict(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float = 1.0) -> torch.Tensor:
        """The (guided) model output at ``latents`` and schedule point ``t``, in float32: the velocity for
        flow policies (``t`` is sigma; the model sees ``timestep = sigma * 1000``), epsilon for DDIM ones.

        ``t``: a scalar or a ``(B,)`` tensor. With ``guidance_scale > 1`` the unconditional branch runs as
        its own forward pass under ``torch.no_grad()``: ``v = v_u + g * (v_c - v_u)``.
        """
        b = latents.shape[0]
        timestep = self._timestep(t, b)
        model = self._active_model()
        x = latents.to(self.device, self.dtype)
        v = self._forward(model, x, timestep, cond.cond).float()
        if guidance_scale == 1.0:
            return v
        if cond.uncond is None:
            raise ValueError("guidance_scale != 1 needs an unconditional input: encode_prompts(..., guidance=True)")
        with torch.no_grad():
            v_u = self._forward(model, x, timestep, cond.uncond).float()
        return v_u + guidance_scale * (v - v_u)

    velocity = predict  # the flow policies' name for their prediction

    def forwards_per_prediction(self, guidance_scale: float) -> int:
        """Model forwards behind one prediction: 2 with classifier-free guidance, else 1 (NFE counts)."""
        return 2 if guidance_scale != 1.0 else 1

    def _active_model(self) -> torch.nn.Module:
        if self._in_reference and self._reference_model is not None:
            return self._reference_model
        return self.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context :meth:`predict` is the reference policy: the LoRA adapter disabled,
        or (full fine-tune) the frozen copy made by :meth:`set_full_finetune` with ``keep_reference``."""
        if self.lora:
            with self.model.disable_adapter():  # peft.PeftModel
                yield
            return
        if self._reference_model is None:
            raise RuntimeError("no reference policy: full fine-tune without keep_reference=True")
        self._in_reference = True
        try:
            yield
        finally:
            self._in_reference = False

    def add_lora(self, rank: int = 32, alpha: float = 64.0, target_modules: Sequence[str] | None = None,
                 dropout: float = 0.0) -> None:
        """Freeze the model and wrap it in a peft ``PeftModel`` with a LoRA adapter (fp32 weights)."""
        from peft import LoraConfig, get_peft_model

        self.model.requires_grad_(False)
        config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, init_lora_weights="gaussian",
                            target_modules=list(target_modules or self.default_lora_targets))
        self.model = get_peft_model(self.model, config)
        for p in self.model.parameters():
            if p.requires_grad:
                p.data = p.data.float()
        self.lora = True

    def set_full_finetune(self, keep_reference: bool = False) -> None:
        """Train every weight of the model; ``keep_reference`` keeps a frozen copy for the KL term."""
        if keep_reference:
            self._reference_model = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.model.requires_grad_(True)
        self.lora = False

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """The parameters the optimizer updates (LoRA weights, or all of the model's)."""
        return [p for p in self.model.parameters() if p.requires_grad]

    def named_trainable_parameters(self) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in self.model.named_parameters() if p.requires_grad}

    def enable_gradient_checkpointing(self) -> bool:
        """Turn on the model's gradient checkpointing where diffusers supports it; returns whether it did."""
        base = self.model.get_base_model() if self.lora else self.model
        if getattr(base, "_supports_gradient_checkpointing", False):
            base.enable_gradient_checkpointing()
            return True
        return False

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> FlowPolicy:
        """Move every module (model, reference copy, encoders, VAE) to ``device`` (``dtype`` for frozen
        weights; trainable weights stay float32)."""
        for module in self._modules():
            module.to(device)
            if dtype is not None:
                for p in module.parameters():
                    if not p.requires_grad:
                        p.data = p.data.to(dtype)
        return self

    def _modules(self) -> list[torch.nn.Module]:
        return [m for m in (self.model, self._reference_model) if m is not None]


# --------------------------------------------------------------------------------------------- SD3


def _vae_decode(pipeline: Any, latents: torch.Tensor, device: torch.device) -> list[Image.Image]:
    """Latents -> PIL images through the pipeline's VAE: undo its scaling (and shift, where it has one:
    SD3, FLUX) and post-process as the pipeline does."""
    vae = pipeline.vae
    x = latents.to(device, vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        x = x + shift
    image = vae.decode(x, return_dict=False)[0]
    return pipeline.image_processor.postprocess(image.float(), output_type="pil")


class SD3Policy(FlowPolicy):
    """A diffusers ``StableDiffusion3Pipeline`` as a policy: the transformer is trained.

    Prompts go through the pipeline's own ``encode_prompt`` (CLIP-L, CLIP-G, T5), negative prompt
    ``""`` for CFG; sigmas come from its ``FlowMatchEulerDiscreteScheduler.set_timesteps`` (shift 3
    for SD3); ``decode`` un-scales and un-shifts the latents and runs the VAE, as the pipeline does.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = SD3Policy(tiny_sd3_pipeline(), resolution=16, max_sequence_length=8)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=4.5)
        >>> tuple(v.shape), policy.latent_shape
        ((1, 4, 8, 8), (4, 8, 8))
    """

    def __init__(self, pipeline: Any, resolution: int = 512, max_sequence_length: int = 256,
                 negative_prompt: str = "") -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2, pipeline.text_encoder_3):
            if module is not None:
                module.requires_grad_(False).eval()
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> SD3Policy:
        """Load ``StableDiffusion3Pipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import StableDiffusion3Pipeline

        pipe = StableDiffusion3Pipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=inputs["prompt_embeds"],
                     pooled_projections=inputs["pooled_projections"], return_dict=False)[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        embeds, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
            prompt=prompts, prompt_2=None, prompt_3=None, device=self.device, do_classifier_free_guidance=guidance,
            negative_prompt=self.negative_prompt if guidance else None, max_sequence_length=self.max_sequence_length)
        dtype = self.dtype
        cond = {"prompt_embeds": embeds.to(dtype), "pooled_projections": pooled.to(dtype)}
        uncond = {"prompt_embeds": neg.to(dtype), "pooled_projections": neg_pooled.to(dtype)} if guidance else None
        return Conditioning(cond, uncond, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return _vae_decode(self.pipeline, latents, self.device)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        scheduler = copy.deepcopy(self.pipeline.scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        return scheduler.sigmas.detach().float().cpu()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.transformer.config.in_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        extra = [m for m in (p.vae, p.text_encoder, p.text_encoder_2, p.text_encoder_3) if m is not None]
        return super()._modules() + extra


# --------------------------------------------------------------------------------------------- FLUX


class FluxPolicy(FlowPolicy):
    """A diffusers ``FluxPipeline`` (FLUX.1-dev / -schnell) as a policy: the transformer is trained.

    Prompts go through the pipeline's own ``encode_prompt`` (pooled CLIP + T5; its text ids are all
    zeros and are rebuilt per forward pass). The trainer sees unpacked latents ``(C, h, w)`` (16 VAE
    channels for real FLUX); :meth:`predict` packs them into 2x2 patches (``_pack_latents``, with
    ``_prepare_latent_image_ids``) for the transformer and unpacks the velocity (``_unpack_latents``).
    The transformer's timestep input is sigma itself (it scales by 1000 inside), as in the pipeline's
    ``timestep / 1000``.

    Guidance: FLUX has no classifier-free guidance. A guidance-distilled transformer
    (``guidance_embeds=True``, FLUX.1-dev) gets ``guidance = guidance_scale`` as its guidance-embedding
    input in one forward pass (1 NFE per sample); a transformer without guidance embeddings
    (FLUX.1-schnell) takes only ``guidance_scale == 1``. ``encode_prompts`` never returns an ``uncond``.

    Sigmas: ``linspace(1, 1 / num_steps, num_steps)`` through the pipeline's
    ``FlowMatchEulerDiscreteScheduler.set_timesteps(sigmas=..., mu=...)`` with the resolution-dependent
    shift ``mu = calculate_shift(image_seq_len, ...)`` from the scheduler config, exactly as the pipeline
    does, plus the final 0. ``decode`` un-scales and un-shifts the latents and runs the VAE.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = FluxPolicy(tiny_flux_pipeline(), resolution=16)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=3.5)
        >>> tuple(v.shape), cond.uncond is None, policy.guidance_embeds, len(policy.sigmas(4))
        ((1, 16, 8, 8), True, True, 5)
    """

    def __init__(self, pipeline: Any, resolution: int = 512, max_sequence_length: int | None = None) -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder, pipeline.text_encoder_2):
            if module is not None:
                module.requires_grad_(False).eval()
        multiple = pipeline.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"FLUX needs a resolution divisible by {multiple} (VAE x 2x2 packing), got {resolution}")
        self.resolution = resolution
        if max_sequence_length is None:  # the pipeline's 512, or less when the T5 tokenizer is shorter
            max_sequence_length = min(512, int(getattr(pipeline.tokenizer_2, "model_max_length", 512)))
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = bool(pipeline.transformer.config.guidance_embeds)

    def forwards_per_prediction(self, guidance_scale: float) -> int:
        """FLUX.1-dev embeds the guidance scale: one forward whatever the scale."""
        return 1

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> FluxPolicy:
        """Load ``FluxPipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import FluxPipeline

        pipe = FluxPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """FLUX's timestep input is sigma (the pipeline passes ``t / 1000``; the transformer scales by 1000)."""
        return torch.as_tensor(t, dtype=torch.float32).reshape(-1).expand(batch).to(self.device)

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor], guidance: torch.Tensor | None = None) -> torch.Tensor:
        from diffusers import FluxPipeline

        b, c, h, w = latents.shape
        packed = FluxPipeline._pack_latents(latents, b, c, h, w)
        img_ids = FluxPipeline._prepare_latent_image_ids(b, h // 2, w // 2, latents.device, latents.dtype)
        embeds = inputs["prompt_embeds"]
        txt_ids = torch.zeros(embeds.shape[1], 3, device=latents.device, dtype=latents.dtype)
        out = model(hidden_states=packed, timestep=timestep, guidance=guidance,
                    pooled_projections=inputs["pooled_projections"], encoder_hidden_states=embeds,
                    txt_ids=txt_ids, img_ids=img_ids, return_dict=False)[0]
        return FluxPipeline._unpack_latents(out, h * self.pipeline.vae_scale_factor,
                                            w * self.pipeline.vae_scale_factor, self.pipeline.vae_scale_factor)

    def predict(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float = 1.0) -> torch.Tensor:
        """The velocity in float32, one forward pass: ``guidance_scale`` is the guidance-embedding input of a
        guidance-distilled transformer (FLUX.1-dev); without guidance embeddings it must be 1."""
        b = latents.shape[0]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=self.device, dtype=torch.float32)
        elif guidance_scale != 1.0:
            raise ValueError(f"this FLUX transformer has no guidance embeddings (schnell-like) and FluxPolicy does "
                             f"no classifier-free guidance: guidance_scale must be 1, got {guidance_scale}")
        x = latents.to(self.device, self.dtype)
        return self._forward(self._active_model(), x, self._timestep(t, b), cond.cond, guidance).float()

    velocity = predict

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        """Pooled CLIP and T5 embeddings; no ``uncond`` (FLUX has no CFG), whatever ``guidance`` says."""
        prompts = list(prompts)
        embeds, pooled, _ = self.pipeline.encode_prompt(prompt=prompts, prompt_2=None, device=self.device,
                                                        max_sequence_length=self.max_sequence_length)
        dtype = self.dtype
        return Conditioning({"prompt_embeds": embeds.to(dtype), "pooled_projections": pooled.to(dtype)}, None,
                            prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return _vae_decode(self.pipeline, latents, self.device)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        scheduler = copy.deepcopy(self.pipeline.scheduler)
        config = scheduler.config
        _, h, w = self.latent_shape
        mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        if config.get("use_flow_sigmas", False):
            scheduler.set_timesteps(num_steps, device="cpu", mu=mu)
        else:
            scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps).tolist(), device="cpu", mu=mu)
        return scheduler.sigmas.detach().float().cpu()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.vae.config.latent_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        extra = [m for m in (p.vae, p.text_encoder, p.text_encoder_2) if m is not None]
        return super()._modules() + extra


# --------------------------------------------------------------------------------------------- Sana


class SanaPolicy(FlowPolicy):
    """A diffusers ``SanaPipeline`` (Sana 0.6B / 1.6B) as a policy: the linear-attention transformer is trained.

    Prompts go through the pipeline's own ``encode_prompt`` (Gemma-2 hidden states and their attention
    mask, the first token plus the last ``max_sequence_length - 1``), with Sana's complex human
    instruction prepended to the prompt exactly as the pipeline's ``__call__`` does by default
    (``complex_human_instruction=None``; ``[]`` turns it off); negative prompt ``""`` for CFG, which is
    the usual two forwards (2 NFE). The attention masks ride in the conditioning
    (``encoder_attention_mask``). The transformer's timestep input is ``sigma * 1000 * timestep_scale``,
    as in the pipeline. Sigmas: the pipeline scheduler's own ``set_timesteps(num_steps)`` sigmas, from a
    ``FlowMatchEulerDiscreteScheduler`` or a ``DPMSolverMultistepScheduler`` with ``use_flow_sigmas``
    (the Sana checkpoints; its ``flow_shift`` applied), ending at 0; the policy's own samplers step them. ``decode`` divides by the
    DC-AE ``scaling_factor`` and runs the VAE. LoRA targets the self- and cross-attention projections
    (``attn1``/``attn2``: ``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    Example (a random tiny pipeline, no weights needed):
        >>> policy = SanaPolicy(tiny_sana_pipeline(), resolution=16)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=4.5)
        >>> tuple(v.shape), sorted(cond.cond), policy.forwards_per_prediction(4.5)
        ((1, 4, 8, 8), ['encoder_attention_mask', 'prompt_embeds'], 2)
    """

    def __init__(self, pipeline: Any, resolution: int = 1024, max_sequence_length: int | None = None,
                 negative_prompt: str = "", complex_human_instruction: Sequence[str] | None = None) -> None:
        import inspect

        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        if getattr(self.model.config, "guidance_embeds", False):
            raise ValueError("SanaPolicy does classifier-free guidance; a guidance-embedding (Sprint) transformer "
                             "is not supported")
        multiple = pipeline.vae_scale_factor * self.model.config.patch_size
        if resolution % multiple:
            raise ValueError(f"Sana needs a resolution divisible by {multiple} (VAE x patch), got {resolution}")
        self.resolution = resolution
        if max_sequence_length is None:  # the pipeline's 300, or less when the tokenizer is shorter
            max_sequence_length = min(300, int(getattr(pipeline.tokenizer, "model_max_length", 300)))
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt
        if complex_human_instruction is None:  # the pipeline's __call__ default
            default = inspect.signature(type(pipeline).__call__).parameters["complex_human_instruction"].default
            complex_human_instruction = default if isinstance(default, (list, tuple)) else []
        self.complex_human_instruction = list(complex_human_instruction)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> SanaPolicy:
        """Load ``SanaPipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import SanaPipeline

        pipe = SanaPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """``sigma * 1000`` (the scheduler's timestep) times the transformer's ``timestep_scale``, as the pipeline."""
        scale = float(getattr(self.model.config, "timestep_scale", 1.0))
        timestep = super()._timestep(t, batch)
        return timestep * scale if scale != 1.0 else timestep

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = model(latents, encoder_hidden_states=inputs["prompt_embeds"],
                    encoder_attention_mask=inputs["encoder_attention_mask"], timestep=timestep, return_dict=False)[0]
        if out.shape[1] == 2 * latents.shape[1]:  # learned sigma: keep the prediction, as the pipeline does
            out = out.chunk(2, dim=1)[0]
        return out

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        embeds, mask, neg, neg_mask = self.pipeline.encode_prompt(
            prompts, do_classifier_free_guidance=guidance, negative_prompt=self.negative_prompt,
            device=self.device, max_sequence_length=self.max_sequence_length,
            complex_human_instruction=self.complex_human_instruction)
        dtype = self.dtype
        cond = {"prompt_embeds": embeds.to(dtype), "encoder_attention_mask": mask}
        uncond = {"prompt_embeds": neg.to(dtype), "encoder_attention_mask": neg_mask} if guidance else None
        return Conditioning(cond, uncond, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return _vae_decode(self.pipeline, latents, self.device)

    def sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = self.pipeline.scheduler
        if not (isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.config.get("use_flow_sigmas")):
            raise ValueError(f"SanaPolicy needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler or "
                             f"use_flow_sigmas=True), got {type(scheduler).__name__}")
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        sigmas = torch.as_tensor(scheduler.sigmas).detach().float().cpu()[: num_steps + 1]
        if sigmas[-1] != 0:  # a DPM-Solver with final_sigmas_type="sigma_min": the policy still ends at 0
            sigmas = torch.cat([sigmas[:-1], sigmas.new_zeros(1)])
        return sigmas

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.transformer.config.in_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        return super()._modules() + [m for m in (p.vae, p.text_encoder) if m is not None]


# ------------------------------------------------------------------------------ class-conditional UNet


def _normalise_caption(text: str) -> str:
    return " ".join(text.lower().split())


class ClassConditionalFlowPolicy(FlowPolicy):
    """A class-conditional diffusers ``UNet2DModel`` trained with rectified flow, in pixel space.

    ``classes[i]`` is the caption of class ``i``; a prompt must equal one caption (case and spaces
    ignored). Latents are the images, ``[-1, 1]``. CFG needs a null class: ``null_class`` (default:
    ``len(classes)`` when the model has more class embeddings than captions, else none, and then
    ``guidance_scale`` must be 1). Sigmas are ``linspace(1, 0, steps + 1)`` (plain Euler schedule).
    LoRA targets the ResNet convolutions (``conv1``, ``conv2``) and any attention projections.

    Example (random weights):
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        ...                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=2)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle", "a blue square"])
        >>> cond = policy.encode_prompts(["A blue  square"], guidance=False)
        >>> cond.cond["class_labels"].tolist(), len(policy.decode(torch.zeros(1, 3, 8, 8)))
        ([1], 1)
    """

    def __init__(self, unet: torch.nn.Module, classes: Sequence[str], null_class: int | None = None) -> None:
        self.model = unet.eval()
        self.classes = list(classes)
        n_embeds = unet.config.num_class_embeds
        if n_embeds is None or n_embeds < len(self.classes):
            raise ValueError(f"the UNet has {n_embeds} class embeddings for {len(self.classes)} captions")
        if null_class is None and n_embeds > len(self.classes):
            null_class = len(self.classes)
        self.null_class = null_class
        self._index = {_normalise_caption(c): i for i, c in enumerate(self.classes)}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        null_class: int | None = None) -> ClassConditionalFlowPolicy:
        """Load ``UNet2DModel.from_pretrained(path)`` and ``path/classes.json`` (a list of captions)."""
        from diffusers import UNet2DModel

        path = Path(path)
        unet = UNet2DModel.from_pretrained(str(path), torch_dtype=torch_dtype)
        classes = json.loads((path / "classes.json").read_text())
        return cls(unet, classes, null_class)

    @property
    def default_lora_targets(self) -> list[str]:
        names = {n.rsplit(".", 1)[-1] for n, _ in self.model.named_modules()}
        attention = [t for t in ("to_q", "to_k", "to_v") if t in names]
        return ["conv1", "conv2", *attention, *(["to_out.0"] if attention else [])]

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(latents, timestep, class_labels=inputs["class_labels"]).sample

    def class_id(self, prompt: str) -> int:
        """The class of a caption; ValueError listing the captions when there is none."""
        try:
            return self._index[_normalise_caption(prompt)]
        except KeyError:
            raise ValueError(f"prompt {prompt!r} is not one of the model's captions: {self.classes}") from None

    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        labels = torch.tensor([self.class_id(p) for p in prompts], dtype=torch.long, device=self.device)
        uncond = None
        if guidance and self.null_class is not None:
            uncond = {"class_labels": torch.full_like(labels, self.null_class)}
        return Conditioning({"class_labels": labels}, uncond, prompts)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        arr = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, num_steps + 1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.model.config.sample_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return (self.model.config.in_channels, *size)


# ------------------------------------------------------------------------------ Stable Diffusion (DDIM)


class StableDiffusionPolicy(FlowPolicy):
    """A diffusers ``StableDiffusionPipeline`` (SD1.x, SD2.x-base: epsilon prediction) sampled with DDIM:
    the UNet is trained (DDPO's setting, with Flow-GRPO's loss).

    Prompts go through the pipeline's own ``encode_prompt`` (CLIP), negative prompt ``""`` for CFG. The
    pipeline's scheduler config is turned into a ``DDIMScheduler`` (SD1.5 ships PNDM). The schedule is
    its ``set_timesteps(num_steps)`` timesteps plus the last one minus ``1000 // num_steps`` (negative:
    the final ``alpha = final_alpha_cumprod``), exactly the ``prev_timestep`` of ``DDIMScheduler.step``;
    :meth:`predict` gives the UNet those integer timesteps and returns epsilon, and the one sampler,
    ``"ddim"``, is :func:`~visalign.trainers.sde.ddim_step_with_logprob` with ``eta = noise_level``
    (DDPO: 1.0; 0 is deterministic DDIM, used for eval). ``decode`` un-scales the latents and runs the VAE.
    LoRA targets the UNet's attention projections (``to_q``, ``to_k``, ``to_v``, ``to_out.0``).

    Example (a random tiny pipeline, no weights needed):
        >>> policy = StableDiffusionPolicy(tiny_sd15_pipeline(), resolution=16)
        >>> schedule = policy.schedule(4)
        >>> schedule.tolist(), policy.samplers, policy.latent_shape
        ([751, 501, 251, 1, -249], ('ddim',), (4, 8, 8))
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> eps = policy.predict(torch.randn(1, 4, 8, 8), schedule[0], cond, guidance_scale=7.5)
        >>> prev, log_prob, mean, std = policy.step_with_logprob(eps, torch.randn(1, 4, 8, 8), schedule, 0,
        ...                                                      noise_level=1.0)
        >>> tuple(prev.shape), tuple(log_prob.shape)
        ((1, 4, 8, 8), (1,))
    """

    samplers: ClassVar[tuple[str, ...]] = ("ddim",)

    def __init__(self, pipeline: Any, resolution: int = 512, negative_prompt: str = "") -> None:
        from diffusers import DDIMScheduler

        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        prediction = pipeline.scheduler.config.get("prediction_type", "epsilon")
        if prediction != "epsilon":
            raise ValueError(f"StableDiffusionPolicy needs an epsilon-prediction model, the scheduler says "
                             f"{prediction!r}")
        self.scheduler = DDIMScheduler.from_config(pipeline.scheduler.config)
        self.model = pipeline.unet
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder):
            module.requires_grad_(False).eval()
        self.resolution = resolution
        self.negative_prompt = negative_prompt

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        **kwargs: Any) -> StableDiffusionPolicy:
        """Load ``StableDiffusionPipeline.from_pretrained(path)`` (a local directory), without the safety checker."""
        from diffusers import StableDiffusionPipeline

        pipe = StableDiffusionPipeline.from_pretrained(str(path), torch_dtype=torch_dtype, safety_checker=None,
                                                       feature_extractor=None, requires_safety_checker=False)
        return cls(pipe, **kwargs)

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(latents, timestep, encoder_hidden_states=inputs["prompt_embeds"], return_dict=False)[0]

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        return torch.as_tensor(t).long().reshape(-1).expand(batch).to(self.device)

    def schedule(self, num_steps: int) -> torch.Tensor:
        """DDIM timesteps for ``num_steps`` steps and the final ``prev_timestep`` (int64, CPU, ``num_steps + 1``)."""
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        timesteps = scheduler.timesteps.detach().long().cpu()
        ratio = scheduler.config.num_train_timesteps // num_steps
        return torch.cat([timesteps, timesteps[-1:] - ratio])

    def step_with_logprob(self, model_output: torch.Tensor, sample: torch.Tensor, schedule: torch.Tensor,
                          step_index: int | torch.Tensor, *, noise_level: float, sampler: str = "auto",
                          prev_sample: torch.Tensor | None = None, noise: torch.Tensor | None = None,
                          generator: torch.Generator | None = None, sigma_mode: str = "flow_grpo",
                          noise_scale: float = 1.0,
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """DDIM from timestep ``schedule[k]`` to ``schedule[k + 1]`` with ``eta = noise_level``
        (:func:`~visalign.trainers.sde.ddim_step_with_logprob`, the scheduler's ``alphas_cumprod``)."""
        self.resolve_sampler(sampler)
        if sigma_mode != "flow_grpo" or noise_scale != 1.0:
            raise ValueError("sigma_mode / noise_scale apply to the flow sde sampler, not DDIM")
        if isinstance(step_index, torch.Tensor):
            t, t_prev = schedule[step_index], schedule[step_index + 1]
        else:
            if not 0 <= step_index < schedule.numel() - 1:
                raise ValueError(f"step_index must be in [0, {schedule.numel() - 1}), got {step_index}")
            t, t_prev = int(schedule[step_index]), int(schedule[step_index + 1])
        return ddim_step_with_logprob(model_output, sample, self.scheduler.alphas_cumprod, t, t_prev,
                                      eta=noise_level, prev_sample=prev_sample, noise=noise, generator=generator,
                                      final_alpha_cumprod=float(self.scheduler.final_alpha_cumprod))

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        embeds, neg = self.pipeline.encode_prompt(
            prompts, self.device, 1, guidance, negative_prompt=[self.negative_prompt] * len(prompts) if guidance
            else None)
        dtype = self.dtype
        uncond = {"prompt_embeds": neg.to(dtype)} if guidance else None
        return Conditioning({"prompt_embeds": embeds.to(dtype)}, uncond, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        return _vae_decode(self.pipeline, latents, self.device)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.unet.config.in_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        return super()._modules() + [self.pipeline.vae, self.pipeline.text_encoder]


# --------------------------------------------------------------------------------------------- loading


def load_flow_policy(path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> FlowPolicy:
    """A policy from a local directory: a pipeline (``model_index.json`` naming ``StableDiffusion3Pipeline``
    -> :class:`SD3Policy`, ``FluxPipeline`` -> :class:`FluxPolicy`, ``SanaPipeline`` -> :class:`SanaPolicy`,
    ``StableDiffusionPipeline`` -> :class:`StableDiffusionPolicy`) or a
    class-conditional UNet (``config.json`` + ``classes.json``, directly or under ``unet/``). ``kwargs`` go
    to the policy (``resolution`` for pipelines, ``max_sequence_length`` for SD3; ``null_class`` for the
    UNet)."""
    path = Path(path)
    index = path / "model_index.json"
    if index.exists():
        name = json.loads(index.read_text()).get("_class_name", "")
        if name.startswith("StableDiffusion3"):
            return SD3Policy.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
        if name == "FluxPipeline":
            return FluxPolicy.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
        if name == "SanaPipeline":
            return SanaPolicy.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
        if name == "StableDiffusionPipeline":
            return StableDiffusionPolicy.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
        raise ValueError(f"{path}: pipeline {name!r} is not supported (StableDiffusion3Pipeline, FluxPipeline, "
                         "SanaPipeline and StableDiffusionPipeline are)")
    for candidate in (path, path / "unet"):
        if (candidate / "config.json").exists() and ((candidate / "classes.json").exists()
                                                     or (path / "classes.json").exists()):
            policy = ClassConditionalFlowPolicy.from_pretrained(candidate, torch_dtype=torch_dtype, **kwargs) \
                if (candidate / "classes.json").exists() else None
            if policy is None:
                from diffusers import UNet2DModel

                unet = UNet2DModel.from_pretrained(str(candidate), torch_dtype=torch_dtype)
                policy = ClassConditionalFlowPolicy(unet, json.loads((path / "classes.json").read_text()), **kwargs)
            return policy
    raise ValueError(f"{path}: neither a pipeline directory (model_index.json) nor a class-conditional UNet "
                     "directory (config.json + classes.json)")


# ----------------------------------------------------------------------------- random tiny pipelines

_WORDS = ["a", "an", "the", "of", "photo", "picture", "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "circle", "square", "triangle", "star", "cat", "dog", "car", "house", "tree", "small", "big", "on", "in", "with", "and"]


def _clip_tokenizer(directory: Path, max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in _WORDS:
        vocab[w + "</w>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def _word_tokenizer(max_length: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def tiny_sd3_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int = 16, t5_dim: int | None = None,
                      clip_projection_dims: tuple[int, int] | None = None, clip_max_length: int = 16,
                      vae_channels: Sequence[int] = (4, 8), workdir: str | Path | None = None, seed: int = 0) -> Any:
    """A ``StableDiffusion3Pipeline`` with random weights built from configs, offline.

    Every component is real (SD3Transformer2DModel, AutoencoderKL, two CLIPTextModelWithProjection,
    T5EncoderModel, FlowMatchEulerDiscreteScheduler with shift 3), only tiny: CLIP tokenizers from a
    small word vocabulary written to ``workdir`` (a temporary directory by default) and a word-level
    fast tokenizer for T5. ``transformer`` overrides the transformer config (e.g. the SD3.5-Medium
    shape: ``num_layers=24, num_attention_heads=24, attention_head_dim=64, joint_attention_dim=4096,
    caption_projection_dim=1536, pooled_projection_dim=2048, patch_size=2, in_channels=16``); the text
    encoders follow ``joint_attention_dim`` and ``pooled_projection_dim``.

    Example:
        >>> pipe = tiny_sd3_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor
        ('StableDiffusion3Pipeline', 2)
    """
    import tempfile

    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        SD3Transformer2DModel,
        StableDiffusion3Pipeline,
    )
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    cfg: dict[str, Any] = {"sample_size": 32, "patch_size": 1, "in_channels": 4, "out_channels": 4, "num_layers": 1,
                           "attention_head_dim": 8, "num_attention_heads": 2, "caption_projection_dim": 16,
                           "joint_attention_dim": 32, "pooled_projection_dim": 32, "pos_embed_max_size": 32}
    cfg.update(transformer or {})
    cfg.setdefault("out_channels", cfg["in_channels"])
    t5_dim = t5_dim or cfg["joint_attention_dim"]
    proj = clip_projection_dims or (cfg["pooled_projection_dim"] // 2, cfg["pooled_projection_dim"] - cfg["pooled_projection_dim"] // 2)
    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-sd3-"))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    encoders = []
    for p in proj:
        conf = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_dim,
                              intermediate_size=2 * text_dim, num_attention_heads=2, num_hidden_layers=2,
                              vocab_size=len(tokenizer.get_vocab()), projection_dim=p,
                              max_position_embeddings=clip_max_length)
        encoders.append(CLIPTextModelWithProjection(conf))
    t5 = T5EncoderModel(T5Config(vocab_size=len(_WORDS) + 3, d_model=t5_dim, d_ff=2 * text_dim, d_kv=8,
                                 num_heads=2, num_layers=1, pad_token_id=0, eos_token_id=1))
    n = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=cfg["in_channels"], norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    model = SD3Transformer2DModel(**cfg)
    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
                                    tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=_word_tokenizer(256))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux_pipeline(transformer: dict[str, Any] | None = None, *, clip_dim: int | None = None,
                       t5_dim: int | None = None, clip_max_length: int = 16, t5_max_length: int = 16,
                       vae_channels: Sequence[int] = (4, 8), latent_channels: int = 16,
                       workdir: str | Path | None = None, seed: int = 0) -> Any:
    """A ``FluxPipeline`` with random weights built from configs, offline.

    Every component is real (FluxTransformer2DModel with guidance embeddings by default, FLUX.1-dev
    style; AutoencoderKL with ``latent_channels`` (16, as FLUX) and FLUX's scaling/shift factors, no
    quant convs; CLIPTextModel for the pooled prompt; T5EncoderModel; FlowMatchEulerDiscreteScheduler
    with FLUX.1-dev's dynamic shifting), only tiny: the small-vocabulary CLIP tokenizer of
    :func:`tiny_sd3_pipeline` (written to ``workdir``) and a word-level fast tokenizer for T5
    (``model_max_length = t5_max_length``). ``transformer`` overrides the transformer config
    (``guidance_embeds=False`` for a schnell-like model); ``in_channels`` is ``4 * latent_channels``
    (2x2 packing), the CLIP width follows ``pooled_projection_dim`` and T5's ``joint_attention_dim``.

    Example:
        >>> pipe = tiny_flux_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor, pipe.transformer.config.in_channels
        ('FluxPipeline', 2, 64)
    """
    import tempfile

    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    cfg: dict[str, Any] = {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": 1,
                           "num_single_layers": 1, "attention_head_dim": 16, "num_attention_heads": 2,
                           "joint_attention_dim": 32, "pooled_projection_dim": 16, "guidance_embeds": True,
                           "axes_dims_rope": (4, 6, 6)}
    cfg.update(transformer or {})
    clip_dim = clip_dim or cfg["pooled_projection_dim"]
    t5_dim = t5_dim or cfg["joint_attention_dim"]
    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-flux-"))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=clip_dim,
                                        intermediate_size=2 * clip_dim, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=len(tokenizer.get_vocab()), max_position_embeddings=clip_max_length))
    t5 = T5EncoderModel(T5Config(vocab_size=len(_WORDS) + 3, d_model=t5_dim, d_ff=2 * t5_dim, d_kv=8, num_heads=2,
                                 num_layers=1, pad_token_id=0, eos_token_id=1))
    n = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=latent_channels, norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611)
    model = FluxTransformer2DModel(**cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=clip, tokenizer=tokenizer, text_encoder_2=t5,
                        tokenizer_2=_word_tokenizer(t5_max_length), transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sana_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int | None = None,
                       max_length: int = 16, vae_channels: Sequence[int] = (4, 8), seed: int = 0) -> Any:
    """A ``SanaPipeline`` with random weights built from configs, offline.

    Every component is real (SanaTransformer2DModel, AutoencoderDC with ResBlocks and Sana's scaling
    factor, a Gemma2Model text encoder, FlowMatchEulerDiscreteScheduler with shift 3), only tiny: a
    word-level fast tokenizer (``<pad>``, ``<bos>`` prepended, ``model_max_length = max_length``; words
    outside the small vocabulary, such as the complex human instruction's, are ``<unk>``).
    ``transformer`` overrides the transformer config; the Gemma width follows ``caption_channels``.

    Example:
        >>> pipe = tiny_sana_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor, pipe.transformer.config.in_channels
        ('SanaPipeline', 2, 4)
    """
    from diffusers import AutoencoderDC, FlowMatchEulerDiscreteScheduler, SanaPipeline, SanaTransformer2DModel
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import Gemma2Config, Gemma2Model, PreTrainedTokenizerFast

    cfg: dict[str, Any] = {"in_channels": 4, "out_channels": 4, "num_attention_heads": 2, "attention_head_dim": 8,
                           "num_layers": 1, "num_cross_attention_heads": 2, "cross_attention_head_dim": 8,
                           "cross_attention_dim": 16, "caption_channels": 32, "sample_size": 8, "patch_size": 1}
    cfg.update(transformer or {})
    text_dim = text_dim or cfg["caption_channels"]
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", pair="<bos> $A $B",
                                                       special_tokens=[("<bos>", 2)])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<bos>",
                                        eos_token="<eos>", unk_token="<unk>", model_max_length=max_length)
    torch.manual_seed(seed)
    gemma = Gemma2Model(Gemma2Config(vocab_size=len(vocab), hidden_size=text_dim, intermediate_size=2 * text_dim,
                                     num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1, head_dim=8,
                                     max_position_embeddings=512, pad_token_id=0, bos_token_id=2, eos_token_id=1))
    n = len(vae_channels)
    vae = AutoencoderDC(in_channels=3, latent_channels=cfg["in_channels"], attention_head_dim=4,
                        encoder_block_types="ResBlock", decoder_block_types="ResBlock",
                        encoder_block_out_channels=tuple(vae_channels), decoder_block_out_channels=tuple(vae_channels),
                        encoder_layers_per_block=(1,) * n, decoder_layers_per_block=(1,) * n,
                        encoder_qkv_multiscales=((),) * n, decoder_qkv_multiscales=((),) * n,
                        scaling_factor=0.41407)
    model = SanaTransformer2DModel(**cfg)
    pipe = SanaPipeline(tokenizer=tokenizer, text_encoder=gemma, vae=vae, transformer=model,
                        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_sd15_pipeline(*, text_dim: int = 16, block_out_channels: Sequence[int] = (8, 16),
                       vae_channels: Sequence[int] = (4, 8), clip_max_length: int = 16,
                       workdir: str | Path | None = None, seed: int = 0) -> Any:
    """A ``StableDiffusionPipeline`` with random weights built from configs, offline: an SD1.5-shaped
    ``UNet2DConditionModel`` (one plain and one cross-attention block per side, epsilon prediction),
    ``AutoencoderKL``, ``CLIPTextModel`` with the small-vocabulary CLIP tokenizer of
    :func:`tiny_sd3_pipeline` (written to ``workdir``), and SD1.5's ``DDIMScheduler`` settings (scaled
    linear betas 0.00085..0.012, ``set_alpha_to_one=False``, ``steps_offset=1``); no safety checker.

    Example:
        >>> pipe = tiny_sd15_pipeline()
        >>> type(pipe).__name__, type(pipe.scheduler).__name__, pipe.vae_scale_factor
        ('StableDiffusionPipeline', 'DDIMScheduler', 2)
    """
    import tempfile

    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-sd15-"))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = _clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_dim, intermediate_size=2 * text_dim,
        num_attention_heads=2, num_hidden_layers=2, vocab_size=len(tokenizer.get_vocab()),
        max_position_embeddings=clip_max_length))
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), cross_attention_dim=text_dim,
        attention_head_dim=2, norm_num_groups=4)
    m = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * m, up_block_types=("UpDecoderBlock2D",) * m,
                        latent_channels=4, norm_num_groups=1, scaling_factor=0.18215)
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def image_grid(images: Sequence[Image.Image], columns: int, scale: int = 1) -> Image.Image:
    """Tile equally sized images row by row, ``columns`` per row, each upscaled ``scale`` times.

    Example:
        >>> image_grid([Image.new("RGB", (4, 4))] * 3, columns=2, scale=2).size
        (16, 16)
    """
    if not images:
        raise ValueError("no images")
    w, h = images[0].size
    rows = int(np.ceil(len(images) / columns))
    grid = Image.new("RGB", (columns * w * scale, rows * h * scale), (128, 128, 128))
    for i, im in enumerate(images):
        im = im.convert("RGB").resize((w * scale, h * scale), Image.NEAREST) if scale != 1 else im.convert("RGB")
        grid.paste(im, ((i % columns) * w * scale, (i // columns) * h * scale))
    return grid
