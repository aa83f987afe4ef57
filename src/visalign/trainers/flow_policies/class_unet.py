"""A class-conditional ``UNet2DModel`` in pixel space (:class:`ClassConditionalFlowPolicy`), the demo's model."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

import torch
from PIL import Image

from .base import Conditioning, FlowPolicy

__all__ = ["ClassConditionalFlowPolicy"]

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

    config_options: ClassVar[tuple[str, ...]] = ()

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

