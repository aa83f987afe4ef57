"""Denoising policies for the Flow-GRPO trainer: one interface, one module per model family.

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
- ``decode(latents) -> list[PIL.Image]``, ``decode_samples(latents)`` (the ``Sample`` fields: the image,
  and ``frames`` for video policies), ``latent_shape``,
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
- :class:`StableDiffusionXLPolicy`: a diffusers ``StableDiffusionXLPipeline`` (two CLIP encoders, pooled
  embeddings and time ids as added conditions), sampled with DDIM like SD1.5.
- :class:`QwenImagePolicy`: a diffusers ``QwenImagePipeline`` (Qwen2.5-VL prompt embeddings with masks,
  packed 2x2 latents, the pipeline's norm-preserving true CFG, exponential time shift).
- :class:`Flux2Policy`: a diffusers ``Flux2Pipeline`` (FLUX.2 dev: Mistral-3 hidden states 10/20/30 through
  the Pixtral processor's chat template, patchified and batch-normed latents, guidance embedded, 1 NFE, the
  empirical ``mu``); :class:`Flux2KleinPolicy`, its subclass, a ``Flux2KleinPipeline`` (Qwen3 hidden states
  9/18/27, two-pass CFG).
- :class:`WanPolicy`: a diffusers ``WanPipeline`` (Wan 2.x text-to-video, one transformer): UMT5 prompts,
  5-D video latents, two-pass CFG; a sample's frames reach the rewards as ``Sample.frames``.

Layout (as diffusers keeps one scheduler a file): :mod:`.base` holds the interface and what families
share (the VAE decode, :func:`image_grid`); each family's module holds its policy and its tiny offline
builder (``tiny_*_pipeline``: random weights from the real config classes); :mod:`.registry` maps a
pipeline class name to its policy (:data:`POLICIES`), and :func:`load_flow_policy` picks the class from a
directory's ``model_index.json``. A new family is one module and one registry line.
"""
from .base import NUM_TRAIN_TIMESTEPS, Conditioning, FlowPolicy, image_grid, vae_decode
from .class_unet import ClassConditionalFlowPolicy
from .flux import FluxPolicy, tiny_flux_pipeline
from .flux2 import Flux2KleinPolicy, Flux2Policy, tiny_flux2_klein_pipeline, tiny_flux2_pipeline
from .qwenimage import QwenImagePolicy, tiny_qwenimage_pipeline
from .registry import POLICIES, flow_policy_class, load_flow_policy, policy_class_for_pipeline
from .sana import SanaPolicy, tiny_sana_pipeline
from .sd3 import SD3Policy, tiny_sd3_pipeline
from .sdxl import StableDiffusionXLPolicy, tiny_sdxl_pipeline
from .stable_diffusion import StableDiffusionPolicy, tiny_sd15_pipeline
from .wan import WanPolicy, tiny_wan_pipeline

__all__ = [
    "NUM_TRAIN_TIMESTEPS",
    "POLICIES",
    "ClassConditionalFlowPolicy",
    "Conditioning",
    "FlowPolicy",
    "Flux2KleinPolicy",
    "Flux2Policy",
    "FluxPolicy",
    "QwenImagePolicy",
    "SD3Policy",
    "SanaPolicy",
    "StableDiffusionPolicy",
    "StableDiffusionXLPolicy",
    "WanPolicy",
    "flow_policy_class",
    "image_grid",
    "load_flow_policy",
    "policy_class_for_pipeline",
    "tiny_flux2_klein_pipeline",
    "tiny_flux2_pipeline",
    "tiny_flux_pipeline",
    "tiny_qwenimage_pipeline",
    "tiny_sana_pipeline",
    "tiny_sd3_pipeline",
    "tiny_sd15_pipeline",
    "tiny_sdxl_pipeline",
    "tiny_wan_pipeline",
    "vae_decode",
]
