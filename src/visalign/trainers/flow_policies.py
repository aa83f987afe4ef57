"""Flow-matching policies for the Flow-GRPO trainer: one interface, one class per model family.

The trainer (:mod:`visalign.trainers.flow`) never touches a pipeline: it asks a :class:`FlowPolicy` for

- ``encode_prompts(prompts) -> Conditioning`` (the conditional and, for CFG, the unconditional input),
- ``velocity(latents, sigma, cond, guidance_scale) -> velocity`` (CFG inside, see below),
- ``sigmas(num_steps)`` (the sampling schedule, from 1 down to 0),
- ``decode(latents) -> list[PIL.Image]``, ``latent_shape``,
- ``trainable_parameters()``, ``add_lora(...)`` / ``set_full_finetune()``, and ``reference()``, a
  context in which ``velocity`` is the frozen reference policy (LoRA adapter disabled, or a frozen
  copy for a full fine-tune).

Rectified-flow convention, shared by every policy here and by ``scripts/make_tiny_flow_model.py``:
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
- :class:`ClassConditionalFlowPolicy`: a class-conditional diffusers ``UNet2DModel`` in pixel space
  (images in ``[-1, 1]``); prompts map to class ids through a caption list (``classes.json``).

:func:`load_flow_policy` picks the class from a directory; :func:`tiny_sd3_pipeline` builds a random
SD3 pipeline of any size from configs, offline (tests, benchmarks).
"""

from __future__ import annotations

import contextlib
import copy
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

__all__ = [
    "ClassConditionalFlowPolicy",
    "Conditioning",
    "FlowPolicy",
    "SD3Policy",
    "load_flow_policy",
    "tiny_sd3_pipeline",
]

NUM_TRAIN_TIMESTEPS = 1000


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
    """A rectified-flow text-to-image model seen by the trainer (module docstring).

    Subclasses set ``self.model`` (the denoiser that is trained), implement :meth:`_forward`,
    :meth:`encode_prompts`, :meth:`decode`, :meth:`sigmas` and :attr:`latent_shape`, and may override
    :attr:`default_lora_targets`.
    """

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

    @abstractmethod
    def sigmas(self, num_steps: int) -> torch.Tensor:
        """The ``num_steps + 1`` sigmas of the sampling schedule, 1 down to 0 (float32, CPU)."""

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

    def velocity(self, latents: torch.Tensor, sigma: torch.Tensor | float, cond: Conditioning,
                 guidance_scale: float = 1.0) -> torch.Tensor:
        """The (guided) velocity at ``latents`` and noise level ``sigma``, in float32.

        ``sigma``: a float or a ``(B,)`` tensor; the model sees ``timestep = sigma * 1000``. With
        ``guidance_scale > 1`` the unconditional branch runs as its own forward pass under
        ``torch.no_grad()``: ``v = v_u + g * (v_c - v_u)``.
        """
        b = latents.shape[0]
        sigma_t = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).expand(b)
        timestep = (sigma_t * NUM_TRAIN_TIMESTEPS).to(self.device)
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

    def _active_model(self) -> torch.nn.Module:
        if self._in_reference and self._reference_model is not None:
            return self._reference_model
        return self.model

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        """Within this context :meth:`velocity` is the reference policy: the LoRA adapter disabled,
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


# --------------------------------------------------------------------------------------------- SD3


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
        vae = self.pipeline.vae
        x = latents.to(self.device, vae.dtype) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(x, return_dict=False)[0]
        return self.pipeline.image_processor.postprocess(image.float(), output_type="pil")

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


# ------------------------------------------------------------------------------ class-conditional UNet


def _normalise_caption(text: str) -> str:
    return " ".join(text.lower().split())


class ClassConditionalFlowPolicy(FlowPolicy):
    """A class-conditional diffusers ``UNet2DModel`` trained with rectified flow, in pixel space.

    ``classes[i]`` is the caption of class ``i``; a prompt must equal one caption (case and spaces
    ignored). Latents are the images, ``[-1, 1]``. CFG needs a null class: ``null_class`` (default:
    ``len(classes)`` when the model has more class embeddings than captions, else none, and then
    ``guidance_scale`` must be 1). Sigmas are ``linspace(1, 0, steps + 1)`` (plain Euler schedule).
    LoRA targets the ResNet convolutions (``conv1``, ``conv2``) and any attention projections.

    Example (random weights):
        >>> from diffusers import UNet2DModel
        >>> unet = UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
        ...                    layers_per_block=1, down_block_types=("DownBlock2D", "DownBlock2D"),
        ...                    up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4, num_class_embeds=2)
        >>> policy = ClassConditionalFlowPolicy(unet, ["a red circle", "a blue square"])
        >>> cond = policy.encode_prompts(["A blue  square"], guidance=False)
        >>> cond.cond["class_labels"].tolist(), len(policy.decode(torch.zeros(1, 3, 8, 8)))
        ([1], 1)
    """

    def __init__(self, unet: torch.nn.Module, classes: Sequence[str], null_class: int | None = None) -> None:
        self.model = unet.eval()
        self.classes = list(classes)
        n_embeds = unet.config.num_class_embeds
        if n_embeds is None or n_embeds < len(self.classes):
            raise ValueError(f"the UNet has {n_embeds} class embeddings for {len(self.classes)} captions")
        if null_class is None and n_embeds > len(self.classes):
            null_class = len(self.classes)
        self.null_class = null_class
        self._index = {_normalise_caption(c): i for i, c in enumerate(self.classes)}

    @classmethod
    def from_pretrained(cls, path: str | Path, *, torch_dtype: torch.dtype | None = None,
                        null_class: int | None = None) -> ClassConditionalFlowPolicy:
        """Load ``UNet2DModel.from_pretrained(path)`` and ``path/classes.json`` (a list of captions)."""
        from diffusers import UNet2DModel

        path = Path(path)
        unet = UNet2DModel.from_pretrained(str(path), torch_dtype=torch_dtype)
        classes = json.loads((path / "classes.json").read_text())
        return cls(unet, classes, null_class)

    @property
    def default_lora_targets(self) -> list[str]:
        names = {n.rsplit(".", 1)[-1] for n, _ in self.model.named_modules()}
        attention = [t for t in ("to_q", "to_k", "to_v") if t in names]
        return ["conv1", "conv2", *attention, *(["to_out.0"] if attention else [])]

    def _forward(self, model: torch.nn.Module, latents: torch.Tensor, timestep: torch.Tensor,
                 inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return model(latents, timestep, class_labels=inputs["class_labels"]).sample

    def class_id(self, prompt: str) -> int:
        """The class of a caption; ValueError listing the captions when there is none."""
        try:
            return self._index[_normalise_caption(prompt)]
        except KeyError:
            raise ValueError(f"prompt {prompt!r} is not one of the model's captions: {self.classes}") from None

    def encode_prompts(self, prompts: Sequence[str], *, guidance: bool = True) -> Conditioning:
        prompts = list(prompts)
        labels = torch.tensor([self.class_id(p) for p in prompts], dtype=torch.long, device=self.device)
        uncond = None
        if guidance and self.null_class is not None:
            uncond = {"class_labels": torch.full_like(labels, self.null_class)}
        return Conditioning({"class_labels": labels}, uncond, prompts)

    def decode(self, latents: torch.Tensor) -> list[Image.Image]:
        arr = ((latents.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return [Image.fromarray(a) for a in arr.permute(0, 2, 3, 1).cpu().numpy()]

    def sigmas(self, num_steps: int) -> torch.Tensor:
        return torch.linspace(1.0, 0.0, num_steps + 1)

    @property
    def latent_shape(self) -> tuple[int, ...]:
        size = self.model.config.sample_size
        size = size if isinstance(size, (tuple, list)) else (size, size)
        return (self.model.config.in_channels, *size)


# --------------------------------------------------------------------------------------------- loading


def load_flow_policy(path: str | Path, *, torch_dtype: torch.dtype | None = None, **kwargs: Any) -> FlowPolicy:
    """A policy from a local directory: an SD3 pipeline (``model_index.json`` naming
    ``StableDiffusion3Pipeline``) or a class-conditional UNet (``config.json`` + ``classes.json``,
    directly or under ``unet/``). ``kwargs`` go to the policy (``resolution``, ``max_sequence_length``
    for SD3; ``null_class`` for the UNet)."""
    path = Path(path)
    index = path / "model_index.json"
    if index.exists():
        name = json.loads(index.read_text()).get("_class_name", "")
        if "StableDiffusion3" in name:
            return SD3Policy.from_pretrained(path, torch_dtype=torch_dtype, **kwargs)
        raise ValueError(f"{path}: pipeline {name!r} is not supported yet (StableDiffusion3Pipeline is)")
    for candidate in (path, path / "unet"):
        if (candidate / "config.json").exists() and ((candidate / "classes.json").exists()
                                                     or (path / "classes.json").exists()):
            policy = ClassConditionalFlowPolicy.from_pretrained(candidate, torch_dtype=torch_dtype, **kwargs) \
                if (candidate / "classes.json").exists() else None
            if policy is None:
                from diffusers import UNet2DModel

                unet = UNet2DModel.from_pretrained(str(candidate), torch_dtype=torch_dtype)
                policy = ClassConditionalFlowPolicy(unet, json.loads((path / "classes.json").read_text()), **kwargs)
            return policy
    raise ValueError(f"{path}: neither a StableDiffusion3Pipeline directory (model_index.json) nor a "
                     "class-conditional UNet directory (config.json + classes.json)")


# ----------------------------------------------------------------------------- random tiny pipelines

_WORDS = ["a", "an", "the", "of", "photo", "picture", "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "circle", "square", "triangle", "star", "cat", "dog", "car", "house", "tree", "small", "big", "on", "in", "with", "and"]


def _clip_tokenizer(directory: Path, max_length: int) -> Any:
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in _WORDS:
        vocab[w + "</w>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def _word_tokenizer(max_length: int) -> Any:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(_WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


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
    tokenizer = _clip_tokenizer(directory, clip_max_length)
    torch.manual_seed(seed)
    encoders = []
    for p in proj:
        conf = CLIPTextConfig(bos_token_id=0, eos_token_id=1, pad_token_id=1, hidden_size=text_dim,
                              intermediate_size=2 * text_dim, num_attention_heads=2, num_hidden_layers=2,
                              vocab_size=len(tokenizer.get_vocab()), projection_dim=p,
                              max_position_embeddings=clip_max_length)
        encoders.append(CLIPTextModelWithProjection(conf))
    t5 = T5EncoderModel(T5Config(vocab_size=len(_WORDS) + 3, d_model=t5_dim, d_ff=2 * text_dim, d_kv=8,
                                 num_heads=2, num_layers=1, pad_token_id=0, eos_token_id=1))
    n = len(vae_channels)
    vae = AutoencoderKL(in_channels=3, out_channels=3, block_out_channels=tuple(vae_channels), layers_per_block=1,
                        down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
                        latent_channels=cfg["in_channels"], norm_num_groups=1, use_quant_conv=False,
                        use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035)
    model = SD3Transformer2DModel(**cfg)
    pipe = StableDiffusion3Pipeline(transformer=model, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae,
                                    text_encoder=encoders[0], tokenizer=tokenizer, text_encoder_2=encoders[1],
                                    tokenizer_2=tokenizer, text_encoder_3=t5, tokenizer_3=_word_tokenizer(256))
    pipe.set_progress_bar_config(disable=True)
    return pipe


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
