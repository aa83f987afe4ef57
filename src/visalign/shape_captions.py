"""The caption grammar of the shipped shapes task: 3 shapes x 6 colours, ``"a red circle"``.

The data generator (:mod:`visalign.data.shapes`) draws these captions and the reward
(:mod:`visalign.rewards.shapes`) reads them back; both take the grammar from here, so neither imports
the other. It imports nothing of visalign: any floor may use it.

Example:
    >>> len(CAPTIONS), CAPTIONS[0], parse_caption("a big Green triangle")
    (18, 'a red circle', ('triangle', 'green'))
"""

from __future__ import annotations

import re

__all__ = ["BACKGROUND", "CAPTIONS", "COLOURS", "SHAPES", "caption_to_class", "class_to_caption", "parse_caption"]

#: colour name -> RGB; hues 0, 60, 120, 180, 240, 300 degrees, far from the white background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "yellow": (215, 215, 25),
    "green": (30, 170, 30),
    "cyan": (25, 190, 190),
    "blue": (35, 35, 220),
    "magenta": (200, 35, 200),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
BACKGROUND: tuple[int, int, int] = (255, 255, 255)
#: the 18 captions in class-id order (shape-major): ``CAPTIONS[label]``.
CAPTIONS: list[str] = [f"a {colour} {shape}" for shape in SHAPES for colour in COLOURS]

def caption_to_class(caption: str) -> int:
    """The class id (index in :data:`CAPTIONS`) of a caption such as ``"a red circle"``.

    Example:
        >>> caption_to_class("a red circle"), caption_to_class("A Blue Triangle")
        (0, 16)
    """
    key = " ".join(caption.lower().split())
    try:
        return CAPTIONS.index(key)
    except ValueError:
        raise ValueError(f"unknown caption {caption!r}; expected one of CAPTIONS, e.g. 'a red circle'") from None


def class_to_caption(label: int) -> str:
    """The caption of class id ``label``.

    Example:
        >>> class_to_caption(7)
        'a yellow square'
    """
    return CAPTIONS[label]


def parse_caption(text: str) -> tuple[str | None, str | None]:
    """``(shape, colour)`` named in free text (the first known word of each), None where none is named.

    Example:
        >>> parse_caption("a photo of a big Green triangle")
        ('triangle', 'green')
        >>> parse_caption("a cat")
        (None, None)
    """
    words = re.findall(r"[a-z]+", text.lower())
    shape = next((w for w in words if w in SHAPES), None)
    colour = next((w for w in words if w in COLOURS), None)
    return shape, colour
