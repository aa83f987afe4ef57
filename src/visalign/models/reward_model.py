"""A discriminative reward model as a module: an image backbone (open_clip, or a VLM of any family the
GRPO trainer supports) and a scalar head, with ``save_pretrained`` / ``from_pretrained`` (a LoRA model
saves its adapters and a pointer to its base by default).

The model itself lives here, below the rewards (``get_reward("model")`` loads it) and the trainers
(:mod:`visalign.trainers.reward_model` trains it with the Bradley-Terry loss and re-exports these
names). Every image goes through one torch path (:meth:`RewardModel.prepare`, then the backbone's
tensor path: open_clip's normalisation, or the VLM's own processor run on tensors), so scoring a PIL
image and differentiating with respect to an image tensor (ReFL) see the same function, for every
backbone.

Example:
    >>> image_to_tensor(Image.new("RGB", (4, 2), "white")).shape
    torch.Size([3, 2, 4])
"""

from __future__ import annotations

import copy
import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .rope import reset_rope_deltas
from .support import SUPPORTED_VLMS
from .vlm_inputs import encode_chats, model_inputs

__all__ = ["BACKBONES", "CONDITIONS", "ClipBackbone", "RewardModel", "VlmBackbone", "image_to_tensor",
           "weights_fingerprint"]

CONDITIONS = ("none", "reference", "prompt")
BACKBONES = ("open_clip", "vlm")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, open_clip's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "reward_model.json"
HEAD_NAME = "head.safetensors"
ADAPTER_NAME = "adapter.safetensors"


# ------------------------------------------------------------------------------------------- images

def image_to_tensor(image: Image.Image | torch.Tensor) -> torch.Tensor:
    """A ``(3, H, W)`` float tensor in ``[0, 1]`` from a PIL image (converted to RGB) or a tensor
    (``(3, H, W)`` floats in ``[0, 1]`` pass through).

    Example:
        >>> image_to_tensor(Image.new("RGB", (4, 2), (255, 0, 0)))[:, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"an image tensor must be (3, H, W), got {tuple(image.shape)}")
        return image
    import numpy as np

    arr = np.asarray(image.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


# ------------------------------------------------------------------------------------------- backbones

class ClipBackbone(nn.Module):
    """An open_clip model's image tower (and text tower) as a feature extractor."""

    kind = "open_clip"

    def __init__(self, net: nn.Module, model_cfg: Mapping[str, Any], tokenizer: Any = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD,
                 source: Mapping[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        # where the weights came from ({"model", "pretrained"}), None for random ones: an adapter-only save's base
        self.source = dict(source) if source is not None else None
        self.source_fingerprint = weights_fingerprint(net) if self.source is not None else None
        self.model_cfg = dict(model_cfg)
        self.tokenizer = tokenizer
        size = self.model_cfg["vision_cfg"]["image_size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = int(self.model_cfg["embed_dim"])

    @classmethod
    def create(cls, model: str | None = None, pretrained: str | None = None,
               clip_config: Mapping[str, Any] | None = None, with_text: bool = False,
               preprocess: Mapping[str, Any] | None = None) -> ClipBackbone:
        """From an open_clip name + tag / checkpoint, a ``local-dir:`` folder, or an inline config. The
        normalisation is the model's own (``visual.preprocess_cfg``: a pretrained tag's mean and std),
        unless ``preprocess`` gives ``mean`` / ``std``."""
        import open_clip

        source = None
        if clip_config is not None:
            import logging

            root = logging.getLogger()
            level = root.level
            root.setLevel(logging.ERROR)  # open_clip warns that a config without weights is random: it is meant
            try:
                with tempfile.TemporaryDirectory() as d:
                    (Path(d) / "open_clip_config.json").write_text(json.dumps({"model_cfg": dict(clip_config)}))
                    net = open_clip.create_model(f"local-dir:{d}")
            finally:
                root.setLevel(level)
            cfg = dict(clip_config)
        elif model is not None:
            if model.startswith("local-dir:"):
                folder = Path(model[len("local-dir:"):])
                cfg = json.loads((folder / "open_clip_config.json").read_text())
                cfg = cfg.get("model_cfg", cfg)
                net = open_clip.create_model(model)
                source = {"model": f"local-dir:{_pointer(folder)}", "pretrained": None}
            else:
                cfg = open_clip.get_model_config(model)
                if cfg is None:
                    raise ValueError(f"unknown open_clip model {model!r}")
                if pretrained is None:
                    import logging

                    logging.getLogger("visalign").warning(
                        "open_clip %s without `pretrained`: the backbone starts from random weights", model)
                net = open_clip.create_model(model, pretrained=pretrained)
                if pretrained is not None:
                    source = {"model": model, "pretrained": _pointer(pretrained)}
        else:
            raise ValueError("an open_clip backbone needs `model` (a name or local-dir:PATH) or `clip_config`")
        own = dict(getattr(getattr(net, "visual", None), "preprocess_cfg", None) or {})
        own.update(preprocess or {})
        mean, std = tuple(own.get("mean", CLIP_MEAN)), tuple(own.get("std", CLIP_STD))
        tokenizer = None
        if with_text:
            tokenizer = open_clip.get_tokenizer(model) if model and clip_config is None else \
                open_clip.tokenizer.SimpleTokenizer(context_length=cfg.get("text_cfg", {}).get("context_length", 77))
        else:  # the text tower is not used: drop it (fewer parameters, nothing unused under DDP)
            for name in ("transformer", "token_embedding", "ln_final", "text"):
                if hasattr(net, name):
                    setattr(net, name, None)
            for name in ("positional_embedding", "text_projection"):
                if isinstance(getattr(net, name, None), nn.Parameter):
                    delattr(net, name)
                    setattr(net, name, None)
        for name in ("logit_scale", "logit_bias"):  # contrastive-loss scalars: no part of a reward
            if isinstance(getattr(net, name, None), nn.Parameter):
                getattr(net, name).requires_grad_(False)
        return cls(net, cfg, tokenizer, mean, std, source)

    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        x = (_resize(pixels, self.image_size) - self.mean) / self.std
        return self.net.encode_image(x)

    def encode_texts(self, prompts: Sequence[str]) -> torch.Tensor:
        if self.tokenizer is None:
            raise ValueError("this open_clip backbone was built without its text tower (condition='prompt' needs it)")
        tokens = self.tokenizer(list(prompts)).to(self.mean.device)
        return self.net.encode_text(tokens)

    def save(self, directory: Path) -> None:
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        preprocess = {"mean": self.mean.flatten().tolist(), "std": self.std.flatten().tolist()}
        (directory / "open_clip_config.json").write_text(json.dumps({"model_cfg": self.model_cfg,
                                                                      "preprocess_cfg": preprocess}, indent=1))
        state = {k: v.detach().contiguous().cpu() for k, v in self.net.state_dict().items()}
        save_file(state, str(directory / "open_clip_model.safetensors"))

    @classmethod
    def load(cls, directory: Path, with_text: bool) -> ClipBackbone:
        from safetensors.torch import load_file

        saved = json.loads((directory / "open_clip_config.json").read_text())
        backbone = cls.create(clip_config=saved["model_cfg"], with_text=with_text,
                              preprocess=saved.get("preprocess_cfg"))
        backbone.net.load_state_dict(load_file(str(directory / "open_clip_model.safetensors")), strict=True)
        return backbone


class VlmBackbone(nn.Module):
    """A VLM of any family the GRPO trainer supports (:data:`~visalign.models.support.SUPPORTED_VLMS`:
    Qwen2-VL, Qwen2.5-VL, Qwen3-VL, Qwen3.5, Idefics3, SmolVLM, Gemma 3, LLaVA, LLaVA-OneVision,
    InternVL), read at the last token of a left-padded chat: ``(B, hidden_size)``.

    The chat (the reference image for ``condition="reference"``, the image, the prompt) goes through
    the family's own processor and chat template (:func:`~visalign.models.vlm_inputs.encode_chats`, the
    GRPO trainer's path), fed ``(3, S, S)`` float tensors: the pixels stay differentiable with respect
    to the input image for every family. ``image_size`` (``S``): the side the processor pins (Qwen-VL
    ``min_pixels == max_pixels``, a fixed ``height`` / ``width`` / crop, a ``longest_edge``), else 448;
    the processor then lays the image out as it does for any image (patches, tiles, anyres crops).
    ``source``: where the weights came from (a path or hub id), the base an adapter-only save points to.
    """

    kind = "vlm"

    def __init__(self, net: nn.Module, processor: Any, image_size: int | None = None,
                 source: str | None = None) -> None:
        super().__init__()
        self.net = net
        self.processor = processor
        ip = processor.image_processor
        qwen = getattr(ip, "merge_size", None) is not None  # Qwen-VL: sides in multiples of patch x merge
        self.unit = int(ip.patch_size) * int(ip.merge_size) if qwen else 1
        side = int(image_size) if image_size is not None else _native_side(ip)
        self.image_size = max(self.unit, side // self.unit * self.unit)
        self.feature_dim = int(net.config.get_text_config().hidden_size)
        model_type = getattr(net.config, "model_type", None)
        if model_type not in SUPPORTED_VLMS:
            import logging

            logging.getLogger("visalign").warning(
                "reward model backbone: model_type %r is not a VLM family visalign tests (%s); it takes the "
                "same processor path, unchecked", model_type, ", ".join(SUPPORTED_VLMS))
        if source is None:  # a model loaded with from_pretrained remembers where from
            source = getattr(net.config, "_name_or_path", None) or None
        self.source = _pointer(source)
        self.source_fingerprint = weights_fingerprint(net) if self.source is not None else None
        self._texts: dict[tuple[int, str], str] = {}

    @classmethod
    def create(cls, model: str, image_size: int | None = None) -> VlmBackbone:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return cls(AutoModelForImageTextToText.from_pretrained(model), AutoProcessor.from_pretrained(model),
                   image_size, source=model)

    @property
    def hf_model(self) -> nn.Module:
        """The transformers model (through a LoRA wrapper)."""
        return self.net.model if type(self.net).__name__ == "LoraModel" else self.net

    def features(self, pixels: torch.Tensor, references: torch.Tensor | None, prompts: Sequence[str]) -> torch.Tensor:
        """Last-token states of ``(reference?, image, prompt)`` chats; ``pixels`` / ``references``:
        ``(B, 3, S, S)`` in ``[0, 1]``."""
        if references is None:
            images = [[x] for x in pixels]
        else:
            images = [[r, x] for r, x in zip(references, pixels, strict=True)]
        batch = encode_chats(self.processor, images, list(prompts), add_generation_prompt=False,
                             text_cache=self._texts)
        hf = self.hf_model
        inner = hf.base_model  # the decoder without its LM head: last_hidden_state, final norm applied
        kwargs = model_inputs(hf, batch, pixels.device, hf.dtype)
        try:
            out = inner(**kwargs, use_cache=False)
        finally:
            reset_rope_deltas(hf)
        return out.last_hidden_state[:, -1, :]

    def save(self, directory: Path) -> None:
        self.net.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    @classmethod
    def load(cls, directory: Path, image_size: int | None) -> VlmBackbone:
        return cls.create(str(directory), image_size)


def _native_side(ip: Any) -> int:
    """The square side an image processor pins, else 448."""
    def get(obj: Any, key: str) -> Any:
        if obj is None:
            return None
        return obj.get(key) if isinstance(obj, Mapping) else getattr(obj, key, None)

    size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
    if getattr(ip, "merge_size", None) is not None:  # Qwen-VL: size holds pixel counts
        lo = getattr(ip, "min_pixels", None) or get(size, "shortest_edge")
        hi = getattr(ip, "max_pixels", None) or get(size, "longest_edge")
        return math.isqrt(int(hi)) if lo and hi and lo == hi else 448
    if getattr(ip, "do_center_crop", False) and get(crop, "height"):
        return int(get(crop, "height"))
    for key in ("height", "longest_edge", "shortest_edge"):
        if get(size, key):
            return int(get(size, key))
    return 448


def _pointer(source: Any) -> str | None:
    """A base model's address that still works from another directory: an existing local path made
    absolute, a hub id as it is."""
    if not source:
        return None
    path = Path(str(source)).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


# ------------------------------------------------------------------------------------------- the model

class RewardModel(nn.Module):
    """Backbone + scalar head. ``model(images)`` scores ``(B, 3, H, W)`` image tensors in ``[0, 1]``
    (with ``references`` of the same shape for ``condition="reference"``, ``prompts`` for
    ``"prompt"``); :meth:`score` takes PIL images. Scores are Bradley-Terry logits:
    ``sigmoid(r_a - r_b)`` is the predicted probability that ``a`` is preferred to ``b``.

    Example:
        >>> cfg = {"embed_dim": 8, "vision_cfg": {"image_size": 32, "layers": 1, "width": 16, "head_width": 8,
        ...        "patch_size": 16}, "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 8, "heads": 1,
        ...        "layers": 1}}
        >>> model = RewardModel.build(clip_config=cfg, condition="none")
        >>> model(torch.rand(2, 3, 40, 40)).shape
        torch.Size([2])
    """

    def __init__(self, backbone: ClipBackbone | VlmBackbone, condition: str = "none", head_hidden: int = 256,
                 lora: Mapping[str, Any] | None = None, difference: bool = False) -> None:
        super().__init__()
        if condition not in CONDITIONS:
            raise ValueError(f"condition must be one of {CONDITIONS}, got {condition!r}")
        if difference and (condition != "reference" or not isinstance(backbone, ClipBackbone)):
            raise ValueError("difference=True needs condition='reference' and the open_clip backbone")
        if condition == "prompt" and isinstance(backbone, ClipBackbone) and backbone.tokenizer is None:
            raise ValueError("condition='prompt' with open_clip needs the text tower (build with with_text=True)")
        self.backbone = backbone
        self.condition = condition
        self.head_hidden = int(head_hidden)
        self.lora = dict(lora) if lora else None
        self.difference = bool(difference)
        d = backbone.feature_dim
        n_in = d if (isinstance(backbone, VlmBackbone) or condition == "none") else (4 if difference else 3) * d
        self.head = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, self.head_hidden), nn.GELU(),
                                  nn.Linear(self.head_hidden, 1))
        if self.lora:
            self._add_lora(self.lora)

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def build(cls, backbone: str = "open_clip", model: str | None = None, pretrained: str | None = None,
              clip_config: Mapping[str, Any] | None = None, condition: str = "none", head_hidden: int = 256,
              image_size: int | None = None, lora: Mapping[str, Any] | None = None, seed: int = 0,
              difference: bool = False) -> RewardModel:
        """A reward model from a backbone description (see :class:`RewardModelConfig`); the head (and a
        random backbone) is initialised from ``seed``."""
        torch.manual_seed(seed)
        if backbone == "open_clip":
            bb: ClipBackbone | VlmBackbone = ClipBackbone.create(model, pretrained, clip_config,
                                                                 with_text=condition == "prompt")
            if image_size is not None and image_size != bb.image_size:
                raise ValueError(f"image_size {image_size} differs from the open_clip model's {bb.image_size}")
        elif backbone == "vlm":
            if model is None:
                raise ValueError("backbone 'vlm' needs `model` (a path or hub id of a VLM: any family the GRPO "
                                 "trainer supports, visalign.models.support.SUPPORTED_VLMS)")
            bb = VlmBackbone.create(model, image_size)
        else:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        torch.manual_seed(seed)
        return cls(bb, condition, head_hidden, lora, difference)

    def _add_lora(self, lora: Mapping[str, Any]) -> None:
        from peft import LoraConfig, LoraModel

        targets = lora.get("target_modules") or (["c_fc", "c_proj"] if isinstance(self.backbone, ClipBackbone)
                                                 else ["q_proj", "k_proj", "v_proj", "o_proj"])
        self.lora = {"r": int(lora.get("r", 16)), "alpha": int(lora.get("alpha", 32)),
                     "dropout": float(lora.get("dropout", 0.0)), "target_modules": list(targets)}
        cfg = LoraConfig(r=self.lora["r"], lora_alpha=self.lora["alpha"], lora_dropout=self.lora["dropout"],
                         target_modules=self.lora["target_modules"])
        self.backbone.net = LoraModel(self.backbone.net, cfg, "default")
        for name, p in self.backbone.net.named_parameters():
            p.requires_grad_("lora_" in name)

    @property
    def has_lora(self) -> bool:
        """Whether the backbone carries (unmerged) LoRA adapters."""
        return type(self.backbone.net).__name__ == "LoraModel"

    @property
    def device(self) -> torch.device:
        return next(self.head.parameters()).device

    # ----------------------------------------------------------------------------- scoring
    def prepare(self, images: Sequence[Image.Image | torch.Tensor]) -> torch.Tensor:
        """``(B, 3, S, S)`` tensors in ``[0, 1]`` at the backbone's input side, on the model's device."""
        size = self.backbone.image_size
        return torch.cat([_resize(image_to_tensor(im).unsqueeze(0).to(self.device), size) for im in images])

    def _head_input(self, f: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        if g is None:
            return f
        f, g = F.normalize(f, dim=-1), F.normalize(g, dim=-1)
        return torch.cat([f, f * g, (f - g) ** 2], dim=-1)

    def _check(self, n: int, references: torch.Tensor | None, prompts: Sequence[str] | None) -> list[str]:
        if self.condition == "reference" and (references is None or references.shape[0] != n):
            raise ValueError(f"condition='reference': give {n} reference images")
        if self.condition == "prompt" and (prompts is None or len(prompts) != n):
            raise ValueError(f"condition='prompt': give {n} prompts")
        return list(prompts) if prompts is not None else [""] * n

    def forward(self, images: torch.Tensor, references: torch.Tensor | None = None,
                prompts: Sequence[str] | None = None, rejected: torch.Tensor | None = None,
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores ``(B,)`` of ``images``; with ``rejected`` (a second batch, same references and
        prompts), the pair ``(r_images, r_rejected)`` from one backbone pass."""
        n = images.shape[0]
        prompts = self._check(n, references, prompts)
        size = self.backbone.image_size
        images = _resize(images, size)
        rejected = _resize(rejected, size) if rejected is not None else None
        references = _resize(references, size) if references is not None else None
        both = images if rejected is None else torch.cat([images, rejected])
        k = both.shape[0] // n
        dtype = self.head[1].weight.dtype
        if isinstance(self.backbone, VlmBackbone):
            text = [p or "Score this image." for p in prompts] * k
            refs = None if self.condition != "reference" else references.repeat(k, 1, 1, 1)
            scores = self.head(self.backbone.features(both, refs, text).to(dtype)).squeeze(-1)
        else:
            m = both.shape[0]
            parts = [both]
            if self.condition == "reference":
                parts.append(references)
                if self.difference:  # the signed difference image, 0 -> mid-gray
                    parts.append(0.5 + 0.5 * (both - references.repeat(k, 1, 1, 1)))
            feats = self.backbone.encode_images(torch.cat(parts)).to(dtype)
            f = feats[:m]
            if self.condition == "reference":
                g = feats[m:m + n].repeat(k, 1)
            elif self.condition == "prompt":
                g = self.backbone.encode_texts(prompts).to(dtype).repeat(k, 1)
            else:
                g = None
            h = self._head_input(f, g)
            if self.difference:
                h = torch.cat([h, feats[m + n:]], dim=-1)
            scores = self.head(h).squeeze(-1)
        return scores if rejected is None else (scores[:n], scores[n:])

    @torch.no_grad()
    def score(self, images: Sequence[Image.Image | torch.Tensor], references: Sequence[Any] | None = None,
              prompts: Sequence[str] | None = None, batch_size: int = 32) -> list[float]:
        """Scores of PIL images (or ``(3, H, W)`` tensors) in batches, in eval mode."""
        was = self.training
        self.eval()
        out: list[float] = []
        try:
            for i in range(0, len(images), batch_size):
                x = self.prepare(images[i:i + batch_size])
                refs = self.prepare(references[i:i + batch_size]) if self.condition == "reference" else None
                ps = prompts[i:i + batch_size] if prompts is not None else None
                out += self(x, refs, ps).float().cpu().tolist()
        finally:
            self.train(was)
        return out

    # ----------------------------------------------------------------------------- files
    def save_pretrained(self, directory: str | Path, save_adapter_only: bool | None = None) -> Path:
        """Write ``reward_model.json``, ``head.safetensors`` and the backbone, one of two ways:

        - adapter-only (a LoRA model whose base can be loaded again: a VLM path or hub id, an open_clip
          ``local-dir:`` folder or name + pretrained checkpoint): ``adapter.safetensors`` (the LoRA
          weights) and, in ``reward_model.json``, the LoRA options, a pointer to the base and a
          fingerprint of its weights; :meth:`from_pretrained` loads the base, adds the adapters, checks
          the fingerprint. Megabytes instead of the whole model.
        - full: ``backbone/`` (open_clip: config + safetensors, a ``local-dir:`` folder; VLM:
          ``save_pretrained`` + processor), LoRA adapters merged into the weights.

        ``save_adapter_only``: None (default) = adapter-only for a LoRA model with a loadable base,
        full otherwise (a full fine-tune, or a base built with random weights from a config); True =
        adapter-only or an error saying why not; False = full.
        """
        from safetensors.torch import save_file

        directory = Path(directory)
        backbone = self.backbone
        why_not = self._why_not_adapter_only()
        if save_adapter_only is None:
            save_adapter_only = why_not is None
            if why_not is not None and self.has_lora:
                import logging

                logging.getLogger("visalign").info("reward model saved whole (LoRA merged): %s", why_not)
        elif save_adapter_only and why_not is not None:
            raise ValueError(f"save_adapter_only=True: {why_not}; save it whole (save_adapter_only=False)")
        directory.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {"format": "visalign-reward-model", "version": 2, "backbone": backbone.kind,
                                "condition": self.condition, "head_hidden": self.head_hidden,
                                "difference": self.difference, "image_size": backbone.image_size,
                                "feature_dim": backbone.feature_dim}
        if save_adapter_only:
            lora = {k: v.detach().contiguous().cpu() for k, v in backbone.net.state_dict().items() if "lora_" in k}
            save_file(lora, str(directory / ADAPTER_NAME))
            meta.update(weights="adapter", lora=self.lora, base=_base_pointer(backbone),
                        base_fingerprint=backbone.source_fingerprint)
        else:
            if self.has_lora:
                backbone = copy.deepcopy(backbone)
                backbone.net = backbone.net.merge_and_unload()
            backbone.save(directory / "backbone")
            meta["weights"] = "full"
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(directory / HEAD_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
        return directory

    def _why_not_adapter_only(self) -> str | None:
        """Why this model cannot be saved as adapters + a pointer to its base (None: it can)."""
        if not self.has_lora:
            return "the backbone has no LoRA adapters (a full fine-tune: its weights are the model)"
        if getattr(self.backbone, "source", None) is None:
            return ("the base has no path, hub id or pretrained checkpoint to point to (random weights from a "
                    "config)")
        if weights_fingerprint(self.backbone.net) != self.backbone.source_fingerprint:
            return f"the base's weights changed since they were loaded from {self.backbone.source}"
        return None

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None, *,
                        base: str | None = None, check_base: bool = True) -> RewardModel:
        """Load what :meth:`save_pretrained` wrote (eval mode; on ``device``, default the CPU).

        An adapter-only save loads its base from the recorded pointer, or from ``base`` (the base moved:
        a VLM path or hub id; open_clip: the pretrained checkpoint when the pointer has one, else a
        ``local-dir:`` folder), adds the LoRA adapters unmerged, and refuses a base whose weights differ
        from the one the adapters were trained on (``check_base=False`` skips that check).
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / CONFIG_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} holds no {CONFIG_NAME}: not a saved visalign reward model")
        meta = json.loads(meta_path.read_text())
        with_text = meta["condition"] == "prompt"
        difference = bool(meta.get("difference", False))
        if meta.get("weights", "full") == "adapter":
            pointer = dict(meta["base"])
            if base is not None:
                key = "pretrained" if pointer.get("pretrained") else "model"
                pointer[key] = base
            if meta["backbone"] == "open_clip":
                bb: ClipBackbone | VlmBackbone = ClipBackbone.create(pointer["model"], pointer.get("pretrained"),
                                                                     with_text=with_text,
                                                                     preprocess=pointer.get("preprocess"))
            else:
                bb = _load_base_vlm(pointer["model"], meta.get("image_size"))
            model = cls(bb, meta["condition"], meta["head_hidden"], lora=meta["lora"], difference=difference)
            if check_base and bb.source_fingerprint != meta["base_fingerprint"]:
                raise ValueError(f"{directory}: the base backbone at {pointer} is not the one these LoRA adapters "
                                 "were trained on (its weights differ); pass base= the right one, or "
                                 "check_base=False to load anyway")
            state = load_file(str(directory / ADAPTER_NAME))
            res = model.backbone.net.load_state_dict(state, strict=False)
            missing = [k for k in res.missing_keys if "lora_" in k]
            if missing or res.unexpected_keys:
                raise ValueError(f"{directory}: the adapters do not fit the base ({len(missing)} LoRA weights "
                                 f"missing, {len(res.unexpected_keys)} unexpected; first: "
                                 f"{(missing + res.unexpected_keys)[:3]})")
        else:
            if meta["backbone"] == "open_clip":
                bb = ClipBackbone.load(directory / "backbone", with_text)
            else:
                bb = VlmBackbone.load(directory / "backbone", meta.get("image_size"))
            model = cls(bb, meta["condition"], meta["head_hidden"], difference=difference)
        model.head.load_state_dict(load_file(str(directory / HEAD_NAME)), strict=True)
        model.eval()
        return model.to(device) if device is not None else model


def _base_pointer(backbone: ClipBackbone | VlmBackbone) -> dict[str, Any]:
    if isinstance(backbone, ClipBackbone):
        return {**backbone.source, "preprocess": {"mean": backbone.mean.flatten().tolist(),
                                                  "std": backbone.std.flatten().tolist()}}
    return {"model": backbone.source}


def _load_base_vlm(model: str, image_size: int | None) -> VlmBackbone:
    try:
        return VlmBackbone.create(model, image_size)
    except OSError as exc:
        raise FileNotFoundError(f"cannot load the base VLM {model!r} these LoRA adapters point to ({exc}); "
                                "pass base= its new path or hub id") from exc


def weights_fingerprint(net: nn.Module) -> str:
    """A fingerprint of a network's weights outside its LoRA adapters (the same with the adapters added as
    without): SHA-256 over every tensor's name, shape and its first and last 64 values rounded to
    bfloat16 (so a float32 and a bfloat16 copy of one checkpoint agree). Cheap on a 7B model; two
    checkpoints that differ anywhere in those values (any two trainings) differ here.

    Example:
        >>> a, b = nn.Linear(3, 2), nn.Linear(3, 2)
        >>> weights_fingerprint(a) == weights_fingerprint(copy.deepcopy(a)), weights_fingerprint(a) == weights_fingerprint(b)
        (True, False)
    """
    import hashlib

    if type(net).__name__ == "LoraModel":
        net = net.model
    state = {k.replace(".base_layer.", "."): v for k, v in net.state_dict().items() if "lora_" not in k}
    h = hashlib.sha256()
    for name, t in sorted(state.items()):
        if not isinstance(t, torch.Tensor):
            continue
        flat = t.detach().reshape(-1)
        ends = torch.cat([flat[:64], flat[-64:]]) if flat.numel() > 128 else flat
        if ends.is_floating_point():
            ends = ends.to(torch.bfloat16).float()
        h.update(f"{name}:{tuple(t.shape)}:".encode())
        h.update(ends.cpu().double().numpy().tobytes())
    return h.hexdigest()
