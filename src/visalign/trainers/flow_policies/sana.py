"""Sana: ``SanaPipeline`` (:class:`SanaPolicy`) and its tiny offline builder."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from .base import Conditioning, FlowPolicy, vae_decode
from .tiny import WORDS

__all__ = ["SanaPolicy", "tiny_sana_pipeline"]

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
        return vae_decode(self.pipeline, latents, self.device)

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
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
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

