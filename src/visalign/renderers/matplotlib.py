"""The ``matplotlib`` renderer: Python plotting code in, the figure it drew out.

A pool of sandboxed fork servers that imported numpy, matplotlib and the plotting stack chart code
imports (pandas, seaborn, squarify, matplotlib-venn, and networkx where installed) once; each sample
is a fork, so it pays only for its own drawing. Each figure is drawn once, as plain Python saves it
(again only if the program changed it after a ``savefig`` / ``show``); a compatibility layer (option
``compat``) restores names matplotlib 3.9+ and numpy 2 removed and reports their use in
``RenderResult.shims``.
"""

from __future__ import annotations

import contextlib
import functools
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from .base import DEFAULT_MAX_PIXELS, Renderer, RenderResult
from .pool import ZygotePool
from .sandbox import SandboxLimits

FIGURE_POLICIES = ("last", "first", "all")
# The compatibility shims of ``_sandboxed/mpl_compat.py`` (kept in step with its ``SHIMS``; a test checks).
COMPAT_SHIMS: tuple[str, ...] = ("boxplot.labels", "cm.get_cmap", "cm.register_cmap", "legend.legendHandles",
                                 "numpy.aliases")


@functools.lru_cache(maxsize=1)
def font_cache_dir() -> str | None:
    """A matplotlib config dir with a built font cache, shared read-only with the sandboxes.

    Built once by a trusted interpreter and copied into each worker's directory, so that sandboxed
    workers do not rebuild the font list at every start. It lives inside the Python prefix when that
    is writable, else in the user's cache dir. None when neither works.
    """
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    name = f"matplotlib-py{sys.version_info[0]}{sys.version_info[1]}"
    for base in (os.path.join(sys.prefix, "var", "cache", "visalign"), os.path.join(xdg, "visalign")):
        path = os.path.join(base, name)
        if _build_font_cache(path):
            return path
    return None


def _build_font_cache(path: str) -> bool:
    try:
        os.makedirs(path, exist_ok=True)
        if not any(n.startswith("fontlist") for n in os.listdir(path)):
            subprocess.run([sys.executable, "-c", "import matplotlib.font_manager"], check=True, timeout=300,
                           env={**os.environ, "MPLCONFIGDIR": path, "MPLBACKEND": "Agg"}, capture_output=True)
        os.chmod(path, 0o755)
        for name in os.listdir(path):
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(path, name), 0o644)
        return True
    except (OSError, subprocess.SubprocessError):
        return False


class MatplotlibRenderer(Renderer):
    """Render matplotlib programs into images.

    Args:
        timeout: wall-clock seconds per program (CPU time is capped at the same).
        workers: sandboxed fork servers (default: CPU count).
        dpi: resolution of the captured figure.
        figsize: ``(width, height)`` in inches to impose on every figure, or None to keep the program's.
        figures: which figure to return when a program draws several: ``"last"`` (default, the one a
            script usually saves last), ``"first"``, or ``"all"`` stacked top to bottom.
        tight: crop to the drawn content (``bbox_inches="tight"``).
        memory_mb: address-space limit per program.
        max_pixels: a figure larger than this fails with ``memory`` before it is drawn.
        instrument: names of instrumentation hooks (see ``_sandboxed/mpl_handler.py``) whose
            records come back in ``RenderResult.trace``; they describe the figure(s) the image shows.
        compat: restore the names matplotlib 3.9+ and numpy 2 removed that chart code still uses
            (``matplotlib.cm.get_cmap``, ``boxplot(labels=...)``, ``Legend.legendHandles``,
            ``np.NaN`` / ``np.float_`` ...: :data:`COMPAT_SHIMS`, ``_sandboxed/mpl_compat.py``), each a
            pure rename, so a program written for matplotlib 3.8 / numpy 1.26 (ChartMimic's pinned
            environment) draws what it drew there. On by default: a model is scored on its chart,
            not on which matplotlib release it learnt, and execution rates stay comparable with
            published ChartMimic numbers. The shims a program used are listed in
            ``RenderResult.shims``; ``compat=False`` fails such programs as current matplotlib does.

    Example:
        >>> with MatplotlibRenderer(timeout=10, workers=1) as r:
        ...     res = r.render("import matplotlib.pyplot as plt\\nplt.bar([1, 2], [3, 4])")
        >>> res.ok, res.image.size
        (True, (640, 480))
    """

    name = "matplotlib"

    def __init__(self, timeout: float = 10.0, workers: int | None = None, dpi: float = 100.0,
                 figsize: tuple[float, float] | None = None, figures: str = "last", tight: bool = False,
                 memory_mb: int = 2048, max_pixels: int = DEFAULT_MAX_PIXELS,
                 instrument: tuple[str, ...] = (), compat: bool = True) -> None:
        super().__init__(timeout)
        if figures not in FIGURE_POLICIES:
            raise ValueError(f"figures must be one of {FIGURE_POLICIES}, got {figures!r}")
        if dpi <= 0:
            raise ValueError(f"dpi must be positive, got {dpi}")
        self.options: dict[str, Any] = {"dpi": dpi, "figsize": list(figsize) if figsize else None,
                                        "figures": figures, "tight": tight, "max_pixels": max_pixels,
                                        "instrument": list(instrument), "compat": bool(compat)}
        # matplotlib insists on a writable config dir: each worker gets a copy of the prebuilt cache.
        cache = font_cache_dir()
        self.pool = ZygotePool("mpl_handler", workers=workers, timeout=timeout,
                               limits=SandboxLimits(memory_mb=memory_mb),
                               extra_env={"MPLBACKEND": "Agg", "MPLCONFIGDIR": "{workdir}/.matplotlib"},
                               max_pixels=max_pixels, seed_dirs={".matplotlib": cache} if cache else None)

    def _render_batch(self, sources: list[str], progress: Callable[[int], None] | None = None
                      ) -> list[RenderResult]:
        results = self.pool.run_batch(sources, self.options, progress)
        for res in results:
            _take_shims(res, keep_trace=bool(self.options["instrument"]))
        return results

    def info(self) -> dict[str, Any]:
        return {**super().info(), "backend": "matplotlib (Agg) in sandboxed fork servers",
                "versions": self.pool.versions, "workers": self.pool.workers,
                "sandbox": self.pool.info.level, "isolation": self.pool.isolation, **self.options}

    def close(self) -> None:
        self.pool.close()


def _take_shims(res: RenderResult, keep_trace: bool) -> None:
    """Move the job's report of the shims it used from its trace to ``res.shims``.

    The report is the program's to tamper with: only known names count, each once, sorted.
    """
    trace = res.trace if isinstance(res.trace, dict) else None
    if trace is None:
        return
    used = trace.pop("compat", None)
    if isinstance(used, list):
        res.shims = tuple(sorted({n for n in used if isinstance(n, str) and n in COMPAT_SHIMS}))
    if not trace and not keep_trace:
        res.trace = None
