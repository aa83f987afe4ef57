"""The ``svg`` renderer: SVG markup in, a raster image out (resvg, in sandboxed fork servers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .base import DEFAULT_MAX_PIXELS, Renderer, RenderResult
from .pool import ZygotePool
from .sandbox import SandboxLimits


class SvgRenderer(Renderer):
    """Rasterise SVG documents with resvg.

    Args:
        timeout: wall-clock seconds per document.
        workers: sandboxed fork servers (default: CPU count).
        width, height: output size in px; give one to scale preserving the aspect ratio, none to keep
            the document's own size (StarVector uses 224, UniSVG / Visual-ERM 336).
        background: CSS colour painted under the drawing (default white, as the SVG papers rasterise);
            None keeps transparency, which is then composited on white when decoded.
        memory_mb: address-space limit per document.
        max_pixels: a document whose declared size exceeds this fails with ``memory`` before it is drawn.

    Example:
        >>> with SvgRenderer(width=64, workers=1) as r:
        ...     res = r.render('<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10">'
        ...                    '<circle cx="5" cy="5" r="4" fill="teal"/></svg>')
        >>> res.ok, res.image.size
        (True, (64, 64))
    """

    name = "svg"

    def __init__(self, timeout: float = 10.0, workers: int | None = None, width: int | None = None,
                 height: int | None = None, background: str | None = "white", memory_mb: int = 1024,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        super().__init__(timeout)
        for name, v in (("width", width), ("height", height)):
            if v is not None and v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
        self.options: dict[str, Any] = {"width": width, "height": height, "background": background,
                                        "max_pixels": max_pixels}
        self.pool = ZygotePool("svg_handler", workers=workers, timeout=timeout,
                               limits=SandboxLimits(memory_mb=memory_mb), max_pixels=max_pixels,
                               background=background or "white")

    def _render_batch(self, sources: list[str], progress: Callable[[int], None] | None = None
                      ) -> list[RenderResult]:
        return self.pool.run_batch(sources, self.options, progress)

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backend": "resvg (resvg-py) in sandboxed fork servers",
                "versions": self.pool.versions, "workers": self.pool.workers,
                "sandbox": self.pool.info.level, "isolation": self.pool.isolation, **self.options}

    def close(self) -> None:
        self.pool.close()
