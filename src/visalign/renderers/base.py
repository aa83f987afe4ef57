"""The renderer contract: ``RenderResult`` and the ``Renderer`` base class.

Every renderer turns a batch of untrusted sources (Python, LaTeX, SVG, HTML) into images. Bad input
never raises: it comes back as a failed :class:`RenderResult` whose ``error_kind`` says why.
"""

from __future__ import annotations

import io
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from PIL import Image

ErrorKind = Literal["timeout", "memory", "syntax", "runtime", "no_output", "blank", "sandbox", "internal"]
ERROR_KINDS: tuple[str, ...] = (
    "timeout",    # the wall-clock or CPU-time limit was hit
    "memory",     # the address-space limit was hit, or the output would exceed max_pixels
    "syntax",     # the source does not parse / compile
    "runtime",    # it parsed but failed while running (exception, crash, non-zero exit)
    "no_output",  # it ran but drew nothing
    "blank",      # it drew an image of one flat colour
    "sandbox",    # a forbidden action (network, writing outside the work dir, ...) was stopped
    "internal",   # visalign's own fault: a bug or a missing system dependency
)

# Largest image we accept back from a worker, in pixels (PIL refuses more anyway).
DEFAULT_MAX_PIXELS = 40_000_000


@dataclass
class RenderResult:
    """The outcome of rendering one source.

    Attributes:
        ok: True when ``image`` holds a non-blank rendering.
        image: the rendering as an RGB ``PIL.Image`` (None on failure).
        error_kind: one of :data:`ERROR_KINDS` on failure, else None.
        error: a short human-readable message on failure, else None.
        seconds: wall-clock seconds spent on this source (queueing excluded).
        trace: optional instrumentation recorded while rendering (e.g. the matplotlib calls a
            program made), for metrics that read the program rather than the pixels.
        shims: names of the compatibility shims the program used (matplotlib renderer, option
            ``compat``: APIs matplotlib 3.9+ or numpy 2 removed, such as ``"cm.get_cmap"``), sorted;
            empty when it used none or the renderer has no such layer.
    """

    ok: bool
    image: Image.Image | None = None
    error_kind: str | None = None
    error: str | None = None
    seconds: float = 0.0
    trace: dict[str, Any] | None = field(default=None, repr=False)
    shims: tuple[str, ...] = ()

    @classmethod
    def failure(cls, kind: str, error: str, seconds: float = 0.0) -> RenderResult:
        """A failed result; ``kind`` must be one of :data:`ERROR_KINDS`."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        return cls(ok=False, image=None, error_kind=kind, error=error, seconds=seconds)

    def to_json(self) -> dict[str, Any]:
        """The result without the image, as a JSON-ready dict."""
        return {"ok": self.ok, "error_kind": self.error_kind, "error": self.error,
                "seconds": round(self.seconds, 4),
                "size": list(self.image.size) if self.image is not None else None, "shims": list(self.shims)}


def is_blank(image: Image.Image) -> bool:
    """True when every pixel of ``image`` has the same value (one flat colour).

    Example:
        >>> is_blank(Image.new("RGB", (8, 8), "white"))
        True
    """
    arr = np.asarray(image)
    if arr.size == 0:
        return True
    flat = arr.reshape(-1, arr.shape[-1]) if arr.ndim == 3 else arr.reshape(-1, 1)
    return bool((flat == flat[0]).all())


def load_png(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, background: str = "white") -> Image.Image:
    """Decode PNG bytes produced by an untrusted worker into an RGB image.

    Transparency is composited onto ``background``. Raises ``ValueError`` on anything that is not a
    PNG within ``max_pixels``.
    """
    with Image.open(io.BytesIO(data)) as img:
        if img.format != "PNG":
            raise ValueError(f"expected a PNG, got {img.format}")
        w, h = img.size
        if w * h > max_pixels or w <= 0 or h <= 0:
            raise ValueError(f"image of {w}x{h} px exceeds max_pixels={max_pixels}")
        img.load()
        if img.mode in ("RGBA", "LA", "P", "PA"):
            rgba = img.convert("RGBA")
            canvas = Image.new("RGBA", rgba.size, background)
            canvas.alpha_composite(rgba)
            return canvas.convert("RGB")
        return img.convert("RGB")


def finish_image(image: Image.Image, seconds: float, trace: dict[str, Any] | None = None) -> RenderResult:
    """Turn a decoded image into a result, classifying a one-colour image as ``blank``."""
    if is_blank(image):
        res = RenderResult.failure("blank", f"the {image.size[0]}x{image.size[1]} image is one flat colour",
                                   seconds)
        res.trace = trace
        return res
    return RenderResult(ok=True, image=image, seconds=seconds, trace=trace)


class Renderer(ABC):
    """Base class of all renderers: a context manager with ``render_batch``.

    Subclasses implement :meth:`_render_batch` (and :meth:`close` when they own processes).
    ``render_batch`` guarantees one result per source, in order, and never raises on bad input.
    """

    name: str = "base"

    def __init__(self, timeout: float = 10.0) -> None:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self.timeout = float(timeout)

    def render_batch(self, sources: Sequence[str]) -> list[RenderResult]:
        """Render each source; returns one :class:`RenderResult` per source, in the same order."""
        sources = list(sources)
        if not sources:
            return []
        bad = [i for i, s in enumerate(sources) if not isinstance(s, str)]
        results: list[RenderResult | None] = [None] * len(sources)
        for i in bad:
            results[i] = RenderResult.failure("syntax", f"source must be str, got {type(sources[i]).__name__}")
        todo = [i for i in range(len(sources)) if results[i] is None]
        t0 = time.perf_counter()
        try:
            rendered = self._render_batch([sources[i] for i in todo])
        except Exception as exc:  # our own fault: never let it escape as a crash of the batch
            rendered = [RenderResult.failure("internal", f"{type(exc).__name__}: {exc}",
                                             time.perf_counter() - t0) for _ in todo]
        for i, res in zip(todo, rendered, strict=True):
            results[i] = res
        return [r for r in results if r is not None]

    def render(self, source: str) -> RenderResult:
        """Render one source (see :meth:`render_batch`)."""
        return self.render_batch([source])[0]

    @abstractmethod
    def _render_batch(self, sources: list[str]) -> list[RenderResult]:
        """Render valid ``str`` sources; must return exactly one result per source."""

    def info(self) -> dict[str, Any]:
        """Backend name, version and options, for ``visalign doctor`` and logs."""
        return {"renderer": self.name, "timeout": self.timeout}

    def close(self) -> None:
        """Release processes and browsers; safe to call twice."""

    def __enter__(self) -> Renderer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
