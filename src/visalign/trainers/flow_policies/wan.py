"""Wan 2.x text-to-video: ``WanPipeline`` (:class:`WanPolicy`; the sample is a video, its frames) and its
tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from .base import Conditioning, FlowPolicy
from .tiny import word_tokenizer

__all__ = ["WanPolicy", "tiny_wan_pipeline"]


class WanPolicy(FlowPolicy):
    """A diffusers ``WanPipeline`` (Wan 2.1 / 2.2 T2V with one transformer) as a policy: the 3-D
    transformer is trained and a sample is a video of ``num_frames`` frames.

    Latents ``(C, 1 + (num_frames - 1) / temporal, h, w)``, the pipeline's. Prompts go through the
    pipeline's own ``encode_prompt`` (UMT5, zero-padded to ``max_sequence_length``), negative prompt ``""``
    (the pipeline's default) for CFG in a second forward under ``torch.no_grad()``, ``v_u + g * (v_c - v_u)``.
    The timestep input is ``sigma * 1000`` (the scheduler's ``t``). Sigmas: the pipeline scheduler's own
    ``set_timesteps(n)`` sigmas, from a ``FlowMatchEulerDiscreteScheduler`` or a flow-sigma
    ``UniPCMultistepScheduler`` / DPM-Solver (the Wan checkpoints: their ``flow_shift`` applied), ending at 0;
    the policy's samplers step them (with UniPC the pipeline itself runs a multistep solver, so only an
    Euler scheduler reproduces the pipeline's loop). ``decode`` returns each video's first frame;
    :meth:`decode_samples` gives every frame (``Sample.frames``) for video rewards.

    Refused: Wan 2.2 A14B's two-expert setup (``transformer_2`` / ``boundary_ratio``: which expert is trained
    is a choice this policy does not make) and TI2V's ``expand_timesteps``.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = WanPolicy(tiny_wan_pipeline(), resolution=16, num_frames=5)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=5.0)
        >>> tuple(v.shape), len(policy.decode_samples(torch.zeros(1, *policy.latent_shape))[0]["frames"])
        ((1, 4, 3, 8, 8), 5)
    """

    config_options: ClassVar[tuple[str, ...]] = ("resolution", "max_sequence_length", "num_frames")

    def __init__(self, pipeline: Any, resolution: int = 480, num_frames: int = 81, max_sequence_length: int = 226,
                 negative_prompt: str = "") -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        if getattr(pipeline, "transformer_2", None) is not None or pipeline.config.get("boundary_ratio") is not None:
            raise ValueError("WanPolicy trains one transformer: Wan 2.2's two-expert pipelines (transformer_2, "
                             "boundary_ratio) are not supported")
        if pipeline.config.get("expand_timesteps", False):
            raise ValueError("WanPolicy does not support expand_timesteps (Wan 2.2 TI2V)")
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        temporal = pipeline.vae_scale_factor_temporal
        if (num_frames - 1) % temporal:
            raise ValueError(f"Wan needs num_frames - 1 divisible by {temporal}, got {num_frames}")
        multiple = pipeline.vae_scale_factor_spatial * self.model.config.patch_size[1]
        if resolution % multiple:
            raise ValueError(f"Wan needs a resolution divisible by {multiple} (VAE x patch), got {resolution}")
        self.resolution, self.num_frames = resolution, num_frames
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> WanPolicy:
        """Load ``WanPipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import WanPipeline

        pipe = WanPipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(hidden_states=latents, timestep=timestep, encoder_hidden_states=inputs["prompt_embeds"],
                     return_dict=False)[0]

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        embeds, neg = self.pipeline.encode_prompt(
            prompt=prompts, negative_prompt=[self.negative_prompt] * len(prompts) if guidance else None,
            do_classifier_free_guidance=guidance, max_sequence_length=self.max_sequence_length, device=self.device)
        dtype = self.dtype
        return Conditioning({"prompt_embeds": embeds.to(dtype)},
                            {"prompt_embeds": neg.to(dtype)} if guidance else None, prompts)

    @torch.no_grad()
    def decode_videos(self, latents: torch.Tensor) -> list[list[Image.Image]]:
        """Final latents -> one list of RGB frames per video, as the pipeline's ``output_type="pil"``."""
        vae = self.pipeline.vae
        x = latents.to(self.device, vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(x.device, x.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(x.device, x.dtype)
        video = vae.decode(x * std + mean, return_dict=False)[0]
        return [list(v) for v in self.pipeline.video_processor.postprocess_video(video.float(), output_type="pil")]

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        """The first frame of each video (grids, image rewards); :meth:`decode_samples` has every frame."""
        return [frames[0] for frames in self.decode_videos(latents)]

    def decode_samples(self, latents: torch.Tensor) -> list[dict[str, Any]]:
        """``{"image": first frame, "frames": all frames}`` per video (``Sample`` fields)."""
        return [{"image": frames[0], "frames": frames} for frames in self.decode_videos(latents)]

    def sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers import FlowMatchEulerDiscreteScheduler

        scheduler = self.pipeline.scheduler
        if not (isinstance(scheduler, FlowMatchEulerDiscreteScheduler) or scheduler.config.get("use_flow_sigmas")):
            raise ValueError(f"WanPolicy needs a flow-matching scheduler (FlowMatchEulerDiscreteScheduler or "
                             f"use_flow_sigmas=True), got {type(scheduler).__name__}")
        scheduler = copy.deepcopy(scheduler)
        scheduler.set_timesteps(num_steps, device="cpu")
        sigmas = torch.as_tensor(scheduler.sigmas).detach().float().cpu()[: num_steps + 1]
        if sigmas[-1] != 0:
            sigmas = torch.cat([sigmas[:-1], sigmas.new_zeros(1)])
        return sigmas

    @property
    def latent_shape(self) -> tuple[int, ...]:
        p = self.pipeline
        size = self.resolution // p.vae_scale_factor_spatial
        frames = (self.num_frames - 1) // p.vae_scale_factor_temporal + 1
        return (self.model.config.in_channels, frames, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        return super()._modules() + [m for m in (p.vae, p.text_encoder) if m is not None]


def tiny_wan_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int = 16, z_dim: int = 4,
                      max_length: int = 16, shift: float = 3.0, seed: int = 0) -> Any:
    """A ``WanPipeline`` (text-to-video) with random weights built from configs, offline.

    Every component is real: ``WanTransformer3DModel`` (patch ``(1, 2, 2)``), ``AutoencoderKLWan`` with one
    spatial+temporal downsampling (``scale_factor_spatial`` 2, ``scale_factor_temporal`` 2: 5 frames -> 3
    latent frames) and zero mean / unit std latents, a ``UMT5EncoderModel``, and a
    ``FlowMatchEulerDiscreteScheduler`` with ``shift`` (the Wan checkpoints ship a flow-sigma UniPC; Euler
    makes the pipeline's own loop the policy's Euler step), only tiny: the word-level tokenizer of
    :func:`~visalign.trainers.flow_policies.tiny_sd3_pipeline` (``model_max_length = max_length``).

    Example:
        >>> pipe = tiny_wan_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor_spatial, pipe.vae_scale_factor_temporal
        ('WanPipeline', 2, 2)
    """
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanPipeline,
        WanTransformer3DModel,
    )
    from transformers import UMT5Config, UMT5EncoderModel

    cfg: dict[str, Any] = {"patch_size": (1, 2, 2), "num_attention_heads": 2, "attention_head_dim": 8,
                           "in_channels": z_dim, "out_channels": z_dim, "text_dim": text_dim, "freq_dim": 16,
                           "ffn_dim": 16, "num_layers": 1, "rope_max_seq_len": 32}
    cfg.update(transformer or {})
    tokenizer = word_tokenizer(max_length)
    torch.manual_seed(seed)
    text_encoder = UMT5EncoderModel(UMT5Config(vocab_size=len(tokenizer.get_vocab()), d_model=text_dim,
                                               d_ff=2 * text_dim, d_kv=8, num_heads=2, num_layers=1,
                                               pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)).eval()
    vae = AutoencoderKLWan(base_dim=4, z_dim=z_dim, dim_mult=[1, 1], num_res_blocks=1, temperal_downsample=[True],
                           latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, scale_factor_spatial=2,
                           scale_factor_temporal=2)
    model = WanTransformer3DModel(**cfg)
    pipe = WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, transformer=model,
                       scheduler=FlowMatchEulerDiscreteScheduler(shift=shift))
    pipe.set_progress_bar_config(disable=True)
    return pipe
