"""A discriminative reward model as a module: an image backbone (open_clip or a Qwen2-VL-family VLM)
and a scalar head, with ``save_pretrained`` / ``from_pretrained``.

The model itself lives here, below the rewards (``get_reward("model")`` loads it) and the trainers
(:mod:`visalign.trainers.reward_model` trains it with the Bradley-Terry loss and re-exports these
names). Every image goes through one torch path (:meth:`RewardModel.prepare`), so scoring a PIL image
and differentiating with respect to an image tensor (ReFL) see the same function.

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

__all__ = ["BACKBONES", "CONDITIONS", "ClipBackbone", "RewardModel", "VlmBackbone", "image_to_tensor",
           "qwen2vl_patchify"]

CONDITIONS = ("none", "reference", "prompt")
BACKBONES = ("open_clip", "vlm")
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's, open_clip's default
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CONFIG_NAME = "reward_model.json"
HEAD_NAME = "head.safetensors"


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


def qwen2vl_patchify(pixels: torch.Tensor, patch_size: int, merge_size: int, temporal_patch_size: int,
                     ) -> torch.Tensor:
    """Qwen2-VL's flattened patches of normalised images ``(B, C, H, W)``: ``(B * H/p * W/p,
    C * t * p * p)`` rows in the order ``Qwen2VLImageProcessor`` writes them (a still image repeated
    over the temporal patch), as a differentiable torch function.

    Example:
        >>> qwen2vl_patchify(torch.zeros(2, 3, 32, 32), 8, 2, 2).shape
        torch.Size([32, 384])
    """
    b, c, h, w = pixels.shape
    p, m, t = patch_size, merge_size, temporal_patch_size
    if h % (p * m) or w % (p * m):
        raise ValueError(f"image {h}x{w} is not a multiple of patch_size * merge_size = {p * m}")
    x = pixels.unsqueeze(1).expand(b, t, c, h, w)
    x = x.reshape(b, 1, t, c, h // p // m, m, p, w // p // m, m, p)
    x = x.permute(0, 1, 4, 7, 5, 8, 3, 2, 6, 9)
    return x.reshape(b * (h // p) * (w // p), c * t * p * p)


# ------------------------------------------------------------------------------------------- backbones

class ClipBackbone(nn.Module):
    """An open_clip model's image tower (and text tower) as a feature extractor."""

    kind = "open_clip"

    def __init__(self, net: nn.Module, model_cfg: Mapping[str, Any], tokenizer: Any = None,
                 mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD) -> None:
        super().__init__()
        self.net = net
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
                cfg = json.loads((Path(model[len("local-dir:"):]) / "open_clip_config.json").read_text())
                cfg = cfg.get("model_cfg", cfg)
                net = open_clip.create_model(model)
            else:
                cfg = open_clip.get_model_config(model)
                if cfg is None:
                    raise ValueError(f"unknown open_clip model {model!r}")
                if pretrained is None:
                    import logging

                    logging.getLogger("visalign").warning(
                        "open_clip %s without `pretrained`: the backbone starts from random weights", model)
                net = open_clip.create_model(model, pretrained=pretrained)
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
        return cls(net, cfg, tokenizer, mean, std)

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
    """A Qwen2-VL-family model read at the last token (left padding): ``(B, hidden_size)``."""

    kind = "vlm"

    def __init__(self, net: nn.Module, processor: Any, image_size: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.processor = processor
        ip = processor.image_processor
        self.patch_size = int(ip.patch_size)
        self.merge_size = int(ip.merge_size)
        self.temporal_patch_size = int(ip.temporal_patch_size)
        unit = self.patch_size * self.merge_size
        if image_size is None:
            lo = getattr(ip, "min_pixels", None) or (ip.size or {}).get("shortest_edge")
            hi = getattr(ip, "max_pixels", None) or (ip.size or {}).get("longest_edge")
            image_size = math.isqrt(int(hi)) if lo and hi and lo == hi else 448
        self.image_size = max(unit, int(image_size) // unit * unit)
        self.register_buffer("mean", torch.tensor(ip.image_mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(ip.image_std).view(1, 3, 1, 1), persistent=False)
        self.feature_dim = int(net.config.get_text_config().hidden_size)
        self.tokens_per_image = (self.image_size // unit) ** 2
        self._prompt_cache: dict[tuple[int, str], list[int]] = {}

    @classmethod
    def create(cls, model: str, image_size: int | None = None) -> VlmBackbone:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        return cls(AutoModelForImageTextToText.from_pretrained(model), AutoProcessor.from_pretrained(model),
                   image_size)

    def _token_ids(self, n_images: int, prompt: str) -> list[int]:
        key = (n_images, prompt)
        if key not in self._prompt_cache:
            content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
            text = self.processor.apply_chat_template([{"role": "user", "content": content}], tokenize=False,
                                                      add_generation_prompt=False)
            pad = getattr(self.processor, "image_token", "<|image_pad|>")
            text = text.replace(pad, pad * self.tokens_per_image)
            tok = self.processor.tokenizer
            self._prompt_cache[key] = tok(text, add_special_tokens=False)["input_ids"]
        return self._prompt_cache[key]

    def features(self, pixels: torch.Tensor, references: torch.Tensor | None, prompts: Sequence[str]) -> torch.Tensor:
        """Last-token states of ``(reference?, image, prompt)`` chats."""
        b = pixels.shape[0]
        images = pixels if references is None else torch.stack([references, pixels], dim=1).flatten(0, 1)
        n_images = 1 if references is None else 2
        x = (_resize(images, self.image_size) - self.mean) / self.std
        flat = qwen2vl_patchify(x, self.patch_size, self.merge_size, self.temporal_patch_size)
        grid = torch.tensor([[1, self.image_size // self.patch_size, self.image_size // self.patch_size]]
                            * images.shape[0], device=pixels.device)
        ids = [self._token_ids(n_images, p) for p in prompts]
        width = max(len(i) for i in ids)
        pad = self.processor.tokenizer.pad_token_id or 0
        input_ids = torch.full((b, width), pad, dtype=torch.long, device=pixels.device)
        mask = torch.zeros((b, width), dtype=torch.long, device=pixels.device)
        for r, row in enumerate(ids):  # left padding: the last token is at -1 in every row
            input_ids[r, width - len(row):] = torch.tensor(row, device=pixels.device)
            mask[r, width - len(row):] = 1
        hf = self.net.model if type(self.net).__name__ == "LoraModel" else self.net
        inner = hf.model
        reset_rope_deltas(inner)  # a stale M-RoPE offset would shift the positions
        image_token = hf.config.image_token_id
        out = inner(input_ids=input_ids, attention_mask=mask, pixel_values=flat.to(hf.dtype), image_grid_thw=grid,
                    mm_token_type_ids=(input_ids == image_token).long(), use_cache=False)
        reset_rope_deltas(inner)
        return out.last_hidden_state[:, -1, :]

    def save(self, directory: Path) -> None:
        self.net.save_pretrained(directory)
        self.processor.save_pretrained(directory)

    @classmethod
    def load(cls, directory: Path, image_size: int | None) -> VlmBackbone:
        return cls.create(str(directory), image_size)


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
                raise ValueError("backbone 'vlm' needs `model` (a path or hub id of a Qwen2-VL-family model)")
            bb = VlmBackbone.create(model, image_size)
        else:
            raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
        torch.manual_seed(seed)
        return cls(bb, condition, head_hidden, lora, difference)

    def _add_lora(self, lora: Mapping[str, Any]) -> None:
        from peft import LoraConfig, LoraModel

        targets = lora.get("target_modules") or (["c_fc", "c_proj"] if isinstance(self.backbone, ClipBackbone)
                                                 else ["q_proj", "k_proj", "v_proj", "o_proj"])
        cfg = LoraConfig(r=int(lora.get("r", 16)), lora_alpha=int(lora.get("alpha", 32)),
                         lora_dropout=float(lora.get("dropout", 0.0)), target_modules=list(targets))
        self.backbone.net = LoraModel(self.backbone.net, cfg, "default")
        for name, p in self.backbone.net.named_parameters():
            p.requires_grad_("lora_" in name)

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
    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``reward_model.json``, ``head.safetensors`` and ``backbone/`` (open_clip: config +
        safetensors, a ``local-dir:`` folder; VLM: ``save_pretrained`` + processor). LoRA adapters are
        merged into the saved backbone weights."""
        from safetensors.torch import save_file

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        backbone = self.backbone
        if type(backbone.net).__name__ == "LoraModel":
            backbone = copy.deepcopy(backbone)
            backbone.net = backbone.net.merge_and_unload()
        backbone.save(directory / "backbone")
        save_file({k: v.detach().contiguous().cpu() for k, v in self.head.state_dict().items()},
                  str(directory / HEAD_NAME))
        meta = {"format": "visalign-reward-model", "version": 1, "backbone": backbone.kind,
                "condition": self.condition, "head_hidden": self.head_hidden, "difference": self.difference, "image_size": backbone.image_size,
                "feature_dim": backbone.feature_dim}
        (directory / CONFIG_NAME).write_text(json.dumps(meta, indent=1))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device | None = None) -> RewardModel:
        """Load what :meth:`save_pretrained` wrote (eval mode; on ``device``, default the CPU)."""
        from safetensors.torch import load_file

        directory = Path(directory)
        meta_path = directory / CONFIG_NAME
        if not meta_path.is_file():
            raise FileNotFoundError(f"{directory} holds no {CONFIG_NAME}: not a saved visalign reward model")
        meta = json.loads(meta_path.read_text())
        if meta["backbone"] == "open_clip":
            bb: ClipBackbone | VlmBackbone = ClipBackbone.load(directory / "backbone", meta["condition"] == "prompt")
        else:
            bb = VlmBackbone.load(directory / "backbone", meta.get("image_size"))
        model = cls(bb, meta["condition"], meta["head_hidden"], difference=bool(meta.get("difference", False)))
        model.head.load_state_dict(load_file(str(directory / HEAD_NAME)), strict=True)
        model.eval()
        return model.to(device) if device is not None else model
