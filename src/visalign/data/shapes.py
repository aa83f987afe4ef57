"""Synthetic coloured shapes: 32x32 images of one circle, square or triangle with captions.

The data of the embedded text-to-image demo (issue 5): a tiny class-conditional flow-matching model
learns ``caption -> image`` on these, and GRPO then raises
:class:`~visalign.rewards.shapes.ShapeColourReward` on held-out prompts.

* 3 shapes x 6 well-separated colours (hues 0, 60, ..., 300 degrees) = 18 captions, ``"a red circle"``;
  :data:`CAPTIONS` lists them shape-major (class id = ``SHAPES.index(shape) * 6 + colour index``).
* One shape per image on a white background; the shape's bounding box is square, axis-aligned, with a
  side of 10 to 22 px on a 32 px canvas (scaled with ``size``) and lies fully inside the canvas.
  Squares are axis-aligned, triangles stand on their base (apex up): a shape's bounding-box fill ratio
  (circle ~0.785, square 1, triangle 0.5) then tells the shapes apart.
* Each colour channel is jittered by up to +-12 per image (hue moves by a few degrees at most).
* Drawn with PIL at 4x and downsampled with a box filter (anti-aliased edges).
* Deterministic: the same ``seed`` gives the same images on every machine (Python's ``random``).

Example:
    >>> rows = shapes_dataset(3, seed=0)
    >>> [r["caption"] for r in rows] == [CAPTIONS[r["label"]] for r in rows]
    True
    >>> rows[0]["image"].size
    (32, 32)
"""

from __future__ import annotations

import random
from typing import Any

from PIL import Image, ImageDraw

from ..shape_captions import (
    BACKGROUND,
    CAPTIONS,
    COLOURS,
    SHAPES,
    caption_to_class,
    class_to_caption,
    parse_caption,
)

__all__ = [
    "BACKGROUND",
    "CAPTIONS",
    "COLOURS",
    "SHAPES",
    "caption_to_class",
    "class_to_caption",
    "draw_shape",
    "parse_caption",
    "shapes_dataset",
    "split_prompts",
]

_SUPERSAMPLE = 4
_JITTER = 12


def draw_shape(
    shape: str,
    colour: str | tuple[int, int, int],
    *,
    size: int = 32,
    seed: int | None = None,
    rng: random.Random | None = None,
    side: float | None = None,
    center: tuple[float, float] | None = None,
    jitter: int = _JITTER,
    background: tuple[int, int, int] = BACKGROUND,
) -> Image.Image:
    """One anti-aliased ``shape`` in ``colour`` on a ``size`` x ``size`` background.

    The side (of the square bounding box) and the centre are drawn from ``rng`` (or ``Random(seed)``)
    unless given: side in ``[0.31, 0.69] * size``, centre such that the shape lies inside the canvas.

    Args:
        shape: ``"circle"``, ``"square"`` or ``"triangle"`` (apex up).
        colour: a name in :data:`COLOURS` or an RGB triple.
        size: canvas side in pixels.
        seed: seed of a fresh ``random.Random`` (ignored when ``rng`` is given).
        rng: the random generator to draw side, centre and colour jitter from.
        side: the bounding-box side in pixels (default: random).
        center: the bounding-box centre ``(x, y)`` in pixels (default: random).
        jitter: colour jitter per channel, uniform in ``[-jitter, jitter]``.
        background: the background RGB.

    Example:
        >>> img = draw_shape("square", "red", seed=0, side=16, center=(16, 16), jitter=0)
        >>> img.getpixel((16, 16)), img.getpixel((2, 2))
        ((220, 30, 30), (255, 255, 255))
    """
    if rng is None:
        rng = random.Random(seed)
    rgb = COLOURS[colour] if isinstance(colour, str) else tuple(colour)
    if isinstance(colour, str) and colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
    if side is None:
        side = rng.uniform(0.31, 0.69) * size
    if center is None:
        lo, hi = side / 2 + 0.5, size - side / 2 - 0.5
        center = (rng.uniform(lo, hi), rng.uniform(lo, hi))
    fill = tuple(min(255, max(0, c + rng.randint(-jitter, jitter))) for c in rgb) if jitter else rgb

    k = _SUPERSAMPLE
    big = Image.new("RGB", (size * k, size * k), background)
    draw = ImageDraw.Draw(big)
    x0, y0 = (center[0] - side / 2) * k, (center[1] - side / 2) * k
    s = side * k
    box = [x0, y0, x0 + s - 1, y0 + s - 1]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(x0 + (s - 1) / 2, y0), (x0 + s - 1, y0 + s - 1), (x0, y0 + s - 1)], fill=fill)
    return big.resize((size, size), Image.BOX)


def shapes_dataset(n: int, seed: int = 0, size: int = 32) -> list[dict[str, Any]]:
    """``n`` rows ``{image, caption, label, shape, colour}``; classes cycle through :data:`CAPTIONS`
    (balanced: row ``i`` has label ``i % 18`` before shuffling) in a seeded random order.

    Example:
        >>> a, b = shapes_dataset(4, seed=1), shapes_dataset(4, seed=1)
        >>> [r["caption"] for r in a] == [r["caption"] for r in b] and a[0]["image"].tobytes() == b[0]["image"].tobytes()
        True
        >>> sorted(a[0])
        ['caption', 'colour', 'image', 'label', 'shape']
    """
    rng = random.Random(seed)
    labels = [i % len(CAPTIONS) for i in range(n)]
    rng.shuffle(labels)
    rows = []
    colours = list(COLOURS)
    for label in labels:
        shape, colour = SHAPES[label // len(colours)], colours[label % len(colours)]
        image = draw_shape(shape, colour, size=size, rng=rng)
        rows.append({"image": image, "caption": CAPTIONS[label], "label": label, "shape": shape, "colour": colour})
    return rows


def split_prompts(n_eval: int = 6, seed: int = 0) -> tuple[list[str], list[str]]:
    """Split :data:`CAPTIONS` into GRPO training prompts and held-out evaluation prompts.

    The flow model saw all 18 captions in pretraining; the GRPO demo trains on the ``18 - n_eval``
    training captions and reports the reward on the held-out ones (with fixed sampling seeds), so a
    rise there is generalisation through shared weights, not memorised prompts. The split is a
    seeded Latin-square-like draw: with ``n_eval = 6`` every colour is held out exactly once and every
    shape exactly twice, so the training prompts still cover every shape and every colour.

    Example:
        >>> train, held_out = split_prompts()
        >>> len(train), len(held_out), sorted(set(train) | set(held_out)) == sorted(CAPTIONS)
        (12, 6, True)
        >>> sorted(c.split()[1] for c in held_out) == sorted(COLOURS)
        True
    """
    if not 0 < n_eval < len(CAPTIONS):
        raise ValueError(f"n_eval must be in 1..{len(CAPTIONS) - 1}, got {n_eval}")
    rng = random.Random(seed)
    colours = list(COLOURS)
    rng.shuffle(colours)
    shape_offset = rng.randrange(len(SHAPES))
    # walk the (shape, colour) grid diagonally: consecutive picks differ in both shape and colour
    order = [(SHAPES[(i + i // len(colours) + shape_offset) % len(SHAPES)], colours[i % len(colours)])
             for i in range(len(CAPTIONS))]
    held = {f"a {c} {s}" for s, c in order[:n_eval]}
    return [c for c in CAPTIONS if c not in held], [c for c in CAPTIONS if c in held]
