"""Sandboxed renderers: untrusted code (matplotlib, LaTeX, SVG, HTML) in, images out.

Example:
    >>> from visalign.renderers import get_renderer
    >>> with get_renderer("svg", timeout=5) as r:
    ...     res = r.render_batch(['<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
    ...                           '<rect width="4" height="8" fill="red"/></svg>'])[0]
    >>> res.ok, res.image.size
    (True, (8, 8))
"""

from __future__ import annotations

from typing import Any

from .._registry import load
from ..languages import EXTENSIONS  # file extensions the CLI maps to renderers
from .base import ERROR_KINDS, Renderer, RenderResult, is_blank

# name -> (module, class); modules are imported on first use so that `import visalign.renderers`
# stays cheap and a missing optional backend only fails the renderer that needs it.
RENDERERS: dict[str, tuple[str, str]] = {
    "matplotlib": ("visalign.renderers.matplotlib", "MatplotlibRenderer"),
    "latex": ("visalign.renderers.latex", "LatexRenderer"),
    "svg": ("visalign.renderers.svg", "SvgRenderer"),
    "html": ("visalign.renderers.html", "HtmlRenderer"),
}

def renderer_class(name: str) -> type[Renderer]:
    """The class registered under ``name`` (one of :data:`RENDERERS`)."""
    return load(RENDERERS, name, "renderer")


def get_renderer(name: str, **options: Any) -> Renderer:
    """Create the renderer registered under ``name`` with its options (``timeout``, ``dpi``, ...)."""
    return renderer_class(name)(**options)


__all__ = ["ERROR_KINDS", "EXTENSIONS", "RENDERERS", "RenderResult", "Renderer", "get_renderer", "is_blank",
           "renderer_class"]
