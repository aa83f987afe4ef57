"""Seeded synthetic image-to-SVG data: short, regular SVG documents of a few shapes and their renders.

The counterpart of :mod:`visalign.data.charts` for the ``svg`` renderer. Each document is the fixed
root tag :data:`SVG_HEADER` (96 x 96 px, ``viewBox="0 0 96 96"``), one line per shape and
``</svg>``; 1-4 shapes drawn among :data:`SVG_SHAPES`:

* ``rect`` (sides 12-48), ``circle`` (radius 8-24), ``ellipse`` (radii 8-28, at least 6 apart, so it
  is not a circle), each with a ``fill``;
* ``polygon``: a triangle with an area of at least 200 px², with a ``fill``;
* ``line``: at least 24 px long, with a ``stroke`` and ``stroke-width="4"``.

Coordinates are integers and every shape lies inside the canvas with a 4 px margin. The shapes of a
drawing have distinct colours from the chart palette (:data:`~visalign.data.charts.COLOURS`) and are
written largest first (lines last), so a shape is never hidden by a single shape drawn over it, and
the order is canonical. The output size is not left to the code: the renderer imposes it
(:data:`SVG_RENDER_OPTIONS`), and the rewards must render with the same options.

Example:
    >>> print(random_svg_code(random.Random(2), n_shapes=2))
    <svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">
    <ellipse cx="33" cy="55" rx="27" ry="14" fill="cyan"/>
    <rect x="51" y="43" width="35" height="22" fill="red"/>
    </svg>
    >>> codes = svg_corpus(50, seed=0)
    >>> len(codes), len(set(codes)), all(c.startswith(SVG_HEADER) and c.endswith("</svg>") for c in codes)
    (50, 50, True)
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from typing import Any

from ..languages import DEFAULT_INSTRUCTIONS
from ._synthetic import render_codes, rendered_rows, unique_codes
from .charts import COLOURS

__all__ = [
    "COLOURS",
    "SVG_FOOTER",
    "SVG_HEADER",
    "SVG_RENDER_OPTIONS",
    "SVG_SHAPES",
    "SVG_SIZE",
    "random_svg_code",
    "render_svgs",
    "svg_corpus",
    "svg_dataset",
    "svg_shapes",
    "svg_whole_words",
]

#: Canvas side in px (the root's ``width``, ``height`` and ``viewBox``).
SVG_SIZE = 96
#: Renderer options for the references and for the rewards: every document is rasterised at 96 x 96
#: px whatever size it declares (the tiny VLM's processor takes that as 36 image tokens).
SVG_RENDER_OPTIONS: dict[str, Any] = {"width": SVG_SIZE, "height": SVG_SIZE}
#: The first line of every document.
SVG_HEADER = (f'<svg xmlns="http://www.w3.org/2000/svg" width="{SVG_SIZE}" height="{SVG_SIZE}" '
              f'viewBox="0 0 {SVG_SIZE} {SVG_SIZE}">')
SVG_FOOTER = "</svg>"
SVG_SHAPES: tuple[str, ...] = ("rect", "circle", "ellipse", "line", "polygon")
#: Number of shapes in a drawing.
SHAPE_RANGE: tuple[int, int] = (1, 4)
MARGIN = 4
STROKE_WIDTH = 4

_TAG = re.compile(r"^<(" + "|".join(SVG_SHAPES) + r") ", re.M)


def _shape(rng: random.Random, kind: str, colour: str) -> tuple[float, str]:
    """``(area, element)`` of one ``kind`` shape inside the canvas."""
    lo, hi = MARGIN, SVG_SIZE - MARGIN
    if kind == "rect":
        w, h = rng.randint(12, 48), rng.randint(12, 48)
        x, y = rng.randint(lo, hi - w), rng.randint(lo, hi - h)
        return w * h, f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="{colour}"/>'
    if kind == "circle":
        r = rng.randint(8, 24)
        cx, cy = rng.randint(lo + r, hi - r), rng.randint(lo + r, hi - r)
        return 3.14159 * r * r, f'<circle cx="{cx}" cy="{cy}" r="{r}" fill="{colour}"/>'
    if kind == "ellipse":
        while True:
            rx, ry = rng.randint(8, 28), rng.randint(8, 28)
            if abs(rx - ry) >= 6:
                break
        cx, cy = rng.randint(lo + rx, hi - rx), rng.randint(lo + ry, hi - ry)
        return 3.14159 * rx * ry, f'<ellipse cx="{cx}" cy="{cy}" rx="{rx}" ry="{ry}" fill="{colour}"/>'
    if kind == "line":
        while True:
            x1, y1, x2, y2 = (rng.randint(lo + 4, hi - 4) for _ in range(4))
            length = ((x2 - x1) ** 2 + (y2 - y1) ** 2) ** 0.5
            if length >= 24:
                break
        return (length * STROKE_WIDTH, f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" '
                f'stroke-width="{STROKE_WIDTH}"/>')
    if kind == "polygon":
        while True:
            pts = [(rng.randint(lo, hi), rng.randint(lo, hi)) for _ in range(3)]
            (ax, ay), (bx, by), (qx, qy) = pts
            area = abs((bx - ax) * (qy - ay) - (qx - ax) * (by - ay)) / 2
            if area >= 200:
                break
        points = " ".join(f"{x},{y}" for x, y in pts)
        return area, f'<polygon points="{points}" fill="{colour}"/>'
    raise ValueError(f"unknown shape {kind!r}; choose from {SVG_SHAPES}")


def random_svg_code(rng: random.Random, *, n_shapes: int | None = None, shapes: Sequence[str] = SVG_SHAPES) -> str:
    """One SVG document of ``n_shapes`` shapes (drawn from :data:`SHAPE_RANGE` when None), each of a
    kind drawn from ``shapes``, with distinct colours. The document ends without a newline, as the
    policy writes it before EOS.

    Example:
        >>> print(random_svg_code(random.Random(3), n_shapes=3, shapes=("line", "polygon", "circle")))
        <svg xmlns="http://www.w3.org/2000/svg" width="96" height="96" viewBox="0 0 96 96">
        <polygon points="54,85 23,33 85,23" fill="purple"/>
        <circle cx="71" cy="24" r="20" fill="gray"/>
        <line x1="32" y1="68" x2="77" y2="78" stroke="orange" stroke-width="4"/>
        </svg>
    """
    if not shapes:
        raise ValueError("shapes is empty")
    for kind in shapes:
        if kind not in SVG_SHAPES:
            raise ValueError(f"unknown shape {kind!r}; choose from {SVG_SHAPES}")
    if n_shapes is not None and not SHAPE_RANGE[0] <= n_shapes <= SHAPE_RANGE[1]:
        raise ValueError(f"n_shapes must be in [{SHAPE_RANGE[0]}, {SHAPE_RANGE[1]}], got {n_shapes}")
    n = n_shapes if n_shapes is not None else rng.randint(*SHAPE_RANGE)
    colours = rng.sample(COLOURS, n)
    drawn = [_shape(rng, rng.choice(shapes), colour) for colour in colours]
    # Largest first, lines last: a shape is never covered by one smaller shape drawn over it.
    drawn.sort(key=lambda item: (item[1].startswith("<line "), -item[0]))
    return "\n".join([SVG_HEADER, *(element for _, element in drawn), SVG_FOOTER])


def svg_shapes(code: str) -> list[str]:
    """The shape elements of a document from :func:`random_svg_code`, in drawing order.

    Example:
        >>> svg_shapes(random_svg_code(random.Random(2), n_shapes=2))
        ['ellipse', 'rect']
    """
    return _TAG.findall(code)


def _unique_codes(n: int, seed: int, exclude: Collection[str], options: dict[str, Any]) -> list[str]:
    return unique_codes(n, seed, exclude, lambda rng, _: random_svg_code(rng, **options),
                        f"SVG documents with {options}")


def svg_corpus(n: int, seed: int = 0, *, n_shapes: int | None = None,
               shapes: Sequence[str] = SVG_SHAPES) -> list[str]:
    """``n`` distinct SVG documents (no rendering), e.g. to train a tokenizer on.

    Example:
        >>> [svg_shapes(c) for c in svg_corpus(3, seed=1, n_shapes=1)]
        [['polygon'], ['circle'], ['line']]
    """
    return _unique_codes(n, seed, (), {"n_shapes": n_shapes, "shapes": tuple(shapes)})


def svg_whole_words() -> list[str]:
    """Strings an SVG tokenizer should keep as single tokens: the header and footer, the element
    openings, the attribute openings and the quoted colours.

    Example:
        >>> SVG_HEADER in svg_whole_words() and '"red"' in svg_whole_words()
        True
    """
    words = [SVG_HEADER, SVG_FOOTER, "<rect x=", "<circle cx=", "<ellipse cx=", "<line x1=", "<polygon points=",
             " y=", " width=", " height=", " cy=", " r=", " rx=", " ry=", " y1=", " x2=", " y2=", " fill=",
             " stroke=", f' stroke-width="{STROKE_WIDTH}"', "/>"]
    words += [f'"{c}"' for c in COLOURS]
    return words


def render_svgs(codes: Sequence[str], *, workers: int = 2, timeout: float = 10.0,
                render_options: dict[str, Any] | None = None) -> list[Any]:
    """Render ``codes`` in the sandboxed ``svg`` renderer with :data:`SVG_RENDER_OPTIONS`; returns the
    ``RenderResult`` of each document."""
    return render_codes("svg", codes, SVG_RENDER_OPTIONS, render_options, workers, timeout)


def _row(code: str, image: Any, prompt: str) -> dict[str, Any]:
    return {"code": code, "image": image, "kind": "svg", "prompt": prompt, "shapes": ",".join(svg_shapes(code))}


def svg_dataset(n: int, seed: int = 0, *, render: bool = True, workers: int = 2, exclude: Collection[str] = (),
                timeout: float = 10.0, n_shapes: int | None = None, shapes: Sequence[str] = SVG_SHAPES,
                ) -> list[dict[str, Any]]:
    """``n`` distinct synthetic drawings: ``dict(code, image, kind="svg", prompt, shapes)``.

    ``shapes`` is the comma-joined list of shape elements in drawing order (``"rect,circle"``).
    With ``render=True`` the documents are rendered in one batch by the sandboxed ``svg`` renderer
    with :data:`SVG_RENDER_OPTIONS` (96 x 96 RGB images); a document that fails to render is replaced
    by a new draw. With ``render=False`` ``image`` is None. Codes in ``exclude`` (e.g. a training
    set) are never drawn, so a held-out set made with another seed and ``exclude=train_codes`` is
    disjoint.

    Example:
        >>> rows = svg_dataset(2, seed=0, render=False, n_shapes=1)
        >>> [r["shapes"] for r in rows], rows[0]["kind"], rows[0]["image"]
        (['line', 'ellipse'], 'svg', None)
    """
    opts = {"n_shapes": n_shapes, "shapes": tuple(shapes)}
    prompt = DEFAULT_INSTRUCTIONS["svg"]
    drawn = _unique_codes(n, seed, exclude, opts)
    if not render:
        return [_row(code, None, prompt) for code in drawn]
    return rendered_rows(n, seed, exclude, drawn, lambda k, sd, seen: _unique_codes(k, sd, seen, opts),
                         lambda code: code, lambda codes: render_svgs(codes, workers=workers, timeout=timeout),
                         lambda code, image: _row(code, image, prompt), "SVG documents", "svg")
