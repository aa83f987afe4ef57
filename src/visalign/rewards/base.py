"""The reward contract: ``Sample`` in, ``RewardOutput`` out.

A reward scores a batch of samples and returns one score per sample (a float, or None = "not
applicable", never "failed": a failed render has a defined score) and per-sample details for logs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from PIL import Image

from ..renderers.base import RenderResult


@dataclass
class Sample:
    """Everything a reward may need about one generated sample.

    Attributes:
        prompt: the instruction / text prompt (CLIP score, judges).
        completion: the raw model output; code is extracted from it when ``code`` is None.
        code: the generated code (chart / table / SVG / HTML), already extracted.
        image: a generated image (text-to-image), or None when the image comes from rendering ``code``.
        frames: the frames of a generated video (text-to-video; ``image`` is then its first frame), or None.
        reference_image: the target image.
        reference_code: the target code (chart-code metrics, TEDS on LaTeX tables).
        kind: renderer for ``code`` and ``reference_code``: ``matplotlib``, ``latex``, ``svg`` or ``html``.
        group: id of the prompt group (GRPO), used by group-normalised composites.
        metadata: anything else (dataset columns), passed through to details.
        rendered: the render of ``code``, filled once per batch by :class:`~visalign.rewards.render.RenderService`
            and shared by every reward that needs it.
        reference_rendered: the render of ``reference_code`` (for its trace or a missing reference image).

    Example:
        >>> s = Sample(code="import matplotlib.pyplot as plt\\nplt.plot([1, 2])", kind="matplotlib")
        >>> s.generated_image is None
        True
    """

    prompt: str | None = None
    completion: str | None = None
    code: str | None = None
    image: Image.Image | None = None
    reference_image: Image.Image | None = None
    reference_code: str | None = None
    kind: str | None = None
    group: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    rendered: RenderResult | None = field(default=None, repr=False)
    reference_rendered: RenderResult | None = field(default=None, repr=False)
    frames: list[Image.Image] | None = field(default=None, repr=False)

    @property
    def generated_image(self) -> Image.Image | None:
        """The generated image: ``image`` if given, else the successful render of ``code``."""
        if self.image is not None:
            return self.image
        if self.rendered is not None and self.rendered.ok:
            return self.rendered.image
        return None

    @property
    def failed_output(self) -> str | None:
        """Why a code-writing sample has no image to score, else None: its render failed, or its
        completion holds no code of its ``kind``. Image rewards score such a sample with their failure
        score, never None: a None reward is left out of GRPO's advantages, and writing no code would
        then escape the penalty of a failed render.

        Example:
            >>> Sample(completion="Sorry, I cannot.", kind="svg").failed_output
            'no svg code found'
            >>> Sample(prompt="a red circle").failed_output is None  # text-to-image: nothing generated yet
            True
        """
        if self.generated_image is not None:
            return None
        if self.rendered is not None and not self.rendered.ok:
            return f"render failed ({self.rendered.error_kind})"
        if self.code is None and self.completion is not None and self.kind is not None:
            return f"no {self.kind} code found"
        return None

    @property
    def target_image(self) -> Image.Image | None:
        """The reference image: ``reference_image`` if given, else the render of ``reference_code``."""
        if self.reference_image is not None:
            return self.reference_image
        if self.reference_rendered is not None and self.reference_rendered.ok:
            return self.reference_rendered.image
        return None


@dataclass
class RewardOutput:
    """Scores (None = not applicable), per-sample details, and batch-level counters for logs."""

    scores: list[float | None]
    details: list[dict[str, Any]]
    metrics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.scores) != len(self.details):
            raise ValueError(f"{len(self.scores)} scores but {len(self.details)} details")


class Reward(ABC):
    """Base class: ``reward(samples) -> RewardOutput``, one score per sample, same order.

    Subclasses set ``name`` and implement :meth:`score`. Rewards that need renders declare
    ``needs_render = True`` (and ``needs_reference_render`` when they read the reference program's
    render or trace); the caller (or a composite) renders once per batch through a shared
    :class:`~visalign.rewards.render.RenderService`.
    """

    name: str = "reward"
    needs_render: bool = False
    needs_reference_render: bool = False

    def __call__(self, samples: Sequence[Sample]) -> RewardOutput:
        samples = list(samples)
        out = self.score(samples)
        if len(out.scores) != len(samples):
            raise RuntimeError(f"{self.name} returned {len(out.scores)} scores for {len(samples)} samples")
        return out

    @abstractmethod
    def score(self, samples: list[Sample]) -> RewardOutput:
        """Score every sample."""

    def close(self) -> None:
        """Release models, renderers and connections."""

    def __enter__(self) -> Reward:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
