"""FLUX.2: ``Flux2Pipeline`` (:class:`Flux2Policy`, guidance-distilled) and ``Flux2KleinPipeline``
(:class:`Flux2KleinPolicy`, classifier-free guidance), and their tiny offline builders."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from PIL import Image

from .base import Conditioning, FlowPolicy
from .tiny import mistral_chat_tokenizer, qwen_chat_tokenizer

__all__ = ["Flux2KleinPolicy", "Flux2Policy", "tiny_flux2_klein_pipeline", "tiny_flux2_pipeline"]


class Flux2Policy(FlowPolicy):
    """A diffusers ``Flux2Pipeline`` (FLUX.2 dev) as a policy: the transformer is trained.

    Latents: the trainer sees the pipeline's own noise space, the VAE latents *patchified* 2x2 and
    batch-norm normalised, ``(4 * C, h / 2, w / 2)`` (128 channels for real FLUX.2); :meth:`predict` packs them
    to tokens (``_pack_latents``, row-major, with ``_prepare_latent_ids``) and back. Prompts go through the
    pipeline's own ``encode_prompt`` (stacked intermediate hidden states of the text encoder) with its
    ``text_ids``. The timestep input is ``sigma * 1000 / 1000``, the pipeline's ``t / 1000``.

    Guidance: FLUX.2 dev is guidance-distilled: ``guidance_scale`` is its guidance-embedding input, one
    forward (1 NFE), no ``uncond``. Sigmas: ``linspace(1, 1 / n, n)`` through the scheduler's
    ``set_timesteps(sigmas=..., mu=compute_empirical_mu(image_seq_len, n))``, plus the final 0, as the
    pipeline. ``decode`` undoes the VAE's batch norm (``bn.running_mean`` / ``running_var``), unpatchifies
    and decodes.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = Flux2Policy(tiny_flux2_pipeline(), resolution=16, max_sequence_length=48)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=4.0)
        >>> tuple(v.shape), sorted(cond.cond), cond.uncond is None, policy.forwards_per_prediction(4.0)
        ((1, 16, 4, 4), ['prompt_embeds', 'txt_ids'], True, 1)
    """

    config_options: ClassVar[tuple[str, ...]] = ("resolution", "max_sequence_length")
    pipeline_class: ClassVar[str] = "Flux2Pipeline"

    def __init__(self, pipeline: Any, resolution: int = 1024, max_sequence_length: int = 512) -> None:
        self.pipeline = pipeline
        pipeline.set_progress_bar_config(disable=True)
        self.model = pipeline.transformer
        self.model.eval()
        for module in (pipeline.vae, pipeline.text_encoder):
            if module is not None:
                module.requires_grad_(False).eval()
        multiple = pipeline.vae_scale_factor * 2
        if resolution % multiple:
            raise ValueError(f"FLUX.2 needs a resolution divisible by {multiple} (VAE x 2x2 patches), got {resolution}")
        self.resolution = resolution
        self.max_sequence_length = max_sequence_length
        self.guidance_embeds = bool(self.model.config.guidance_embeds)

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> Any:
        """Load the pipeline (``diffusers.<pipeline_class>.from_pretrained(path)``, a local directory)."""
        import diffusers

        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(str(path), torch_dtype=torch_dtype)
        return cls(pipe, **kwargs)

    def forwards_per_prediction(self, guidance_scale: float) -> int:
        """Guidance is an embedding input: one forward whatever the scale."""
        return 1

    def _timestep(self, t: torch.Tensor | float, batch: int) -> torch.Tensor:
        """The pipeline's ``timestep / 1000`` with ``timestep = sigma * 1000`` (float32)."""
        return super()._timestep(t, batch) / 1000

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor], guidance: torch.Tensor | None = None) -> torch.Tensor:
        pipe = type(self.pipeline)
        b, c, h, w = latents.shape
        img_ids = pipe._prepare_latent_ids(latents).to(latents.device)
        out = model(hidden_states=pipe._pack_latents(latents), timestep=timestep.to(latents.dtype), guidance=guidance,
                    encoder_hidden_states=inputs["prompt_embeds"], txt_ids=inputs["txt_ids"], img_ids=img_ids,
                    return_dict=False)[0]
        return out[:, : h * w].permute(0, 2, 1).reshape(b, c, h, w)

    def predict(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float = 1.0) -> torch.Tensor:
        """The velocity in float32, one forward with ``guidance = guidance_scale`` as the embedding input."""
        b = latents.shape[0]
        guidance = None
        if self.guidance_embeds:
            guidance = torch.full((b,), float(guidance_scale), device=self.device, dtype=torch.float32)
        elif guidance_scale != 1.0:
            raise ValueError(f"this FLUX.2 transformer has no guidance embeddings: guidance_scale must be 1, "
                             f"got {guidance_scale}")
        x = latents.to(self.device, self.dtype)
        return self._forward(self._active_model(), x, self._timestep(t, b), cond.cond, guidance).float()

    velocity = predict

    def _encode(self, prompts: list[str]) -> dict[str, torch.Tensor]:
        embeds, text_ids = self.pipeline.encode_prompt(prompt=prompts, device=self.device,
                                                       max_sequence_length=self.max_sequence_length)
        return {"prompt_embeds": embeds.to(self.dtype), "txt_ids": text_ids}

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        """Prompt embeddings and text ids; no ``uncond`` (guidance is embedded), whatever ``guidance`` says."""
        prompts = list(prompts)
        return Conditioning(self._encode(prompts), None, prompts)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        pipe, vae = self.pipeline, self.pipeline.vae
        x = latents.to(self.device, vae.dtype)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(x.device, x.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(x.device, x.dtype)
        image = vae.decode(type(pipe)._unpatchify_latents(x * std + mean), return_dict=False)[0]
        return pipe.image_processor.postprocess(image.float(), output_type="pil")

    def sigmas(self, num_steps: int) -> torch.Tensor:
        from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu

        scheduler = copy.deepcopy(self.pipeline.scheduler)
        _, h, w = self.latent_shape
        mu = compute_empirical_mu(image_seq_len=h * w, num_steps=num_steps)
        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else \
            np.linspace(1.0, 1 / num_steps, num_steps).tolist()
        scheduler.set_timesteps(num_steps if sigmas is None else None, device="cpu", sigmas=sigmas, mu=mu)
        return scheduler.sigmas.detach().float().cpu()

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.resolution // self.pipeline.vae_scale_factor // 2
        return (self.model.config.in_channels, size, size)

    def _modules(self) -> list[torch.nn.Module]:
        p = self.pipeline
        return super()._modules() + [m for m in (p.vae, p.text_encoder) if m is not None]


class Flux2KleinPolicy(Flux2Policy):
    """A diffusers ``Flux2KleinPipeline`` (FLUX.2 [klein], Qwen3 text encoder) as a policy: as
    :class:`Flux2Policy` (latents, schedule, decode), but with classifier-free guidance: the negative
    prompt ``""`` in a second forward under ``torch.no_grad()``, ``v_u + g * (v_c - v_u)``, as the
    pipeline. A step-distilled checkpoint (``is_distilled``) does no CFG: ``guidance_scale`` must be 1.

    Example (a random tiny pipeline, no weights needed):
        >>> policy = Flux2KleinPolicy(tiny_flux2_klein_pipeline(), resolution=16)
        >>> cond = policy.encode_prompts(["a red circle"])
        >>> v = policy.velocity(torch.zeros(1, *policy.latent_shape), 1.0, cond, guidance_scale=4.0)
        >>> tuple(v.shape), sorted(cond.cond), policy.forwards_per_prediction(4.0)
        ((1, 16, 4, 4), ['prompt_embeds', 'txt_ids'], 2)
    """

    pipeline_class: ClassVar[str] = "Flux2KleinPipeline"

    def __init__(self, pipeline: Any, resolution: int = 1024, max_sequence_length: int = 512,
                 negative_prompt: str = "") -> None:
        super().__init__(pipeline, resolution=resolution, max_sequence_length=max_sequence_length)
        self.negative_prompt = negative_prompt
        self.is_distilled = bool(pipeline.config.get("is_distilled", False))

    def forwards_per_prediction(self, guidance_scale: float) -> int:
        return 2 if guidance_scale != 1.0 else 1

    def predict(self, latents: torch.Tensor, t: torch.Tensor | float, cond: Conditioning,
                guidance_scale: float = 1.0) -> torch.Tensor:
        if self.is_distilled and guidance_scale != 1.0:
            raise ValueError(f"a distilled FLUX.2 [klein] does no classifier-free guidance: guidance_scale must "
                             f"be 1, got {guidance_scale}")
        return FlowPolicy.predict(self, latents, t, cond, guidance_scale)

    velocity = predict

    @torch.no_grad()
    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        uncond = self._encode([self.negative_prompt] * len(prompts)) if guidance and not self.is_distilled else None
        return Conditioning(self._encode(prompts), uncond, prompts)


_QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}{% endif %}")


def tiny_flux2_klein_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int = 8,
                              latent_channels: int = 4, vae_channels: Sequence[int] = (4, 8),
                              max_length: int = 16, is_distilled: bool = False, seed: int = 0) -> Any:
    """A ``Flux2KleinPipeline`` with random weights built from configs, offline.

    Every component is real: ``Flux2Transformer2DModel`` (no guidance embeddings, as Klein; 4-axis RoPE),
    ``AutoencoderKLFlux2`` (its batch norm over the patchified latents), a ``Qwen3ForCausalLM`` text encoder
    with 28 layers (the pipeline stacks hidden states 9, 18 and 27, its default) of width ``text_dim``, and
    ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting (the pipeline passes ``mu``), only tiny:
    :func:`~visalign.trainers.flow_policies.tiny.qwen_chat_tokenizer` with a Qwen3-style chat template
    (``enable_thinking=False`` adds the empty think block), ``model_max_length = max_length``.
    ``transformer`` overrides the transformer config; ``in_channels`` is ``4 * latent_channels``.

    Example:
        >>> pipe = tiny_flux2_klein_pipeline()
        >>> type(pipe).__name__, pipe.vae_scale_factor, pipe.transformer.config.in_channels
        ('Flux2KleinPipeline', 2, 16)
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2KleinPipeline,
        Flux2Transformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3ForCausalLM

    cfg: dict[str, Any] = {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": 1, "num_single_layers": 1,
                           "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 3 * text_dim,
                           "timestep_guidance_channels": 16, "axes_dims_rope": (4, 4, 4, 4), "guidance_embeds": False}
    cfg.update(transformer or {})
    tokenizer = qwen_chat_tokenizer(max_length, chat_template=_QWEN3_CHAT_TEMPLATE)
    torch.manual_seed(seed)
    text_encoder = Qwen3ForCausalLM(Qwen3Config(
        vocab_size=len(tokenizer.get_vocab()), hidden_size=text_dim, intermediate_size=2 * text_dim,
        num_hidden_layers=28, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
        max_position_embeddings=256, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)).eval()
    n = len(vae_channels)
    vae = AutoencoderKLFlux2(block_out_channels=tuple(vae_channels), down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=1, latent_channels=latent_channels,
                             norm_num_groups=2, sample_size=32, mid_block_add_attention=False)
    model = Flux2Transformer2DModel(**cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                              transformer=model, is_distilled=is_distilled)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def tiny_flux2_pipeline(transformer: dict[str, Any] | None = None, *, text_dim: int = 8, latent_channels: int = 4,
                        vae_channels: Sequence[int] = (4, 8), max_length: int = 512, seed: int = 0) -> Any:
    """A ``Flux2Pipeline`` (FLUX.2 dev) with random weights built from configs, offline.

    Every component is real: ``Flux2Transformer2DModel`` with guidance embeddings (as dev; 4-axis RoPE),
    ``AutoencoderKLFlux2`` (its batch norm over the patchified latents), a ``Mistral3ForConditionalGeneration``
    text encoder (``Mistral3Config``: a ``MistralConfig`` text model with 31 layers of width ``text_dim``, so
    that the pipeline's default hidden states 10, 20 and 30 exist, and a one-layer ``PixtralVisionConfig``
    tower), a ``PixtralProcessor`` as the tokenizer (the pipeline calls its ``apply_chat_template`` with its
    own system message) and ``FlowMatchEulerDiscreteScheduler`` with dynamic shifting (the pipeline passes
    ``mu``), only tiny: :func:`~visalign.trainers.flow_policies.tiny.mistral_chat_tokenizer`, a BPE trained
    here on the pipeline's system message and the small word list (the message takes 28 tokens, so prompts
    fit in ``max_sequence_length=48``), ``model_max_length = max_length``. ``transformer`` overrides the
    transformer config; ``in_channels`` is ``4 * latent_channels``.

    Example:
        >>> pipe = tiny_flux2_pipeline()
        >>> type(pipe).__name__, type(pipe.tokenizer).__name__, pipe.transformer.config.guidance_embeds
        ('Flux2Pipeline', 'PixtralProcessor', True)
    """
    from diffusers import (
        AutoencoderKLFlux2,
        FlowMatchEulerDiscreteScheduler,
        Flux2Pipeline,
        Flux2Transformer2DModel,
    )
    from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
    from transformers import (
        Mistral3Config,
        Mistral3ForConditionalGeneration,
        MistralConfig,
        PixtralImageProcessor,
        PixtralProcessor,
        PixtralVisionConfig,
    )

    cfg: dict[str, Any] = {"patch_size": 1, "in_channels": 4 * latent_channels, "num_layers": 1, "num_single_layers": 1,
                           "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": 3 * text_dim,
                           "timestep_guidance_channels": 16, "axes_dims_rope": (4, 4, 4, 4), "guidance_embeds": True}
    cfg.update(transformer or {})
    tokenizer = mistral_chat_tokenizer([SYSTEM_MESSAGE], max_length)
    processor = PixtralProcessor(image_processor=PixtralImageProcessor(patch_size=4, size={"longest_edge": 16}),
                                 tokenizer=tokenizer, patch_size=4, spatial_merge_size=2,
                                 chat_template=tokenizer.chat_template)
    ids = {name: tokenizer.convert_tokens_to_ids(t) for name, t in
           (("bos_token_id", "<s>"), ("eos_token_id", "</s>"), ("pad_token_id", "<pad>"))}
    torch.manual_seed(seed)
    text_config = MistralConfig(vocab_size=len(tokenizer), hidden_size=text_dim, intermediate_size=2 * text_dim,
                                num_hidden_layers=31, num_attention_heads=2, num_key_value_heads=1, head_dim=4,
                                max_position_embeddings=max(256, max_length), sliding_window=None, **ids)
    vision_config = PixtralVisionConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                                        head_dim=4, patch_size=4, image_size=16)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config=text_config, vision_config=vision_config, spatial_merge_size=2,
        image_token_index=tokenizer.convert_tokens_to_ids("[IMG]"))).eval()
    n = len(vae_channels)
    vae = AutoencoderKLFlux2(block_out_channels=tuple(vae_channels), down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, layers_per_block=1, latent_channels=latent_channels,
                             norm_num_groups=2, sample_size=32, mid_block_add_attention=False)
    model = Flux2Transformer2DModel(**cfg)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
                                                base_image_seq_len=256, max_image_seq_len=4096)
    pipe = Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=processor,
                         transformer=model)
    pipe.set_progress_bar_config(disable=True)
    return pipe
