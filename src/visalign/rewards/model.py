"""A trained reward model as a reward: ``get_reward("model", path=...)``.

Loads what :class:`~visalign.models.reward_model.RewardModel.save_pretrained` wrote (``visalign
train reward`` writes it to ``OUTPUT_DIR/model``) and scores batches of samples: the generated image
(``Sample.image``, or the render of ``Sample.code``) and, by the model's condition, the reference
image (``Sample.reference_image`` or the render of ``reference_code``) or the prompt. Scores are the
model's Bradley-Terry logits (``scale="sigmoid"``: ``sigmoid(logit)``). It runs on the GPU when
there is one.

:meth:`ModelReward.differentiable` is the same function on image tensors, with gradients to the input
(for ReFL / DRaFT): ``(B, 3, H, W)`` floats in ``[0, 1]`` -> ``(B,)`` scores.

Example:
    >>> reward = get_reward("model", path="out/reward/model")  # doctest: +SKIP
    >>> reward([Sample(image=img, reference_image=ref)]).scores  # doctest: +SKIP
    [2.31]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch

from ..models.reward_model import RewardModel
from .base import Reward, RewardOutput, Sample

__all__ = ["ModelReward"]


class ModelReward(Reward):
    """Scores of a trained :class:`~visalign.models.reward_model.RewardModel`.

    Args:
        path: the saved model's directory.
        model: an already-built ``RewardModel`` instead of ``path``.
        device: where to run (default ``cuda`` when available, else ``cpu``).
        batch_size: images per forward pass.
        scale: ``"logit"`` (the raw score) or ``"sigmoid"``.
        failed_score: the score of a sample whose code failed to render.

    Details per sample: ``logit``; or ``reason`` (not applicable: no image, no reference, no prompt) /
    ``error`` (render failed).
    """

    name = "model"
    needs_render = True

    def __init__(self, path: str | os.PathLike[str] | None = None, *, model: Any = None,
                 device: str | torch.device | None = None, batch_size: int = 32, scale: str = "logit",
                 failed_score: float = -10.0) -> None:
        if (path is None) == (model is None):
            raise ValueError("give exactly one of path= (a saved reward model) or model=")
        if scale not in ("logit", "sigmoid"):
            raise ValueError(f"scale must be 'logit' or 'sigmoid', got {scale!r}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.device = torch.device(device) if device is not None else torch.device(
            "cuda" if torch.cuda.is_available() else "cpu")
        self.model = RewardModel.from_pretrained(path) if model is None else model
        self.model.to(self.device).eval()
        for p in self.model.parameters():  # a reward is a fixed function: gradients go to the input only
            p.requires_grad_(False)
        self.path = os.fspath(path) if path is not None else None
        self.batch_size = batch_size
        self.scale = scale
        self.failed_score = float(failed_score)
        self.condition = self.model.condition
        self.needs_reference_render = self.condition == "reference"

    def _out(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.scale == "sigmoid" else logits

    def differentiable(self, images: torch.Tensor, references: torch.Tensor | Sequence[Any] | None = None,
                       prompts: Sequence[str] | None = None) -> torch.Tensor:
        """Scores ``(B,)`` of image tensors ``(B, 3, H, W)`` in ``[0, 1]``, differentiable with respect
        to ``images`` (the model's weights are frozen). ``references``: a tensor like ``images`` or PIL
        images (condition ``reference``); ``prompts``: strings (condition ``prompt``)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got {tuple(images.shape)}")
        x = images.to(self.device)
        refs = None
        if self.condition == "reference":
            if references is None:
                raise ValueError("this reward model compares with a reference: pass references=")
            refs = self.model.prepare(list(references) if not isinstance(references, torch.Tensor) else
                                      list(references.to(self.device)))
        return self._out(self.model(x, refs, prompts))

    def score(self, samples: list[Sample]) -> RewardOutput:
        scores: list[float | None] = [None] * len(samples)
        details: list[dict[str, Any]] = [{} for _ in samples]
        todo: list[int] = []
        for i, s in enumerate(samples):
            if self.condition == "reference" and s.target_image is None:
                details[i] = {"reason": "no reference image"}
                continue
            if self.condition == "prompt" and not (s.prompt or "").strip():
                details[i] = {"reason": "no prompt"}
                continue
            if s.generated_image is None:
                why = s.failed_output
                if why:
                    scores[i] = self.failed_score
                    details[i] = {"error": why}
                else:
                    details[i] = {"reason": "no generated image"}
                continue
            todo.append(i)
        if todo:
            logits = self.model.score([samples[i].generated_image for i in todo],
                                      [samples[i].target_image for i in todo] if self.condition == "reference"
                                      else None,
                                      [samples[i].prompt or "" for i in todo], batch_size=self.batch_size)
            for i, v in zip(todo, logits, strict=True):
                scores[i] = float(self._out(torch.tensor(v)))
                details[i] = {"logit": v}
        n_failed = sum(1 for d in details if "error" in d)
        return RewardOutput(scores, details, metrics={"scored": float(len(todo)), "render_failed": float(n_failed)})

    def close(self) -> None:
        if self.device.type == "cuda":
            self.model.to("cpu")
            torch.cuda.empty_cache()
