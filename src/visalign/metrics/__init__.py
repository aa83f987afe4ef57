"""Metrics: pure functions comparing images, strings and traces, each pinned to a named reference.

Example:
    >>> import numpy as np
    >>> from visalign.metrics import ssim, psnr
    >>> img = np.zeros((32, 32, 3), np.uint8)
    >>> ssim(img, img), psnr(img, img)
    (1.0, inf)
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: where each public name lives; a module is imported on first use (``cw_ssim`` imports torch, which
#: is 2-3 s a ``visalign score ssim`` call should not pay)
_HOMES = {
    "chart_code": ("chart_code_metrics", "chart_code_metrics_batch", "ciede2000", "compare_chart_traces"),
    "cw_ssim": ("cw_ssim", "cw_ssim_batch"),
    "image": ("MS_SSIM_MIN_SIZE", "MS_SSIM_WEIGHTS", "ms_ssim", "ms_ssim_batch", "mse", "prepare_image_pair",
              "psnr", "ssim", "ssim_batch"),
    "latex_table": ("latex_table_to_html",),
    "teds": ("teds",),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}

if TYPE_CHECKING:
    from .chart_code import chart_code_metrics, chart_code_metrics_batch, ciede2000, compare_chart_traces
    from .cw_ssim import cw_ssim, cw_ssim_batch
    from .image import (
        MS_SSIM_MIN_SIZE,
        MS_SSIM_WEIGHTS,
        ms_ssim,
        ms_ssim_batch,
        mse,
        prepare_image_pair,
        psnr,
        ssim,
        ssim_batch,
    )
    from .latex_table import latex_table_to_html
    from .teds import teds


def __getattr__(name: str) -> Any:
    module = _HOME_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "MS_SSIM_MIN_SIZE",
    "MS_SSIM_WEIGHTS",
    "chart_code_metrics",
    "chart_code_metrics_batch",
    "ciede2000",
    "compare_chart_traces",
    "cw_ssim",
    "cw_ssim_batch",
    "latex_table_to_html",
    "ms_ssim",
    "ms_ssim_batch",
    "mse",
    "prepare_image_pair",
    "psnr",
    "ssim",
    "ssim_batch",
    "teds",
]
