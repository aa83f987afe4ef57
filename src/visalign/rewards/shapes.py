"""Shape-and-colour reward: does the image show one shape of the prompt's colour and kind?

The reward of the embedded Flow-GRPO demo (issue 5), read from the image itself (no model), on the
images of :mod:`visalign.data.shapes` (one circle, square or triangle on a light background). Bounded
in ``[0, 1]``: ``score = colour_purity * shape_score * coverage_score``.

* **Foreground**: the background colour is the median of the border pixels; a pixel's opacity
  ``alpha`` is its RGB distance from the background divided by the distance of the foreground's own
  colour (the 90th percentile of the distances above 60, capped to ``[0, 1]``), which undoes
  anti-aliasing; the foreground is ``alpha >= 0.5``.
* **colour_purity**: the alpha-weighted share of foreground pixels whose hue lies near the prompt's
  colour (full credit within 15 degrees of its hue, none beyond 45) and whose chroma is strong
  (``max - min`` channel over ``alpha``; full credit from 90, none under 30). Grey, black or
  wrong-hue pixels lower it.
* **shape_score**: anti-aliased templates of a circle, a square and a triangle (apex up), each filling
  a square box, are fitted to the largest connected foreground blob: the best soft IoU (sum of min /
  sum of max of the alphas) over 45 boxes around the blob's bounding box (side 0.8-1.06x, centre
  +-6% of the side), so a bump costs its own area instead of dragging the box. ``p = softmax(IoU /
  0.04)`` over the three shapes; ``shape_score = p[target] * clip((IoU[target] - 0.4) / 0.4, 0, 1) *
  main_fraction``, where ``main_fraction`` is the blob's share of the foreground (stray blobs cost).
  The templates are axis-aligned like the dataset's shapes. Images larger than 64 px are first
  box-downsampled by an integer factor.
* **coverage_score**: the foreground's share of the canvas (sum of alpha / pixels) must look like one
  shape: 1 between 3.5% and 50% (the dataset spans about 5-47%), linear to 0 at 1% and at 75%. An
  empty canvas and a full-canvas fill (the known hack of "coverage of the target colour" rewards, see
  FIELD_NOTES) score 0; a canvas filled with one colour has that colour as its background, so its
  foreground is empty too.

The prompt's shape and colour are the first words of :data:`~visalign.data.shapes.SHAPES` and
:data:`~visalign.data.shapes.COLOURS` in it (``metadata["shape"]`` / ``metadata["colour"]`` override).
A prompt that names neither is not applicable (None); one that names only one of them is scored on
that one (the other factor is 1; the coverage term always applies). Details per sample:
``colour_purity``, ``shape_score``, ``coverage``, ``coverage_score``, ``main_fraction``,
``shape_iou`` (per shape), ``predicted_shape``, ``predicted_colour``, ``target_shape``,
``target_colour``; or ``reason`` when not applicable.

Speed: about 1.5 ms per 32x32 image (numpy + ``scipy.ndimage.label``).

:meth:`ShapeColourReward.differentiable` (:func:`soft_shape_colour`) is a smooth surrogate on image
tensors for ReFL / DRaFT, not the same function: no blob labelling, no box search, and colour is a
Gaussian of the RGB distance to the prompt colour instead of hue bands (see its docstring). The plain
reward stays the evaluator.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from scipy import ndimage

from ..shape_captions import COLOURS, SHAPES, parse_caption
from .base import Reward, RewardOutput, Sample

__all__ = ["ShapeColourReward", "analyse_image", "classify_shape_colour", "soft_shape_colour"]

_IOU_TEMPERATURE = 0.04
_MAX_SIDE = 64  # larger images are box-downsampled by an integer factor first
_MIN_DISTANCE = 60.0  # RGB distance from the background that counts as "something is there"


def _hue_degrees(rgb: np.ndarray) -> np.ndarray:
    """Hue in degrees ``[0, 360)`` of ``(..., 3)`` float RGB (0 where the pixel is grey)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx, mn = rgb.max(-1), rgb.min(-1)
    c = np.where(mx - mn > 0, mx - mn, 1.0)
    h = np.where(mx == r, ((g - b) / c) % 6, np.where(mx == g, (b - r) / c + 2, (r - g) / c + 4))
    return (h * 60.0) % 360.0


_COLOUR_HUES = {name: float(_hue_degrees(np.array(rgb, dtype=np.float64))) for name, rgb in COLOURS.items()}


def _template_masks(h: int, w: int, cx: np.ndarray, cy: np.ndarray, side: np.ndarray) -> dict[str, np.ndarray]:
    """Anti-aliased masks ``(n, h, w)`` of each shape filling the square boxes ``(cx, cy, side)``
    (pixel ``i`` covers ``[i, i + 1]``; soft edges = clipped signed distance)."""
    px = np.arange(w, dtype=np.float64)[None, None, :] + 0.5 - cx[:, None, None]
    py = np.arange(h, dtype=np.float64)[None, :, None] + 0.5 - cy[:, None, None]
    half = side[:, None, None] / 2
    square = np.clip(half - np.abs(px) + 0.5, 0, 1) * np.clip(half - np.abs(py) + 0.5, 0, 1)
    circle = np.clip(half - np.sqrt(px**2 + py**2) + 0.5, 0, 1)
    # triangle, apex up: inside the base (py <= half) and the two slanted edges |px| <= (py + half) / 2
    slant = ((py + half) / 2 - np.abs(px)) * (2 / np.sqrt(5))  # distance to a slanted edge
    triangle = np.clip(np.minimum(half - py, slant) + 0.5, 0, 1)
    return {"circle": circle, "square": square, "triangle": triangle}


def _fit_templates(alpha: np.ndarray, blob: np.ndarray) -> dict[str, float]:
    """Best soft IoU of each shape template with the blob's alpha over a small search of square boxes
    around the blob's bounding box (side 0.8-1.06x, centre +-6% of the side): a bump or a stray rim
    pixel then costs its own area instead of dragging the whole box."""
    keep = ndimage.binary_dilation(blob)  # keep the anti-aliased rim
    a = np.where(keep, alpha, 0.0)
    ys, xs = np.nonzero(blob)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    side0 = float(max(y1 - y0, x1 - x0))
    # work on a window around the blob (outside it both masks are ~0)
    m = int(np.ceil(0.2 * side0)) + 2
    top, left = max(0, y0 - m), max(0, x0 - m)
    win = a[top: y1 + m, left: x1 + m]
    scales = np.array([0.8, 0.87, 0.94, 1.0, 1.06])
    shifts = np.array([-0.06, 0.0, 0.06])
    s, dx, dy = (g.ravel() for g in np.meshgrid(scales, shifts, shifts, indexing="ij"))
    side = side0 * s
    cx = (x0 + x1) / 2 - left + dx * side0
    cy = (y0 + y1) / 2 - top + dy * side0
    masks = _template_masks(win.shape[0], win.shape[1], cx, cy, side)
    ious = {}
    for shape, t in masks.items():
        inter = np.minimum(win[None], t).sum(axis=(1, 2))
        union = np.maximum(win[None], t).sum(axis=(1, 2))
        ious[shape] = float((inter / np.maximum(union, 1e-9)).max())
    return ious


def analyse_image(image: Image.Image) -> dict[str, Any]:
    """Read the foreground of ``image``: coverage, blobs, per-colour purities and per-shape IoUs.

    Returns a dict with ``coverage`` (foreground share of the canvas), ``main_fraction``,
    ``shape_iou`` (shape -> soft IoU of the main blob with that shape's template; empty when there is
    no foreground), ``colour_purity`` (colour -> purity) and ``predicted_shape`` /
    ``predicted_colour`` (None without foreground).

    Example:
        >>> from visalign.data.shapes import draw_shape
        >>> a = analyse_image(draw_shape("triangle", "cyan", seed=3))
        >>> a["predicted_shape"], a["predicted_colour"], a["colour_purity"]["cyan"] > 0.95
        ('triangle', 'cyan', True)
    """
    image = image.convert("RGB")
    factor = -(-max(image.size) // _MAX_SIDE)
    if factor > 1:  # large images: the shape fit runs at most _MAX_SIDE pixels a side
        image = image.reduce(factor)
    rgb = np.asarray(image, dtype=np.float64)
    h, w, _ = rgb.shape
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    background = np.median(border, axis=0)
    dist = np.sqrt(((rgb - background) ** 2).sum(-1))
    strong = dist[dist > _MIN_DISTANCE]
    empty: dict[str, Any] = {"coverage": 0.0, "main_fraction": 0.0, "shape_iou": {},
                             "colour_purity": dict.fromkeys(COLOURS, 0.0), "predicted_shape": None,
                             "predicted_colour": None, "background": background.round().tolist()}
    if strong.size == 0:
        return empty
    alpha = np.clip(dist / max(float(np.percentile(strong, 90)), _MIN_DISTANCE), 0.0, 1.0)
    fg = alpha >= 0.5
    if not fg.any():
        return empty
    coverage = float(alpha.sum() / (h * w))

    # colour: hue of the foreground pixels, chroma measured at full opacity
    hue = _hue_degrees(rgb)
    chroma = (rgb.max(-1) - rgb.min(-1)) / np.maximum(alpha, 1e-6)
    chroma_credit = np.clip((chroma - 30.0) / 60.0, 0.0, 1.0)
    weights = alpha[fg]
    purity = {}
    for name, target in _COLOUR_HUES.items():
        dh = np.abs((hue[fg] - target + 180.0) % 360.0 - 180.0)
        credit = np.clip((45.0 - dh) / 30.0, 0.0, 1.0) * chroma_credit[fg]
        purity[name] = float((credit * weights).sum() / weights.sum())
    best_colour = max(purity, key=purity.__getitem__)

    # shape: the largest 8-connected blob against the templates
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    sizes = ndimage.sum(alpha, labels, index=np.arange(1, n + 1))
    main = labels == (int(np.argmax(sizes)) + 1)
    main_fraction = float(sizes.max() / sizes.sum())
    ious = _fit_templates(alpha, main)
    return {"coverage": coverage, "main_fraction": main_fraction, "shape_iou": ious, "colour_purity": purity,
            "predicted_shape": max(ious, key=ious.__getitem__),
            "predicted_colour": best_colour if purity[best_colour] > 0.25 else None,
            "background": background.round().tolist()}


def classify_shape_colour(image: Image.Image) -> tuple[str | None, str | None]:
    """``(shape, colour)`` seen in ``image``: the best-matching shape template of the largest blob and
    the colour with the highest purity; None where nothing (or no clear colour) is there.

    Example:
        >>> from visalign.data.shapes import draw_shape
        >>> classify_shape_colour(draw_shape("circle", "magenta", seed=0))
        ('circle', 'magenta')
        >>> classify_shape_colour(Image.new("RGB", (32, 32), "white"))
        (None, None)
    """
    a = analyse_image(image)
    return a["predicted_shape"], a["predicted_colour"]


def _coverage_score(coverage: float, low: tuple[float, float], high: tuple[float, float]) -> float:
    if coverage <= low[0] or coverage >= high[1]:
        return 0.0
    if coverage < low[1]:
        return (coverage - low[0]) / (low[1] - low[0])
    if coverage > high[0]:
        return (high[1] - coverage) / (high[1] - high[0])
    return 1.0

#: bounding-box fill ratio of each shape (a triangle standing on its base fills half its square box)
_FILL = {"circle": float(np.pi / 4), "square": 1.0, "triangle": 0.5}


def soft_shape_colour(images: torch.Tensor, targets: Sequence[tuple[str | None, str | None]], *,
                      coverage_low: tuple[float, float] = (0.01, 0.035),
                      coverage_high: tuple[float, float] = (0.5, 0.75), temperature: float = _IOU_TEMPERATURE,
                      iou_floor: float = 0.4, colour_width: float = 60.0) -> torch.Tensor:
    """A differentiable surrogate of :class:`ShapeColourReward`: ``(B, 3, H, W)`` images in ``[0, 1]`` and
    one ``(shape, colour)`` target per image -> ``(B,)`` scores in ``[0, 1]`` with a graph to ``images``.

    ``score = purity * shape_score * coverage_score``, each smooth in the pixels (what is read off the
    image to *place* things, the background, the opacity scale, the centroid and the size, is detached):

    * opacity ``alpha = clip(|rgb - background| / d90, 0, 1)`` (background: the border median; ``d90``:
      the 90th percentile of the distances above 60, at least 60, as the reward reads it);
    * ``purity = sum(alpha * exp(-|rgb - colour|^2 / (2 colour_width^2))) / sum(alpha)`` in 0-255 units
      (the reward uses hue bands and chroma; a Gaussian around the caption's RGB has a gradient everywhere);
    * shape: the soft IoU ``sum min(alpha, T) / sum max(alpha, T)`` of ``alpha`` with each shape's template
      (:func:`_template_masks`) centred on the alpha centroid (a triangle's box centre sits ``side / 6``
      above it) with the side whose fill matches the foreground area; ``shape_score = softmax(IoU /
      temperature)[target] * clip((IoU_target - iou_floor) / 0.4, 0, 1)``;
    * ``coverage_score``: the reward's piecewise-linear window on ``mean(alpha)``.

    Example:
        >>> from visalign.data.shapes import draw_shape
        >>> image = torch.from_numpy(np.asarray(draw_shape("circle", "red", seed=0), dtype=np.float32) / 255)
        >>> x = image.permute(2, 0, 1)[None].repeat(3, 1, 1, 1).requires_grad_(True)
        >>> s = soft_shape_colour(x, [("circle", "red"), ("circle", "blue"), ("square", "red")])
        >>> [round(v, 2) for v in s.tolist()]
        [0.92, 0.0, 0.02]
        >>> s[0].backward(); bool(x.grad.abs().sum() > 0)
        True
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
    if len(targets) != images.shape[0]:
        raise ValueError(f"{len(targets)} targets for {images.shape[0]} images")
    x = images.float() * 255.0
    h, w = x.shape[-2:]
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=-1)
    background = border.detach().median(dim=-1).values[:, :, None, None]
    dist = torch.sqrt(((x - background) ** 2).sum(1) + 1e-6)  # (B, H, W)
    scale = []
    for d in dist.detach():
        strong = d[d > _MIN_DISTANCE]
        scale.append(max(float(torch.quantile(strong, 0.9)) if strong.numel() else 0.0, _MIN_DISTANCE))
    alpha = (dist / torch.tensor(scale, device=x.device)[:, None, None]).clamp(0, 1)
    mass = alpha.sum((1, 2))
    coverage = mass / (h * w)
    up = ((coverage - coverage_low[0]) / (coverage_low[1] - coverage_low[0])).clamp(0, 1)
    down = ((coverage_high[1] - coverage) / (coverage_high[1] - coverage_high[0])).clamp(0, 1)
    coverage_score = torch.minimum(up, down)

    a = alpha.detach().cpu().numpy().astype(np.float64)
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    m = np.maximum(a.sum((1, 2)), 1e-6)
    cx, cy = (a * xs).sum((1, 2)) / m, (a * ys).sum((1, 2)) / m
    scores = []
    for i, (shape, colour) in enumerate(targets):
        purity = torch.ones((), device=x.device)
        if colour is not None:
            c = torch.tensor(COLOURS[colour], dtype=x.dtype, device=x.device)[:, None, None]
            credit = torch.exp(-((x[i] - c) ** 2).sum(0) / (2 * colour_width**2))
            purity = (alpha[i] * credit).sum() / mass[i].clamp(min=1e-6)
        shape_score = torch.ones((), device=x.device)
        if shape is not None:
            ious = []
            for name in SHAPES:
                side = np.array([np.sqrt(m[i] / _FILL[name])])
                centre_y = cy[i : i + 1] - (side / 6 if name == "triangle" else 0.0)
                t = torch.from_numpy(_template_masks(h, w, cx[i : i + 1], centre_y, side)[name][0]).to(x)
                ious.append(torch.minimum(alpha[i], t).sum() / torch.maximum(alpha[i], t).sum().clamp(min=1e-6))
            iou = torch.stack(ious)
            p = torch.softmax(iou / temperature, 0)[SHAPES.index(shape)]
            shape_score = p * ((iou[SHAPES.index(shape)] - iou_floor) / 0.4).clamp(0, 1)
        scores.append(purity * shape_score)
    return torch.stack(scores) * coverage_score


class ShapeColourReward(Reward):
    """Colour purity x shape agreement x a plausible size, read from the image (see the module doc).

    Args:
        coverage_low: ``(zero, one)``: the coverage score rises from 0 at ``zero`` to 1 at ``one``.
        coverage_high: ``(one, zero)``: it falls from 1 at ``one`` to 0 at ``zero``.
        temperature: softmax temperature over the shapes' IoUs (smaller = sharper).
        iou_floor: IoU with the target template under which the shape score is 0 (it is full at
            ``iou_floor + 0.4`` and above).

    Example:
        >>> from visalign.data.shapes import draw_shape
        >>> reward = ShapeColourReward()
        >>> img = draw_shape("circle", "red", seed=0)
        >>> out = reward([Sample(prompt="a red circle", image=img), Sample(prompt="a blue circle", image=img),
        ...               Sample(prompt="a red square", image=img), Sample(prompt="a cat", image=img)])
        >>> [round(s, 2) if s is not None else None for s in out.scores]
        [0.96, 0.0, 0.04, None]
        >>> out.details[0]["predicted_shape"], out.details[0]["predicted_colour"]
        ('circle', 'red')
    """

    name = "shape_colour"

    def __init__(
        self,
        *,
        coverage_low: tuple[float, float] = (0.01, 0.035),
        coverage_high: tuple[float, float] = (0.5, 0.75),
        temperature: float = _IOU_TEMPERATURE,
        iou_floor: float = 0.4,
    ) -> None:
        if not (0 <= coverage_low[0] < coverage_low[1] <= coverage_high[0] < coverage_high[1] <= 1):
            raise ValueError(f"need 0 <= {coverage_low} < ... <= {coverage_high} <= 1, increasing")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.coverage_low = tuple(coverage_low)
        self.coverage_high = tuple(coverage_high)
        self.temperature = float(temperature)
        self.iou_floor = float(iou_floor)

    def _targets(self, sample: Sample) -> tuple[str | None, str | None]:
        shape, colour = parse_caption(sample.prompt or "")
        meta = sample.metadata or {}
        shape = meta.get("shape", shape)
        colour = meta.get("colour", colour)
        if shape is not None and shape not in SHAPES:
            raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")
        if colour is not None and colour not in COLOURS:
            raise ValueError(f"unknown colour {colour!r}; expected one of {list(COLOURS)}")
        return shape, colour

    def score_one(self, image: Image.Image, shape: str | None, colour: str | None) -> tuple[float, dict[str, Any]]:
        """The score and details of one image against a target ``shape`` and/or ``colour``."""
        a = analyse_image(image)
        coverage_score = _coverage_score(a["coverage"], self.coverage_low, self.coverage_high)  # type: ignore[arg-type]
        purity = a["colour_purity"][colour] if colour is not None else 1.0
        if shape is None:
            shape_score = 1.0
        elif not a["shape_iou"]:
            shape_score = 0.0
        else:
            ious = a["shape_iou"]
            logits = np.array([ious[s] for s in SHAPES]) / self.temperature
            p = np.exp(logits - logits.max())
            p /= p.sum()
            fit = float(np.clip((ious[shape] - self.iou_floor) / 0.4, 0.0, 1.0))
            shape_score = float(p[SHAPES.index(shape)]) * fit * a["main_fraction"]
        score = float(purity * shape_score * coverage_score)
        details = {"colour_purity": purity, "shape_score": shape_score, "coverage": a["coverage"],
                   "coverage_score": coverage_score, "main_fraction": a["main_fraction"],
                   "shape_iou": a["shape_iou"], "predicted_shape": a["predicted_shape"],
                   "predicted_colour": a["predicted_colour"], "target_shape": shape, "target_colour": colour}
        return score, details

    def differentiable(self, images: torch.Tensor, references: Any = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor:
        """:func:`soft_shape_colour` of ``(B, 3, H, W)`` images in ``[0, 1]`` against ``prompts`` (with this
        reward's coverage window, temperature and IoU floor): the surrogate ReFL / DRaFT back-propagate.
        A prompt naming neither a shape nor a colour raises ``ValueError`` (no gradient to give)."""
        if prompts is None or len(prompts) != images.shape[0]:
            raise ValueError("shape_colour: give one prompt per image")
        targets = [self._targets(Sample(prompt=p)) for p in prompts]
        if any(t == (None, None) for t in targets):
            raise ValueError(f"shape_colour: a prompt names no shape or colour: {list(prompts)}")
        return soft_shape_colour(images, targets, coverage_low=self.coverage_low,  # type: ignore[arg-type]
                                 coverage_high=self.coverage_high, temperature=self.temperature,  # type: ignore[arg-type]
                                 iou_floor=self.iou_floor)

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = []
        details: list[dict[str, Any]] = []
        n_right = n_scored = 0
        for s in samples:
            shape, colour = self._targets(s)
            if shape is None and colour is None:
                scores.append(None)
                details.append({"reason": "prompt names no known shape or colour"})
                continue
            image = s.generated_image
            if image is None:
                if s.rendered is not None:  # a failed render has a defined score
                    scores.append(0.0)
                    details.append({"error": f"render failed ({s.rendered.error_kind})"})
                else:
                    scores.append(None)
                    details.append({"reason": "no generated image"})
                continue
            value, d = self.score_one(image, shape, colour)
            scores.append(value)
            details.append(d)
            n_scored += 1
            n_right += (shape is None or d["predicted_shape"] == shape) and (
                colour is None or d["predicted_colour"] == colour)
        metrics = {"accuracy": n_right / n_scored} if n_scored else {}
        return RewardOutput(scores, details, metrics=metrics)
