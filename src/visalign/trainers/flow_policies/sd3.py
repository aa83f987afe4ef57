"""SD3 / SD3.5: ``StableDiffusion3Pipeline`` (:class:`SD3Policy`) and its tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from .base import Conditioning, FlowPolicy, vae_decode
from .tiny import WORDS, clip_tokenizer, word_tokenizer

__all__ = ["SD3Policy", "tiny_sd3_pipeline"]

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

    config_options: ClassVar[tuple[str, ...]] = ("resolution", "max_sequence_length")

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
        return vae_decode(self.pipeline, latents, self.device)

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
    tokenizer = clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    encoders = []
    for p in proj:
        conf = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_dim,
                              intermediate_size=2 * text_dim, num_attention_heads=2, num_hidden_layers=2,
                              vocab_size=len(tokenizer.get_vocab()), projection_dim=p,
                              max_position_embeddings=clip_max_length)
        encoders.append(CLIPTextModelWithProjection(conf))
    t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=t5_dim, d_ff=2 * text_dim, d_kv=8,
                                 num_heads=2, num_layers=1, pad_token_id=0, eos_token_id=1))
    n = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=cfg["in_channels"], norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    model = SD3Transformer2DModel(**cfg)
    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
                                    tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=word_tokenizer(256))
    pipe.set_progress_bar_config(disable=True)
    return pipe

