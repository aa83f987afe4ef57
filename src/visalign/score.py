"""Score one prediction file against one reference file: what ``visalign score`` runs.

Files are read by extension: images (``.png``, ``.jpg``, ...) are compared directly; code (``.py``,
``.tex``, ``.svg``, ``.html``) is rendered in the sandbox first for the image metrics, or compared as
code for the code metrics (``teds``, ``teds_structure``, ``chart_code``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from .renderers import EXTENSIONS, get_renderer

IMAGE_EXTENSIONS = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
IMAGE_METRICS = ("ssim", "ms_ssim", "cw_ssim", "psnr", "mse")
CODE_METRICS = ("teds", "teds_structure", "chart_code")
METRICS = IMAGE_METRICS + CODE_METRICS


class ScoreError(ValueError):
    """The inputs cannot be scored with that metric (a usage error, not a bad sample)."""


def _images_or_renders(paths: dict[str, Path], timeout: float, details: dict[str, Any]) -> dict[str, Image.Image | None]:
    """Each side's image: read from an image file, or rendered (None when the render failed; its result
    goes into ``details[side + "_render"]``). Code files of one kind render in one renderer, started
    once (a pool start is seconds; ``visalign score a.py b.py`` used to start two)."""
    images: dict[str, Image.Image | None] = {}
    by_kind: dict[str, list[str]] = {}
    for side, path in paths.items():
        ext = path.suffix.lower()
        if ext in IMAGE_EXTENSIONS:
            with Image.open(path) as img:
                img.load()
                images[side] = img.copy()
            continue
        kind = EXTENSIONS.get(ext)
        if kind is None:
            raise ScoreError(f"{path}: not an image and not code ({' '.join(sorted(EXTENSIONS))})")
        by_kind.setdefault(kind, []).append(side)
    for kind, sides in by_kind.items():
        with get_renderer(kind, timeout=timeout, workers=1) as r:
            results = r.render_batch([paths[s].read_text(encoding="utf-8", errors="replace") for s in sides])
        for side, res in zip(sides, results, strict=True):
            details[f"{side}_render"] = res.to_json() | {"renderer": kind}
            images[side] = res.image if res.ok else None
    return images


def _table_html(path: Path) -> str:
    from .metrics import latex_table_to_html

    text = path.read_text(encoding="utf-8", errors="replace")
    ext = path.suffix.lower()
    if ext == ".tex":
        return latex_table_to_html(text)
    if ext in (".html", ".htm"):
        return text
    raise ScoreError(f"{path}: teds compares tables written as .tex or .html")


def score_files(metric: str, pred: str | Path, ref: str | Path, timeout: float = 10.0) -> tuple[float, dict[str, Any]]:
    """Score ``pred`` against ``ref`` with ``metric``; returns the score and details.

    A prediction that fails to render scores the metric's failure value (0.0; ``mse`` inf) and the
    details say why. A reference that fails to render is a :class:`ScoreError`.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> _ = (d / "a.svg").write_text('<svg xmlns="http://www.w3.org/2000/svg" width="32" height="32">'
        ...                              '<rect width="16" height="32" fill="red"/></svg>')
        >>> score_files("ssim", d / "a.svg", d / "a.svg")[0]
        1.0
    """
    from . import metrics

    pred, ref = Path(pred), Path(ref)
    if metric not in METRICS:
        raise ScoreError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    details: dict[str, Any] = {"metric": metric, "pred": str(pred), "ref": str(ref)}
    if metric in ("teds", "teds_structure"):
        value = metrics.teds(_table_html(pred), _table_html(ref), structure_only=metric == "teds_structure")
        return float(value), details
    if metric == "chart_code":
        if pred.suffix != ".py" or ref.suffix != ".py":
            raise ScoreError("chart_code compares two matplotlib programs (.py)")
        from .metrics.chart_code import chart_code_metrics

        result = chart_code_metrics(pred.read_text(), ref.read_text(), timeout=timeout)
        details.update(result)
        f1s = [result[f"{k}_f1"] for k in ("text", "layout", "type", "color")]
        return float(sum(f1s) / 4), details
    images = _images_or_renders({"ref": ref, "pred": pred}, timeout, details)
    ref_img, pred_img = images["ref"], images["pred"]
    if ref_img is None:
        raise ScoreError(f"the reference {ref} did not render: {details['ref_render']['error']}")
    if pred_img is None:
        return (float("inf") if metric == "mse" else 0.0), details
    if pred_img.size != ref_img.size:  # the metric resizes the prediction to the reference: say so
        details["resized"] = {"pred": list(pred_img.size), "ref": list(ref_img.size)}
    return float(getattr(metrics, metric)(pred_img, ref_img)), details
