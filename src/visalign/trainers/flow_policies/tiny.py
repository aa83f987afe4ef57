"""Pieces the tiny offline pipeline builders share: a small word vocabulary and tokenizers built from it.

Each family's module builds its own random pipeline from the real config classes (``tiny_*_pipeline``);
the tokenizers here stand in for the real ones without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["WORDS", "clip_tokenizer", "mistral_chat_tokenizer", "qwen_chat_tokenizer", "word_tokenizer"]

WORDS = ["a", "an", "the", "of", "photo", "picture", "red", "green", "blue", "yellow", "purple", "orange", "black", "white", "circle", "square", "triangle", "star", "cat", "dog", "car", "house", "tree", "small", "big", "on", "in", "with", "and"]


def clip_tokenizer(directory: Path, max_length: int) -> Any:
    """A ``CLIPTokenizer`` over :data:`WORDS` (and single characters), its files written to ``directory``."""
    from transformers import CLIPTokenizer

    vocab: dict[str, int] = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for w in WORDS:
        vocab[w + "</w>"] = len(vocab)
    for c in "abcdefghijklmnopqrstuvwxyz0123456789":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault(c + "</w>", len(vocab))
    (directory / "vocab.json").write_text(json.dumps(vocab))
    (directory / "merges.txt").write_text("#version: 0.2\n")
    return CLIPTokenizer(str(directory / "vocab.json"), str(directory / "merges.txt"), model_max_length=max_length)


def word_tokenizer(max_length: int) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` over :data:`WORDS` (``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2), T5-like."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=max_length)


def qwen_chat_tokenizer(max_length: int = 1024, chat_template: str | None = None) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` with Qwen's chat special tokens (``<|endoftext|>`` as pad,
    ``<|im_start|>``, ``<|im_end|>``) and ``\\n`` as a token, so that Qwen-Image's prompt template prefix is
    34 tokens, as with the real Qwen2 tokenizer (the pipeline drops exactly 34); ``<think>`` / ``</think>``
    too, and ``chat_template`` (Jinja) for pipelines that call ``apply_chat_template`` (Qwen3 for FLUX.2 Klein).

    Example:
        >>> tok = qwen_chat_tokenizer()
        >>> tok.tokenize("<|im_start|>user\\na red circle<|im_end|>")
        ['<|im_start|>', '<unk>', '\\n', 'a', 'red', 'circle', '<|im_end|>']
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    vocab = {t: i for i, t in enumerate([*special, "<unk>", "\n", *WORDS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\n|\w+|[^\w\s]+"), behavior="removed", invert=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                   unk_token="<unk>", additional_special_tokens=special[1:],
                                   model_max_length=max_length, chat_template=chat_template)


MISTRAL_SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]",
                          "[IMG]", "[IMG_BREAK]", "[IMG_END]"]

MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['content'] is string %}{% set text = m['content'] %}{% else %}{% set ns = namespace(text='') %}"
    "{% for part in m['content'] %}{% if part['type'] == 'text' %}{% set ns.text = ns.text + part['text'] %}"
    "{% elif part['type'] in ['image', 'image_url'] %}{% set ns.text = ns.text + '[IMG]' %}{% endif %}{% endfor %}"
    "{% set text = ns.text %}{% endif %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]"
    "{% elif m['role'] == 'user' %}[INST]{{ text }}[/INST]"
    "{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}")
"""Mistral-Small-3.x's chat layout, short: ``<s>[SYSTEM_PROMPT]...[/SYSTEM_PROMPT][INST]...[/INST]``, an image
part as ``[IMG]`` (the Pixtral processor expands it)."""


def mistral_chat_tokenizer(corpus: list[str], max_length: int = 512, vocab_size: int = 200) -> Any:
    """A byte-pair ``PreTrainedTokenizerFast`` trained here on ``corpus`` plus :data:`WORDS` (Metaspace
    pre-tokenizer, as Mistral's), with Mistral's special tokens (``<s>``, ``</s>``, ``<pad>``, ``[INST]``,
    ``[SYSTEM_PROMPT]``, the Pixtral image tokens ``[IMG]``, ``[IMG_BREAK]``, ``[IMG_END]``) and
    :data:`MISTRAL_CHAT_TEMPLATE`; ``model_max_length = max_length``.

    Example:
        >>> tok = mistral_chat_tokenizer(["You give structured responses."])
        >>> tok.tokenize("[INST]a red circle[/INST]")
        ['[INST]', '▁a', '▁red', '▁circle', '[/INST]']
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=MISTRAL_SPECIAL_TOKENS, show_progress=False)
    tok.train_from_iterator([*corpus, " ".join(WORDS)], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", model_max_length=max_length,
                                   chat_template=MISTRAL_CHAT_TEMPLATE)
