"""OCR similarity: how close the text read from an image is to the text it should show.

Reference: Flow-GRPO's OCR reward (``flow_grpo/ocr.py``, class ``OcrScorer``; Liu et al., "Flow-GRPO:
Training Flow Matching Models via Online RL", 2025). For one image it does, given the recognised
strings and the target text (the part of the prompt between the first pair of double quotes):

1. ``read = "".join(texts)``: the recognised strings, in the order the OCR engine returns them
   (reading order), concatenated without a separator;
2. both ``read`` and ``target`` lose every ASCII space (``str.replace(" ", "")``, not tabs or
   newlines) and are lower-cased (``str.lower``);
3. ``d = 0`` if ``target`` is a substring of ``read`` (text around the target is not penalised),
   else ``d = levenshtein(read, target)`` (character level, unit costs);
4. ``d = min(d, len(target))`` ("recognised many unrelated characters": at most one penalty per
   target character);
5. ``score = 1 - d / len(target)``, which steps 3-4 keep in ``[0, 1]``.

:func:`ocr_similarity` reproduces steps 2-5 on an already-joined string (the reward joins; see
:class:`visalign.rewards.ocr.OcrReward`). The normalisation is therefore *not* the symmetric
``d / max(len(read), len(target))`` of many OCR benchmarks: it divides by the target length and caps
the distance there, so reading nothing gives 0 and reading the target inside longer text gives 1.

Where the reference is undefined, this module decides: a target that is empty after step 2 raises
``ValueError`` (the reference divides by zero); a reward should call such a sample "not applicable".
"""

from __future__ import annotations

__all__ = ["levenshtein", "normalise_ocr_text", "ocr_similarity"]


def levenshtein(a: str, b: str) -> int:
    """Character-level edit distance (insert, delete, substitute, each cost 1).

    Example:
        >>> levenshtein("kitten", "sitting")
        3
        >>> levenshtein("", "abc"), levenshtein("abc", "abc")
        (3, 0)
    """
    if len(a) < len(b):  # keep the row as short as the shorter string
        a, b = b, a
    if not b:
        return len(a)
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def normalise_ocr_text(text: str) -> str:
    """Flow-GRPO's normalisation: drop ASCII spaces, lower-case.

    Example:
        >>> normalise_ocr_text("Hello World")
        'helloworld'
    """
    return text.replace(" ", "").lower()


def ocr_similarity(text_read: str, target: str) -> float:
    """``1 - min(d, len(t)) / len(t)`` after Flow-GRPO's normalisation, with ``d = 0`` when the target
    appears inside the text read (see the module docstring for every step).

    Args:
        text_read: everything the OCR engine read, already joined in reading order.
        target: the text the image should show.

    Returns:
        A float in ``[0, 1]``: 1 when the normalised target is contained in the normalised text read,
        0 when nothing was read or at least ``len(target)`` edits are needed.

    Raises:
        TypeError: if an argument is not a string.
        ValueError: if the target is empty after removing spaces.

    Example:
        >>> ocr_similarity("HELLO WORLD", "Hello World")
        1.0
        >>> ocr_similarity("A sign: hello world!", "hello world")  # extra text is not penalised
        1.0
        >>> ocr_similarity("HELL0 W0RLD", "hello world")  # 2 edits out of 10 characters
        0.8
        >>> ocr_similarity("", "hello")
        0.0
    """
    if not isinstance(text_read, str) or not isinstance(target, str):
        raise TypeError(f"expected two strings, got {type(text_read).__name__} and {type(target).__name__}")
    read, tgt = normalise_ocr_text(text_read), normalise_ocr_text(target)
    if not tgt:
        raise ValueError(f"the target text {target!r} is empty once spaces are removed")
    d = 0 if tgt in read else min(levenshtein(read, tgt), len(tgt))
    return 1.0 - d / len(tgt)
