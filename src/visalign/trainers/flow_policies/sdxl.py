"""SDXL: ``StableDiffusionXLPipeline`` sampled with DDIM (:class:`StableDiffusionXLPolicy`) and its tiny
offline builder."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .base import Conditioning
from .stable_diffusion import StableDiffusionPolicy
from .tiny import clip_tokenizer

__all__ = ["StableDiffusionXLPolicy", "tiny_sdxl_pipeline"]


class StableDiffusionXLPolicy(StableDiffusionPolicy):
    """A diffusers ``StableDiffusionXLPipeline`` (SDXL base: epsilon prediction) sampled with DDIM: the UNet
    is trained, as in :class:`~visalign.trainers.flow_policies.StableDiffusionPolicy` (same schedule,
    ``"ddim"`` sampler, ``eta = noise_level``).

    Prompts go through the pipeline's own ``encode_prompt`` (two CLIP text encoders: the penultimate hidden
    states of both, concatenated, and the pooled projection of the second). The negative prompt is the
    pipeline's default: ``None``, which gives all-zero embeddings when the pipeline's
    ``force_zeros_for_empty_prompt`` is set (SDXL base) and the encoded ``""`` otherwise. The UNet's added
    conditions ride in the conditioning: ``text_embeds`` (pooled) and ``time_ids`` from the pipeline's
    ``_get_add_time_ids(original_size, (0, 0), target_size)`` with both sizes ``(resolution, resolution)``,
    as the pipeline's ``__call__`` builds them. The scheduler config (SDXL ships Euler) becomes a
    ``DDIMScheduler``. LoRA targets the UNet's attention projections.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = StableDiffusionXLPolicy(tiny_sdxl_pipeline(), resolution=16)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> sorted(cond.cond), cond.cond["time_ids"].tolist()
        (['prompt_embeds', 'text_embeds', 'time_ids'], [[16.0, 16.0, 0.0, 0.0, 16.0, 16.0]])
        >>> eps = policy.predict(torch.randn(1, *policy.latent_shape), policy.schedule(2)[0], cond, 5.0)
        >>> tuple(eps.shape), policy.samplers
        ((1, 4, 8, 8), ('ddim',))
    """

    def __init__(self, pipeline: Any, resolution: int = 1024, negative_prompt: str | None = None) -> None:
        super().__init__(pipeline, resolution=resolution, negative_prompt="")
        self.negative_prompt = negative_prompt  # type: ignore[assignment]
        if pipeline.text_encoder_2 is not None:
            pipeline.text_encoder_2.requires_grad_(False).eval()

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        **kwargs: Any) -> StableDiffusionXLPolicy:
        """Load ``StableDiffusionXLPipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        added = {"text_embeds": inputs["text_embeds"], "time_ids": inputs["time_ids"]}
        return model(latents, timestep, encoder_hidden_states=inputs["prompt_embeds"], added_cond_kwargs=added,
                     return_dict=False)[0]

    def _time_ids(self, batch: int) -> torch.Tensor:
        pipe = self.pipeline
        size = (self.resolution, self.resolution)
        projection = (pipe.text_encoder_2.config.projection_dim if pipe.text_encoder_2 is not None
                      else pipe.unet.add_embedding.linear_1.in_features
                      - 6 * pipe.unet.config.addition_time_embed_dim)
        ids = pipe._get_add_time_ids(size, (0, 0), size, dtype=self.dtype, text_encoder_projection_dim=projection)
        return ids.to(self.device).repeat(batch, 1)

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        negative = None if self.negative_prompt is None else [self.negative_prompt] * len(prompts)
        embeds, neg, pooled, neg_pooled = self.pipeline.encode_prompt(
            prompt=prompts, device=self.device, num_images_per_prompt=1, do_classifier_free_guidance=guidance,
            negative_prompt=negative)
        dtype, time_ids = self.dtype, self._time_ids(len(prompts))
        cond = {"prompt_embeds": embeds.to(dtype), "text_embeds": pooled.to(dtype), "time_ids": time_ids}
        uncond = ({"prompt_embeds": neg.to(dtype), "text_embeds": neg_pooled.to(dtype), "time_ids": time_ids}
                  if guidance else None)
        return Conditioning(cond, uncond, prompts)

    def _modules(self) -> list[torch.nn.Module]:
        extra = [self.pipeline.text_encoder_2] if self.pipeline.text_encoder_2 is not None else []
        return super()._modules() + extra


def tiny_sdxl_pipeline(*, text_dim: int = 16, projection_dim: int = 8, block_out_channels: Sequence[int] = (8, 16),
                       vae_channels: Sequence[int] = (4, 8), clip_max_length: int = 16,
                       workdir: str | Path | None = None, seed: int = 0) -> Any:
    """A ``StableDiffusionXLPipeline`` with random weights built from configs, offline: an SDXL-shaped
    ``UNet2DConditionModel`` (``addition_embed_type="text_time"``: pooled text embedding + 6 time ids,
    ``addition_time_embed_dim`` 8, linear projection, a plain and a cross-attention block per side,
    epsilon prediction), ``AutoencoderKL`` with SDXL's scaling factor, ``CLIPTextModel`` and
    ``CLIPTextModelWithProjection`` (the small-vocabulary CLIP tokenizer of
    :func:`~visalign.trainers.flow_policies.tiny_sd3_pipeline`, written to ``workdir``) and SDXL's
    ``EulerDiscreteScheduler`` settings (scaled linear betas 0.00085..0.012, ``steps_offset=1``,
    ``timestep_spacing="leading"``, and the DDIM keys its config file carries: ``clip_sample=False``,
    ``set_alpha_to_one=False``); ``force_zeros_for_empty_prompt`` as SDXL base.

    Example:
        >>> pipe = tiny_sdxl_pipeline()
        >>> type(pipe).__name__, type(pipe.scheduler).__name__, pipe.unet.config.addition_embed_type
        ('StableDiffusionXLPipeline', 'EulerDiscreteScheduler', 'text_time')
    """
    import tempfile

    from diffusers import (
        AutoencoderKL,
        EulerDiscreteScheduler,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    directory = Path(workdir) if workdir is not None else Path(tempfile.mkdtemp(prefix="tiny-sdxl-"))
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    conf = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_dim,
                          intermediate_size=2 * text_dim, num_attention_heads=2, num_hidden_layers=2,
                          vocab_size=len(tokenizer.get_vocab()), max_position_embeddings=clip_max_length,
                          projection_dim=projection_dim)
    text_encoder, text_encoder_2 = CLIPTextModel(conf), CLIPTextModelWithProjection(conf)
    n = len(block_out_channels)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=tuple(block_out_channels), layers_per_block=1,
        down_block_types=("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (n - 1),
        up_block_types=("CrossAttnUpBlock2D",) * (n - 1) + ("UpBlock2D",), cross_attention_dim=2 * text_dim,
        attention_head_dim=2, norm_num_groups=4, use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + projection_dim,
        transformer_layers_per_block=1)
    m = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * m, up_block_types=("UpDecoderBlock2D",) * m,
                        latent_channels=4, norm_num_groups=1, scaling_factor=0.13025)
    scheduler = EulerDiscreteScheduler.from_config({  # SDXL base's scheduler_config.json (DDIM keys kept)
        "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "steps_offset": 1,
        "timestep_spacing": "leading", "clip_sample": False, "set_alpha_to_one": False, "sample_max_value": 1.0,
        "skip_prk_steps": True, "interpolation_type": "linear", "use_karras_sigmas": False})
    pipe = StableDiffusionXLPipeline(vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
                                     tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=scheduler,
                                     force_zeros_for_empty_prompt=True, add_watermarker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
