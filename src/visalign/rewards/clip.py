"""CLIP rewards: text-image agreement (CLIPScore) and image-image similarity (CLIP-I).

Two modes, one model:

* ``mode="text_image"``: CLIPScore as torchmetrics reports it
  (``torchmetrics.functional.multimodal.clip_score``): ``100 * cos(E_image, E_prompt)``, clamped at 0.
  ``scale="0-1"`` drops the factor 100: ``max(cos, 0)``. torchmetrics clamps the *batch mean*; a
  reward needs one score per sample, so the clamp applies per sample here (the two agree whenever no
  cosine is negative, which is the rule for a trained CLIP). The original CLIPScore (Hessel et al.,
  EMNLP 2021) uses ``2.5 * max(cos, 0)``: that is ``2.5 *`` the ``"0-1"`` scale. torchmetrics'
  default model, ``openai/clip-vit-large-patch14``, is open_clip's ``ViT-L-14`` / ``openai``, this
  reward's default; it is also the CLIP score model Flow-GRPO reports.
* ``mode="image_image"``: the raw cosine between the generated image's and the reference image's
  embeddings (DreamBooth's CLIP-I), in ``[-1, 1]``; ``scale`` does not apply.

Loading follows open_clip's ``create_model_and_transforms``: ``model_name`` names an architecture
(a built-in config such as ``"ViT-L-14"``, one registered with ``open_clip.add_model_config``, or a
``"local-dir:/path"`` / ``"hf-hub:org/repo"`` schema) and ``pretrained`` is an open_clip tag
(``"openai"``, ``"laion2b_s32b_b82k"``; a tag *downloads* the weights, so it needs a model hub or a
warm cache) or the path of a local checkpoint (a ``state_dict``, ``.pt`` / ``.bin`` /
``.safetensors``). Or pass an already-built ``model=(model, preprocess, tokenizer)``. The model loads
on the first call; :meth:`ClipReward.close` releases it.

Embeddings are computed under ``torch.no_grad`` in batches of ``batch_size``, after open_clip's
inference transform (resize the shorter side, centre crop, normalise). Prompts repeated in a batch (a
GRPO group shares one) are encoded once, and so are reference images passed as the same object.

:meth:`ClipReward.differentiable` is the same score on image tensors with a graph to the input (for
ReFL / DRaFT): the transform in torch (bicubic resize of the shorter side with antialiasing, centre
crop, the model's mean / std), and no clamp at 0 (a clamp has no gradient where the cosine is
negative): ``100 * cos`` / ``cos`` by ``scale`` for ``text_image``, ``cos`` for ``image_image``. On an
image already at the model's input size it equals :meth:`ClipReward.score` up to float rounding.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from PIL import Image

from .base import Reward, RewardOutput, Sample

__all__ = ["ClipReward"]

ClipMode = Literal["text_image", "image_image"]
ClipScale = Literal["0-100", "0-1"]

_INPUT_DTYPES = {"fp16": torch.float16, "pure_fp16": torch.float16, "bf16": torch.bfloat16,
                 "pure_bf16": torch.bfloat16}


class ClipReward(Reward):
    """CLIPScore (``text_image``) or CLIP image similarity (``image_image``) with an open_clip model.

    Args:
        model_name: open_clip architecture name (or a ``local-dir:`` / ``hf-hub:`` schema).
        pretrained: open_clip pretrained tag (downloads: needs a hub) or a local checkpoint path.
            Required unless ``model_name`` has a schema or ``model`` is given: random weights would
            score noise.
        mode: ``"text_image"`` (sample ``prompt`` vs generated image) or ``"image_image"`` (generated
            image vs ``reference_image`` / the render of ``reference_code``).
        scale: ``"0-100"`` (torchmetrics: ``100 * max(cos, 0)``) or ``"0-1"`` (``max(cos, 0)``);
            ``text_image`` only.
        model: an already-built ``(model, preprocess, tokenizer)`` triple, e.g. what
            ``open_clip.create_model_and_transforms`` (its third item) and ``open_clip.get_tokenizer``
            return; ``tokenizer`` may be None in ``image_image`` mode. Overrides ``model_name``.
        device: where to run (default: ``cuda`` when available, else ``cpu``; for a passed-in model,
            its own device unless ``device`` is given).
        precision: open_clip precision (``"fp32"``, ``"fp16"``, ``"bf16"``, ...); also sets the dtype
            images are fed in.
        batch_size: images (and prompts) per forward pass.
        cache_dir: open_clip's download cache (tags only).
        failed_score: the score of a sample whose code failed to render (no generated image).

    Details per sample: ``cosine`` (the raw cosine); or ``reason`` (not applicable) / ``error``.

    Example:
        >>> reward = ClipReward("ViT-L-14", pretrained="openai")  # doctest: +SKIP
        >>> out = reward([Sample(prompt="a red apple", image=Image.new("RGB", (224, 224), "red"))])  # doctest: +SKIP
        >>> 0.0 <= out.scores[0] <= 100.0  # doctest: +SKIP
        True
        >>> ClipReward(pretrained=None)
        Traceback (most recent call last):
            ...
        ValueError: pretrained=None would build ViT-L-14 with random weights: pass an open_clip tag, a local checkpoint path, or model=(model, preprocess, tokenizer)
    """

    name = "clip"
    needs_render = True

    def __init__(
        self,
        model_name: str = "ViT-L-14",
        pretrained: str | os.PathLike[str] | None = "openai",
        *,
        mode: ClipMode = "text_image",
        scale: ClipScale = "0-100",
        model: tuple[torch.nn.Module, Callable[[Image.Image], torch.Tensor], Callable[..., torch.Tensor] | None]
        | None = None,
        device: str | torch.device | None = None,
        precision: str = "fp32",
        batch_size: int = 32,
        cache_dir: str | None = None,
        failed_score: float = 0.0,
    ) -> None:
        if mode not in ("text_image", "image_image"):
            raise ValueError(f"mode must be 'text_image' or 'image_image', got {mode!r}")
        if scale not in ("0-100", "0-1"):
            raise ValueError(f"scale must be '0-100' or '0-1', got {scale!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        has_schema = model_name.startswith(("local-dir:", "hf-hub:"))
        if model is None and pretrained is None and not has_schema:
            raise ValueError(
                f"pretrained=None would build {model_name} with random weights: pass an open_clip tag, "
                "a local checkpoint path, or model=(model, preprocess, tokenizer)"
            )
        if model is not None:
            if not (isinstance(model, tuple | list) and len(model) == 3):
                raise TypeError("model must be a (model, preprocess, tokenizer) triple")
            if mode == "text_image" and model[2] is None:
                raise ValueError("mode='text_image' needs a tokenizer in model=(model, preprocess, tokenizer)")
        self.model_name = model_name
        self.pretrained = os.fspath(pretrained) if pretrained is not None else None
        self.mode: ClipMode = mode
        self.scale: ClipScale = scale
        self.precision = precision
        self.batch_size = batch_size
        self.cache_dir = cache_dir
        self.failed_score = float(failed_score)
        self.needs_reference_render = mode == "image_image"
        self._given = tuple(model) if model is not None else None
        self._device_arg = torch.device(device) if device is not None else None
        self._model: torch.nn.Module | None = None
        self._preprocess: Callable[[Image.Image], torch.Tensor] | None = None
        self._tokenizer: Callable[..., torch.Tensor] | None = None
        self.device: torch.device | None = None

    # ------------------------------------------------------------------ loading

    def _load(self) -> None:
        if self._model is not None:
            return
        if self._given is not None:
            model, preprocess, tokenizer = self._given
            if self._device_arg is not None:
                device = self._device_arg
                model = model.to(device)
            else:
                device = next(model.parameters()).device
        else:
            import open_clip

            device = self._device_arg or torch.device("cuda" if torch.cuda.is_available() else "cpu")
            pretrained = self.pretrained
            if pretrained is not None and not self.model_name.startswith(("local-dir:", "hf-hub:")):
                tags = open_clip.list_pretrained_tags_by_model(self.model_name.replace("/", "-"))
                known = {t.lower().replace("-", "_") for t in tags}  # open_clip's own tag cleaning
                if pretrained.lower().replace("-", "_") not in known and not os.path.isfile(pretrained):
                    raise FileNotFoundError(
                        f"pretrained={pretrained!r} is neither a file nor an open_clip tag for "
                        f"{self.model_name} (tags: {tags or 'none'})"
                    )
            model, _, preprocess = open_clip.create_model_and_transforms(
                self.model_name, pretrained=pretrained, device=device, precision=self.precision,
                cache_dir=self.cache_dir,
            )
            tokenizer = open_clip.get_tokenizer(self.model_name, cache_dir=self.cache_dir)
        model.eval()
        self._model, self._preprocess, self._tokenizer, self.device = model, preprocess, tokenizer, device

    def close(self) -> None:
        """Drop this reward's references to the model; the next call loads it again. A passed-in
        ``model`` stays the caller's: it is kept for that next call and freed when the caller drops it."""
        on_cuda = self.device is not None and self.device.type == "cuda"
        self._model = self._preprocess = self._tokenizer = None
        self.device = None
        if on_cuda:
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ embeddings

    @torch.no_grad()
    def embed_images(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """L2-normalised image embeddings, ``(len(images), dim)`` float32 on the CPU."""
        self._load()
        assert self._model is not None and self._preprocess is not None and self.device is not None
        dtype = _INPUT_DTYPES.get(self.precision, torch.float32)
        out = []
        for i in range(0, len(images), self.batch_size):
            chunk = [im if im.mode == "RGB" else im.convert("RGB") for im in images[i:i + self.batch_size]]
            x = torch.stack([self._preprocess(im) for im in chunk]).to(self.device, dtype=dtype)
            out.append(F.normalize(self._model.encode_image(x).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    @torch.no_grad()
    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """L2-normalised text embeddings, ``(len(texts), dim)`` float32 on the CPU (the tokenizer
        truncates to the model's context length, 77 tokens for CLIP, as torchmetrics does)."""
        self._load()
        if self._tokenizer is None:
            raise ValueError("this reward has no tokenizer (model=(model, preprocess, None))")
        assert self._model is not None and self.device is not None
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self._tokenizer(list(texts[i:i + self.batch_size])).to(self.device)
            out.append(F.normalize(self._model.encode_text(tokens).float(), dim=-1).cpu())
        return torch.cat(out) if out else torch.empty(0, 0)

    # ------------------------------------------------------------------ differentiable path

    def _normalisation(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The mean / std of the model's transform (its ``Normalize``), OpenAI CLIP's when it has none."""
        for t in getattr(self._preprocess, "transforms", []):
            if type(t).__name__ == "Normalize":
                return torch.tensor(t.mean, dtype=torch.float32), torch.tensor(t.std, dtype=torch.float32)
        return (torch.tensor((0.48145466, 0.4578275, 0.40821073)), torch.tensor((0.26862954, 0.26130258, 0.27577711)))

    def preprocess_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """open_clip's inference transform on ``(B, 3, H, W)`` floats in ``[0, 1]``, differentiably: resize
        the shorter side to the model's input size (bicubic, antialiased), centre crop, normalise."""
        self._load()
        assert self._model is not None and self.device is not None
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        size = getattr(getattr(self._model, "visual", None), "image_size", 224)
        side = int(size[0] if isinstance(size, (tuple, list)) else size)
        x = images.to(self.device, torch.float32)
        h, w = x.shape[-2:]
        if min(h, w) != side:
            scale = side / min(h, w)
            x = F.interpolate(x, size=(max(side, round(h * scale)), max(side, round(w * scale))), mode="bicubic",
                              align_corners=False, antialias=True)
        top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
        x = x[..., top:top + side, left:left + side]
        mean, std = (t.to(self.device).view(1, 3, 1, 1) for t in self._normalisation())
        return ((x - mean) / std).to(_INPUT_DTYPES.get(self.precision, torch.float32))

    def differentiable(self, images: torch.Tensor, references: torch.Tensor | Sequence[Image.Image] | None = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Scores ``(B,)`` of ``(B, 3, H, W)`` images in ``[0, 1]`` with a graph to ``images`` (the model is
        frozen): ``text_image`` needs ``prompts``, ``image_image`` ``references`` (a tensor like ``images``
        or PIL images). No clamp at 0 (module docstring).

        Example:
            >>> reward = ClipReward("ViT-L-14", pretrained="openai")  # doctest: +SKIP
            >>> x = torch.rand(2, 3, 256, 256, requires_grad=True)  # doctest: +SKIP
            >>> reward.differentiable(x, prompts=["a cat", "a dog"]).sum().backward()  # doctest: +SKIP
        """
        self._load()
        assert self._model is not None
        self._model.requires_grad_(False)  # a reward is a fixed function: gradients go to the input only
        emb = F.normalize(self._model.encode_image(self.preprocess_tensor(images)).float(), dim=-1)
        n = images.shape[0]
        if self.mode == "text_image":
            if prompts is None or len(prompts) != n:
                raise ValueError(f"clip text_image: give {n} prompts")
            other = self.embed_texts(list(prompts)).to(emb.device)
            cos = (emb * other).sum(-1)
            return 100.0 * cos if self.scale == "0-100" else cos
        if references is None or len(references) != n:
            raise ValueError(f"clip image_image: give {n} references")
        if isinstance(references, torch.Tensor):
            with torch.no_grad():
                other = F.normalize(self._model.encode_image(self.preprocess_tensor(references)).float(), dim=-1)
        else:
            other = self.embed_images(list(references)).to(emb.device)
        return (emb * other).sum(-1)

    # ------------------------------------------------------------------ scoring

    def _to_score(self, cos: float) -> float:
        if self.mode == "image_image":
            return cos
        s = max(cos, 0.0)
        return 100.0 * s if self.scale == "0-100" else s

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = [None] * len(samples)
        details: list[dict[str, Any]] = [{} for _ in samples]
        todo: list[int] = []  # samples with both sides present
        images: list[Image.Image] = []
        others: list[Any] = []  # prompt strings, or reference images
        for i, s in enumerate(samples):
            other = s.prompt if self.mode == "text_image" else s.target_image
            if other is None or (isinstance(other, str) and not other.strip()):
                what = "prompt" if self.mode == "text_image" else "reference image"
                details[i] = {"reason": f"no {what}"}
                continue
            img = s.generated_image
            if img is None:
                why = s.failed_output
                if why:  # the code failed to render, or there was no code: a defined score
                    scores[i] = self.failed_score
                    details[i] = {"error": why}
                else:
                    details[i] = {"reason": "no generated image"}
                continue
            todo.append(i)
            images.append(img)
            others.append(other)
        n_failed = sum(1 for d in details if "error" in d)
        if todo:
            img_emb = self.embed_images(images)
            # encode each distinct prompt / reference once (a GRPO group shares them)
            keys = [o if isinstance(o, str) else id(o) for o in others]
            uniq: dict[Any, int] = {}
            uniq_items: list[Any] = []
            for k, o in zip(keys, others, strict=True):
                if k not in uniq:
                    uniq[k] = len(uniq_items)
                    uniq_items.append(o)
            other_emb = self.embed_texts(uniq_items) if self.mode == "text_image" else self.embed_images(uniq_items)
            cos = (img_emb * other_emb[[uniq[k] for k in keys]]).sum(-1).tolist()
            for i, c in zip(todo, cos, strict=True):
                scores[i] = self._to_score(c)
                details[i] = {"cosine": c}
        return RewardOutput(scores, details, metrics={"scored": float(len(todo)), "render_failed": float(n_failed)})
