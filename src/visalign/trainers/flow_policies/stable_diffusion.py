"""SD1.x / SD2.x-base: ``StableDiffusionPipeline`` sampled with DDIM (:class:`StableDiffusionPolicy`) and
its tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from ..sde import StepResult, ddim_step_with_logprob
from .base import Conditioning, FlowPolicy, vae_decode
from .tiny import clip_tokenizer

__all__ = ["StableDiffusionPolicy", "tiny_sd15_pipeline"]

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
                          ) -> StepResult:
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
        return vae_decode(self.pipeline, latents, self.device)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.unet.config.in_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        return super()._modules() + [self.pipeline.vae, self.pipeline.text_encoder]



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
    tokenizer = clip_tokenizer(directory, clip_max_length)
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

