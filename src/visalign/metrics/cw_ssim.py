"""Complex-wavelet SSIM exactly as pyssim 0.7.1 defines ``SSIM(ref).cw_ssim_value(pred)``.

"CW-SSIM" names at least three different computations in the literature and in code: Sampat et al.
2009 (a 2-D complex steerable pyramid), pyssim's (below), and Table2LaTeX-RL's one-level Haar split.
This module implements pyssim's, and ``tests/test_metrics_image.py`` holds it to pyssim itself.

pyssim 0.7.1's definition (``ssim/ssimlib.py``), step by step:

1. the prediction is resized to the reference's size with Lanczos, both are converted to 8-bit
   grayscale with PIL's ``convert("L")`` (ITU-R 601-2 luma, rounded);
2. each image is flattened row-major into ONE 1-D signal of length H*W (so wavelets straddle row ends:
   it is not a 2-D transform);
3. ``pywt.cwt(signal, scales=1..width, "mexh")``: the continuous wavelet transform with PyWavelets'
   Mexican-hat (Ricker) wavelet by its integrated-wavelet method (precision 12, ``method="conv"``);
   the coefficients are real;
4. with ``c1[s, n]``, ``c2[s, n]`` the coefficients of reference and prediction at scale s and
   position n, and ``K = k`` (default 0.01)::

       CW(n) = (2 sum_s |c1||c2| + K) / (sum_s |c1|^2 + sum_s |c2|^2 + K)
             * (2 |sum_s c1 conj(c2)| + K) / (2 sum_s |c1 conj(c2)| + K)

       CW-SSIM = mean_n CW(n)

   (for this real wavelet ``2 sum_s |c1 conj(c2)| = 2 sum_s |c1||c2|``, so the product reduces to
   ``(2 |sum_s c1 c2| + K) / (sum_s c1^2 + sum_s c2^2 + K)``, the form computed here).

Older pyssim releases computed step 3 with ``scipy.signal.cwt`` and ``scipy.signal.ricker`` (both
removed in SciPy 1.15); 0.7.1, the version pinned as the reference here, uses PyWavelets as above. The
two discretise the wavelet differently (sampled Ricker of 10 * width points vs. the integrated
wavelet and ``-sqrt(scale) * diff``); on 96x80 photographs the scores differed by up to 5e-4.

Here the transform is computed for all scales by FFT convolution in float64 (scipy.fft on the CPU,
torch.fft on CUDA), equal to pyssim's direct convolution to ~1e-12 and several times faster
(``benchmarks/metrics_throughput.py``).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import scipy.fft
import torch

from .image import ImageLike, SizePolicy, _check_batch_inputs, _positive, _split_batch, prepare_image_pair

__all__ = ["cw_ssim", "cw_ssim_batch"]

_PRECISION = 12  # pywt.cwt's default: the wavelet is sampled at 2**12 points on [-8, 8]
# transform memory per chunk of scales: (images x scales x FFT length) float64 values
_CHUNK_ELEMENTS = 1 << 22


@lru_cache(maxsize=8)
def _mexh_kernels(width: int) -> tuple[np.ndarray, tuple[int, ...]]:
    """Per-scale correlation kernels reproducing ``pywt.cwt(data, range(1, width + 1), "mexh")``.

    pywt samples the integrated wavelet ``int_psi`` at ``j = floor(arange(16 s + 1) / (s * step))``,
    convolves the data with it (full length), takes ``-sqrt(s) * diff`` and crops ``floor(d)`` /
    ``ceil(d)`` samples, ``d = (len(kernel) - 2) / 2``. Folding the ``diff`` into the kernel gives
    ``coef_s[n] = (data * h_s)[n + offset_s]`` with ``h_s = -sqrt(s) * diff([0, kernel, 0])`` and
    ``offset_s = floor(d) + 1``. Returns the kernels zero-padded to a common length (scales, L) and
    the offsets.
    """
    x = np.linspace(-8.0, 8.0, 2**_PRECISION)
    # PyWavelets' C implementation of the Mexican hat (cwt.template.c)
    psi = (1 - x * x) * np.exp(-x * x / 2) * 2 / (np.sqrt(3) * np.sqrt(np.sqrt(np.pi)))
    step = x[1] - x[0]
    int_psi = np.cumsum(psi) * step  # pywt.integrate_wavelet: rectangle rule
    kernels, offsets = [], []
    for scale in np.arange(1, width + 1):
        j = (np.arange(scale * (x[-1] - x[0]) + 1) / (scale * step)).astype(int)
        j = j[j < int_psi.size]
        kernel = int_psi[j][::-1]
        kernels.append(-np.sqrt(scale) * np.diff(np.concatenate([[0.0], kernel, [0.0]])))
        offsets.append(math.floor((kernel.size - 2) / 2) + 1)
    out = np.zeros((width, max(k.size for k in kernels)))
    for i, k in enumerate(kernels):
        out[i, : k.size] = k
    return out, tuple(offsets)


def _scipy_fft(x: torch.Tensor) -> bool:
    # on the CPU scipy's pocketfft is faster than torch's FFT for these lengths (both float64);
    # CUDA tensors use torch.fft (cuFFT)
    return x.device.type == "cpu"


def _rfft(x: torch.Tensor, n: int) -> torch.Tensor:
    if _scipy_fft(x):
        return torch.from_numpy(scipy.fft.rfft(x.numpy(), n=n, axis=-1, workers=torch.get_num_threads()))
    return torch.fft.rfft(x, n=n, dim=-1)


def _irfft(x: torch.Tensor, n: int) -> torch.Tensor:
    if _scipy_fft(x):
        return torch.from_numpy(scipy.fft.irfft(x.numpy(), n=n, axis=-1, workers=torch.get_num_threads()))
    return torch.fft.irfft(x, n=n, dim=-1)


@lru_cache(maxsize=4)
def _kernel_spectra(width: int, n_fft: int, device: torch.device) -> torch.Tensor:
    """rfft of the per-scale kernels placed for circular convolution of length n_fft, (width, F).

    Circular placement ``h'[(j - offset) mod n_fft] = h[j]`` makes output n of the circular convolution
    equal to full-convolution output ``n + offset``; ``n_fft >= length + L - 1`` keeps the wrap-around
    away from the outputs kept (n < length). Cached: the same image size reuses the spectra.
    """
    kernels, offsets = _mexh_kernels(width)
    placed = np.zeros((width, n_fft))
    cols = np.arange(kernels.shape[1])
    for s, off in enumerate(offsets):
        placed[s, (cols - off) % n_fft] = kernels[s]
    return _rfft(torch.from_numpy(placed).to(device), n_fft)


def _cw_ssim_update(sig1: torch.Tensor, sig2: torch.Tensor, width: int, k: float) -> torch.Tensor:
    """Mean CW(n) per image: sig1 = reference, sig2 = prediction, (B, length) float64 each.

    For the real Mexican hat ``|c1 conj(c2)| = |c1||c2|``, so pyssim's two factors share the term
    ``2 sum_s |c1||c2| + K`` and their product is ``(2 |sum_s c1 c2| + K) / (sum_s c1^2 + sum_s c2^2 + K)``,
    which is what is computed (equal to pyssim's product up to rounding, ~1e-16).
    """
    batch, length = sig1.shape
    if _split_batch(sig1, batch):
        return torch.cat([_cw_ssim_update(sig1[i : i + 1], sig2[i : i + 1], width, k) for i in range(batch)])
    n_fft = scipy.fft.next_fast_len(length + _mexh_kernels(width)[0].shape[1] - 1, real=True)
    h_f = _kernel_spectra(width, n_fft, sig1.device)  # (W, F)
    f1 = _rfft(sig1, n_fft).unsqueeze(1)  # (B, 1, F)
    f2 = _rfft(sig2, n_fft).unsqueeze(1)

    energy = torch.zeros_like(sig1)  # sum_s c1^2 + sum_s c2^2
    cross = torch.zeros_like(sig1)  # sum_s c1 c2
    chunk = max(1, _CHUNK_ELEMENTS // (batch * n_fft))
    for start in range(0, width, chunk):
        h = h_f[start : start + chunk]
        c1 = _irfft(f1 * h, n_fft)[..., :length]  # (B, scales, length)
        c2 = _irfft(f2 * h, n_fft)[..., :length]
        energy += (c1 * c1).sum(dim=1)
        energy += (c2 * c2).sum(dim=1)
        cross += (c1 * c2).sum(dim=1)
    return ((2 * cross.abs() + k) / (energy + k)).mean(dim=-1)


def _check_cw_args(width: int, k: float) -> None:
    if isinstance(width, bool) or not isinstance(width, (int, np.integer)) or width < 1:
        raise ValueError(f"cw_ssim: width must be a positive integer (number of wavelet scales), got {width!r}")
    if not _positive(k):
        raise ValueError(f"cw_ssim: k must be a positive finite number, got {k!r}")


def _gray_255(t: torch.Tensor, data_range: float) -> torch.Tensor:
    """(N, C, H, W) with C in {1, 3} -> (N, H*W) float64 grayscale on the 0..255 scale."""
    if t.shape[1] == 3:
        if t.dtype == torch.uint8:
            # PIL's convert("L"), bit-exact: (R*19595 + G*38470 + B*7471 + 0x8000) >> 16
            w = torch.tensor([19595, 38470, 7471], dtype=torch.int32, device=t.device).view(1, 3, 1, 1)
            t = ((t.to(torch.int32) * w).sum(dim=1) + 0x8000) >> 16
        else:
            w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float64, device=t.device).view(1, 3, 1, 1)
            t = (t.to(torch.float64) * w).sum(dim=1)
    else:
        t = t[:, 0]
    t = t.to(torch.float64)
    if data_range != 255.0:
        t = t * (255.0 / data_range)
    return t.reshape(t.shape[0], -1)


def cw_ssim_batch(
    preds: torch.Tensor,
    target: torch.Tensor,
    *,
    width: int = 30,
    k: float = 0.01,
    data_range: float | None = None,
) -> torch.Tensor:
    """CW-SSIM of each pair in a batch (pyssim 0.7.1's definition, see :func:`cw_ssim`), on the device.

    RGB is reduced to gray with PIL's ``convert("L")`` weights (bit-exact for uint8 tensors; float
    tensors use 0.299 / 0.587 / 0.114 without rounding after scaling to 0..255). ``k`` is absolute on
    the 0..255 scale, as in pyssim, so float tensors are scaled by ``255 / data_range`` first.
    Computed in float64 whatever the input dtype (the ratio's ``k`` is tiny against the coefficients).

    Args:
        preds: (N, C, H, W) predictions, C = 1 or 3, uint8 or floating.
        target: references of the same shape, dtype and device.
        width: number of wavelet scales (1..width).
        k: the stabilising constant K.
        data_range: value range of floating tensors (1.0 or 255.0); uint8 tensors default to 255.

    Returns:
        (N,) float64 tensor on the inputs' device.

    Example:
        >>> import torch
        >>> from visalign.metrics import cw_ssim_batch
        >>> x = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
        >>> cw_ssim_batch(x, x).tolist()
        [1.0, 1.0]
    """
    _check_cw_args(width, k)
    _, _, data_range = _check_batch_inputs(preds, target, data_range, 1, "cw_ssim_batch")
    if preds.shape[1] not in (1, 3):
        raise ValueError(f"cw_ssim_batch: expected 1 (gray) or 3 (RGB) channels, got {preds.shape[1]}")
    # from the original tensors: uint8 keeps the integer path for PIL's exact rounding
    return _cw_ssim_update(_gray_255(target, data_range), _gray_255(preds, data_range), width, float(k))


def cw_ssim(
    pred: ImageLike, ref: ImageLike, *, width: int = 30, k: float = 0.01, size_policy: SizePolicy = "resize_pred"
) -> float:
    """Complex-wavelet SSIM, equal to pyssim 0.7.1's ``SSIM(ref).cw_ssim_value(pred, width)``.

    Definition (pyssim's; not Sampat et al.'s 2-D steerable-pyramid CW-SSIM): both images are
    converted to 8-bit gray with PIL's ``convert("L")`` and flattened row-major into one signal each;
    ``c1[s, n]``, ``c2[s, n]`` are their PyWavelets Mexican-hat CWT coefficients at scales
    ``s = 1..width``; with ``K = k``::

        CW(n) = (2 sum_s |c1||c2| + K) / (sum_s |c1|^2 + sum_s |c2|^2 + K)
              * (2 |sum_s c1 conj(c2)| + K) / (2 sum_s |c1 conj(c2)| + K)

        CW-SSIM = mean over all H*W positions n of CW(n)

    1 means identical; symmetric in its arguments for images of equal size. See the module
    docstring for the transform's exact discretisation.

    Inputs go through :func:`~visalign.metrics.prepare_image_pair` first: transparency is composited
    over white (pyssim itself drops the alpha channel, so RGBA inputs differ from pyssim on
    translucent pixels: ours is what a viewer sees) and, by default, the prediction is resized to the
    reference with Lanczos, which is also pyssim's resize.

    Args:
        pred: the generated / rendered image (PIL image or uint8 array HxW, HxWx1, HxWx3, HxWx4).
        ref: the reference image (pyssim's ``SSIM(ref)``).
        width: number of wavelet scales; pyssim's default 30.
        k: the stabilising constant K; pyssim's default 0.01.
        size_policy: ``"resize_pred"`` (default), ``"error"`` or ``"pad"``.

    Example:
        >>> import numpy as np
        >>> from visalign.metrics import cw_ssim
        >>> ref = np.tile(np.arange(64, dtype=np.uint8) * 4, (64, 1))
        >>> cw_ssim(ref, ref)
        1.0
        >>> round(cw_ssim(np.roll(ref, 2, axis=1), ref), 4)
        0.8867
    """
    _check_cw_args(width, k)
    p, r = prepare_image_pair(pred, ref, size_policy=size_policy)
    sig_p = torch.from_numpy(np.asarray(p.convert("L"), dtype=np.float64).reshape(1, -1))
    sig_r = torch.from_numpy(np.asarray(r.convert("L"), dtype=np.float64).reshape(1, -1))
    return float(_cw_ssim_update(sig_r, sig_p, width, float(k))[0])
