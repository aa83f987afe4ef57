"""Metrics: pure functions comparing images, strings and traces, each pinned to a named reference.

Example:
    >>> import numpy as np
    >>> from visalign.metrics import ssim, psnr
    >>> img = np.zeros((32, 32, 3), np.uint8)
    >>> ssim(img, img), psnr(img, img)
    (1.0, inf)
"""

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
