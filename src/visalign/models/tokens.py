"""Special tokens of vision-language models that generation must never emit."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

_VISION_TOKEN_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                       "image_token_index", "video_token_index", "boi_token_index", "eoi_token_index")

#: Processor / tokenizer attributes naming image markup tokens (Idefics3 / SmolVLM, Gemma 3, InternVL, ...).
_PROCESSOR_TOKEN_ATTRS = ("image_token", "video_token", "fake_image_token", "global_image_token", "global_image_tag",
                          "boi_token", "eoi_token", "start_image_token", "end_image_token", "context_image_token",
                          "vision_start_token", "vision_end_token")


def vision_token_ids(model_or_config: Any, eos_token_id: int | Sequence[int] | None = None,
                     processor: Any = None) -> list[int]:
    """Ids of the vision special tokens named in a model's config (never EOS), sorted; with a
    ``processor``, also the image markup tokens it inserts around images (``<fake_token_around_image>``,
    ``<global-img>``, ``<img>`` / ``</img>``, ``<start_of_image>`` / ``<end_of_image>``, ...).

    Example:
        >>> from types import SimpleNamespace
        >>> vision_token_ids(SimpleNamespace(image_token_id=5, video_token_id=6, vision_start_token_id=3))
        [3, 5, 6]
    """
    config = getattr(model_or_config, "config", model_or_config)
    if eos_token_id is None:
        gen = getattr(model_or_config, "generation_config", None)
        eos_token_id = getattr(gen, "eos_token_id", None)
    eos = set(eos_token_id if isinstance(eos_token_id, (list, tuple)) else [eos_token_id])
    ids = {getattr(config, n, None) for n in _VISION_TOKEN_ATTRS}
    if processor is not None:
        tok = getattr(processor, "tokenizer", processor)
        vocab = tok.get_vocab()
        for owner in (processor, tok):
            for name in _PROCESSOR_TOKEN_ATTRS:
                token = getattr(owner, name, None)
                if isinstance(token, str) and token in vocab:
                    ids.add(vocab[token])
    return sorted(i for i in ids if isinstance(i, int) and i >= 0 and i not in eos)
