"""Model inputs of a chat with images, for any VLM family the GRPO trainer supports
(:data:`~visalign.models.support.SUPPORTED_VLMS`), through the family's own processor.

One user turn holds the images (in order) and then the instruction, rendered by the processor's chat
template; the processor expands the image tokens, cuts the images into the family's pixel layout
(Qwen-VL patches, Idefics3 / SmolVLM tiles, LLaVA-OneVision anyres crops, ...) and pads the batch on
the left. This is the path of :func:`visalign.trainers.prompting.encode_prompts` (a test holds the two to
equal tensors), one floor down so that the reward model's VLM backbone can use it too.

Images may be PIL images or ``(3, H, W)`` float tensors in ``[0, 1]``: every supported family's image
processor (the torchvision backend of transformers 5) runs on tensors with ``do_rescale=False`` and
keeps the autograd graph, so ``pixel_values`` is differentiable with respect to the input image (what
ReFL needs from a VLM reward model). :func:`model_inputs` then adds what left padding needs: 1-D
position ids that count real tokens only (Qwen-VL's M-RoPE derives its positions from the mask itself,
after its cached offsets are reset).

Example:
    >>> chat_messages("Which is better?", n_images=2)[0]["content"][-1]
    {'type': 'text', 'text': 'Which is better?'}
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .rope import reset_rope_deltas

__all__ = ["chat_messages", "encode_chats", "model_inputs"]


def chat_messages(instruction: str, n_images: int = 1, system: str | None = None) -> list[dict[str, Any]]:
    """An optional system turn, then the user turn: ``n_images`` image parts (shown in order; 0 for a
    text-only prompt), then the instruction. The one chat every trainer, judge and reward model builds.

    Example:
        >>> [p["type"] for p in chat_messages("Score it.", n_images=2)[0]["content"]]
        ['image', 'image', 'text']
    """
    if n_images < 0:
        raise ValueError(f"n_images must be >= 0, got {n_images}")
    content: list[dict[str, Any]] = [{"type": "image"} for _ in range(n_images)]
    content.append({"type": "text", "text": instruction})
    messages: list[dict[str, Any]] = []
    if system:
        messages.append({"role": "system", "content": [{"type": "text", "text": system}]})
    messages.append({"role": "user", "content": content})
    return messages


def encode_chats(processor: Any, images: Sequence[Sequence[Any]], instructions: Sequence[str], *,
                 add_generation_prompt: bool = True, system: str | None = None,
                 text_cache: dict[tuple[int, str], str] | None = None) -> Any:
    """A left-padded batch of (images, instruction) chats: the processor's ``BatchFeature``.

    ``images[i]`` lists the images of chat ``i`` (PIL images, or ``(3, H, W)`` float tensors in
    ``[0, 1]``, which stay differentiable; one kind per batch); either every chat of a batch shows at
    least one image or none does (text-only).
    ``text_cache`` memoises the chat-template strings by (image count, instruction).
    """
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} image lists but {len(instructions)} instructions")
    per_chat = [list(p) for p in images]
    if any(not p for p in per_chat) and not all(not p for p in per_chat):
        raise ValueError("a batch mixes prompts with and without an image; batch them apart")
    tensors = [isinstance(im, torch.Tensor) for p in per_chat for im in p]
    if any(tensors) and not all(tensors):
        raise ValueError("a batch mixes PIL images and tensors; give one kind")
    tok = getattr(processor, "tokenizer", processor)
    tok.padding_side = "left"
    if tok.pad_token is None:  # some chat checkpoints ship no pad token; EOS pads (masked out anyway)
        tok.pad_token = tok.eos_token
    texts = []
    for p, instruction in zip(per_chat, instructions, strict=True):
        key = (len(p), instruction)
        text = text_cache.get(key) if text_cache is not None else None
        if text is None:
            text = processor.apply_chat_template(chat_messages(instruction, len(p), system), tokenize=False,
                                                 add_generation_prompt=add_generation_prompt)
            if text_cache is not None:
                text_cache[key] = text
        texts.append(text)
    extra: dict[str, Any] = {}
    if not tensors:  # text-only chats
        return processor(text=texts, images=None, return_tensors="pt", padding=True)
    if all(tensors):
        extra["do_rescale"] = False  # floats in [0, 1] already
    else:
        per_chat = [[im.convert("RGB") for im in p] for p in per_chat]
    # one list per chat: SmolVLM / Idefics3 / Gemma 3 refuse a flat list for two or more chats
    return processor(text=texts, images=per_chat, return_tensors="pt", padding=True, **extra)


def model_inputs(model: Any, batch: Mapping[str, Any], device: torch.device | str | None = None,
                 dtype: torch.dtype | None = None) -> dict[str, Any]:
    """The keyword arguments of a forward pass over a left-padded ``batch``: its tensors on ``device``,
    floating ones (pixels) in ``dtype``, and, for 1-D-position families, ``position_ids`` counting real
    tokens only (left padding then changes nothing). Resets Qwen-VL's cached M-RoPE offsets, which
    would otherwise shift the positions of this batch."""
    out: dict[str, Any] = {}
    for k, v in batch.items():
        if isinstance(v, torch.Tensor):
            v = v.to(device) if device is not None else v
            if dtype is not None and v.is_floating_point():
                v = v.to(dtype)
        out[k] = v
    if not reset_rope_deltas(model):
        mask = out["attention_mask"]
        out["position_ids"] = (mask.long().cumsum(-1) - 1).clamp(min=0)
    return out
