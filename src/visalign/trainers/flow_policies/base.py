"""The policy interface every family implements, and what the families share (VAE decode, image grid).

See the package docstring (:mod:`visalign.trainers.flow_policies`) for the contract and conventions.
"""

from __future__ import annotations

import contextlib
import copy
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from ..sde import StepResult, cps_step_with_logprob, sde_step_with_logprob

__all__ = ["NUM_TRAIN_TIMESTEPS", "Conditioning", "FlowPolicy", "image_grid", "vae_decode"]

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

    config_options: ClassVar[tuple[str, ...]] = ("resolution",)
    """``FlowGRPOConfig`` fields that ``train_flow_from_config`` passes to :meth:`from_pretrained`."""

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

    def decode_samples(self, latents: torch.Tensor) -> list[dict[str, Any]]:
        """Final latents -> one dict of :class:`~visalign.rewards.Sample` fields per sample: ``{"image": ...}``;
        video policies add ``"frames"``."""
        return [{"image": im} for im in self.decode(latents)]

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
            >>> from visalign.trainers.flow_policies import ClassConditionalFlowPolicy
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
                          ) -> StepResult:
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



def vae_decode(pipeline: Any, latents: torch.Tensor, device: torch.device) -> list[Image.Image]:
    """Latents -> PIL images through the pipeline's VAE: undo its scaling (and shift, where it has one:
    SD3, FLUX) and post-process as the pipeline does."""
    vae = pipeline.vae
    x = latents.to(device, vae.dtype) / vae.config.scaling_factor
    shift = getattr(vae.config, "shift_factor", None)
    if shift is not None:
        x = x + shift
    image = vae.decode(x, return_dict=False)[0]
    return pipeline.image_processor.postprocess(image.float(), output_type="pil")



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
