"""Pieces the tiny offline pipeline builders share: a small word vocabulary and tokenizers built from it.

Each family's module builds its own random pipeline from the real config classes (``tiny_*_pipeline``);
the tokenizers here stand in for the real ones without any download.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

__all__ = ["WORDS", "clip_tokenizer", "word_tokenizer"]

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

