"""Discriminative reward models: a backbone and a scalar head, trained with the Bradley-Terry loss.

A :class:`RewardModel` maps an image (and, by its ``condition``, a reference image or a text prompt)
to a scalar. Two backbones:

* ``open_clip``: an open_clip image tower (and its text tower for ``condition="prompt"``); an
  architecture name with a pretrained tag or local checkpoint, a ``local-dir:`` folder, or an inline
  ``clip_config`` (the model config open_clip reads, built with random weights: what tests and the
  demo use). The head reads ``[f]`` (``condition="none"``), or ``[f, f*g, (f-g)^2]`` with ``g`` the
  reference image's (``"reference"``) or the prompt's (``"prompt"``) embedding (L2-normalised), and
  with ``difference=True`` also the features of the difference image ``0.5 + (x - reference) / 2``
  (a siamese model that also looks at what changed, pixel by pixel).
* ``vlm``: a VLM of any family the GRPO trainer supports (``AutoModelForImageTextToText``: Qwen2-VL,
  Qwen2.5-VL, Qwen3-VL, Qwen3.5, Idefics3, SmolVLM, Gemma 3, LLaVA, LLaVA-OneVision, InternVL; the
  tiny builders of :mod:`visalign.models.tiny_vlm` for tests). The chat holds the reference image
  (``"reference"``), the image and the prompt, encoded by the family's own processor and chat template
  as the GRPO trainer encodes its prompts (:func:`visalign.models.vlm_inputs.encode_chats`); the head
  reads the last token's final hidden state (last-token pooling, left padding).

Every image goes through one torch path (:meth:`RewardModel.prepare`: to ``[0, 1]`` floats, resized
to the backbone's square input with antialiased bilinear interpolation; then open_clip's
normalisation, or the VLM processor run on the tensor, which keeps the autograd graph), so scoring a
PIL image and differentiating with respect to an image tensor (ReFL) see the same function, for both
backbones and every VLM family. Images are resized to a square, not centre-cropped: a crop would cut
a page's or a chart's content.

A LoRA model whose base can be loaded again (a VLM path or hub id, an open_clip checkpoint) saves
only its adapters, the head and a pointer to the base (``save_adapter_only``); a full fine-tune saves
everything.

Training (:class:`RewardModelTrainer`, ``visalign train reward CONFIG --mode bt``) minimises
:func:`bradley_terry_loss` over preference pairs (:func:`visalign.data.pairs.load_pairs`), LoRA or
full, with ``accelerate``; it writes ``metrics.jsonl``, ``curves.png``, checkpoints that resume
exactly, and an evaluation (:func:`evaluate_pairs`: pairwise accuracy with a bootstrap interval, by
perturbation kind, and a calibration plot). The trained model loads as a reward with
``get_reward("model", path=...)``.

Example:
    >>> import torch
    >>> bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item()  # -log sigmoid(2)
    0.12692801654338837
"""

from __future__ import annotations

import itertools
import json
import math
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from ..models.reward_model import (  # noqa: F401 (the model lives below the rewards; re-exported)
    BACKBONES,
    CLIP_MEAN,
    CLIP_STD,
    CONDITIONS,
    CONFIG_NAME,
    HEAD_NAME,
    ClipBackbone,
    RewardModel,
    VlmBackbone,
    image_to_tensor,
)
from .config import load_config, option, save_config, shared_option
from .runtime import (
    MetricsLog,
    TimeBudget,
    make_accelerator,
    plot_curves,
    prepare_output_dir,
    progress_bar,
    resolve_checkpoint,
)

__all__ = [
    "RewardModel",
    "RewardModelConfig",
    "RewardModelTrainer",
    "bradley_terry_loss",
    "calibration_bins",
    "evaluate_pairs",
    "image_to_tensor",
    "rank_ladders",
    "train_reward_from_config",
]



# ------------------------------------------------------------------------------------------- the loss

def bradley_terry_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, margin: torch.Tensor | float | None = None,
                       reduction: str = "mean") -> torch.Tensor:
    """Bradley-Terry loss ``-log sigmoid(r_chosen - r_rejected - margin)``.

    ``margin`` (a tensor of the label's margins, a float, or None = 0) asks the chosen score to lead
    by at least that much before the loss flattens (Llama 2's margin loss). ``reduction``: ``"mean"``,
    ``"sum"`` or ``"none"``. Computed with ``logsigmoid`` (no overflow for large differences).

    Example:
        >>> r_c, r_r = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 0.0])
        >>> [round(v, 4) for v in bradley_terry_loss(r_c, r_r, reduction="none").tolist()]  # log(1 + e^-1), log 2
        [0.3133, 0.6931]
        >>> round(bradley_terry_loss(r_c, r_r, margin=torch.tensor([1.0, 0.0]), reduction="sum").item(), 4)  # 2 log 2
        1.3863
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(f"r_chosen {tuple(r_chosen.shape)} and r_rejected {tuple(r_rejected.shape)} differ")
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - (margin.to(diff) if isinstance(margin, torch.Tensor) else float(margin))
    loss = -F.logsigmoid(diff)
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


# ------------------------------------------------------------------------------------------- evaluation

def calibration_bins(p: Sequence[float], y: Sequence[float], bins: int = 10) -> list[dict[str, float]]:
    """Reliability table: for each of ``bins`` equal-width bins of predicted probability ``p``, the
    count, mean prediction and observed frequency of ``y``; empty bins are left out.

    Example:
        >>> calibration_bins([0.1, 0.15, 0.9], [0, 1, 1], bins=2)
        [{'low': 0.0, 'high': 0.5, 'n': 2, 'predicted': 0.125, 'observed': 0.5}, {'low': 0.5, 'high': 1.0, 'n': 1, 'predicted': 0.9, 'observed': 1.0}]
    """
    out = []
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        idx = [i for i, v in enumerate(p) if lo <= v < hi or (b == bins - 1 and v == 1.0)]
        if idx:
            out.append({"low": round(lo, 4), "high": round(hi, 4), "n": len(idx),
                        "predicted": round(sum(p[i] for i in idx) / len(idx), 6),
                        "observed": round(sum(y[i] for i in idx) / len(idx), 6)})
    return out


def _score_rows(model: RewardModel, rows: Sequence[Mapping[str, Any]], batch_size: int) -> tuple[list[float], list[float]]:
    chosen = model.score([r["chosen"] for r in rows],
                         [r["reference"] for r in rows] if model.condition == "reference" else None,
                         [r.get("prompt") or "" for r in rows], batch_size=batch_size)
    rejected = model.score([r["rejected"] for r in rows],
                           [r["reference"] for r in rows] if model.condition == "reference" else None,
                           [r.get("prompt") or "" for r in rows], batch_size=batch_size)
    return chosen, rejected


def evaluate_pairs(model: RewardModel, rows: Sequence[Mapping[str, Any]], *, batch_size: int = 32,
                   resamples: int = 2000, seed: int = 0, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Pairwise accuracy (chosen scored above rejected; a tie counts 1/2) with a 95 % percentile
    bootstrap interval, overall, by perturbation kind and by pair type (``vs_reference``: the chosen
    side is the reference itself; ``between_perturbations``), and calibration of ``P(chosen) =
    sigmoid(r_chosen - r_rejected)``: each pair is shown in a seeded random order, and the predicted
    probability that the first image is preferred is binned against how often it was
    (:func:`calibration_bins`, expected calibration error ``ece``). With ``out_dir``, writes
    ``eval.json`` and ``calibration.png`` there."""
    from ..report.eval_report import bootstrap_ci

    rows = list(rows)
    r_c, r_r = _score_rows(model, rows, batch_size)
    correct = [1.0 if c > r else 0.5 if c == r else 0.0 for c, r in zip(r_c, r_r, strict=True)]

    def summary(idx: Sequence[int]) -> dict[str, Any]:
        mean, lo, hi = bootstrap_ci([correct[i] for i in idx], n_resamples=resamples, seed=seed)
        return {"accuracy": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)], "n": len(idx)}

    result = {"pairs": len(rows), **summary(range(len(rows))), "by_perturbation": {}, "by_pair_type": {}}
    kinds = sorted({str(r.get("perturbation") or "unknown") for r in rows})
    for kind in kinds:
        result["by_perturbation"][kind] = summary([i for i, r in enumerate(rows)
                                                   if str(r.get("perturbation") or "unknown") == kind])
    if any("chosen_severity" in r for r in rows):
        vs_ref = [i for i, r in enumerate(rows) if r.get("chosen_severity") == 0]
        between = [i for i, r in enumerate(rows) if r.get("chosen_severity", 0) > 0]
        for name, idx in (("vs_reference", vs_ref), ("between_perturbations", between)):
            if idx:
                result["by_pair_type"][name] = summary(idx)
    rng = random.Random(seed)
    p_first, y_first = [], []
    for c, r in zip(r_c, r_r, strict=True):
        if rng.random() < 0.5:
            p_first.append(1.0 / (1.0 + math.exp(-(c - r))))
            y_first.append(1.0)
        else:
            p_first.append(1.0 / (1.0 + math.exp(-(r - c))))
            y_first.append(0.0)
    bins = calibration_bins(p_first, y_first)
    result["calibration"] = bins
    result["ece"] = round(sum(b["n"] * abs(b["predicted"] - b["observed"]) for b in bins) / max(1, len(rows)), 4)
    result["mean_score_gap"] = round(sum(c - r for c, r in zip(r_c, r_r, strict=True)) / max(1, len(rows)), 4)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(result, indent=1))
        plot_calibration(bins, out / "calibration.png", title=f"accuracy {result['accuracy']:.3f}, "
                                                                f"ECE {result['ece']:.3f}")
    return result


def plot_calibration(bins: Sequence[Mapping[str, float]], path: str | Path, title: str = "") -> Path:
    """Reliability diagram: predicted P(first preferred) against the observed frequency, per bin."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    ax.plot([0, 1], [0, 1], ls="--", color="gray", lw=1, label="perfect")
    ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label="model")
    for b in bins:
        ax.annotate(str(int(b["n"])), (b["predicted"], b["observed"]), fontsize=7, xytext=(3, -9),
                    textcoords="offset points")
    ax.set_xlabel("predicted P(first preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def rank_ladders(model: RewardModel, ladders: Sequence[Mapping[str, Any]], batch_size: int = 32) -> dict[str, Any]:
    """How well the scores order graded perturbations: for each ladder (``images`` at severities
    0..K of one perturbation, with ``reference`` / ``prompt``; see
    :func:`visalign.data.pairs.perturbation_ladders`), whether the scores strictly decrease with the
    severity, and Kendall's tau between score and ``-severity``; mean score per severity; by kind."""
    from scipy.stats import kendalltau

    flat, refs, prompts, where = [], [], [], []
    for i, lad in enumerate(ladders):
        for sev, im in enumerate(lad["images"]):
            flat.append(im)
            refs.append(lad.get("reference"))
            prompts.append(lad.get("prompt") or "")
            where.append((i, sev))
    scores = model.score(flat, refs if model.condition == "reference" else None, prompts, batch_size=batch_size)
    per: dict[int, list[float]] = {}
    for (i, _), s in zip(where, scores, strict=True):
        per.setdefault(i, []).append(s)
    ordered, taus = [], []
    by_kind: dict[str, list[float]] = {}
    for i, s in per.items():
        ok = all(a > b for a, b in itertools.pairwise(s))
        tau = float(kendalltau(s, [-k for k in range(len(s))]).statistic)
        ordered.append(float(ok))
        taus.append(tau)
        by_kind.setdefault(str(ladders[i].get("perturbation")), []).append(float(ok))
    k = max((len(s) for s in per.values()), default=0)
    means = [round(sum(s[j] for s in per.values()) / len(per), 4) for j in range(k)] if per else []
    return {"ladders": len(per), "fully_ordered": round(sum(ordered) / max(1, len(ordered)), 4),
            "kendall_tau": round(sum(taus) / max(1, len(taus)), 4), "mean_score_by_severity": means,
            "fully_ordered_by_perturbation": {k: round(sum(v) / len(v), 4) for k, v in sorted(by_kind.items())}}


# ------------------------------------------------------------------------------------------- config

@dataclass
class RewardModelConfig:
    """Options of :class:`RewardModelTrainer` (``visalign train reward CONFIG --mode bt``)."""

    RENAMED_OPTIONS: ClassVar[tuple[str, ...]] = ("use_lora",)  # config.VOCABULARY

    mode: str = option("bt", "'bt': Bradley-Terry reward model (a scalar head); 'judge': a generative VLM judge "
                             "trained with GRPO (visalign.trainers.judge.JudgeGRPOConfig)")
    backbone: str = option("open_clip", "'open_clip' (image tower + head) or 'vlm' (any VLM family the GRPO "
                                        "trainer supports, last token)")
    model: str | None = option(None, "open_clip: an architecture name or 'local-dir:PATH'; vlm: a model path "
                                     "or hub id (AutoModelForImageTextToText)")
    pretrained: str | None = option(None, "open_clip pretrained tag (downloads) or local checkpoint; None with "
                                          "clip_config = random weights")
    clip_config: dict | None = option(None, "inline open_clip model config (embed_dim, vision_cfg, text_cfg): "
                                            "a new model with random weights")
    condition: str = option("auto", "what the score sees besides the image: 'reference' (the target image), "
                                    "'prompt' (its text), 'none'; 'auto': 'reference' when the rows have one")
    image_size: int | None = option(None, "input side in px (Qwen-VL: a multiple of patch * merge); None: the "
                                          "backbone's (a VLM: the side its processor pins, else 448)")
    head_hidden: int = option(256, "hidden width of the scalar head (LayerNorm, Linear, GELU, Linear)")
    difference: bool = option(False, "open_clip + reference: also encode the difference image (image - reference) "
                                     "and give its features to the head (pixel-level changes: values, positions)")
    train_data: str | list[str] | None = option(None, "preference pairs: .jsonl / .parquet / save_to_disk "
                                                      "directory (or a list); see visalign.data.load_pairs")
    eval_data: str | None = option(None, "held-out pairs for the evaluation (same formats)")
    limit: int | None = option(None, "read at most this many training pairs")
    eval_limit: int | None = option(None, "read at most this many held-out pairs")
    use_margin: bool = option(False, "subtract the label's margin inside the sigmoid (Llama 2 margin loss)",
                              source="Touvron et al. 2023")
    margin_scale: float = option(1.0, "multiplier of the label's margin (in logits) when use_margin")
    epochs: float = option(1.0, "passes over the pairs (ignored when max_steps > 0)")
    max_steps: int = option(0, "optimizer steps; 0 = derive from epochs")
    max_minutes: float | None = shared_option("max_minutes")
    batch_size: int = option(16, "pairs per micro-batch per process")
    gradient_accumulation_steps: int = option(1, "micro-batches per optimizer step")
    learning_rate: float = option(1e-4, "AdamW learning rate of the backbone (or its LoRA adapters)")
    head_learning_rate: float | None = option(None, "AdamW learning rate of the head (None: learning_rate)")
    lr_scheduler: str = option("cosine", "'cosine' (to 0) or 'constant', both after a linear warmup")
    warmup_steps: int = option(0, "linear warmup steps")
    weight_decay: float = shared_option("weight_decay")
    max_grad_norm: float | None = shared_option("max_grad_norm")
    freeze_backbone: bool = option(False, "train the head only (a linear-probe-style reward model)")
    lora: bool = shared_option("lora")
    lora_r: int = shared_option("lora_r")
    lora_alpha: int = shared_option("lora_alpha")
    lora_dropout: float = shared_option("lora_dropout")
    lora_target_modules: tuple[str, ...] | None = option(None, "LoRA targets; None: c_fc, c_proj (open_clip) or "
                                                               "q/k/v/o_proj (VLM)")
    save_adapter_only: bool | None = option(None, "LoRA: save the adapters, the head and a pointer to the base "
                                                  "(`model`) instead of merged weights; None: when the base can "
                                                  "be loaded again (a path, hub id or pretrained checkpoint, "
                                                  "not a random clip_config); False: merge and save everything")
    seed: int = option(0, "seed of the head, a random backbone, the shuffling")
    output_dir: str = option("out/reward", "model, checkpoints, metrics.jsonl, curves.png, eval/")
    save_every: int = shared_option("save_every")
    resume_from: str | None = shared_option("resume_from")
    overwrite_output_dir: bool = shared_option("overwrite_output_dir")
    log_every: int = option(10, "log the mean loss and accuracy every this many steps")
    eval_every: int = option(0, "held-out accuracy every this many steps (0: only at the end)")
    eval_batch_size: int = option(64, "images per forward pass in evaluation")
    bootstrap_resamples: int = option(2000, "bootstrap resamples of the accuracy interval")
    mixed_precision: str = shared_option("mixed_precision")
    num_threads: int | None = shared_option("num_threads")
    progress: bool = shared_option("progress")


# ------------------------------------------------------------------------------------------- trainer

def _load_pair_sources(sources: str | Sequence[str] | None, limit: int | None) -> list[dict[str, Any]]:
    from ..data.pairs import load_pairs

    if sources is None:
        return []
    paths = [sources] if isinstance(sources, (str, Path)) else list(sources)
    rows: list[dict[str, Any]] = []
    for p in paths:
        rows += load_pairs(p, limit=None if limit is None else max(0, limit - len(rows)))
    return rows


class RewardModelTrainer:
    """Bradley-Terry training of a :class:`RewardModel` on preference pairs.

    Args:
        config: the options (:class:`RewardModelConfig`).
        model: a reward model to train instead of building one from the config.
        train_rows / eval_rows: pairs in memory (:func:`~visalign.data.pairs.load_pairs` rows) instead of
            ``config.train_data`` / ``eval_data``.

    One step: a micro-batch of pairs -> one backbone pass over chosen + rejected (+ references) ->
    :func:`bradley_terry_loss` -> backward -> clip -> AdamW -> scheduler. Batches follow a seeded
    permutation per epoch, so a resumed run sees the same batches as an uninterrupted one.
    """

    def __init__(self, config: RewardModelConfig, model: RewardModel | None = None,
                 train_rows: Sequence[Mapping[str, Any]] | None = None,
                 eval_rows: Sequence[Mapping[str, Any]] | None = None) -> None:
        from accelerate.utils import set_seed

        if config.mode != "bt":
            raise ValueError(f"mode {config.mode!r} is not built yet; this trainer does mode 'bt' (Bradley-Terry)")
        if config.lr_scheduler not in ("cosine", "constant"):
            raise ValueError(f"lr_scheduler must be 'cosine' or 'constant', got {config.lr_scheduler!r}")
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        self.config = config
        self.accelerator = make_accelerator(mixed_precision=config.mixed_precision,
                                       gradient_accumulation_steps=config.gradient_accumulation_steps)
        # one run per output_dir, decided before the data and the model load
        self.out = prepare_output_dir(config.output_dir, overwrite=config.overwrite_output_dir,
                                      resume_from=config.resume_from,
                                      main_process=self.accelerator.is_main_process)
        set_seed(config.seed)
        rows = list(train_rows) if train_rows is not None else _load_pair_sources(config.train_data, config.limit)
        if train_rows is not None and config.limit is not None:
            rows = rows[: config.limit]
        if not rows:
            raise ValueError("no training pairs: set RewardModelConfig.train_data or pass train_rows")
        self.train_rows = rows
        evals = list(eval_rows) if eval_rows is not None else _load_pair_sources(config.eval_data, config.eval_limit)
        self.eval_rows = evals
        condition = config.condition
        if model is not None:
            if condition not in ("auto", model.condition):
                raise ValueError(f"the given model has condition {model.condition!r}, the config {condition!r}")
            condition = model.condition
        elif condition == "auto":
            condition = "reference" if all(r.get("reference") is not None for r in rows) else "none"
        if condition == "reference":
            missing = [r.get("id", i) for i, r in enumerate(rows + evals) if r.get("reference") is None]
            if missing:
                raise ValueError(f"condition 'reference' but {len(missing)} pairs have no reference image "
                                 f"(first: {missing[:5]})")
        if model is None:
            lora = None
            if config.lora:
                lora = {"r": config.lora_r, "alpha": config.lora_alpha, "dropout": config.lora_dropout,
                        "target_modules": list(config.lora_target_modules) if config.lora_target_modules else None}
            model = RewardModel.build(config.backbone, config.model, config.pretrained, config.clip_config,
                                      condition, config.head_hidden, config.image_size, lora, config.seed,
                                      config.difference)
        if config.save_adapter_only:  # refused now, not after the training
            why_not = model._why_not_adapter_only()
            if why_not is not None:
                raise ValueError(f"save_adapter_only: true, but {why_not} (LoRA needs lora: true; a base to "
                                 "point to needs `model`: a path, hub id or pretrained checkpoint)")
        if config.freeze_backbone:
            for p in model.backbone.parameters():
                p.requires_grad_(False)
        self.step = 0
        self.micro = 0  # micro-batches consumed (the data position)
        n_batches = math.ceil(len(rows) / config.batch_size / self.accelerator.num_processes)
        per_epoch = max(1, n_batches // config.gradient_accumulation_steps)
        self.total_steps = config.max_steps or max(1, math.ceil(config.epochs * per_epoch))
        head = [p for p in model.head.parameters() if p.requires_grad]
        body = [p for p in model.backbone.parameters() if p.requires_grad]
        groups = [{"params": head, "lr": config.head_learning_rate or config.learning_rate}]
        if body:
            groups.append({"params": body, "lr": config.learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=config.weight_decay)
        warm, total = config.warmup_steps, self.total_steps

        def factor(step: int) -> float:
            if warm and step < warm:
                return (step + 1) / warm
            if config.lr_scheduler == "constant":
                return 1.0
            progress = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.accelerator.register_for_checkpointing(scheduler)
        if config.resume_from:
            self.load_checkpoint(config.resume_from)

    @property
    def reward_model(self) -> RewardModel:
        return self.accelerator.unwrap_model(self.model)

    # ----------------------------------------------------------------------------- data
    def _batch(self, k: int) -> list[Mapping[str, Any]]:
        """Micro-batch ``k`` of this process: epoch ``k // per_epoch`` reads a permutation seeded by the
        seed and the epoch; processes take interleaved slices."""
        acc, bs = self.accelerator, self.config.batch_size
        global_bs = bs * acc.num_processes
        per_epoch = max(1, math.ceil(len(self.train_rows) / global_bs))
        epoch, j = divmod(k, per_epoch)
        order = list(range(len(self.train_rows)))
        random.Random(self.config.seed * 100003 + epoch).shuffle(order)
        chunk = order[j * global_bs:(j + 1) * global_bs]
        mine = chunk[acc.process_index::acc.num_processes] or chunk[:1]
        return [self.train_rows[i] for i in mine]

    def _tensors(self, batch: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        m = self.reward_model
        out: dict[str, Any] = {"chosen": m.prepare([r["chosen"] for r in batch]),
                               "rejected": m.prepare([r["rejected"] for r in batch]),
                               "prompts": [str(r.get("prompt") or "") for r in batch],
                               "margin": torch.tensor([float(r.get("margin") or 0.0) for r in batch], device=m.device)}
        out["references"] = m.prepare([r["reference"] for r in batch]) if m.condition == "reference" else None
        return out

    # ----------------------------------------------------------------------------- loop
    def _log(self, record: dict[str, Any]) -> None:
        if self.accelerator.is_main_process:
            MetricsLog(self.out / "metrics.jsonl").append(record)

    def evaluate(self, rows: Sequence[Mapping[str, Any]] | None = None, out_dir: str | Path | None = None,
                 ) -> dict[str, Any] | None:
        """:func:`evaluate_pairs` on ``rows`` (default: the held-out pairs); None without rows."""
        rows = self.eval_rows if rows is None else rows
        if not rows:
            return None
        return evaluate_pairs(self.reward_model, rows, batch_size=self.config.eval_batch_size,
                              resamples=self.config.bootstrap_resamples, seed=self.config.seed, out_dir=out_dir)

    def train(self) -> dict[str, Any]:
        """Run the optimizer steps, save the model to ``output_dir/model`` and evaluate; returns
        ``dict(steps, loss, train_accuracy, eval, seconds, model_dir)``."""
        cfg, acc = self.config, self.accelerator
        if acc.is_main_process:
            self.out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, self.out / "reward_config.yaml")
            # a fresh run starts a fresh log; a resumed one drops the lines logged after its checkpoint
            MetricsLog(self.out / "metrics.jsonl").start(self.step)
        params = [p for p in self.model.parameters() if p.requires_grad]
        bar = progress_bar(self.total_steps, initial=self.step, desc="reward",
                           enabled=cfg.progress and acc.is_main_process, output_dir=self.out)
        budget = TimeBudget(cfg.max_minutes, acc)
        start = time.perf_counter()
        losses: list[float] = []
        accs: list[float] = []
        last = {"loss": float("nan"), "accuracy": float("nan")}
        self.model.train()
        while self.step < self.total_steps:
            batch = self._tensors(self._batch(self.micro))
            self.micro += 1
            with acc.accumulate(self.model):
                with acc.autocast():
                    r_c, r_r = self.model(batch["chosen"], batch["references"], batch["prompts"],
                                          rejected=batch["rejected"])
                margin = batch["margin"] * cfg.margin_scale if cfg.use_margin else None
                loss = bradley_terry_loss(r_c.float(), r_r.float(), margin)
                acc.backward(loss)
                if acc.sync_gradients and cfg.max_grad_norm:
                    acc.clip_grad_norm_(params, cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad()
            losses.append(float(loss.detach()))
            accs.append(float((r_c > r_r).float().mean()))
            if not acc.sync_gradients:
                continue
            self.scheduler.step()
            self.step += 1
            bar.update(1)
            elapsed = time.perf_counter() - start
            done = self.step >= self.total_steps or budget.spent()
            if self.step % max(1, cfg.log_every) == 0 or done:
                means = torch.tensor([sum(losses) / len(losses), sum(accs) / len(accs)], device=acc.device)
                if acc.num_processes > 1:  # every process's batches, not the main one's
                    means = acc.reduce(means, reduction="mean")
                last = {"loss": float(means[0]), "accuracy": float(means[1])}
                losses, accs = [], []
                bar.set_postfix(loss=f"{last['loss']:.4f}", acc=f"{last['accuracy']:.3f}")
                self._log({"step": self.step, "loss": round(last["loss"], 6),
                           "train/accuracy": round(last["accuracy"], 4), "lr": self.scheduler.get_last_lr()[0],
                           "seconds": round(elapsed, 2)})
            if cfg.eval_every and self.step % cfg.eval_every == 0 and not done and self.eval_rows:
                res = self.evaluate()
                if res is not None:
                    self._log({"step": self.step, "eval/accuracy": res["accuracy"], "eval/ci_low": res["ci95"][0],
                               "eval/ci_high": res["ci95"][1], "seconds": round(time.perf_counter() - start, 2)})
            if cfg.save_every and self.step % cfg.save_every == 0 and not done:
                self.save_checkpoint()
            if done:
                break
        bar.close()
        seconds = time.perf_counter() - start
        self.save_checkpoint()
        model_dir = self.out / "model"
        if acc.is_main_process:
            self.reward_model.save_pretrained(model_dir, save_adapter_only=cfg.save_adapter_only)
        result = self.evaluate(out_dir=self.out / "eval") if acc.is_main_process else None
        if result is not None:
            self._log({"step": self.step, "eval/accuracy": result["accuracy"], "eval/ci_low": result["ci95"][0],
                       "eval/ci_high": result["ci95"][1], "seconds": round(time.perf_counter() - start, 2)})
        if acc.is_main_process:
            plot_curves(self.out / "metrics.jsonl", self.out / "curves.png", ("loss", "train/accuracy", "lr"),
                        eval_keys=("eval/accuracy",))
        acc.wait_for_everyone()
        return {"steps": self.step, "loss": last["loss"], "train_accuracy": last["accuracy"], "eval": result,
                "seconds": seconds, "model_dir": str(model_dir)}

    # ----------------------------------------------------------------------------- checkpoints
    def save_checkpoint(self) -> Path:
        """``output_dir/checkpoint-<step>``: accelerate state (weights, optimizer, scheduler, RNG) and
        the step and data position."""
        acc = self.accelerator
        d = self.out / f"checkpoint-{self.step:06d}"
        acc.save_state(str(d / "state"))
        if acc.is_main_process:
            (d / "trainer_state.json").write_text(json.dumps({"step": self.step, "micro": self.micro}))
        acc.wait_for_everyone()
        return d

    def load_checkpoint(self, path: str | Path) -> None:
        """Resume from a checkpoint directory, or ``"latest"`` in ``output_dir`` (the largest step; a fresh
        start if there is none yet)."""
        found = resolve_checkpoint(self.out, path)
        if found is None:
            return
        path = Path(found)
        if not (path / "trainer_state.json").is_file():
            raise ValueError(f"{path} is not a reward-model checkpoint (no trainer_state.json)")
        self.accelerator.load_state(str(path / "state"))
        state = json.loads((path / "trainer_state.json").read_text())
        self.step, self.micro = int(state["step"]), int(state["micro"])


def train_reward_from_config(source: str | Path | Mapping[str, Any], **overrides: Any) -> dict[str, Any]:
    """``visalign train reward CONFIG``: load a :class:`RewardModelConfig` (options at the top level or
    under ``reward:``), train, evaluate, and return :meth:`RewardModelTrainer.train`'s summary. With
    ``mode: judge`` (in the file or as an override) a generative judge is trained with GRPO instead
    (:func:`visalign.trainers.judge.train_judge_from_config`)."""
    if _mode_of(source, overrides) == "judge":
        from .judge import train_judge_from_config

        return train_judge_from_config(source, **overrides)
    config = load_config(RewardModelConfig, source, section="reward", **overrides)
    result = RewardModelTrainer(config).train()
    ev = result.get("eval")
    if ev:
        print(f"held-out pairwise accuracy {ev['accuracy']:.3f} [{ev['ci95'][0]:.3f}, {ev['ci95'][1]:.3f}] "
              f"(n={ev['n']}); " + ", ".join(f"{k} {v['accuracy']:.3f}" for k, v in ev["by_perturbation"].items()))
    print(f"model: {result['model_dir']}")
    return result


def _mode_of(source: str | Path | Mapping[str, Any], overrides: Mapping[str, Any]) -> str:
    """The ``mode`` asked for: the override, else the file's (top level, or under ``reward:`` /
    ``judge:``), else ``bt``."""
    if overrides.get("mode"):
        return str(overrides["mode"])
    if isinstance(source, Mapping):
        data: Any = source
    else:
        import yaml

        data = yaml.safe_load(Path(source).read_text()) or {}
    if not isinstance(data, Mapping):
        return "bt"
    if isinstance(data.get("judge"), Mapping):
        return "judge"
    section = data.get("reward") if isinstance(data.get("reward"), Mapping) else data
    return str(section.get("mode") or "bt")
