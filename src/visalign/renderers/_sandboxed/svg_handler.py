"""SVG job handler for the zygote: rasterises SVG markup with resvg (Rust) in a forked child.

resvg parses untrusted XML and allocates a pixmap of the size the document asks for, so it runs in
the sandbox like the matplotlib code does, with the declared size checked against ``max_pixels``
before anything is allocated.
"""

from __future__ import annotations

import re

_state: dict = {}

_NUM = r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(px)?\s*"


def preload() -> dict:
    import resvg_py
    from zygote import write_result

    resvg_py.svg_to_bytes(svg_string='<svg xmlns="http://www.w3.org/2000/svg" width="4" height="4">'
                          '<text y="4">a</text></svg>')  # warm the font database
    _state.update(resvg=resvg_py, write_result=write_result)
    return {"resvg": getattr(resvg_py, "__resvg_version__", "?"), "resvg-py": getattr(resvg_py, "__version__", "?")}


def declared_size(source: str) -> tuple[float, float] | None:
    """Width and height in px from the root ``<svg>`` tag (attributes or viewBox), if plain numbers."""
    m = re.search(r"<svg\b[^>]*>", source, flags=re.S)
    if not m:
        return None
    tag = m.group(0)
    w = re.search(r'\swidth\s*=\s*["\']' + _NUM + r'["\']', tag)
    h = re.search(r'\sheight\s*=\s*["\']' + _NUM + r'["\']', tag)
    vb = re.search(r'viewBox\s*=\s*["\']\s*[-0-9.eE+]+[\s,]+[-0-9.eE+]+[\s,]+([0-9.eE+]+)[\s,]+([0-9.eE+]+)', tag)
    width = float(w.group(1)) if w else (float(vb.group(1)) if vb else None)
    height = float(h.group(1)) if h else (float(vb.group(2)) if vb else None)
    if width is None or height is None:
        return None
    return width, height


def run(source: str, opts: dict, jobdir: str) -> None:
    write_result = _state["write_result"]
    if not source.strip():
        write_result(error_kind="no_output", error="empty SVG source")
        return
    width, height = opts.get("width"), opts.get("height")
    max_pixels = int(opts.get("max_pixels") or 40_000_000)
    size = declared_size(source)
    if size is not None:
        w, h = size
        if width and not height:
            w, h = width, h * width / w if w else h
        elif height and not width:
            w, h = w * height / h if h else w, height
        elif width and height:
            w, h = width, height
        if w * h > max_pixels:
            write_result(error_kind="memory", error=f"SVG of {w:.0f}x{h:.0f} px exceeds max_pixels={max_pixels}")
            return
    kwargs = {"svg_string": source}
    if width:
        kwargs["width"] = int(width)
    if height:
        kwargs["height"] = int(height)
    if opts.get("background"):
        kwargs["background"] = opts["background"]
    try:
        png = _state["resvg"].svg_to_bytes(**kwargs)
    except MemoryError as exc:
        write_result(error_kind="memory", error=f"MemoryError: {exc}")
        return
    except ValueError as exc:
        kind = "syntax" if "render" not in str(exc).lower() else "runtime"
        write_result(error_kind=kind, error=f"invalid SVG: {exc}")
        return
    except BaseException as exc:
        write_result(error_kind="runtime", error=f"{type(exc).__name__}: {exc}")
        return
    if not png:
        write_result(error_kind="no_output", error="resvg produced no image")
        return
    write_result(error_kind=None, error=None, png=png)
