"""What a generative judge trained by ``visalign train reward --mode judge`` is shown, in one place: the
trainer builds its rows with :func:`judge_prompt` and the ``trained_judge`` preset of ``vlm_judge`` builds its
requests with the same function, so a judge is asked in use exactly as it was trained.

A prompt is the images alone, in order (the reference when the judge uses one, then the candidate, or
the two candidates of a pairwise judge: Image 1, Image 2), then the instruction with ``{prompt}`` replaced
by the task's prompt. The answer follows R1-Reward's format ``<think>...</think><answer>VERDICT</answer>``
with the verdicts of :data:`CHOICES` (read by :func:`~visalign.rewards.judge.parsing.parse_verdict`).

A judge may be trained on a *view* of the images (:data:`VIEWS`): ``raw`` (the images themselves),
``diff`` (each candidate replaced by its inverted per-pixel difference from the reference, white where it
matches; the reference itself not shown), ``ref-diff`` (the reference, then the difference images) or
``mask`` (black wherever any channel differs, thickened by a 5 px max filter). :func:`judge_prompt` applies
the view, so the trainer (``view`` in the judge config, recorded in ``judge.json``) and ``vlm_judge`` show
the same pixels.

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

__all__ = ["CHOICES", "VIEWS", "JudgePrompt", "difference_image", "judge_instruction", "judge_prompt"]

#: The verdicts of each judge mode; a pairwise judge's first choice names Image 1 as the better one.
CHOICES: dict[str, list[str]] = {"pairwise": ["1", "2"], "pointwise": ["good", "bad"]}
#: What a judge is shown of its images (see the module docstring); every view but ``raw`` needs the reference.
VIEWS = ("raw", "diff", "ref-diff", "mask")

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
_DIFF_INSTRUCTIONS = {
    "pairwise": (
        "Image 1 and Image 2 show where two images made to reproduce a reference differ from it (white where "
        "they match). Compare the two differences inside <think> and </think>; a tie is not permitted. Then "
        "answer inside <answer> and </answer>: 1 if Image 1's difference is smaller, 2 if Image 2's is.\n"
        + _FORMAT_LINE.format(verdicts="1/2")),
    "pointwise": (
        "The image shows where an image made to reproduce a reference differs from it (white where they "
        "match). Judge it inside <think> and </think>. Then answer inside <answer> and </answer>: good if the "
        "difference is negligible, bad if it is not.\n" + _FORMAT_LINE.format(verdicts="good/bad")),
}


def judge_instruction(mode: str, reference: bool, view: str = "raw") -> str:
    """The built-in instruction of a judge (``{prompt}`` stands for the pair's prompt); every ``view``
    but ``raw`` gets the difference instruction (``reference`` then only says whether the reference is
    shown first, ``ref-diff``).

    Example:
        >>> judge_instruction("pairwise", reference=True).splitlines()[-1]
        'Output format (strictly follow): <think>your analysis</think><answer>1/2</answer>'
    """
    if mode not in CHOICES:
        raise ValueError(f"judge mode must be 'pairwise' or 'pointwise', got {mode!r}")
    check_view(view)
    if view != "raw":
        lead = "The first image is the reference. " if view == "ref-diff" else ""
        return lead + _DIFF_INSTRUCTIONS[mode]
    return _INSTRUCTIONS[(mode, bool(reference))]


def check_view(view: str) -> str:
    """``view`` if it is one of :data:`VIEWS`, else ``ValueError``."""
    if view not in VIEWS:
        raise ValueError(f"view must be one of {list(VIEWS)}, got {view!r}")
    return view


def difference_image(candidate: Image.Image, reference: Image.Image, mask: bool = False) -> Image.Image:
    """``candidate``'s inverted per-pixel difference from ``reference`` (RGB): white where they match,
    ink where they differ. ``mask``: black wherever any channel differs, thickened by a 5 px max filter, so
    that a thin changed stroke survives a downscale. A candidate of another size is first resized
    (bilinear) to the reference's size.

    Example:
        >>> ref = Image.new("RGB", (4, 4), "white"); c = ref.copy(); c.putpixel((0, 0), (0, 0, 0))
        >>> d = difference_image(c, ref); d.getpixel((0, 0)), d.getpixel((3, 3))
        ((0, 0, 0), (255, 255, 255))
    """
    from PIL import ImageChops, ImageFilter, ImageOps

    ref, cand = reference.convert("RGB"), candidate.convert("RGB")
    if cand.size != ref.size:
        cand = cand.resize(ref.size, Image.Resampling.BILINEAR)
    d = ImageChops.difference(cand, ref)
    if mask:
        d = d.convert("L").point(lambda v: 255 if v > 0 else 0).filter(ImageFilter.MaxFilter(5)).convert("RGB")
    return ImageOps.invert(d)


@dataclass(frozen=True)
class JudgePrompt:
    """One judge prompt: the images in the order shown, then the instruction text."""

    images: list[Image.Image]
    text: str


def judge_prompt(instruction: str, candidates: Sequence[Image.Image], *, reference: Image.Image | None = None,
                 prompt: str | None = None, view: str = "raw") -> JudgePrompt:
    """The prompt of a trained judge: ``[reference,] *candidates`` then ``instruction`` with ``{prompt}``
    replaced by ``prompt`` ('' when None).

    ``candidates`` holds one image (pointwise) or two, Image 1 then Image 2 (pairwise). ``view`` (not
    ``raw``): each candidate is shown as its :func:`difference_image` from ``reference`` (required), and the
    reference is shown first only for ``ref-diff``.

    Example:
        >>> im = Image.new("RGB", (4, 4))
        >>> shown = judge_prompt("Is it {prompt}?", [im], reference=im, prompt="a cat")
        >>> len(shown.images), shown.text
        (2, 'Is it a cat?')
        >>> len(judge_prompt("Which?", [im, im], reference=im, view="diff").images)
        2
    """
    if len(candidates) not in (1, 2):
        raise ValueError(f"a judge is shown one or two candidates, got {len(candidates)}")
    if check_view(view) != "raw":
        if reference is None:
            raise ValueError(f"view {view!r} shows differences from the reference: pass reference=")
        shown = [difference_image(c, reference, mask=view == "mask") for c in candidates]
        lead = [reference.convert("RGB")] if view == "ref-diff" else []
        return JudgePrompt(images=lead + shown, text=instruction.replace("{prompt}", prompt or ""))
    images = ([reference] if reference is not None else []) + list(candidates)
    return JudgePrompt(images=images, text=instruction.replace("{prompt}", prompt or ""))
