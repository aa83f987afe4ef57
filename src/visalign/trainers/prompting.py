"""Prompts for code-writing VLMs: chat messages, batched encoding, and the two guards every VLM
trainer needs.

- Vision special tokens (image / video pads, vision start / end) must never be generated: tiny and
  early models emit them and the processor then fails with "image features and image tokens do not
  match". :func:`vision_token_ids` lists them for ``generate(suppress_tokens=...)``.
- A prompt longer than ``max_prompt_length`` is never truncated (truncating through the image tokens is
  the other cause of that error, and truncating the instruction changes the task):
  :func:`encode_prompts` raises :class:`PromptTooLongError` naming the row, its length and how many of
  its tokens are image tokens, and :func:`check_prompts` returns the bad rows so a trainer can reject
  them up front.

:func:`check_vlm` is the pre-flight check of a checkpoint (``visalign train grpo --check-model PATH``):
its family (:data:`~visalign.models.support.SUPPORTED_VLMS`) and the processor path the trainer takes.

The conversation is the one every chart-to-code recipe uses: one user turn holding the image and the
instruction, then the assistant's answer (the code). A row may show several images (a pairwise judge
sees two, or a reference and two candidates): they come first, in order, then the instruction.

Example:
    >>> chat_messages("Write matplotlib code for this chart.")[0]["content"]
    [{'type': 'image'}, {'type': 'text', 'text': 'Write matplotlib code for this chart.'}]
    >>> [part["type"] for part in chat_messages("Which is better?", n_images=2)[0]["content"]]
    ['image', 'image', 'text']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ..languages import DEFAULT_INSTRUCTIONS  # re-exported: the instruction of each language
from ..models.support import SUPPORTED_VLMS, VLMFamily
from ..models.tokens import vision_token_ids
from ..models.vlm_inputs import chat_messages, encode_chats  # chat_messages re-exported: the one chat layout

__all__ = ["DEFAULT_INSTRUCTIONS", "ModelCheck", "PromptImages", "PromptTooLongError", "chat_messages", "check_prompts",
           "check_vlm", "encode_prompts", "format_check", "image_list", "prompt_texts", "vision_token_ids"]

#: The images of one prompt: none, one, or a list shown in order (pairwise judging shows two).
PromptImages = Image.Image | Sequence[Image.Image] | None

#: The instruction used when a dataset row has none, per renderer kind.


class PromptTooLongError(ValueError):
    """A prompt does not fit ``max_prompt_length``; it is rejected, never truncated."""


def image_list(images: PromptImages, where: Any = None) -> list[Image.Image]:
    """The images of one prompt as a list: ``None`` -> ``[]``, one image -> ``[image]``, a list as is.

    ``where`` names the row in the error raised for anything else.

    Example:
        >>> im = Image.new("RGB", (4, 4))
        >>> len(image_list(None)), len(image_list(im)), len(image_list([im, im]))
        (0, 1, 2)
    """
    if images is None:
        return []
    if isinstance(images, Image.Image):
        return [images]
    if isinstance(images, (str, bytes)) or not isinstance(images, Sequence):
        raise TypeError(f"prompt {where!r}: images must be a PIL image, a list of them or None, "
                        f"got {type(images).__name__}")
    out = list(images)
    for k, im in enumerate(out):
        if not isinstance(im, Image.Image):
            raise TypeError(f"prompt {where!r}: image {k} is a {type(im).__name__}, not a PIL image")
    return out


def prompt_texts(processor: Any, instructions: Sequence[str], with_image: bool | int | Sequence[int] = True,
                 system: str | None = None) -> list[str]:
    """The chat-templated prompt strings, ending where the assistant starts answering.

    ``with_image``: True / False (one image or none) or an image count for every prompt, or one count per
    prompt.
    """
    counts = list(with_image) if isinstance(with_image, Sequence) else [with_image] * len(instructions)
    if len(counts) != len(instructions):
        raise ValueError(f"{len(counts)} image counts but {len(instructions)} instructions")
    return [processor.apply_chat_template(chat_messages(i, n, system), tokenize=False, add_generation_prompt=True)
            for i, n in zip(instructions, counts, strict=True)]


def _image_token_id(processor: Any) -> int | None:
    tok = getattr(processor, "tokenizer", processor)
    token = getattr(processor, "image_token", None) or getattr(tok, "image_token", None)
    if token is None:
        return None
    tid = tok.convert_tokens_to_ids(token)
    return tid if isinstance(tid, int) and tid >= 0 else None


def encode_prompts(processor: Any, images: Sequence[PromptImages], instructions: Sequence[str], *,
                   max_prompt_length: int | None = None, system: str | None = None,
                   row_ids: Sequence[Any] | None = None) -> Any:
    """Encode a batch of (image(s), instruction) prompts, left-padded for generation.

    ``images`` holds, per prompt, one PIL image, a list of them (shown in order before the
    instruction: pairwise judging), or None; prompts of one batch may show different numbers of images
    but either all or none of them show one.

    Returns the processor's ``BatchFeature`` (``input_ids``, ``attention_mask``, ``pixel_values``,
    ``image_grid_thw``, ...). Raises :class:`PromptTooLongError` when a prompt is longer than
    ``max_prompt_length`` tokens, naming it (``row_ids`` or its index) and its image-token count.
    """
    if len(images) != len(instructions):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    per_prompt = [image_list(im, row_ids[i] if row_ids is not None else i) for i, im in enumerate(images)]
    inputs = encode_chats(processor, per_prompt, instructions, system=system)  # the reward model's path too
    if max_prompt_length is not None:
        lengths = inputs["attention_mask"].sum(dim=1).tolist()
        image_id = _image_token_id(processor)
        for i, n in enumerate(lengths):
            if n > max_prompt_length:
                n_img = int((inputs["input_ids"][i] == image_id).sum()) if image_id is not None else 0
                name = row_ids[i] if row_ids is not None else i
                raise PromptTooLongError(
                    f"prompt {name!r} is {n} tokens ({n_img} of them image tokens), over max_prompt_length "
                    f"{max_prompt_length}: raise max_prompt_length or lower the processor's max_pixels; "
                    "visalign never truncates a prompt (cutting image tokens breaks the model)")
    return inputs


def check_prompts(processor: Any, images: Sequence[PromptImages], instructions: Sequence[str],
                  max_prompt_length: int, system: str | None = None) -> list[tuple[int, str]]:
    """``(index, reason)`` of every prompt :func:`encode_prompts` would reject (one at a time); a
    prompt's images are one image, a list of them, or None."""
    bad = []
    for i, (im, text) in enumerate(zip(images, instructions, strict=True)):
        try:
            encode_prompts(processor, [im], [text], max_prompt_length=max_prompt_length, system=system,
                           row_ids=[i])
        except PromptTooLongError as e:
            bad.append((i, str(e)))
    return bad


@dataclass
class ModelCheck:
    """What :func:`check_vlm` found; ``supported`` is False with ``problems`` saying why."""

    path: str
    model_type: str | None = None
    family: VLMFamily | None = None
    processor_class: str | None = None
    batch_keys: list[str] = field(default_factory=list)
    image_tokens: list[int] = field(default_factory=list)
    suppressed: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def supported(self) -> bool:
        return self.family is not None and not self.problems


def check_vlm(path: str | Path, image_size: int = 64) -> ModelCheck:
    """Check a checkpoint (directory or hub id) for the GRPO trainer without loading its weights."""
    from transformers import AutoConfig, AutoProcessor

    out = ModelCheck(path=str(path))
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        out.problems.append(f"cannot read the config: {exc}")
        return out
    out.model_type = getattr(config, "model_type", None)
    out.family = SUPPORTED_VLMS.get(out.model_type or "")
    if out.family is None:
        out.problems.append(f"model_type {out.model_type!r} is not a supported VLM family (supported: "
                            f"{', '.join(SUPPORTED_VLMS)})")
    try:
        processor = AutoProcessor.from_pretrained(path)
    except (ImportError, OSError, ValueError, KeyError) as exc:
        out.problems.append(f"cannot load the processor: {type(exc).__name__}: {exc}")
        return out
    out.processor_class = type(processor).__name__
    images = [Image.new("RGB", (image_size, image_size), "white"), Image.new("RGB", (image_size + 16, image_size), "black")]
    try:
        batch = encode_prompts(processor, images, ["Write code.", "Write matplotlib code that reproduces this chart."])
    except Exception as exc:  # the processor path the trainer takes fails: report it, do not crash
        out.problems.append(f"the processor fails on a batch of two prompts: {type(exc).__name__}: {exc}")
        return out
    out.batch_keys = sorted(batch.keys())
    tok = getattr(processor, "tokenizer", processor)
    image_id = getattr(config, "image_token_id", None) or getattr(config, "image_token_index", None)
    if image_id is not None:
        out.image_tokens = [int((row == image_id).sum()) for row in batch["input_ids"]]
    eos = getattr(getattr(config, "text_config", config), "eos_token_id", None)
    ids = vision_token_ids(config, eos_token_id=eos, processor=processor)
    if tok.pad_token_id is not None:
        ids = sorted({*ids, tok.pad_token_id})
    out.suppressed = [tok.convert_ids_to_tokens(i) for i in ids]
    return out


def format_check(check: ModelCheck) -> str:
    """The report ``visalign train grpo --check-model`` prints."""
    lines = [f"model: {check.path}", f"model_type: {check.model_type}"]
    if check.family is not None:
        f = check.family
        lines += [f"family: {f.name} ({f.model_class}), positions {f.positions}" + (f"; {f.notes}" if f.notes else "")]
    if check.processor_class:
        lines.append(f"processor: {check.processor_class}, one image list per prompt, left padding")
    if check.batch_keys:
        lines.append(f"batch: {', '.join(check.batch_keys)}")
    if check.image_tokens:
        lines.append(f"image tokens per prompt (test images): {check.image_tokens}")
    if check.suppressed:
        lines.append(f"never sampled (suppressed): {' '.join(check.suppressed)}")
    lines += [f"problem: {p}" for p in check.problems]
    lines.append("supported: yes" if check.supported else "supported: no")
    return "\n".join(lines)
