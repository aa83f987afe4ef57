"""Full-reference image similarity: SSIM, MS-SSIM, PSNR and MSE, each pinned to a named reference.

"SSIM" means different code in different repositories (window, covariance normalisation, border
handling, colour), so every function here states the reference it reproduces and
``tests/test_metrics_image.py`` holds it to that reference:

- :func:`ssim` / :func:`ssim_batch`: Wang et al. 2004, equal to scikit-image's
  ``structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255, channel_axis=-1)``.
- :func:`ms_ssim` / :func:`ms_ssim_batch`: Wang et al. 2003, equal to ``pytorch_msssim.ms_ssim``
  (Vainf/pytorch-msssim 1.0) up to its float32 window (~2e-6).
- :func:`psnr` and :func:`mse`: equal to ``skimage.metrics.peak_signal_noise_ratio`` /
  ``mean_squared_error``.

Input policy (shared by every image metric in :mod:`visalign.metrics`, see :func:`prepare_image_pair`):

- an image is a PIL image or a uint8 numpy array of shape HxW, HxWx1, HxWx3 or HxWx4;
- transparency (RGBA, LA, palette with transparency) is composited over an opaque white background,
  as renderers and browsers show it;
- a grayscale image compared with a colour image is converted to RGB (both then count as RGB);
- sizes that differ follow ``size_policy``: ``"resize_pred"`` (default) resizes the prediction to the
  reference's size with PIL's Lanczos filter, so a render at another dpi still compares (it is the
  resize pyssim applies, so :func:`~visalign.metrics.cw_ssim` stays equal to pyssim on such pairs);
  ``"error"`` raises ``ValueError``; ``"pad"`` pads both images with white on the right and bottom to
  the larger width and height.

The per-image functions compute in float64 on the CPU; the ``*_batch`` functions take (N, C, H, W)
tensors of equal shape (no size policy) and run on their device (CPU or CUDA).
"""

from __future__ import annotations

import math
import numbers
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

__all__ = [
    "MS_SSIM_MIN_SIZE",
    "MS_SSIM_WEIGHTS",
    "ImageLike",
    "SizePolicy",
    "ms_ssim",
    "ms_ssim_batch",
    "mse",
    "prepare_image_pair",
    "psnr",
    "ssim",
    "ssim_batch",
]

ImageLike = Image.Image | np.ndarray
SizePolicy = Literal["resize_pred", "error", "pad"]
SIZE_POLICIES = ("resize_pred", "error", "pad")

# Wang et al. 2004 constants, as scikit-image uses them with gaussian_weights=True: sigma 1.5 and
# scipy.ndimage's truncate=3.5 give a radius of int(3.5 * 1.5 + 0.5) = 5, an 11x11 window.
_SIGMA = 1.5
_RADIUS = 5
WIN_SIZE = 2 * _RADIUS + 1
_K1, _K2 = 0.01, 0.03

# Wang, Simoncelli & Bovik 2003 scale weights (from their psychophysical calibration); the 4 halvings
# need a short side of (11 - 1) * 2**4 + 1 pixels for the window to fit at the fifth scale.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
MS_SSIM_MIN_SIZE = (WIN_SIZE - 1) * 2 ** (len(MS_SSIM_WEIGHTS) - 1) + 1  # 161

# PIL modes that carry more than 8 bits per channel: converting them to "L"/"RGB" clips instead of
# scaling, which would silently change the numbers, so they are refused.
_HIGH_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")
_GRAY_MODES = ("1", "L", "LA", "La")
_ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")


# --------------------------------------------------------------------------------------------------
# input handling (PIL / numpy)


def _positive(x: object) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def _to_pil(img: ImageLike, name: str) -> Image.Image:
    """One image as a PIL image in mode "L" or "RGB", transparency composited over white."""
    if isinstance(img, np.ndarray):
        if img.dtype != np.uint8:
            raise ValueError(
                f"{name}: numpy images must be uint8 (0..255), got dtype {img.dtype}; "
                "scale and cast first, e.g. (x * 255).round().astype(np.uint8)"
            )
        if img.ndim == 3 and img.shape[2] == 1:
            img = img[..., 0]
        if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[2] not in (3, 4)):
            raise ValueError(
                f"{name}: expected an array of shape HxW, HxWx1, HxWx3 or HxWx4, got shape {img.shape}"
            )
        if img.size == 0:
            raise ValueError(f"{name}: empty image of shape {img.shape}")
        img = Image.fromarray(np.ascontiguousarray(img))
    elif not isinstance(img, Image.Image):
        hint = "; use the *_batch functions for torch tensors" if isinstance(img, torch.Tensor) else ""
        raise TypeError(f"{name}: expected a PIL image or a uint8 numpy array, got {type(img).__name__}{hint}")

    if img.width == 0 or img.height == 0:
        raise ValueError(f"{name}: empty image of size {img.width}x{img.height}")
    mode = img.mode
    if mode in _HIGH_DEPTH_MODES:
        raise ValueError(
            f"{name}: PIL mode {mode!r} has more than 8 bits per channel; convert it to 8-bit 'L' or "
            "'RGB' with the scaling you mean first"
        )
    gray = mode in _GRAY_MODES
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("LA").convert("RGBA") if mode == "La" else img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, rgba).convert("RGB")
        return img.convert("L") if gray else img
    if gray:
        return img.convert("L")
    if mode == "RGB":
        return img
    try:
        return img.convert("RGB")
    except ValueError as err:  # a mode PIL cannot convert to RGB
        raise ValueError(f"{name}: cannot convert PIL mode {mode!r} to RGB: {err}") from None


def prepare_image_pair(
    pred: ImageLike, ref: ImageLike, *, size_policy: SizePolicy = "resize_pred"
) -> tuple[Image.Image, Image.Image]:
    """Bring a (prediction, reference) pair to one mode and one size, as every image metric does.

    Each image becomes mode "L" (grayscale inputs) or "RGB"; transparency is composited over an
    opaque white background; a grayscale image paired with a colour image is converted to RGB.
    Sizes that differ follow ``size_policy``:

    - ``"resize_pred"`` (default): the prediction is resized to the reference's size with
      ``PIL.Image.LANCZOS`` (pyssim's resize), so a render at another dpi still compares;
    - ``"error"``: raise ``ValueError``;
    - ``"pad"``: both images are padded with white on the right and bottom to the larger width and
      the larger height (content stays anchored at the top-left corner, unscaled).

    Args:
        pred: the generated / rendered image: a PIL image or a uint8 array (HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image, same kinds.
        size_policy: ``"resize_pred"``, ``"error"`` or ``"pad"``.

    Returns:
        ``(pred, ref)`` as PIL images of the same mode ("L" or "RGB") and size.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import prepare_image_pair
        >>> rgba = np.zeros((20, 30, 4), np.uint8)  # fully transparent: white once composited
        >>> p, r = prepare_image_pair(rgba, np.zeros((10, 15), np.uint8))
        >>> p.mode, p.size, int(np.asarray(p).min())
        ('RGB', (15, 10), 255)
    """
    if size_policy not in SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {SIZE_POLICIES}, got {size_policy!r}")
    p = _to_pil(pred, "pred")
    r = _to_pil(ref, "ref")
    if p.mode != r.mode:
        p, r = p.convert("RGB"), r.convert("RGB")
    if p.size != r.size:
        if size_policy == "error":
            raise ValueError(
                f"pred and ref sizes differ: {p.width}x{p.height} vs {r.width}x{r.height} (WxH) and "
                "size_policy='error'; use size_policy='resize_pred' or 'pad' to compare them anyway"
            )
        if size_policy == "resize_pred":
            p = p.resize(r.size, Image.LANCZOS)
        else:
            size = (max(p.width, r.width), max(p.height, r.height))
            p, r = _pad_white(p, size), _pad_white(r, size)
    return p, r


def _pad_white(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    if img.size == size:
        return img
    canvas = Image.new(img.mode, size, 255 if img.mode == "L" else (255, 255, 255))
    canvas.paste(img, (0, 0))
    return canvas


def _pair_arrays(pred: ImageLike, ref: ImageLike, size_policy: SizePolicy) -> tuple[np.ndarray, np.ndarray]:
    p, r = prepare_image_pair(pred, ref, size_policy=size_policy)
    return np.asarray(p), np.asarray(r)


def _as_nchw64(a: np.ndarray) -> torch.Tensor:
    """(H, W) or (H, W, C) uint8 -> (1, C, H, W) float64 CPU tensor."""
    t = torch.from_numpy(a.astype(np.float64))
    t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
    return t.unsqueeze(0).contiguous()


# --------------------------------------------------------------------------------------------------
# batch input checks (torch)


def _check_batch_inputs(
    preds: torch.Tensor, target: torch.Tensor, data_range: float | None, min_size: int, metric: str
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Validate (N, C, H, W) tensors; return them as floating tensors and the data range to use."""
    for name, t in (("preds", preds), ("target", target)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{metric}: {name} must be a torch.Tensor of shape (N, C, H, W), got {type(t).__name__}")
        if t.ndim != 4:
            raise ValueError(f"{metric}: {name} must have shape (N, C, H, W), got {tuple(t.shape)}")
        if t.numel() == 0:
            raise ValueError(f"{metric}: {name} is empty, shape {tuple(t.shape)}")
        if t.dtype != torch.uint8 and not t.is_floating_point():
            raise ValueError(f"{metric}: {name} must be uint8 (0..255) or floating point, got {t.dtype}")
    if preds.shape != target.shape:
        raise ValueError(f"{metric}: preds and target shapes differ: {tuple(preds.shape)} vs {tuple(target.shape)}")
    if preds.dtype != target.dtype:
        raise ValueError(f"{metric}: preds and target dtypes differ: {preds.dtype} vs {target.dtype}")
    if preds.device != target.device:
        raise ValueError(f"{metric}: preds and target are on different devices: {preds.device} vs {target.device}")
    if min(preds.shape[-2:]) < min_size:
        raise ValueError(
            f"{metric}: images must be at least {min_size}x{min_size}, got {preds.shape[-2]}x{preds.shape[-1]} (HxW)"
        )
    if data_range is None:
        if preds.dtype != torch.uint8:
            raise ValueError(
                f"{metric}: floating-point tensors need data_range (1.0 for images in [0, 1], 255.0 for [0, 255]); "
                "it is not guessed from the data because that changes the score"
            )
        data_range = 255.0
    if not _positive(data_range):
        raise ValueError(f"{metric}: data_range must be a positive finite number, got {data_range!r}")
    dtype = preds.dtype if preds.dtype in (torch.float32, torch.float64) else torch.float32
    return preds.to(dtype), target.to(dtype), float(data_range)


# --------------------------------------------------------------------------------------------------
# SSIM


def _gaussian_window(dtype: torch.dtype) -> torch.Tensor:
    """The 11 window weights (a CPU tensor) rounded to ``dtype``.

    scipy.ndimage._gaussian_kernel1d(sigma=1.5, order=0, radius=5), as scikit-image's gaussian filter
    uses it.
    """
    x = torch.arange(-_RADIUS, _RADIUS + 1, dtype=torch.float64)
    phi = torch.exp(-0.5 / (_SIGMA * _SIGMA) * x**2)
    return (phi / phi.sum()).to(dtype=dtype)


def _blur_valid(x: torch.Tensor, win: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian over H and W of (N, C, H, W), valid region only (no padding).

    scikit-image filters with reflect padding and then crops ``(win_size - 1) // 2`` pixels from every
    side before averaging; the cropped region never sees the padding, so a valid convolution is equal.
    Written as in-place weighted sums of shifted views: on the CPU it is an order of magnitude faster
    than a float64 depthwise ``conv2d`` (and as fast as scipy.ndimage), on CUDA it is 20 small kernels.
    """
    weights = win.tolist()
    k = len(weights)
    h, w = x.shape[-2] - k + 1, x.shape[-1] - k + 1
    rows = x[..., :w] * weights[0]
    for i in range(1, k):
        rows.add_(x[..., i : i + w], alpha=weights[i])
    out = rows[..., :h, :] * weights[0]
    for i in range(1, k):
        out.add_(rows[..., i : i + h, :], alpha=weights[i])
    return out


def _ssim_maps(x: torch.Tensor, y: torch.Tensor, data_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """SSIM map and contrast-structure map over the valid region, (N, C, H - 10, W - 10) each."""
    c1 = (_K1 * data_range) ** 2
    c2 = (_K2 * data_range) ** 2
    ch = x.shape[1]
    win = _gaussian_window(x.dtype)
    mu_x, mu_y, xx, yy, xy = _blur_valid(torch.cat([x, y, x * x, y * y, x * y], dim=1), win).split(ch, dim=1)
    # population (co)variances, as Wang et al. 2004 and scikit-image's use_sample_covariance=False
    var_x = xx - mu_x * mu_x
    var_y = yy - mu_y * mu_y
    cov = xy - mu_x * mu_y
    cs = (2 * cov + c2) / (var_x + var_y + c2)
    luminance = (2 * mu_x * mu_y + c1) / (mu_x * mu_x + mu_y * mu_y + c1)
    return luminance * cs, cs


def _split_batch(x: torch.Tensor, units: int) -> bool:
    """Whether to compute the ``units`` independent images / channels of ``x`` one at a time.

    On the CPU one at a time keeps the working set in cache, which is faster than one big batch
    (scikit-image also works channel by channel); CUDA takes the whole batch at once.
    """
    return x.device.type == "cpu" and units > 1


def _ssim_update(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """Mean SSIM per image and channel, (N, C)."""
    n, c = x.shape[:2]
    if _split_batch(x, n * c):
        xs, ys = x.reshape(n * c, 1, *x.shape[2:]), y.reshape(n * c, 1, *y.shape[2:])
        return torch.cat([_ssim_update(xs[i : i + 1], ys[i : i + 1], data_range) for i in range(n * c)]).view(n, c)
    ssim_map, _ = _ssim_maps(x, y, data_range)
    return ssim_map.mean(dim=(-2, -1))


def _ssim_compute(per_channel: torch.Tensor) -> torch.Tensor:
    # colour images: mean of the per-channel SSIMs (scikit-image's channel_axis)
    return per_channel.mean(dim=1)


def ssim_batch(preds: torch.Tensor, target: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """SSIM of each image pair in a batch (Wang et al. 2004), on the tensors' device.

    Same definition as :func:`ssim`: 11x11 Gaussian window (sigma 1.5), K1 = 0.01, K2 = 0.03,
    population covariance, mean of the SSIM map over the valid region (a 5-pixel border is left out),
    mean over channels.

    Args:
        preds: (N, C, H, W) uint8 or floating tensor, H and W at least 11.
        target: a tensor of the same shape, dtype and device.
        data_range: the value range; uint8 tensors default to 255. Floating tensors must say it
            (1.0 for images in [0, 1], 255.0 for [0, 255]): guessing it from the data changes scores.

    Returns:
        (N,) tensor on the inputs' device: float64 for float64 inputs, else float32. Float32 agrees
        with the float64 result to about 1e-5 for 0..255 images.

    Example:
        >>> import torch
        >>> from visalign.metrics import ssim_batch
        >>> x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
        >>> y = x.clone(); y[1, :, 8:24, 8:24] = 255
        >>> ssim_batch(x, y).tolist()[0]
        1.0
    """
    x, y, data_range = _check_batch_inputs(preds, target, data_range, WIN_SIZE, "ssim_batch")
    return _ssim_compute(_ssim_update(x, y, data_range))


def ssim(pred: ImageLike, ref: ImageLike, *, size_policy: SizePolicy = "resize_pred") -> float:
    """Structural similarity (Wang, Bovik, Sheikh & Simoncelli 2004) of two 8-bit images.

    Reference: scikit-image ``structural_similarity(pred, ref, gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=255, channel_axis=-1)`` (``channel_axis=None`` for
    grayscale pairs): equal to ~1e-14 (the tests hold it to 1e-8).

    With Gaussian-weighted local means ``mu``, variances ``sigma^2`` and covariance ``sigma_xy``
    (window 11x11, sigma 1.5, population normalisation), ``C1 = (0.01 * 255)^2`` and
    ``C2 = (0.03 * 255)^2``::

        SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2))

    averaged over the pixels whose window lies inside the image (a 5-pixel border is left out), then
    over channels. The result lies in [-1, 1]; 1 means identical. Inputs are prepared by
    :func:`prepare_image_pair` (white behind transparency, gray + RGB -> RGB, ``size_policy``); the
    score is symmetric for images of equal size.

    Args:
        pred: the generated / rendered image (PIL image or uint8 array HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image; at least 11x11 after preparation.
        size_policy: ``"resize_pred"`` (default), ``"error"`` or ``"pad"``, see :func:`prepare_image_pair`.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import ssim
        >>> ref = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
        >>> ssim(ref, ref)
        1.0
        >>> round(ssim(np.roll(ref, 2, axis=1), ref), 4)
        0.9696
    """
    a, b = _pair_arrays(pred, ref, size_policy)
    if min(a.shape[:2]) < WIN_SIZE:
        raise ValueError(f"ssim: images must be at least {WIN_SIZE}x{WIN_SIZE}, got {a.shape[0]}x{a.shape[1]} (HxW)")
    return float(_ssim_compute(_ssim_update(_as_nchw64(a), _as_nchw64(b), 255.0))[0])


# --------------------------------------------------------------------------------------------------
# MS-SSIM


def _ms_ssim_update(x: torch.Tensor, y: torch.Tensor, data_range: float) -> torch.Tensor:
    """Per-scale terms, (5, N, C): contrast-structure at scales 1..4, full SSIM at scale 5.

    Negative terms are clamped to 0 (pytorch_msssim's relu) so that the fractional powers are defined.
    Between scales: 2x2 average pooling; an odd side is zero-padded by one pixel on both ends with the
    zeros counted in the average, exactly as pytorch_msssim's ``avg_pool2d(padding=s % 2)``.
    """
    n, c = x.shape[:2]
    if _split_batch(x, n * c):  # channels are independent until the final mean: see _split_batch
        xs, ys = x.reshape(n * c, 1, *x.shape[2:]), y.reshape(n * c, 1, *y.shape[2:])
        parts = [_ms_ssim_update(xs[i : i + 1], ys[i : i + 1], data_range) for i in range(n * c)]
        return torch.cat(parts, dim=1).view(-1, n, c)
    levels = len(MS_SSIM_WEIGHTS)
    terms = []
    for level in range(levels):
        ssim_map, cs_map = _ssim_maps(x, y, data_range)
        if level < levels - 1:
            terms.append(torch.relu(cs_map.mean(dim=(-2, -1))))
            padding = (x.shape[-2] % 2, x.shape[-1] % 2)
            x = F.avg_pool2d(x, kernel_size=2, padding=padding)
            y = F.avg_pool2d(y, kernel_size=2, padding=padding)
    terms.append(torch.relu(ssim_map.mean(dim=(-2, -1))))
    return torch.stack(terms)


def _ms_ssim_compute(terms: torch.Tensor) -> torch.Tensor:
    weights = torch.tensor(MS_SSIM_WEIGHTS, dtype=terms.dtype, device=terms.device).view(-1, 1, 1)
    # product over scales per channel, then mean over channels (pytorch_msssim's order)
    return torch.prod(terms**weights, dim=0).mean(dim=1)


def ms_ssim_batch(preds: torch.Tensor, target: torch.Tensor, *, data_range: float | None = None) -> torch.Tensor:
    """Multi-scale SSIM of each image pair in a batch, on the tensors' device; see :func:`ms_ssim`.

    Args:
        preds: (N, C, H, W) uint8 or floating tensor, H and W at least :data:`MS_SSIM_MIN_SIZE` (161).
        target: a tensor of the same shape, dtype and device.
        data_range: the value range; uint8 tensors default to 255, floating tensors must say it.

    Returns:
        (N,) tensor on the inputs' device (float64 for float64 inputs, else float32).

    Example:
        >>> import torch
        >>> from visalign.metrics import ms_ssim_batch
        >>> x = torch.rand(2, 3, 192, 192, dtype=torch.float64)
        >>> ms_ssim_batch(x, x, data_range=1.0).tolist()
        [1.0, 1.0]
    """
    x, y, data_range = _check_batch_inputs(preds, target, data_range, MS_SSIM_MIN_SIZE, "ms_ssim_batch")
    return _ms_ssim_compute(_ms_ssim_update(x, y, data_range))


def ms_ssim(pred: ImageLike, ref: ImageLike, *, size_policy: SizePolicy = "resize_pred") -> float:
    """Multi-scale structural similarity (Wang, Simoncelli & Bovik 2003) of two 8-bit images.

    Reference: ``pytorch_msssim.ms_ssim(X, Y, data_range=255)`` (Vainf/pytorch-msssim 1.0) on float64
    tensors: equal to ~2e-6, a difference that comes entirely from pytorch_msssim building its Gaussian
    window in float32 (with that window the two agree to 1e-12). torchmetrics'
    ``multiscale_structural_similarity_index_measure`` is a different definition: it averages
    channels before the product over scales and floors odd sizes when pooling.

    Five scales; at each, the SSIM terms of :func:`ssim` (11x11 Gaussian window, sigma 1.5, valid
    region, K1 = 0.01, K2 = 0.03, data range 255) are averaged per channel; between scales both images
    are 2x2 average-pooled (an odd side gets one zero-padded pixel on each end, counted in the
    average, as pytorch_msssim does)::

        MS-SSIM = prod_{j=1..4} max(cs_j, 0)^w_j * max(ssim_5, 0)^w_5
        w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)

    where ``cs_j`` is the mean contrast-structure term ``(2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)``
    at scale j and ``ssim_5`` the mean SSIM (luminance * cs) at scale 5; computed per channel, then
    averaged over channels. 1 means identical.

    Minimum size: the short side must be at least ``(11 - 1) * 2**4 + 1 = 161`` pixels after
    preparation, so that the window fits at the fifth scale; smaller images raise ``ValueError``
    (upscale both, or use :func:`ssim`).

    Args:
        pred: the generated / rendered image (PIL image or uint8 array HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image.
        size_policy: ``"resize_pred"`` (default), ``"error"`` or ``"pad"``, see :func:`prepare_image_pair`.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import ms_ssim
        >>> ref = np.tile(np.arange(256, dtype=np.uint8), (200, 1))
        >>> ms_ssim(ref, ref)
        1.0
    """
    a, b = _pair_arrays(pred, ref, size_policy)
    if min(a.shape[:2]) < MS_SSIM_MIN_SIZE:
        raise ValueError(
            f"ms_ssim: images must be at least {MS_SSIM_MIN_SIZE}x{MS_SSIM_MIN_SIZE} (the 11x11 window must fit "
            f"after 4 halvings), got {a.shape[0]}x{a.shape[1]} (HxW); upscale both or use ssim"
        )
    return float(_ms_ssim_compute(_ms_ssim_update(_as_nchw64(a), _as_nchw64(b), 255.0))[0])


# --------------------------------------------------------------------------------------------------
# MSE / PSNR


def mse(pred: ImageLike, ref: ImageLike, *, size_policy: SizePolicy = "resize_pred") -> float:
    """Mean squared error over all pixels and channels, on the 0..255 scale.

    Reference: ``skimage.metrics.mean_squared_error(pred, ref)`` on the prepared uint8 arrays.

    Args:
        pred: the generated / rendered image (PIL image or uint8 array HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image.
        size_policy: ``"resize_pred"`` (default), ``"error"`` or ``"pad"``, see :func:`prepare_image_pair`.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import mse
        >>> mse(np.zeros((4, 4), np.uint8), np.full((4, 4), 3, np.uint8))
        9.0
    """
    a, b = _pair_arrays(pred, ref, size_policy)
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def psnr(
    pred: ImageLike, ref: ImageLike, *, data_range: float = 255.0, size_policy: SizePolicy = "resize_pred"
) -> float:
    """Peak signal-to-noise ratio in dB: ``10 * log10(data_range^2 / MSE)``.

    Reference: ``skimage.metrics.peak_signal_noise_ratio(ref, pred, data_range=255)``. Identical images
    (MSE 0) give ``math.inf`` (scikit-image returns inf too, with a divide-by-zero warning); average
    PSNRs over a data set with care, or cap them.

    Args:
        pred: the generated / rendered image (PIL image or uint8 array HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image.
        data_range: the peak value; 255 for 8-bit images.
        size_policy: ``"resize_pred"`` (default), ``"error"`` or ``"pad"``, see :func:`prepare_image_pair`.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import psnr
        >>> a = np.zeros((4, 4), np.uint8)
        >>> psnr(a, a)
        inf
        >>> round(psnr(a, np.full((4, 4), 3, np.uint8)), 3)
        38.588
    """
    if not _positive(data_range):
        raise ValueError(f"psnr: data_range must be a positive finite number, got {data_range!r}")
    err = mse(pred, ref, size_policy=size_policy)
    if err == 0.0:
        return math.inf
    return float(10.0 * math.log10(data_range**2 / err))
