"""FLUX.1 dev / schnell: ``FluxPipeline`` (:class:`FluxPolicy`) and its tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .base import Conditioning, FlowPolicy, vae_decode
from .tiny import WORDS, clip_tokenizer, word_tokenizer

__all__ = ["FluxPolicy", "tiny_flux_pipeline"]

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
        return vae_decode(self.pipeline, latents, self.device)

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
    tokenizer = clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    clip = CLIPTextModel(CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=clip_dim,
                                        intermediate_size=2 * clip_dim, num_attention_heads=2, num_hidden_layers=2,
                                        vocab_size=len(tokenizer.get_vocab()), max_position_embeddings=clip_max_length))
    t5 = T5EncoderModel(T5Config(vocab_size=len(WORDS) + 3, d_model=t5_dim, d_ff=2 * t5_dim, d_kv=8, num_heads=2,
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
                        tokenizer_2=word_tokenizer(t5_max_length), transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe

