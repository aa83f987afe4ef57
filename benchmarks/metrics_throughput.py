"""Metric throughput: visalign's metrics against the reference implementations they reproduce.

Run from the repository root (the final numbers belong on a quiet machine):

    .venv/bin/python benchmarks/metrics_throughput.py --markdown
    .venv/bin/python benchmarks/metrics_throughput.py --metrics cw_ssim --size 128 --pairs 16 --repeat 3

Every section scores the same image pairs in one run, several ways:

- **ssim**: ``visalign.metrics.ssim`` (per image, float64) and ``ssim_batch`` (one uint8 (N, 3, H, W)
  tensor; on CUDA too when ``torch.cuda.is_available()``) against scikit-image's
  ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
  data_range=255, channel_axis=-1)`` per image.
- **cw_ssim**: ``visalign.metrics.cw_ssim`` per image and ``cw_ssim_batch`` (CPU, CUDA) against
  pyssim 0.7.1's ``SSIM(ref).cw_ssim_value(pred)`` per image.

Per-image methods take PIL images / uint8 arrays as users hold them; batched methods take a tensor
already on the device (building it is not timed; CUDA timings synchronise before stopping the clock).
Each row also prints the largest absolute difference from the reference's scores on these pairs.
Timings are the best of ``--repeat`` runs, methods taking turns in each run. scikit-image and pyssim
run on one thread, so torch is limited to ``--threads`` (default 1) for a like-for-like comparison.
A reference that is not installed prints ``skipped: <reason>``.

Inputs: ``--pairs`` pairs of ``--size`` x ``--size`` RGB images made from ``skimage.data`` photographs
(astronaut, coffee, chelsea, rocket, camera) with fixed transforms: Gaussian blur, a shift of a few
pixels, Gaussian noise (fixed seed), JPEG at quality 30, a different photograph.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageFilter

from visalign.metrics import cw_ssim, cw_ssim_batch, ssim, ssim_batch


class Skip(Exception):
    """A section cannot run here (reference not installed); the message says why."""


@dataclass
class Row:
    """One way of computing one metric over all pairs; rates are pairs ("images") per second."""

    metric: str
    method: str  # "per image" or "batched"
    device: str
    ours_s: float
    reference: str
    reference_s: float
    items: int
    max_abs_diff: float

    @property
    def ours_rate(self) -> float:
        return self.items / self.ours_s

    @property
    def reference_rate(self) -> float:
        return self.items / self.reference_s


# --------------------------------------------------------------------------------------------------
# inputs


def make_pairs(n: int, size: int) -> list[tuple[Image.Image, Image.Image]]:
    """n (pred, ref) pairs of size x size RGB images; deterministic."""
    from skimage import data

    photos = [Image.fromarray(getattr(data, name)()).convert("RGB").resize((size, size), Image.LANCZOS)
              for name in ("astronaut", "coffee", "chelsea", "rocket", "camera")]
    rng = np.random.default_rng(0)

    def jpeg(img: Image.Image) -> Image.Image:
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=30)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB")

    def noise(img: Image.Image) -> Image.Image:
        a = np.asarray(img).astype(np.float64) + rng.normal(0, 15, (size, size, 3))
        return Image.fromarray(np.clip(a.round(), 0, 255).astype(np.uint8))

    transforms: list[Callable[[Image.Image, int], Image.Image]] = [
        lambda img, i: img.filter(ImageFilter.GaussianBlur(1.5)),
        lambda img, i: img.transform(img.size, Image.AFFINE, (1, 0, -3, 0, 1, -2), fillcolor=(255, 255, 255)),
        lambda img, i: noise(img),
        lambda img, i: jpeg(img),
        lambda img, i: photos[(i + 1) % len(photos)],
    ]
    pairs = []
    for i in range(n):
        ref = photos[i % len(photos)]
        pairs.append((transforms[(i // len(photos) + i) % len(transforms)](ref, i), ref))
    return pairs


def as_batch(imgs: Sequence[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i) for i in imgs])).permute(0, 3, 1, 2).contiguous()


# --------------------------------------------------------------------------------------------------
# timing


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_times(methods: dict[str, Callable[[], object]], repeat: int, devices: dict[str, str]) -> dict[str, float]:
    """Best wall-clock seconds of each method; one untimed warm-up call each, then turns per run."""
    for name, fn in methods.items():
        fn()
        _sync(devices.get(name, "cpu"))
    best = dict.fromkeys(methods, float("inf"))
    for _ in range(repeat):
        for name, fn in methods.items():
            device = devices.get(name, "cpu")
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            best[name] = min(best[name], time.perf_counter() - start)
    return best


def _bench(
    metric: str,
    reference: str,
    pairs: list[tuple[Image.Image, Image.Image]],
    inputs: list[tuple[Any, Any]],
    repeat: int,
    reference_fn: Callable[[Any, Any], float],
    per_image_fn: Callable[[Any, Any], float],
    batch_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> list[Row]:
    """Rows for one metric: per image on CPU, batched on CPU, batched on CUDA when there is one.

    ``inputs`` are the pairs as the reference and the per-image function both receive them.
    """
    preds, refs = as_batch([p for p, _ in pairs]), as_batch([r for _, r in pairs])
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    on = {d: (preds.to(d), refs.to(d)) for d in devices}
    results: dict[str, list[float]] = {}

    def keep(name: str, values: Callable[[], list[float]]) -> Callable[[], None]:
        def run() -> None:
            results[name] = values()

        return run

    methods = {
        "reference": keep("reference", lambda: [reference_fn(p, r) for p, r in inputs]),
        "per image": keep("per image", lambda: [per_image_fn(p, r) for p, r in inputs]),
    }
    for d in devices:
        methods[f"batched {d}"] = keep(f"batched {d}", lambda d=d: batch_fn(*on[d]).double().cpu().tolist())
    seconds = best_times(methods, repeat, {f"batched {d}": d for d in devices})
    expected = np.array(results["reference"])
    rows = []
    for name in methods:
        if name == "reference":
            continue
        method, device = ("per image", "cpu") if name == "per image" else ("batched", name.split()[1])
        diff = float(np.abs(np.array(results[name]) - expected).max())
        rows.append(Row(metric, method, device, seconds[name], reference, seconds["reference"], len(pairs), diff))
    return rows


def bench_ssim(args: argparse.Namespace) -> list[Row]:
    from skimage.metrics import structural_similarity

    def reference(pred: np.ndarray, ref: np.ndarray) -> float:
        return structural_similarity(pred, ref, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                     data_range=255, channel_axis=-1)

    pairs = make_pairs(args.pairs, args.size)
    arrays = [(np.asarray(p), np.asarray(r)) for p, r in pairs]  # both get the same uint8 arrays
    return _bench("ssim", "scikit-image structural_similarity", pairs, arrays, args.repeat, reference, ssim,
                  ssim_batch)


def bench_cw_ssim(args: argparse.Namespace) -> list[Row]:
    try:
        from ssim import SSIM
    except ImportError as exc:
        raise Skip(f"pyssim is not installed ({exc}); pip install pyssim==0.7.1") from None

    def reference(pred: Image.Image, ref: Image.Image) -> float:
        return float(SSIM(ref).cw_ssim_value(pred))

    pairs = make_pairs(args.pairs, args.size)
    return _bench("cw_ssim", "pyssim 0.7.1 SSIM.cw_ssim_value", pairs, pairs, args.repeat, reference, cw_ssim,
                  cw_ssim_batch)


def _table(rows: int, cols: int, seed: int) -> str:
    rng = np.random.default_rng(seed)
    cells = lambda: "".join(f"<td>{rng.integers(0, 1000) / 10:.1f}</td>" for _ in range(cols))  # noqa: E731
    head = "<thead><tr>" + "".join(f"<td>col {c}</td>" for c in range(cols)) + "</tr></thead>"
    return f"<table>{head}<tbody>" + "".join(f"<tr>{cells()}</tr>" for _ in range(rows)) + "</tbody></table>"


def bench_teds(args: argparse.Namespace) -> list[Row]:
    """TEDS against the PubTabNet reference code pattern (lxml + the pure-Python ``apted`` package), as
    transcribed in ``tests/test_metrics_teds.py``, on 5x5, 20x10 and 50x10 tables with changed cells."""
    from visalign.metrics import teds

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
    try:
        from test_metrics_teds import reference_teds
    except ImportError as exc:
        raise Skip(f"the reference needs apted (and lxml): {exc}") from None
    rows = []
    for r, c in ((5, 5), (20, 10), (50, 10)):
        if r * c > 200 and args.pairs < 3:
            continue
        pairs = [(_table(r, c, seed=i), _table(r, c, seed=i + 1000)) for i in range(2)]
        out: dict[str, list[float]] = {}
        methods = {"reference": lambda p=pairs, out=out: out.__setitem__("reference", [reference_teds(a, b) for a, b in p]),
                   "ours": lambda p=pairs, out=out: out.__setitem__("ours", [teds(a, b) for a, b in p])}
        reps = 1 if r * c > 100 else args.repeat
        seconds = best_times(methods, reps, {})
        diff = float(np.abs(np.array(out["ours"]) - np.array(out["reference"])).max())
        rows.append(Row(f"teds {r}x{c}", "per pair", "cpu", seconds["ours"], "PubTabNet TEDS (lxml + apted)",
                        seconds["reference"], len(pairs), diff))
    return rows


# name -> function(args) -> rows; another metric adds its entry here
SECTIONS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "ssim": bench_ssim,
    "cw_ssim": bench_cw_ssim,
    "teds": bench_teds,
}


# --------------------------------------------------------------------------------------------------
# output


def print_rows(rows: Sequence[Row]) -> None:
    for row in rows:
        print(f"  {row.metric:<12} {row.method:<9} {row.device:<4} visalign {row.ours_rate:9.1f} items/s   "
              f"reference {row.reference_rate:8.1f} items/s   ratio {row.ours_rate / row.reference_rate:7.1f}x   "
              f"max |diff| {row.max_abs_diff:.1e}")


def markdown(rows: Sequence[Row], skipped: dict[str, str]) -> str:
    lines = ["| metric | method | device | visalign images/s | reference | reference images/s | ratio | max abs diff |",
             "| --- | --- | --- | ---: | --- | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r.metric} | {r.method} | {r.device} | {r.ours_rate:.1f} | {r.reference} | "
                     f"{r.reference_rate:.1f} | {r.ours_rate / r.reference_rate:.1f}x | {r.max_abs_diff:.1e} |")
    for name, why in skipped.items():
        lines.append(f"| {name} | skipped: {why} | | | | | | |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metrics", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--pairs", type=int, default=10, help="image pairs per metric (default 10)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; the best is kept (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1, as the references)")
    parser.add_argument("--markdown", action="store_true", help="also print a markdown table for the README")
    args = parser.parse_args(argv)
    names = [m.strip() for m in args.metrics.split(",") if m.strip()]
    if unknown := sorted(set(names) - set(SECTIONS)):
        parser.error(f"unknown metrics {unknown}; choose from {','.join(SECTIONS)}")
    if args.size < 11 or args.pairs < 1 or args.repeat < 1 or args.threads < 1:
        parser.error("--size must be >= 11 and --pairs, --repeat, --threads >= 1")
    torch.set_num_threads(args.threads)

    cuda = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA"
    print(f"python {sys.version.split()[0]}, torch {torch.__version__} ({args.threads} CPU thread(s), {cuda}), "
          f"{os.cpu_count()} CPUs, load average {', '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"{args.pairs} pairs of {args.size}x{args.size} RGB images, best of {args.repeat}")
    rows: list[Row] = []
    skipped: dict[str, str] = {}
    for name in names:
        try:
            section = SECTIONS[name](args)
        except Skip as exc:
            skipped[name] = str(exc)
            print(f"{name}: skipped: {exc}")
            continue
        except Exception as exc:
            traceback.print_exc()
            skipped[name] = f"benchmark error ({type(exc).__name__}: {exc})"
            print(f"{name}: skipped: {skipped[name]}")
            continue
        print(f"{name} vs {section[0].reference}:")
        print_rows(section)
        rows.extend(section)
    if args.markdown:
        print()
        print(f"Metric throughput, {args.pairs} pairs of {args.size}x{args.size} RGB images, best of {args.repeat}, "
              f"{args.threads} CPU thread(s) (images per second; ratio = visalign / reference):")
        print()
        print(markdown(rows, skipped))
    return 1 if skipped else 0


if __name__ == "__main__":
    sys.exit(main())
