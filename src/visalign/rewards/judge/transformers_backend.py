"""A local VLM judge: a transformers image-text-to-text model and its processor, greedy and batched."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from PIL import Image

from ...models.rope import reset_rope_deltas
from .backend import JudgeBackend, JudgeRequest, JudgeResponse

logger = logging.getLogger(__name__)

__all__ = ["TransformersJudgeBackend"]


class TransformersJudgeBackend(JudgeBackend):
    """A local VLM judge: ``AutoModelForImageTextToText`` + ``AutoProcessor``, greedy, batched.

    Each request becomes a chat (an optional system turn and a user turn whose content lists
    ``{"type": "image"}`` and ``{"type": "text"}`` parts in the request's order) rendered with the
    processor's chat template; a batch is padded on the left and decoded greedily. The images go to the
    processor as one list per request, in order (what SmolVLM / Idefics3 / Gemma 3 need for batches of
    several prompts; Qwen-VL / LLaVA processors flatten it), so a request may show several images
    (reference and generated, or a pairwise judge's two); requests with and without images are
    generated in separate batches. Vision
    special tokens (image / video pads, vision start / end) are suppressed during generation, since a
    generated image token breaks the model's next forward ("image features and image tokens do not
    match"). A batch whose ``generate`` raises fails its requests (``error`` set), not the call.
    ``latency`` is the wall time of the ``generate`` call that answered (shared by its batch).

    Args:
        model_or_path: a local path or hub id (loaded with ``from_pretrained``), or a loaded model.
        processor: the processor (default: ``AutoProcessor.from_pretrained(model_or_path)``; required
            with a loaded model).
        device: where to run; default CUDA when available for a loaded path, else where the model is.
        dtype: a torch dtype (or ``"auto"``) for ``from_pretrained``.
        max_new_tokens: answer length limit.
        batch_size: requests per ``generate`` call.
        suppress_vision_tokens: keep the model from generating vision special tokens.

    Example:
        >>> backend = TransformersJudgeBackend("Qwen/Qwen2.5-VL-7B-Instruct")  # doctest: +SKIP
    """

    def __init__(self, model_or_path: Any, processor: Any = None, device: Any = None, dtype: Any = None,
                 max_new_tokens: int = 512, batch_size: int = 8, suppress_vision_tokens: bool = True) -> None:
        import torch
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if isinstance(model_or_path, (str, os.PathLike)):
            kwargs = {} if dtype is None else {"dtype": dtype}
            model = AutoModelForImageTextToText.from_pretrained(model_or_path, **kwargs)
            model.to(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            if processor is None:
                processor = AutoProcessor.from_pretrained(model_or_path)
        else:
            model = model_or_path
            if processor is None:
                raise ValueError("pass the processor with a loaded model")
            if device is not None:
                model.to(device)
        if max_new_tokens < 1 or batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")
        self.model = model.eval()
        self.processor = processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"  # decoder-only batched generation
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        self.suppress_tokens = self._vision_token_ids() if suppress_vision_tokens else []

    def _vision_token_ids(self) -> list[int]:
        from ...models.tokens import vision_token_ids

        return vision_token_ids(self.model)

    def _messages(self, request: JudgeRequest) -> list[dict[str, Any]]:
        content = [{"type": "image"} if isinstance(p, Image.Image) else {"type": "text", "text": p}
                   for p in request.parts]
        messages: list[dict[str, Any]] = []
        if request.system:
            messages.append({"role": "system", "content": [{"type": "text", "text": request.system}]})
        messages.append({"role": "user", "content": content})
        return messages

    def generate(self, requests: Sequence[JudgeRequest]) -> list[JudgeResponse]:
        requests = list(requests)
        out: list[JudgeResponse | None] = [None] * len(requests)
        for with_images in (True, False):  # a processor takes images for all prompts of a batch or for none
            index = [i for i, r in enumerate(requests) if bool(r.images) == with_images]
            for b in range(0, len(index), self.batch_size):
                chunk = index[b:b + self.batch_size]
                for i, response in zip(chunk, self._generate_batch([requests[i] for i in chunk]), strict=True):
                    out[i] = response
        return [r for r in out if r is not None]

    def _generate_batch(self, batch: list[JudgeRequest]) -> list[JudgeResponse]:
        import torch

        t0 = time.perf_counter()
        try:
            texts = [self.processor.apply_chat_template(self._messages(r), tokenize=False,
                                                        add_generation_prompt=True) for r in batch]
            images = [[im.convert("RGB") for im in r.images] for r in batch if r.images]
            inputs = self.processor(text=texts, images=images or None, return_tensors="pt", padding=True)
            inputs = inputs.to(self.model.device)
            reset_rope_deltas(self.model)  # Qwen-VL caches M-RoPE offsets between calls
            kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
            if self.suppress_tokens:
                kwargs["suppress_tokens"] = self.suppress_tokens
            if self.model.generation_config.pad_token_id is None and self.tokenizer.pad_token_id is not None:
                kwargs["pad_token_id"] = self.tokenizer.pad_token_id
            with torch.inference_mode():
                generated = self.model.generate(**inputs, **kwargs)
            new_tokens = generated[:, inputs["input_ids"].shape[1]:]
            answers = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        except Exception as e:
            dt = time.perf_counter() - t0
            error = f"{type(e).__name__}: {str(e)[:500]}"
            logger.warning("local judge batch of %d failed: %s", len(batch), error)
            return [JudgeResponse(text=None, latency=dt, elapsed=dt, error=error) for _ in batch]
        dt = time.perf_counter() - t0
        return [JudgeResponse(text=a, latency=dt, elapsed=dt) for a in answers]

    def close(self) -> None:
        self.model = None
        self.processor = None
