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

from collections.abc import Iterable, Sequence
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


def build_tokenizer(corpus: Iterable[str], vocab_size: int = 512, *, whole_words: Iterable[str] = (),
                    special_tokens: Sequence[str] = (), named_tokens: dict[str, str] | None = None) -> Any:
    """A byte-level BPE ``Qwen2TokenizerFast`` trained on ``corpus`` with the Qwen special tokens.

    ``whole_words`` become single tokens (e.g. quoted colour names, ``"plt.bar("``), which keeps code
    short for a tiny model. EOS is ``<|im_end|>``, padding ``<|endoftext|>``. ``special_tokens`` are
    added as special tokens and ``named_tokens`` (default: Qwen's image / video / vision tokens) become
    attributes ``tokenizer.<name>`` that processors read (``image_token``, ``boi_token``, ...).
    """
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = [*QWEN_SPECIAL_TOKENS, *(t for t in special_tokens if t not in QWEN_SPECIAL_TOKENS)]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(corpus), trainer)
    words = [w for w in whole_words if w]
    if words:
        tok.add_tokens([AddedToken(w, normalized=False, special=False) for w in words])
    if named_tokens is None:
        named_tokens = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                        "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"}
    tokenizer = Qwen2TokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   extra_special_tokens=dict(named_tokens))
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


# ---------------------------------------------------------------------------------------------------
# Every VLM family visalign trains, tiny and offline: one builder per family from its real config class
# ---------------------------------------------------------------------------------------------------

#: The families :func:`build_tiny_vlm` builds (and the test matrix runs), in README order.
VLM_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5", "idefics3", "smolvlm", "gemma3", "llava",
                "llava_onevision", "internvl")


def _chat_template(image: str, bos: str = "") -> str:
    """:data:`CHAT_TEMPLATE` with ``image`` where an image part goes (and ``bos`` first)."""
    return bos + CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", image)


def _family_tokenizer(corpus: Iterable[str], vocab_size: int, extra: Sequence[str], named: dict[str, str],
                      image: str, bos: str = "") -> Any:
    """:func:`build_tokenizer` plus a family's special tokens (``named`` become ``tokenizer.<name>``)."""
    tok = build_tokenizer(corpus, vocab_size=vocab_size, special_tokens=extra, named_tokens=named)
    tok.chat_template = _chat_template(image, bos)
    return tok


def _text(tok: Any, hidden: int = 32, layers: int = 2, heads: int = 2, **extra: Any) -> dict[str, Any]:
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    return {"vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": heads, "max_position_embeddings": 512,
            "eos_token_id": eos, "pad_token_id": tok.pad_token_id, "bos_token_id": None, **extra}


def _finish(model: Any, tok: Any) -> Any:
    model.generation_config.eos_token_id = tok.convert_tokens_to_ids("<|im_end|>")
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.bos_token_id = None
    return model


def _qwen_vl(family: str, corpus: Iterable[str], image_size: int, seed: int = 0) -> tuple[Any, Any]:
    import transformers as tf

    tok = build_tokenizer(corpus, vocab_size=320)
    patch, merge = 8, 2
    pixels = {"min_pixels": image_size * image_size, "max_pixels": image_size * image_size,
              "patch_size": patch, "merge_size": merge, "temporal_patch_size": 2}
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    vision_ids = {"image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
                  "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}
    if family == "qwen2_vl":
        processor = build_processor(tok, image_size=image_size, patch_size=patch, merge_size=merge)
        return build_tiny_qwen2vl(processor, hidden_size=32, num_layers=2, num_heads=2, vision_width=16,
                                  vision_depth=1, vision_heads=2, seed=seed), processor
    if family == "qwen2_5_vl":
        processor = tf.Qwen2_5_VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**pixels),
                                           video_processor=tf.Qwen2VLVideoProcessor(**pixels), tokenizer=tok,
                                           chat_template=tok.chat_template)
        config = tf.Qwen2_5_VLConfig(
            text_config=_text(tok, rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3],
                                                    "rope_theta": 10000.0}),
            vision_config={"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
                           "patch_size": patch, "spatial_merge_size": merge, "temporal_patch_size": 2,
                           "window_size": 2 * patch * merge, "fullatt_block_indexes": [0]},
            **vision_ids)
        return _finish(tf.Qwen2_5_VLForConditionalGeneration(config), tok), processor
    processor = tf.Qwen3VLProcessor(image_processor=tf.Qwen2VLImageProcessor(**pixels),
                                    video_processor=tf.Qwen3VLVideoProcessor(**{**pixels, "size": {
                                        "shortest_edge": image_size * image_size,
                                        "longest_edge": image_size * image_size}}),
                                    tokenizer=tok, chat_template=tok.chat_template)
    rope = {"rope_type": "default", "mrope_section": [2, 3, 3], "mrope_interleaved": True, "rope_theta": 10000.0}
    vision = {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": 32,
              "patch_size": patch, "spatial_merge_size": merge, "temporal_patch_size": 2, "num_position_embeddings": 16}
    if family == "qwen3_vl":
        config = tf.Qwen3VLConfig(text_config=_text(tok, head_dim=16, rope_parameters=rope),
                                  vision_config={**vision, "deepstack_visual_indexes": [0]}, **vision_ids)
        return _finish(tf.Qwen3VLForConditionalGeneration(config), tok), processor
    text = _text(tok, head_dim=16, rope_parameters={**rope, "partial_rotary_factor": 1.0},
                 layer_types=["linear_attention", "full_attention"], linear_conv_kernel_dim=2, linear_key_head_dim=8,
                 linear_value_head_dim=8, linear_num_key_heads=2, linear_num_value_heads=2)
    config = tf.Qwen3_5Config(text_config=text, vision_config=vision, **vision_ids)
    return _finish(tf.Qwen3_5ForConditionalGeneration(config), tok), processor


def _idefics3(family: str, corpus: Iterable[str], image_size: int) -> tuple[Any, Any]:
    import transformers as tf

    patch, scale = 8, 2
    rows = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
    named = {"image_token": "<image>", "fake_image_token": "<fake_token_around_image>",
             "global_image_token": "<global-img>", "end_of_utterance_token": "<end_of_utterance>"}
    if family == "smolvlm":
        named["video_token"] = "<video>"
    tok = _family_tokenizer(corpus, 320, [*named.values(), *rows], named, "<image>")
    seq = (image_size // patch) ** 2 // scale**2
    size = {"longest_edge": image_size}
    vision = {"hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
              "image_size": image_size, "patch_size": patch}
    common = {"image_token_id": tok.convert_tokens_to_ids("<image>"), "scale_factor": scale}
    if family == "idefics3":
        image_processor = tf.Idefics3ImageProcessor(do_image_splitting=False, size=size, max_image_size=size)
        processor = tf.Idefics3Processor(image_processor=image_processor, tokenizer=tok, image_seq_len=seq,
                                         chat_template=tok.chat_template)
        config = tf.Idefics3Config(text_config=tf.LlamaConfig(**_text(tok)), vision_config=vision, **common)
        return _finish(tf.Idefics3ForConditionalGeneration(config), tok), processor
    image_processor = tf.SmolVLMImageProcessor(do_image_splitting=False, size=size, max_image_size=size)
    processor = tf.SmolVLMProcessor(image_processor=image_processor, tokenizer=tok,
                                    video_processor=tf.SmolVLMVideoProcessor(size=size, max_image_size=size),
                                    image_seq_len=seq, chat_template=tok.chat_template)
    config = tf.SmolVLMConfig(text_config=tf.LlamaConfig(**_text(tok)), vision_config=vision, **common)
    return _finish(tf.SmolVLMForConditionalGeneration(config), tok), processor


def _gemma3(corpus: Iterable[str], image_size: int) -> tuple[Any, Any]:
    import transformers as tf

    named = {"boi_token": "<start_of_image>", "eoi_token": "<end_of_image>", "image_token": "<image_soft_token>"}
    tok = _family_tokenizer(corpus, 320, list(named.values()), named, "<start_of_image>")
    patch, per_image = 8, 4
    processor = tf.Gemma3Processor(image_processor=tf.Gemma3ImageProcessor(
        size={"height": image_size, "width": image_size}), tokenizer=tok, image_seq_length=per_image,
        chat_template=tok.chat_template)
    ids = {k: tok.convert_tokens_to_ids(v) for k, v in named.items()}
    config = tf.Gemma3Config(
        text_config=tf.Gemma3TextConfig(**_text(tok, head_dim=16, num_key_value_heads=1, sliding_window=16,
                                                layer_types=["sliding_attention", "full_attention"])),
        vision_config=tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=image_size, patch_size=patch),
        mm_tokens_per_image=per_image, boi_token_index=ids["boi_token"], eoi_token_index=ids["eoi_token"],
        image_token_index=ids["image_token"])
    model = tf.Gemma3ForConditionalGeneration(config)
    # Gemma 3 initialises its image projection to zeros (a trained checkpoint has it learned): random
    # instead, or the tiny model's output would not depend on the image at all
    import torch

    torch.nn.init.normal_(model.model.multi_modal_projector.mm_input_projection_weight, std=0.25)
    return _finish(model, tok), processor


def _llava_onevision(corpus: Iterable[str], image_size: int) -> tuple[Any, Any]:
    import transformers as tf

    named = {"image_token": "<image>", "video_token": "<video>"}
    tok = _family_tokenizer(corpus, 320, list(named.values()), named, "<image>")
    patch = 8
    grid = [[image_size, image_size]]
    image_processor = tf.LlavaOnevisionImageProcessor(size={"height": image_size, "width": image_size},
                                                      image_grid_pinpoints=grid, do_pad=True)
    processor = tf.LlavaOnevisionProcessor(
        image_processor=image_processor, tokenizer=tok,
        video_processor=tf.LlavaOnevisionVideoProcessor(size={"height": image_size, "width": image_size}),
        num_image_tokens=(image_size // patch) ** 2, vision_feature_select_strategy="full",
        chat_template=tok.chat_template, vision_aspect_ratio="anyres_max_9")
    config = tf.LlavaOnevisionConfig(
        text_config=tf.Qwen2Config(**_text(tok)),
        vision_config=tf.SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                            num_attention_heads=2, image_size=image_size, patch_size=patch),
        image_token_index=tok.convert_tokens_to_ids("<image>"), video_token_index=tok.convert_tokens_to_ids("<video>"),
        vision_feature_select_strategy="full", image_grid_pinpoints=grid)
    return _finish(tf.LlavaOnevisionForConditionalGeneration(config), tok), processor


def _internvl(corpus: Iterable[str], image_size: int) -> tuple[Any, Any]:
    import transformers as tf

    named = {"start_image_token": "<img>", "end_image_token": "</img>", "context_image_token": "<IMG_CONTEXT>",
             "video_token": "<video>"}
    tok = _family_tokenizer(corpus, 320, list(named.values()), named, "<IMG_CONTEXT>")
    patch = 8
    seq = (image_size // patch) ** 2 // 4
    processor = tf.InternVLProcessor(
        image_processor=tf.GotOcr2ImageProcessor(size={"height": image_size, "width": image_size},
                                                 crop_to_patches=False),
        tokenizer=tok, video_processor=tf.InternVLVideoProcessor(size={"height": image_size, "width": image_size}),
        image_seq_length=seq, chat_template=tok.chat_template)
    config = tf.InternVLConfig(
        text_config=tf.Qwen2Config(**_text(tok)),
        vision_config=tf.InternVLVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                              num_attention_heads=2, image_size=[image_size, image_size],
                                              patch_size=[patch, patch]),
        image_token_id=tok.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=seq)
    return _finish(tf.InternVLForConditionalGeneration(config), tok), processor


def build_tiny_vlm(family: str, corpus: Iterable[str], *, image_size: int = 32, seed: int = 0) -> tuple[Any, Any]:
    """A random tiny ``(model, processor)`` of one of :data:`VLM_FAMILIES`, built offline from the family's
    real config, model and processor classes (a BPE tokenizer trained on ``corpus`` with the family's
    special tokens; text width 32, 2 layers; a 1-layer vision tower; ``image_size`` square images).

    Example:
        >>> model, processor = build_tiny_vlm("gemma3", ["plt.bar([1, 2], [3, 4])"])
        >>> type(model).__name__, type(processor).__name__
        ('Gemma3ForConditionalGeneration', 'Gemma3Processor')
    """
    import torch

    if family not in VLM_FAMILIES:
        raise ValueError(f"unknown family {family!r}; one of {', '.join(VLM_FAMILIES)}")
    corpus = list(corpus)
    torch.manual_seed(seed)
    if family.startswith("qwen"):
        return _qwen_vl(family, corpus, image_size, seed)
    if family in ("idefics3", "smolvlm"):
        return _idefics3(family, corpus, image_size)
    if family == "llava":
        return build_tiny_llava(corpus, image_size=image_size, seed=seed)
    builder = {"gemma3": _gemma3, "llava_onevision": _llava_onevision, "internvl": _internvl}[family]
    return builder(corpus, image_size)
