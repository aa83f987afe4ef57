"""Tiny Qwen2-VL models built offline: a BPE tokenizer trained on a text corpus, a processor with a
small pinned image size, and a stock ``Qwen2VLForConditionalGeneration`` from a small config.

They run the same code paths as real Qwen2-VL checkpoints (``from_pretrained``, the processor's chat
template, M-RoPE, ``generate``), which is what tests, benchmarks and the shipped demo policy need when
no model hub is reachable. Sizes follow FIELD_NOTES: M-RoPE sections sum to ``head_dim / 2``; image
sides are multiples of ``patch_size * merge_size``; the vision token ids are the small vocabulary's.

Example:
    >>> tok = build_tokenizer(["import matplotlib.pyplot as plt", "plt.bar([1, 2], [3, 4])"], vocab_size=300)
    >>> processor = build_processor(tok, image_size=32)
    >>> model = build_tiny_qwen2vl(processor, hidden_size=32, num_layers=1, num_heads=2, vision_depth=1)
    >>> type(model).__name__, model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    ('Qwen2VLForConditionalGeneration', True)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

QWEN_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                       "<|image_pad|>", "<|video_pad|>"]

#: Qwen2-VL's chat template reduced to text and image parts (system / user / assistant turns).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, *, whole_words: Iterable[str] = ()) -> Any:
    """A byte-level BPE ``Qwen2TokenizerFast`` trained on ``corpus`` with the Qwen special tokens.

    ``whole_words`` become single tokens (e.g. quoted colour names, ``"plt.bar("``), which keeps code
    short for a tiny model. EOS is ``<|im_end|>``, padding ``<|endoftext|>``.
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=QWEN_SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    words = [w for w in whole_words if w]
    if words:
        tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in words])
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_processor(tokenizer: Any, image_size: int = 96, patch_size: int = 8, merge_size: int = 2) -> Any:
    """A ``Qwen2VLProcessor`` whose image processor is pinned to ``image_size`` square images.

    ``image_size`` must be a multiple of ``patch_size * merge_size``; it yields
    ``(image_size / (patch_size * merge_size)) ** 2`` image tokens per image.
    """
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    unit = patch_size * merge_size
    if image_size % unit:
        raise ValueError(f"image_size {image_size} must be a multiple of patch_size * merge_size = {unit}")
    pixels = {"min_pixels": image_size * image_size, "max_pixels": image_size * image_size,
              "patch_size": patch_size, "merge_size": merge_size, "temporal_patch_size": 2}
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessor(**pixels),
                            video_processor=Qwen2VLVideoProcessor(**pixels),
                            tokenizer=tokenizer, chat_template=tokenizer.chat_template)


def build_tiny_qwen2vl(processor: Any, *, hidden_size: int = 128, num_layers: int = 4, num_heads: int = 4,
                       intermediate_size: int | None = None, vision_width: int = 96, vision_depth: int = 3,
                       vision_heads: int = 4, max_positions: int = 2048, seed: int = 0) -> Any:
    """A ``Qwen2VLForConditionalGeneration`` with random weights sized for a CPU.

    The defaults are FIELD_NOTES' chart-to-code model (1.65 M parameters with a ~200-token vocabulary).
    ``hidden_size / num_heads`` must be even; M-RoPE sections are derived from it.
    """
    import torch
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    head_dim = hidden_size // num_heads
    if head_dim % 2 or hidden_size % num_heads:
        raise ValueError("hidden_size / num_heads must be an even integer")
    half = head_dim // 2
    t = half // 4 or 1
    h = (half - t) // 2
    mrope = [t, h, half - t - h]
    image = processor.image_processor
    config = Qwen2VLConfig(
        text_config={"vocab_size": len(tok), "hidden_size": hidden_size,
                     "intermediate_size": intermediate_size or 2 * hidden_size,
                     "num_hidden_layers": num_layers, "num_attention_heads": num_heads,
                     "num_key_value_heads": num_heads, "max_position_embeddings": max_positions,
                     "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"], "bos_token_id": None,
                     "tie_word_embeddings": True,
                     "rope_parameters": {"rope_type": "default", "mrope_section": mrope, "rope_theta": 10000.0}},
        vision_config={"depth": vision_depth, "embed_dim": vision_width, "hidden_size": hidden_size,
                       "num_heads": vision_heads, "patch_size": image.patch_size,
                       "spatial_merge_size": image.merge_size, "temporal_patch_size": image.temporal_patch_size},
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    return model


LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_tiny_llava(corpus: Iterable[str], *, vocab_size: int = 320, image_size: int = 32, patch_size: int = 8,
                     hidden_size: int = 32, num_layers: int = 2, seed: int = 0) -> tuple[Any, Any]:
    """A random ``LlavaForConditionalGeneration`` (CLIP vision tower + Llama) and its processor, built
    offline: the 1-D-position family of VLMs (LLaVA, and by the same code paths SmolVLM-style models),
    next to the M-RoPE Qwen-VL family of :func:`build_tiny_qwen2vl`.

    Example:
        >>> model, processor = build_tiny_llava(["plt.bar([1, 2], [3, 4])"])
        >>> type(model).__name__, processor.tokenizer.image_token
        ('LlavaForConditionalGeneration', '<image>')
    """
    import torch
    from transformers import (
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    tok = build_tokenizer(corpus, vocab_size=vocab_size)
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tok.image_token = "<image>"
    tok.chat_template = LLAVA_CHAT_TEMPLATE
    image_processor = CLIPImageProcessor(size={"shortest_edge": image_size},
                                         crop_size={"height": image_size, "width": image_size})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tok, patch_size=patch_size,
                               vision_feature_select_strategy="default", chat_template=LLAVA_CHAT_TEMPLATE,
                               num_additional_image_tokens=1)
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                                       image_size=image_size, patch_size=patch_size),
        text_config=LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                                num_hidden_layers=num_layers, num_attention_heads=2, num_key_value_heads=2,
                                eos_token_id=eos, pad_token_id=tok.pad_token_id),
        image_token_id=tok.convert_tokens_to_ids("<image>"), vision_feature_select_strategy="default")
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config.eos_token_id = eos
    model.generation_config.pad_token_id = tok.pad_token_id
    return model, processor
