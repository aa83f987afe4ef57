"""Image similarity metrics held to their references, run here: scikit-image, pyssim, pytorch_msssim
and an independent numpy MS-SSIM written from Wang et al. 2003. No reference number is pasted.

Images are real photographs shipped with scikit-image, downscaled so that the whole file stays fast.
"""

from __future__ import annotations

import doctest
import importlib
import math

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter
from skimage import data as skdata
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from visalign.metrics import (
    MS_SSIM_MIN_SIZE,
    MS_SSIM_WEIGHTS,
    cw_ssim,
    cw_ssim_batch,
    ms_ssim,
    ms_ssim_batch,
    mse,
    prepare_image_pair,
    psnr,
    ssim,
    ssim_batch,
)

# pyssim 0.7.1 calls Image.getdata, deprecated in Pillow 13 (removed in 14)
pytestmark = pytest.mark.filterwarnings("ignore:Image.Image.getdata is deprecated:DeprecationWarning")

SMALL = (96, 80)  # (W, H): ssim, cw_ssim, psnr
LARGE = (208, 176)  # (W, H): ms_ssim; both even at every scale (208/16 = 13, 176/16 = 11)


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # the images are small: on a loaded 2-core machine torch's intra-op threads cost more than they gain
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _photo(name: str, size: tuple[int, int]) -> Image.Image:
    img = Image.fromarray(getattr(skdata, name)())
    return img.convert("L" if img.mode == "L" else "RGB").resize(size, Image.LANCZOS)


def _shift(img: Image.Image, dx: int, dy: int) -> Image.Image:
    white = 255 if img.mode == "L" else (255, 255, 255)
    return img.transform(img.size, Image.AFFINE, (1, 0, -dx, 0, 1, -dy), fillcolor=white)


def _noise(img: Image.Image, sigma: float, seed: int) -> Image.Image:
    a = np.asarray(img).astype(np.float64)
    a = a + np.random.default_rng(seed).normal(0, sigma, a.shape)
    return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8))


def _pairs(size: tuple[int, int]) -> dict[str, tuple[Image.Image, Image.Image]]:
    """(pred, ref) pairs: a few transforms of four photographs (three RGB, one grayscale)."""
    astro, camera, coffee, chelsea = (_photo(n, size) for n in ("astronaut", "camera", "coffee", "chelsea"))
    return {
        "astronaut-blur": (astro.filter(ImageFilter.GaussianBlur(1.5)), astro),
        "astronaut-shift": (_shift(astro, 3, 2), astro),
        "camera-noise": (_noise(camera, 12, 0), camera),
        "camera-shift": (_shift(camera, -2, 4), camera),
        "coffee-noise": (_noise(coffee, 20, 1), coffee),
        "chelsea-blur": (chelsea.filter(ImageFilter.GaussianBlur(2.5)), chelsea),
        "chelsea-vs-coffee": (coffee, chelsea),
    }


PAIRS = _pairs(SMALL)
LARGE_PAIRS = _pairs(LARGE)


def _skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    return structural_similarity(
        a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
        channel_axis=-1 if a.ndim == 3 else None,
    )


def _pyssim(ref: Image.Image, **kwargs: float):
    """pyssim 0.7.1's SSIM(ref): the cw_ssim reference (a test extra); tests that need it skip without it."""
    return pytest.importorskip("ssim", reason="pyssim==0.7.1 is the cw_ssim reference").SSIM(ref, **kwargs)


def _pyssim_cw(pred: Image.Image, ref: Image.Image, width: int = 30) -> float:
    return float(_pyssim(ref).cw_ssim_value(pred, width=width))


def _nchw(imgs: list[Image.Image]) -> torch.Tensor:
    a = np.stack([np.asarray(i) for i in imgs])
    return torch.from_numpy(a if a.ndim == 4 else a[..., None]).permute(0, 3, 1, 2).contiguous()


# -------------------------------------------------------------------------------------------------
# references


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_ssim_matches_scikit_image(name: str) -> None:
    pred, ref = PAIRS[name]
    expected = _skimage_ssim(np.asarray(pred), np.asarray(ref))
    assert abs(ssim(pred, ref) - expected) < 1e-8


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_cw_ssim_matches_pyssim(name: str) -> None:
    pred, ref = PAIRS[name]
    assert abs(cw_ssim(pred, ref) - _pyssim_cw(pred, ref)) < 1e-6


def test_cw_ssim_matches_pyssim_other_width_and_k() -> None:
    pred, ref = PAIRS["astronaut-shift"]
    assert abs(cw_ssim(pred, ref, width=7) - _pyssim_cw(pred, ref, width=7)) < 1e-6
    expected = _pyssim(ref, k=0.5).cw_ssim_value(pred)
    assert abs(cw_ssim(pred, ref, k=0.5) - expected) < 1e-6


def test_cw_ssim_resize_matches_pyssim() -> None:
    # pyssim resizes the compared image to the reference's size with Lanczos, as resize_pred does
    ref = PAIRS["coffee-noise"][1]
    pred = _photo("coffee", (120, 90)).filter(ImageFilter.GaussianBlur(1))
    assert abs(cw_ssim(pred, ref) - _pyssim_cw(pred, ref)) < 1e-6


def _ms_ssim_numpy(a: np.ndarray, b: np.ndarray) -> float:
    """Wang, Simoncelli & Bovik 2003, written independently with numpy (even sizes only).

    Per channel: at scales 1..4 the mean contrast-structure term, at scale 5 the mean SSIM, each from
    an 11x11 Gaussian window (sigma 1.5) over the positions where it fits; 2x2 block means between
    scales; product of the terms raised to the weights; mean over channels.
    """
    x = np.arange(11) - 5.0
    g = np.exp(-(x**2) / (2 * 1.5**2))
    win = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2

    def local_mean(img: np.ndarray) -> np.ndarray:
        return np.einsum("ijkl,kl->ij", np.lib.stride_tricks.sliding_window_view(img, (11, 11)), win)

    a = a.astype(np.float64).reshape(a.shape[0], a.shape[1], -1)
    b = b.astype(np.float64).reshape(b.shape[0], b.shape[1], -1)
    per_channel = []
    for c in range(a.shape[2]):
        x_img, y_img = a[..., c], b[..., c]
        value = 1.0
        for level, weight in enumerate(MS_SSIM_WEIGHTS):
            mx, my = local_mean(x_img), local_mean(y_img)
            sxx = local_mean(x_img * x_img) - mx**2
            syy = local_mean(y_img * y_img) - my**2
            sxy = local_mean(x_img * y_img) - mx * my
            cs = (2 * sxy + c2) / (sxx + syy + c2)
            if level < len(MS_SSIM_WEIGHTS) - 1:
                value *= max(cs.mean(), 0.0) ** weight
                h, w = x_img.shape
                x_img = x_img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
                y_img = y_img.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3))
            else:
                lum = (2 * mx * my + c1) / (mx**2 + my**2 + c1)
                value *= max((lum * cs).mean(), 0.0) ** weight
        per_channel.append(value)
    return float(np.mean(per_channel))


@pytest.mark.parametrize("name", ["astronaut-blur", "camera-noise", "coffee-noise", "chelsea-blur"])
def test_ms_ssim_matches_independent_numpy(name: str) -> None:
    pred, ref = LARGE_PAIRS[name]
    expected = _ms_ssim_numpy(np.asarray(pred), np.asarray(ref))
    assert 0.3 < expected < 1.0  # a pair where every scale contributes
    assert abs(ms_ssim(pred, ref) - expected) < 1e-8


@pytest.mark.parametrize("size", [LARGE, (171, 203)])  # (171, 203): odd sides, padded pooling
def test_ms_ssim_matches_pytorch_msssim(size: tuple[int, int], monkeypatch: pytest.MonkeyPatch) -> None:
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    pairs = _pairs(size)
    names = ("astronaut-shift", "camera-noise")  # pytorch_msssim in float64 is slow on CPU: two pairs
    expected = {}
    for name in names:
        x, y = (_nchw([img]).double() for img in pairs[name])
        expected[name] = pytorch_msssim.ms_ssim(x, y, data_range=255).item()
        # pytorch_msssim builds its window in float32: that alone moves the result by ~1e-6
        assert abs(ms_ssim(*pairs[name]) - expected[name]) < 1e-5, name
    # with its float32 window, the definitions agree to rounding (odd-size padding included)
    image_module = importlib.import_module("visalign.metrics.image")
    window32 = importlib.import_module("pytorch_msssim.ssim")._fspecial_gauss_1d(11, 1.5).reshape(-1)
    monkeypatch.setattr(image_module, "_gaussian_window", lambda dtype: window32.to(dtype=dtype))
    for name in names:
        assert abs(ms_ssim(*pairs[name]) - expected[name]) < 1e-12, name


@pytest.mark.parametrize("name", ["astronaut-blur", "camera-noise", "chelsea-vs-coffee"])
def test_psnr_and_mse_match_scikit_image(name: str) -> None:
    pred, ref = (np.asarray(i) for i in PAIRS[name])
    assert mse(pred, ref) == pytest.approx(mean_squared_error(ref, pred), rel=1e-12)
    assert psnr(pred, ref) == pytest.approx(peak_signal_noise_ratio(ref, pred, data_range=255), rel=1e-12)
    assert psnr(pred, ref, data_range=100) == pytest.approx(
        peak_signal_noise_ratio(ref, pred, data_range=100), rel=1e-12
    )


def test_docstring_examples_run() -> None:
    # the numbers shown in the docstrings are the references' (scikit-image, pyssim) to the digits shown
    for module in ("visalign.metrics", "visalign.metrics.image", "visalign.metrics.cw_ssim"):
        result = doctest.testmod(importlib.import_module(module), optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, module


# -------------------------------------------------------------------------------------------------
# properties


def test_identical_images() -> None:
    ref = PAIRS["astronaut-blur"][1]
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert cw_ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    big = LARGE_PAIRS["astronaut-blur"][1]
    assert ms_ssim(big, big) == pytest.approx(1.0, abs=1e-12)
    assert psnr(ref, ref) == math.inf
    assert mse(ref, ref) == 0.0
    flat = np.full((40, 40), 255, np.uint8)  # no structure at all: still 1, not nan
    assert ssim(flat, flat) == pytest.approx(1.0) and cw_ssim(flat, flat) == pytest.approx(1.0)


def test_symmetric_for_equal_sizes() -> None:
    for name in ("astronaut-shift", "camera-noise", "chelsea-vs-coffee"):
        a, b = PAIRS[name]
        assert ssim(a, b) == pytest.approx(ssim(b, a), abs=1e-12)
        assert cw_ssim(a, b) == pytest.approx(cw_ssim(b, a), abs=1e-12)
        assert psnr(a, b) == pytest.approx(psnr(b, a), abs=1e-12)
    a, b = LARGE_PAIRS["camera-noise"]
    assert ms_ssim(a, b) == pytest.approx(ms_ssim(b, a), abs=1e-12)


def test_more_damage_scores_lower() -> None:
    ref = _photo("astronaut", SMALL)
    for metric in (ssim, cw_ssim):
        scores = [metric(_noise(ref, s, 3), ref) for s in (5, 15, 40)]
        assert scores[0] > scores[1] > scores[2], metric.__name__


def test_pil_and_numpy_inputs_agree() -> None:
    for name in ("astronaut-shift", "camera-noise"):
        pred, ref = PAIRS[name]
        a, b = np.asarray(pred), np.asarray(ref)
        for metric in (ssim, cw_ssim, psnr, mse):
            assert metric(pred, ref) == metric(a, b) == metric(pred, b), metric.__name__
    pred, ref = LARGE_PAIRS["coffee-noise"]
    assert ms_ssim(pred, ref) == ms_ssim(np.asarray(pred), np.asarray(ref))
    # HxWx1 is grayscale
    g = np.asarray(PAIRS["camera-noise"][0])
    assert ssim(g[..., None], g) == ssim(g, g)


def test_grayscale_vs_rgb_compares_both_as_rgb() -> None:
    gray = PAIRS["camera-noise"][0]
    rgb = _photo("astronaut", SMALL)
    gray_as_rgb = np.asarray(gray.convert("RGB"))
    assert ssim(gray, rgb) == pytest.approx(_skimage_ssim(gray_as_rgb, np.asarray(rgb)), abs=1e-8)
    assert ssim(gray, rgb) == ssim(gray_as_rgb, rgb)
    assert cw_ssim(gray, rgb) == pytest.approx(_pyssim_cw(gray, rgb), abs=1e-6)
    p, r = prepare_image_pair(gray, rgb)
    assert p.mode == r.mode == "RGB"
    g2, g1 = prepare_image_pair(gray, gray)
    assert g2.mode == g1.mode == "L"


def test_rgba_is_composited_on_white() -> None:
    rgb = np.asarray(PAIRS["astronaut-blur"][1])
    ref = PAIRS["astronaut-blur"][0]
    alpha = np.tile(np.linspace(0, 255, rgb.shape[1]).round().astype(np.uint8), (rgb.shape[0], 1))
    rgba = np.dstack([rgb, alpha])
    # what a viewer sees: rgb * a + white * (1 - a), to rounding
    seen = rgb * (alpha[..., None] / 255.0) + 255.0 * (1 - alpha[..., None] / 255.0)
    prepared = np.asarray(prepare_image_pair(rgba, ref)[0]).astype(np.float64)
    assert np.abs(prepared - seen).max() <= 1.0
    assert ssim(rgba, ref) == pytest.approx(_skimage_ssim(np.asarray(prepared, np.uint8), np.asarray(ref)))
    assert ssim(Image.fromarray(rgba), ref) == ssim(rgba, ref)
    # fully transparent = white, fully opaque = the colours
    clear = np.dstack([rgb, np.zeros_like(alpha)])
    white = np.full_like(rgb, 255)
    assert ssim(clear, ref) == ssim(white, ref) and mse(clear, white) == 0.0
    opaque = np.dstack([rgb, np.full_like(alpha, 255)])
    assert ssim(opaque, ref) == ssim(rgb, ref) and cw_ssim(opaque, ref) == cw_ssim(rgb, ref)
    # grayscale with alpha stays grayscale
    la = Image.fromarray(np.dstack([rgb[..., 0], alpha])[..., :2], mode="LA")
    assert prepare_image_pair(la, la)[0].mode == "L"


def test_size_policy_resize_pred() -> None:
    ref = PAIRS["astronaut-blur"][1]
    pred = _photo("astronaut", (150, 125))  # a render of the same scene at another dpi
    resized = pred.resize(ref.size, Image.LANCZOS)
    for metric in (ssim, cw_ssim, psnr, mse):
        assert metric(pred, ref) == metric(resized, ref), metric.__name__
    assert ssim(pred, ref) > 0.9
    big_ref = LARGE_PAIRS["astronaut-blur"][1]
    big_pred = _photo("astronaut", (300, 260))
    assert ms_ssim(big_pred, big_ref) == ms_ssim(big_pred.resize(big_ref.size, Image.LANCZOS), big_ref)


def test_size_policy_error_and_pad() -> None:
    ref = PAIRS["camera-noise"][1]
    pred = ref.crop((0, 0, 90, 70))
    for metric in (ssim, cw_ssim, psnr, mse, ms_ssim):
        with pytest.raises(ValueError, match="sizes differ"):
            metric(pred, ref, size_policy="error")
    padded = np.full((ref.height, ref.width), 255, np.uint8)
    padded[:70, :90] = np.asarray(pred)
    assert ssim(pred, ref, size_policy="pad") == ssim(padded, ref)
    assert cw_ssim(pred, ref, size_policy="pad") == cw_ssim(padded, ref)
    # pad grows both images to the larger width and the larger height
    wide = np.zeros((50, 120), np.uint8)
    p, r = prepare_image_pair(wide, ref, size_policy="pad")
    assert p.size == r.size == (120, ref.height)
    assert np.asarray(r)[:, ref.width :].min() == 255 and np.asarray(p)[50:].min() == 255
    with pytest.raises(ValueError, match="size_policy"):
        ssim(pred, ref, size_policy="crop")


# -------------------------------------------------------------------------------------------------
# batched variants


def test_batch_variants_equal_per_image() -> None:
    names = ["astronaut-blur", "astronaut-shift", "coffee-noise", "chelsea-vs-coffee"]
    preds = _nchw([PAIRS[n][0] for n in names])
    refs = _nchw([PAIRS[n][1] for n in names])
    per_image = torch.tensor([ssim(*PAIRS[n]) for n in names], dtype=torch.float64)
    assert torch.allclose(ssim_batch(preds.double(), refs.double(), data_range=255), per_image, rtol=0, atol=1e-12)
    assert ssim_batch(preds, refs).dtype == torch.float32
    assert torch.allclose(ssim_batch(preds, refs).double(), per_image, rtol=0, atol=1e-5)
    unit = ssim_batch(preds.float() / 255, refs.float() / 255, data_range=1.0)
    assert torch.allclose(unit.double(), per_image, rtol=0, atol=1e-5)

    cw_per_image = torch.tensor([cw_ssim(*PAIRS[n]) for n in names], dtype=torch.float64)
    assert torch.allclose(cw_ssim_batch(preds, refs), cw_per_image, rtol=0, atol=1e-12)  # PIL's gray, exactly
    gray = ["camera-noise", "camera-shift"]
    gp, gr = _nchw([PAIRS[n][0] for n in gray]), _nchw([PAIRS[n][1] for n in gray])
    assert gp.shape[1] == 1
    expected = torch.tensor([cw_ssim(*PAIRS[n]) for n in gray], dtype=torch.float64)
    assert torch.allclose(cw_ssim_batch(gp, gr), expected, rtol=0, atol=1e-12)
    assert torch.allclose(ssim_batch(gp, gr).double(), torch.tensor([ssim(*PAIRS[n]) for n in gray],
                                                                     dtype=torch.float64), atol=1e-5)

    big = ["astronaut-shift", "chelsea-blur"]
    bp, br = _nchw([LARGE_PAIRS[n][0] for n in big]), _nchw([LARGE_PAIRS[n][1] for n in big])
    expected = torch.tensor([ms_ssim(*LARGE_PAIRS[n]) for n in big], dtype=torch.float64)
    assert torch.allclose(ms_ssim_batch(bp.double(), br.double(), data_range=255), expected, rtol=0, atol=1e-12)
    assert torch.allclose(ms_ssim_batch(bp, br).double(), expected, rtol=0, atol=1e-5)


def test_cuda_code_path_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA takes whole batches and torch.fft where the CPU splits batches and uses scipy.fft: run
    # that path on the CPU so that it is checked without a GPU too
    names = ["astronaut-shift", "chelsea-vs-coffee", "coffee-noise"]
    preds, refs = _nchw([PAIRS[n][0] for n in names]), _nchw([PAIRS[n][1] for n in names])
    big = ["astronaut-shift", "chelsea-blur"]
    bp, br = _nchw([LARGE_PAIRS[n][0] for n in big]), _nchw([LARGE_PAIRS[n][1] for n in big])
    expected = [ssim_batch(preds, refs), ms_ssim_batch(bp, br), cw_ssim_batch(preds, refs)]
    image_module = importlib.import_module("visalign.metrics.image")
    cw_module = importlib.import_module("visalign.metrics.cw_ssim")
    monkeypatch.setattr(image_module, "_split_batch", lambda x, units: False)
    monkeypatch.setattr(cw_module, "_split_batch", lambda x, units: False)
    monkeypatch.setattr(cw_module, "_scipy_fft", lambda x: False)
    monkeypatch.setattr(cw_module, "_CHUNK_ELEMENTS", 1 << 16)  # several chunks of scales
    cw_module._kernel_spectra.cache_clear()
    try:
        got = [ssim_batch(preds, refs), ms_ssim_batch(bp, br), cw_ssim_batch(preds, refs)]
    finally:
        cw_module._kernel_spectra.cache_clear()
    for g, e in zip(got, expected, strict=True):
        assert torch.allclose(g, e, rtol=0, atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_batch_variants_on_cuda() -> None:
    names = ["astronaut-blur", "coffee-noise"]
    preds, refs = _nchw([PAIRS[n][0] for n in names]), _nchw([PAIRS[n][1] for n in names])
    for fn in (ssim_batch, cw_ssim_batch):
        on_gpu = fn(preds.cuda(), refs.cuda())
        assert on_gpu.device.type == "cuda"
        assert torch.allclose(on_gpu.cpu().double(), fn(preds, refs).double(), rtol=0, atol=1e-5)
    big = ["astronaut-shift", "chelsea-blur"]
    bp, br = _nchw([LARGE_PAIRS[n][0] for n in big]), _nchw([LARGE_PAIRS[n][1] for n in big])
    assert torch.allclose(ms_ssim_batch(bp.cuda(), br.cuda()).cpu(), ms_ssim_batch(bp, br), rtol=0, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize(
    ("pred", "match"),
    [
        (np.zeros((32, 32), np.float64), "uint8"),
        (np.zeros((32, 32, 3), np.int32), "uint8"),
        (np.zeros((0, 32), np.uint8), "empty"),
        (np.zeros((32, 32, 2), np.uint8), "shape"),
        (np.zeros((2, 32, 32, 3), np.uint8), "shape"),
        (Image.new("I;16", (32, 32)), "8 bits"),
        (Image.new("F", (32, 32)), "8 bits"),
    ],
)
def test_bad_images_raise_value_error(pred: object, match: str) -> None:
    ref = np.zeros((32, 32), np.uint8)
    for metric in (ssim, cw_ssim, psnr, mse):
        with pytest.raises(ValueError, match=match):
            metric(pred, ref)
        with pytest.raises(ValueError, match=match):
            metric(ref, pred)


def test_bad_arguments_raise() -> None:
    img = np.zeros((32, 32), np.uint8)
    with pytest.raises(TypeError, match="batch"):
        ssim(torch.zeros(32, 32, dtype=torch.uint8), img)
    with pytest.raises(TypeError, match="PIL image or a uint8 numpy array"):
        ssim([[0]], img)
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim(np.zeros((8, 40), np.uint8), np.zeros((8, 40), np.uint8))
    with pytest.raises(ValueError, match=f"at least {MS_SSIM_MIN_SIZE}"):
        ms_ssim(np.zeros((160, 400), np.uint8), np.zeros((160, 400), np.uint8))
    with pytest.raises(ValueError, match="width"):
        cw_ssim(img, img, width=0)
    with pytest.raises(ValueError, match="k must"):
        cw_ssim(img, img, k=0)
    with pytest.raises(ValueError, match="data_range"):
        psnr(img, img, data_range=0)


def test_bad_batches_raise() -> None:
    x = torch.zeros(2, 3, 32, 32, dtype=torch.uint8)
    with pytest.raises(ValueError, match="data_range"):
        ssim_batch(x.float(), x.float())
    with pytest.raises(ValueError, match="shapes differ"):
        ssim_batch(x, x[:1])
    with pytest.raises(ValueError, match="dtypes differ"):
        ssim_batch(x, x.float())
    with pytest.raises(ValueError, match=r"\(N, C, H, W\)"):
        ssim_batch(x[0], x[0])
    with pytest.raises(ValueError, match="uint8"):
        ssim_batch(x.long(), x.long())
    with pytest.raises(ValueError, match="empty"):
        ssim_batch(x[:0], x[:0])
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_batch(x[..., :8], x[..., :8])
    with pytest.raises(ValueError, match=f"at least {MS_SSIM_MIN_SIZE}"):
        ms_ssim_batch(x, x)
    with pytest.raises(ValueError, match="channels"):
        cw_ssim_batch(x[:, :2], x[:, :2])
    with pytest.raises(TypeError, match=r"torch\.Tensor"):
        ssim_batch(np.zeros((2, 3, 32, 32), np.uint8), x)
