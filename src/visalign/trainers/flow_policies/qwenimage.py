"""Qwen-Image: ``QwenImagePipeline`` (:class:`QwenImagePolicy`) and its tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from .base import Conditioning, FlowPolicy
from .tiny import qwen_chat_tokenizer

__all__ = ["QwenImagePolicy", "tiny_qwenimage_pipeline"]


class QwenImagePolicy(FlowPolicy):
    """A diffusers ``QwenImagePipeline`` (Qwen-Image) as a policy: the MMDiT transformer is trained.

    Prompts go through the pipeline's own ``encode_prompt`` (Qwen2.5-VL last hidden states of the prompt in
    its chat template, the template's first 34 tokens dropped, with the attention mask; an all-ones mask is
    passed as ``None``, as the pipeline does). The trainer sees unpacked latents ``(C, h, w)`` (16 channels
    for real Qwen-Image); :meth:`predict` packs them into 2x2 patches (``_pack_latents``) with
    ``img_shapes = [(1, h / 2, w / 2)]`` and unpacks the velocity. The transformer's timestep input is
    ``sigma * 1000 / 1000``, the pipeline's ``t / 1000``.

    Guidance is the pipeline's "true CFG": two forwards (the unconditional one on the negative prompt,
    default ``" "``, under ``torch.no_grad()``), ``comb = v_u + g * (v_c - v_u)``, then rescaled per packed
    token to the conditional norm, ``comb * |v_c| / |comb|`` (the pipeline's ``true_cfg_scale``).
    Guidance-embedding transformers are refused (the released Qwen-Image has none).

    Sigmas: ``linspace(1, 1 / n, n)`` through the scheduler's ``set_timesteps(sigmas=..., mu=...)`` with
    ``mu = calculate_shift(image_seq_len, ...)`` from the scheduler config (Qwen-Image: exponential time
    shift, ``shift_terminal`` 0.02), plus the final 0, as the pipeline. ``decode`` un-normalises with the
    VAE's ``latents_mean`` / ``latents_std`` and decodes one frame.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = QwenImagePolicy(tiny_qwenimage_pipeline(), resolution=16)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=4.0)
        >>> tuple(v.shape), sorted(cond.cond), policy.forwards_per_prediction(4.0)
        ((1, 4, 8, 8), ['encoder_hidden_states_mask', 'prompt_embeds'], 2)
    """

    config_options: ClassVar[tuple[str, ...]] = ("resolution", "max_sequence_length")

    def __init__(self, pipeline: Any, resolution: int = 1024, max_sequence_length: int = 512,
                 negative_prompt: str = " ") -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        if self.model.config.guidance_embeds:
            raise ValueError("QwenImagePolicy does true CFG; a guidance-embedding transformer is not supported")
        multiple = pipeline.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"Qwen-Image needs a resolution divisible by {multiple} (VAE x 2x2 packing), "
                             f"got {resolution}")
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.negative_prompt = negative_prompt

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        **kwargs: Any) -> QwenImagePolicy:
        """Load ``QwenImagePipeline.from_pretrained(path)`` (a local directory)."""
        from diffusers import QwenImagePipeline

        pipe = QwenImagePipeline.from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """The pipeline's ``timestep / 1000`` with ``timestep = sigma * 1000`` (float32)."""
        return super()._timestep(t, batch) / 1000

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        b, c, h, w = latents.shape
        packed = QwenImagePipeline._pack_latents(latents, b, c, h, w)
        mask = inputs["encoder_hidden_states_mask"]
        out = model(hidden_states=packed, timestep=timestep.to(latents.dtype), guidance=None,
                    encoder_hidden_states_mask=None if bool(mask.all()) else mask,
                    encoder_hidden_states=inputs["prompt_embeds"], img_shapes=[[(1, h // 2, w // 2)]] * b,
                    return_dict=False)[0]
        return self._unpack(out, h, w)

    def _unpack(self, packed: torch.Tensor, h: int, w: int) -> torch.Tensor:
        from diffusers import QwenImagePipeline

        scale = self.pipeline.vae_scale_factor
        return QwenImagePipeline._unpack_latents(packed, h * scale, w * scale, scale)[:, :, 0]

    def predict(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float = 1.0) -> torch.Tensor:
        """The velocity in float32; with ``guidance_scale > 1`` the pipeline's norm-preserving true CFG
        (class docstring), the unconditional forward under ``torch.no_grad()``."""
        from diffusers import QwenImagePipeline

        b = latents.shape[0]
        timestep = self._timestep(t, b)
        model = self._active_model()
        x = latents.to(self.device, self.dtype)
        v = self._forward(model, x, timestep, cond.cond)
        if guidance_scale == 1.0:
            return v.float()
        if cond.uncond is None:
            raise ValueError("guidance_scale != 1 needs an unconditional input: encode_prompts(..., guidance=True)")
        with torch.no_grad():
            v_u = self._forward(model, x, timestep, cond.uncond)
        _, c, h, w = x.shape
        packed_c = QwenImagePipeline._pack_latents(v, b, c, h, w)
        packed_u = QwenImagePipeline._pack_latents(v_u, b, c, h, w)
        comb = packed_u + guidance_scale * (packed_c - packed_u)
        comb = comb * (torch.norm(packed_c, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
        return self._unpack(comb, h, w).float()

    velocity = predict

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, mask = self.pipeline.encode_prompt(prompt=prompts, device=self.device,
                                                   max_sequence_length=self.max_sequence_length)
        if mask is None:
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=embeds.device)
        return {"prompt_embeds": embeds.to(self.dtype), "encoder_hidden_states_mask": mask}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        uncond = self._encode([self.negative_prompt] * len(prompts)) if guidance else None
        return Conditioning(self._encode(prompts), uncond, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        vae = self.pipeline.vae
        x = latents.to(self.device, vae.dtype).unsqueeze(2)
        mean = torch.tensor(vae.config.latents_mean).view(1, -1, 1, 1, 1).to(x.device, x.dtype)
        std = torch.tensor(vae.config.latents_std).view(1, -1, 1, 1, 1).to(x.device, x.dtype)
        image = vae.decode(x * std + mean, return_dict=False)[0][:, :, 0]
        return self.pipeline.image_processor.postprocess(image.float(), output_type="pil")

    def sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.qwenimage.pipeline_qwenimage import calculate_shift

        scheduler = copy.deepcopy(self.pipeline.scheduler)
        config = scheduler.config
        _, h, w = self.latent_shape
        mu = calculate_shift((h // 2) * (w // 2), config.get("base_image_seq_len", 256),
                             config.get("max_image_seq_len", 4096), config.get("base_shift", 0.5),
                             config.get("max_shift", 1.15))
        scheduler.set_timesteps(sigmas=np.linspace(1.0, 1 / num_steps, num_steps).tolist(), device="cpu", mu=mu)
        return scheduler.sigmas.detach().float().cpu()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor
        return (self.pipeline.vae.config.z_dim, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        return super()._modules() + [m for m in (p.vae, p.text_encoder) if m is not None]


def tiny_qwen25vl_text_encoder(vocab_size: int, hidden_size: int = 16, seed: int = 0) -> Any:
    """A ``Qwen2_5_VLForConditionalGeneration`` with random weights: one text layer (mrope sections
    ``[1, 1, 2]``), a one-block vision tower that text-only prompts never run; vision token ids past the
    small vocabulary."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config={"vocab_size": vocab_size, "hidden_size": hidden_size, "intermediate_size": 2 * hidden_size,
                     "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
                     "max_position_embeddings": 256,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [1, 1, 2], "rope_theta": 10000.0}},
        vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2,
                       "out_hidden_size": hidden_size, "patch_size": 4, "spatial_merge_size": 1,
                       "temporal_patch_size": 1},
        image_token_id=vocab_size + 1, video_token_id=vocab_size + 2, vision_start_token_id=vocab_size + 3,
        vision_end_token_id=vocab_size + 4, bos_token_id=None, eos_token_id=None, pad_token_id=None)
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def tiny_qwenimage_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int = 16, z_dim: int = 4,
                            seed: int = 0) -> Any:
    """A ``QwenImagePipeline`` with random weights built from configs, offline.

    Every component is real (``QwenImageTransformer2DModel``, ``AutoencoderKLQwenImage`` with one 2x
    spatial downsampling and no temporal one, zero mean / unit std latents, a
    ``Qwen2_5_VLForConditionalGeneration`` text encoder, and Qwen-Image's ``FlowMatchEulerDiscreteScheduler``
    settings: dynamic exponential shift, base/max shift 0.5/0.9, image sequence 256..8192, ``shift_terminal``
    0.02), only tiny: :func:`~visalign.trainers.flow_policies.tiny.qwen_chat_tokenizer`. ``transformer`` overrides the transformer config; its
    ``in_channels`` is ``4 * z_dim`` (2x2 packing) and ``joint_attention_dim`` the text width.

    Example:
        >>> pipe = tiny_qwenimage_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor, pipe.transformer.config.in_channels
        ('QwenImagePipeline', 2, 16)
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )

    cfg: dict[str, Any] = {"patch_size": 2, "in_channels": 4 * z_dim, "out_channels": z_dim, "num_layers": 1,
                           "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": text_dim,
                           "axes_dims_rope": (4, 6, 6)}
    cfg.update(transformer or {})
    tokenizer = qwen_chat_tokenizer()
    text_encoder = tiny_qwen25vl_text_encoder(len(tokenizer.get_vocab()), cfg["joint_attention_dim"], seed)
    torch.manual_seed(seed + 1)
    model = QwenImageTransformer2DModel(**cfg)
    vae = AutoencoderKLQwenImage(base_dim=8, z_dim=z_dim, dim_mult=[1, 2], num_res_blocks=1, temperal_downsample=[False],
                                 latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
                                                base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02,
                                                time_shift_type="exponential")
    pipe = QwenImagePipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                             transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe
