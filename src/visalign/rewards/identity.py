"""Face identity reward (ID-Aligner's identity consistency) with dlib's face models.

Pipeline per image, all with the real weights that PyPI ships (``dlib-bin`` +
``face_recognition_models``, found on disk without importing the latter, whose ``__init__`` needs
``pkg_resources``):

1. faces: dlib's HOG frontal face detector (``dlib.get_frontal_face_detector()``), run with
   ``upsample`` doublings of the image (1 by default, as in ``face_recognition``: finds faces down to
   about 40 px; 0 is 4x faster for large faces, 2 finds smaller ones);
2. landmarks: ``shape_predictor_5_face_landmarks`` (``landmarks=5``, the default, dlib's recommended
   alignment for the recogniser) or ``shape_predictor_68_face_landmarks`` (``landmarks=68``);
3. descriptor: ``dlib_face_recognition_resnet_model_v1``, a 128-d embedding trained so that two
   photos of the same person lie at Euclidean distance below 0.6 (99.38 % on LFW).

Choices (each can be changed):

* **reference face** = the largest detected face (bounding-box area; ties go to the higher detector
  score) in ``sample.target_image`` (``reference_image``, or the render of ``reference_code``). Its
  descriptor is cached by image content (a hash of the pixels), so a reference shared by a GRPO group
  is embedded once, even when each sample carries its own copy.
* **generated face** = ``match="best"`` (default): the detected face most similar to the reference,
  so a correct face is not shadowed by a larger bystander or a false detection; ``match="largest"``:
  the largest face, which a policy cannot game by drawing many faces. ``details["n_faces"]`` reports
  the count either way (penalise crowds in a composite if that matters).
* **score**: ``similarity="distance"`` (default: dlib's native metric) maps the Euclidean distance
  ``d`` to ``max(0, 1 - d / (2 * distance_threshold))``: 1 for identical descriptors, **0.5 exactly at
  dlib's same-person threshold** (0.6), 0 from twice the threshold on. ``similarity="cosine"`` gives
  the raw cosine of the two descriptors; dlib's descriptors are not centred, so different people
  still reach about 0.8-0.9 and the same person about 0.95-1: cosine has little dynamic range here.
  Both numbers are always in the details (``distance``, ``cosine``).
* no face in the generated image: ``no_face_score`` (default 0.0) with ``details["face"] = "none"``;
  no face in the reference: None (not applicable) with a ``reason``; no reference image: None.
  A generated image that failed to render also scores ``no_face_score`` (``details["error"]``).

Descriptors are deterministic with ``num_jitters=0`` (default); dlib's jittering averages over random
crops and makes the reward noisy.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image

from .base import Reward, RewardOutput, Sample

__all__ = ["DLIB_SAME_PERSON_DISTANCE", "Face", "IdentityReward", "face_model_dir"]

DLIB_SAME_PERSON_DISTANCE = 0.6


def face_model_dir() -> Path:
    """The ``models`` folder of the installed ``face_recognition_models`` package (found without
    importing it: its ``__init__`` imports ``pkg_resources``, gone from recent setuptools)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("IdentityReward needs the dlib face models: pip install face_recognition_models dlib-bin")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def _image_key(img: Image.Image) -> str:
    h = hashlib.blake2b(img.tobytes(), digest_size=16)
    h.update(f"{img.mode}{img.size}".encode())
    return h.hexdigest()


class Face:
    """One detected face: ``box`` = (left, top, right, bottom) in pixels, detector ``score``, 128-d
    ``descriptor``."""

    __slots__ = ("box", "descriptor", "score")

    def __init__(self, box: tuple[int, int, int, int], score: float, descriptor: np.ndarray) -> None:
        self.box = box
        self.score = score
        self.descriptor = descriptor

    @property
    def area(self) -> int:
        left, top, right, bottom = self.box
        return max(right - left, 0) * max(bottom - top, 0)


class IdentityReward(Reward):
    """Identity similarity between the faces of the generated image and the reference face.

    Args:
        similarity: ``"distance"`` (score ``max(0, 1 - d / (2 * distance_threshold))``) or
            ``"cosine"`` (raw cosine of the descriptors).
        match: ``"best"`` (the most similar generated face) or ``"largest"`` (the largest one).
        upsample: how many times the detector doubles the image first (small faces need more).
        landmarks: 5 or 68, the shape predictor used to align faces for the recogniser.
        distance_threshold: dlib's same-person distance (0.6); the distance score is 0.5 there.
        no_face_score: score when the generated image has no face (or failed to render).
        min_detection_score: detector score threshold (dlib's ``adjust_threshold``; 0 = dlib's default,
            raise it to drop weak detections such as patterns on clothes).
        num_jitters: dlib's descriptor jittering (0 = deterministic).
        model_dir: folder with the ``.dat`` files (default: the ``face_recognition_models`` package).
        cache_size: reference descriptors kept (least recently used dropped first).

    Details per sample: ``face`` (``"found"`` / ``"none"``), ``n_faces``, and for a found face
    ``distance``, ``cosine``, ``box``; or ``reason`` (not applicable) / ``error``.

    Example:
        >>> import numpy as np
        >>> from skimage.data import astronaut
        >>> reward = IdentityReward()
        >>> photo = Image.fromarray(astronaut())
        >>> out = reward([Sample(image=photo, reference_image=photo),
        ...               Sample(image=Image.new("RGB", (128, 128)), reference_image=photo)])
        >>> round(out.scores[0], 6), out.details[0]["distance"] < 1e-6
        (1.0, True)
        >>> out.scores[1], out.details[1]["face"]
        (0.0, 'none')
        >>> reward.close()
    """

    name = "identity"
    needs_render = True
    needs_reference_render = True

    def __init__(
        self,
        *,
        similarity: Literal["distance", "cosine"] = "distance",
        match: Literal["best", "largest"] = "best",
        upsample: int = 1,
        landmarks: Literal[5, 68] = 5,
        distance_threshold: float = DLIB_SAME_PERSON_DISTANCE,
        no_face_score: float = 0.0,
        min_detection_score: float = 0.0,
        num_jitters: int = 0,
        model_dir: str | Path | None = None,
        cache_size: int = 64,
    ) -> None:
        if similarity not in ("distance", "cosine"):
            raise ValueError(f"similarity must be 'distance' or 'cosine', got {similarity!r}")
        if match not in ("best", "largest"):
            raise ValueError(f"match must be 'best' or 'largest', got {match!r}")
        if landmarks not in (5, 68):
            raise ValueError(f"landmarks must be 5 or 68, got {landmarks!r}")
        if upsample < 0 or num_jitters < 0 or cache_size < 0:
            raise ValueError("upsample, num_jitters and cache_size must be >= 0")
        if distance_threshold <= 0:
            raise ValueError(f"distance_threshold must be > 0, got {distance_threshold}")
        self.similarity = similarity
        self.match = match
        self.upsample = int(upsample)
        self.landmarks = landmarks
        self.distance_threshold = float(distance_threshold)
        self.no_face_score = float(no_face_score)
        self.min_detection_score = float(min_detection_score)
        self.num_jitters = int(num_jitters)
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.cache_size = cache_size
        self._models: tuple[Any, Any, Any] | None = None
        self._reference_cache: OrderedDict[str, Face | None] = OrderedDict()

    # ------------------------------------------------------------------ models

    def _load(self) -> tuple[Any, Any, Any]:
        if self._models is None:
            import dlib

            folder = self.model_dir or face_model_dir()
            predictor = folder / f"shape_predictor_{self.landmarks}_face_landmarks.dat"
            recogniser = folder / "dlib_face_recognition_resnet_model_v1.dat"
            for f in (predictor, recogniser):
                if not f.is_file():
                    raise FileNotFoundError(f"dlib model file missing: {f}")
            self._models = (
                dlib.get_frontal_face_detector(),
                dlib.shape_predictor(str(predictor)),
                dlib.face_recognition_model_v1(str(recogniser)),
            )
        return self._models

    def close(self) -> None:
        """Drop the dlib models and the reference cache (the next call loads them again)."""
        self._models = None
        self._reference_cache.clear()

    def faces(self, image: Image.Image) -> list[Face]:
        """Every face the detector finds in ``image``, with its descriptor, largest first."""
        import dlib

        detector, predictor, recogniser = self._load()
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB"), dtype=np.uint8))
        rects, det_scores, _ = detector.run(arr, self.upsample, self.min_detection_score)
        if not rects:
            return []
        shapes = dlib.full_object_detections()
        for r in rects:
            shapes.append(predictor(arr, r))
        descriptors = recogniser.compute_face_descriptor(arr, shapes, self.num_jitters)
        found = [
            Face((r.left(), r.top(), r.right(), r.bottom()), float(s), np.asarray(d, dtype=np.float64))
            for r, s, d in zip(rects, det_scores, descriptors, strict=True)
        ]
        found.sort(key=lambda f: (f.area, f.score), reverse=True)
        return found

    def reference_face(self, image: Image.Image) -> Face | None:
        """The largest face of a reference image (None when there is none), cached by content."""
        key = _image_key(image)
        if key in self._reference_cache:
            self._reference_cache.move_to_end(key)
            return self._reference_cache[key]
        found = self.faces(image)
        face = found[0] if found else None
        if self.cache_size:
            self._reference_cache[key] = face
            while len(self._reference_cache) > self.cache_size:
                self._reference_cache.popitem(last=False)
        return face

    # ------------------------------------------------------------------ scoring

    def _similarity(self, ref: Face, face: Face) -> tuple[float, float, float]:
        d = float(np.linalg.norm(face.descriptor - ref.descriptor))
        cos = float(face.descriptor @ ref.descriptor
                    / (np.linalg.norm(face.descriptor) * np.linalg.norm(ref.descriptor)))
        score = max(0.0, 1.0 - d / (2.0 * self.distance_threshold)) if self.similarity == "distance" else cos
        return score, d, cos

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = []
        details: list[dict[str, Any]] = []
        counts = {"no_face": 0, "no_reference_face": 0}
        for s in samples:
            ref_img = s.target_image
            if ref_img is None:
                scores.append(None)
                details.append({"reason": "no reference image"})
                continue
            ref = self.reference_face(ref_img)
            if ref is None:
                counts["no_reference_face"] += 1
                scores.append(None)
                details.append({"reason": "no face in the reference image"})
                continue
            img = s.generated_image
            if img is None:
                why = s.failed_output
                if why:
                    scores.append(self.no_face_score)
                    details.append({"face": "none", "n_faces": 0, "error": why})
                else:
                    scores.append(None)
                    details.append({"reason": "no generated image"})
                continue
            found = self.faces(img)
            if not found:
                counts["no_face"] += 1
                scores.append(self.no_face_score)
                details.append({"face": "none", "n_faces": 0})
                continue
            candidates = found if self.match == "best" else found[:1]
            best = max(((self._similarity(ref, f), f) for f in candidates), key=lambda t: t[0][0])
            (score, d, cos), face = best
            scores.append(score)
            details.append({"face": "found", "n_faces": len(found), "distance": d, "cosine": cos,
                            "box": face.box})
        return RewardOutput(scores, details, metrics={k: float(v) for k, v in counts.items()})
