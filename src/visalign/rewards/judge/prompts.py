"""What a generative judge trained by ``visalign train reward --mode judge`` is shown, in one place: the
trainer builds its rows with :func:`judge_prompt` and the ``trained_judge`` preset of ``vlm_judge`` builds its
requests with the same function, so a judge is asked in use exactly as it was trained.

A prompt is the images alone, in order (the reference when the judge uses one, then the candidate, or
the two candidates of a pairwise judge: Image 1, Image 2), then the instruction with ``{prompt}`` replaced
by the task's prompt. The answer follows R1-Reward's format ``<think>...</think><answer>VERDICT</answer>``
with the verdicts of :data:`CHOICES` (read by :func:`~visalign.rewards.judge.parsing.parse_verdict`).

Example:
    >>> from PIL import Image
    >>> a, b = Image.new("RGB", (8, 8), "white"), Image.new("RGB", (8, 8), "black")
    >>> shown = judge_prompt(judge_instruction("pairwise", reference=False), [a, b], prompt="a red cat")
    >>> len(shown.images), shown.text.splitlines()[0]
    (2, 'Image 1 (the first image) and Image 2 (the second image) were made for this task: a red cat')
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

__all__ = ["CHOICES", "JudgePrompt", "judge_instruction", "judge_prompt"]

#: The verdicts of each judge mode; a pairwise judge's first choice names Image 1 as the better one.
CHOICES: dict[str, list[str]] = {"pairwise": ["1", "2"], "pointwise": ["good", "bad"]}

_FORMAT_LINE = "Output format (strictly follow): <think>your analysis</think><answer>{verdicts}</answer>"
_INSTRUCTIONS = {
    ("pairwise", True): (
        "The first image is a reference. Image 1 (the second image) and Image 2 (the third image) were made "
        "to reproduce it. Compare Image 1 and Image 2 with the reference side by side inside <think> and "
        "</think>; a tie is not permitted. Then answer inside <answer> and </answer>: 1 if Image 1 is closer "
        "to the reference, 2 if Image 2 is.\n" + _FORMAT_LINE.format(verdicts="1/2")),
    ("pairwise", False): (
        "Image 1 (the first image) and Image 2 (the second image) were made for this task: {prompt}\n"
        "Compare them side by side inside <think> and </think>; a tie is not permitted. Then answer inside "
        "<answer> and </answer>: 1 if Image 1 is better, 2 if Image 2 is.\n" + _FORMAT_LINE.format(verdicts="1/2")),
    ("pointwise", True): (
        "The first image is a reference. The second image was made to reproduce it. Compare them inside "
        "<think> and </think>. Then answer inside <answer> and </answer>: good if the second image reproduces "
        "the reference faithfully, bad if it does not.\n" + _FORMAT_LINE.format(verdicts="good/bad")),
    ("pointwise", False): (
        "The image was made for this task: {prompt}\nJudge it inside <think> and </think>. Then answer inside "
        "<answer> and </answer>: good if it is well made, bad if it is not.\n"
        + _FORMAT_LINE.format(verdicts="good/bad")),
}


def judge_instruction(mode: str, reference: bool) -> str:
    """The built-in instruction of a judge (``{prompt}`` stands for the pair's prompt).

    Example:
        >>> judge_instruction("pairwise", reference=True).splitlines()[-1]
        'Output format (strictly follow): <think>your analysis</think><answer>1/2</answer>'
    """
    if mode not in CHOICES:
        raise ValueError(f"judge mode must be 'pairwise' or 'pointwise', got {mode!r}")
    return _INSTRUCTIONS[(mode, bool(reference))]


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: the images in the order shown, then the instruction text."""

    images: list[Image.Image]
    text: str


def judge_prompt(instruction: str, candidates: Sequence[Image.Image], *, reference: Image.Image | None = None,
                 prompt: str | None = None) -> JudgePrompt:
    """The prompt of a trained judge: ``[reference,] *candidates`` then ``instruction`` with ``{prompt}``
    replaced by ``prompt`` ('' when None).

    ``candidates`` holds one image (pointwise) or two, Image 1 then Image 2 (pairwise).

    Example:
        >>> im = Image.new("RGB", (4, 4))
        >>> shown = judge_prompt("Is it {prompt}?", [im], reference=im, prompt="a cat")
        >>> len(shown.images), shown.text
        (2, 'Is it a cat?')
    """
    if len(candidates) not in (1, 2):
        raise ValueError(f"a judge is shown one or two candidates, got {len(candidates)}")
    images = ([reference] if reference is not None else []) + list(candidates)
    return JudgePrompt(images=images, text=instruction.replace("{prompt}", prompt or ""))
